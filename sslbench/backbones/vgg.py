"""VGG-16 in the Caffe / torchvision layout (Simonyan & Zisserman 2015, configuration "D").

Five blocks of 3x3 convolutions (pad 1) with 64, 128, 256, 512, 512 channels (2, 2, 3, 3, 3 convs), each
block closed by a 2x2/2 max pool, then fc6 4096 and fc7 4096. Context Prediction's "VGG-" rows train this
network on 96 px patches (Doersch et al. 2015, Sec. 4); torchvision's vgg16_bn puts BatchNorm after every
conv, `bn` switches it. As in alexnet.py, `width` scales every channel count (mini scale) and fc6 reads
pool5 at the configured `image_size` (no adaptive pooling), so a 96 px patch gives a 3x3 pool5.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from torch import nn

from sslbench.backbones.base import FcTrunk, TapInfo, init_weights, too_small
from sslbench.config import Dropout, In, Units, WidthMult
from sslbench.registry import register_backbone

BLOCKS = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))  # (channels, convs) of VGG-16, configuration D


@dataclass(frozen=True)
class VGGConfig:
    image_size: Annotated[int, In(32, 4096)] = 224  # input side; fixes the pool5 size fc6 reads (224 -> 7x7, 96 -> 3x3)
    in_channels: Annotated[int, In(1, 4)] = 3  # 1 for the L channel or grayscale-only inputs
    width: WidthMult = 1.0  # multiplier on every channel count (0.125..0.25 at mini scale)
    bn: bool = True  # BatchNorm after each conv/fc (torchvision vgg16_bn); False = Caffe's VGG-16
    fc_dim: Units = 4096  # fc6/fc7 width
    dropout: Dropout = 0.5  # dropout before fc6/fc7 (VGG's value)


def _channels(width: float) -> tuple[int, ...]:
    return tuple(max(8, int(round(c * width))) for c, _ in BLOCKS)


@register_backbone("vgg16", config=VGGConfig)
class VGG16(FcTrunk):
    """VGG-16 (optional BatchNorm); taps conv1..conv5 (last conv of each block, after ReLU), pool5, fc6, fc7."""

    name = "vgg16"
    default_taps = ("conv1", "conv2", "conv3", "conv4", "conv5")

    def __init__(self, cfg: VGGConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.in_channels, self.image_size = cfg.in_channels, cfg.image_size
        pool5_size = cfg.image_size // 32
        if pool5_size < 1:
            raise too_small("vgg16", cfg.image_size, "five 2x2 pools leave no pool5 output below 32 px")
        widths = _channels(cfg.width)
        cin = cfg.in_channels
        self.blocks = nn.ModuleList()
        self.pools = nn.ModuleList()
        for cout, (_, convs) in zip(widths, BLOCKS):
            self.blocks.append(nn.Sequential(*(self._conv(cin if i == 0 else cout, cout) for i in range(convs))))
            self.pools.append(nn.MaxPool2d(2, 2))
            cin = cout
        self.pool5_size = pool5_size
        self.fc6 = self.fc_stage(widths[-1] * pool5_size * pool5_size, cfg.fc_dim, cfg.dropout, cfg.bn)
        self.fc7 = self.fc_stage(cfg.fc_dim, cfg.fc_dim, cfg.dropout, cfg.bn)
        self.feature_info = {
            f"conv{i + 1}": TapInfo(c, 2**i, cfg.image_size // 2**i) for i, c in enumerate(widths)
        }
        self.feature_info["pool5"] = TapInfo(widths[-1], 32, pool5_size)
        self.feature_info["fc6"] = TapInfo(cfg.fc_dim, 0, 1)
        self.feature_info["fc7"] = TapInfo(cfg.fc_dim, 0, 1)
        init_weights(self)

    def _conv(self, cin: int, cout: int) -> nn.Sequential:
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, 1, 1, bias=not self.cfg.bn)]
        layers += [nn.BatchNorm2d(cout)] if self.cfg.bn else []
        return nn.Sequential(*layers, nn.ReLU(inplace=True))

    def stages(self) -> list[tuple[str, nn.Module]]:
        out: list[tuple[str, nn.Module]] = []
        for i, (block, pool) in enumerate(zip(self.blocks, self.pools)):
            out += [(f"conv{i + 1}", block), (f"pool{i + 1}", pool)]
        return out + [("fc6", self.fc6), ("fc7", self.fc7)]

    @classmethod
    def tiny(cls) -> dict[str, object]:
        return {"image_size": 32, "width": 0.125, "fc_dim": 32}
