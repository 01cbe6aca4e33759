"""AlexNet in the Caffe layout the classic papers used (conv1..conv5, pool5, fc6, fc7).

Caffe's CaffeNet: conv1 96x11x11/4, pool 3/2, conv2 256x5x5 (pad 2, 2 groups), pool 3/2, conv3 384x3x3,
conv4 384x3x3 (2 groups), conv5 256x3x3 (2 groups), pool5 3/2, fc6 4096, fc7 4096. RotNet and the
PyTorch Jigsaw ports add BatchNorm after every conv/fc; `bn` switches it. `width` scales every
channel count (mini scale), `conv1_stride` = 2 is what Jigsaw used on its 64 px tiles.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from torch import nn

from sslbench.backbones.base import FcTrunk, TapInfo, conv_out, init_weights, too_small
from sslbench.config import Dropout, In, Side, Units, WidthMult
from sslbench.registry import register_backbone


@dataclass(frozen=True)
class AlexNetConfig:
    image_size: Side = 224  # input side; fixes the pool5 size fc6 reads (224 -> 6x6 with stride 4)
    in_channels: Annotated[int, In(1, 4)] = 3  # 1 for the L channel (Colorization) or grayscale-only inputs
    width: WidthMult = 1.0  # multiplier on every channel count (0.25..0.5 at mini scale)
    conv1_stride: Annotated[int, In(1, 8)] = 4  # 4 as in Caffe; 2 for Jigsaw's 64 px tiles and small mini images
    bn: bool = True  # BatchNorm after each conv/fc (RotNet, PyTorch Jigsaw); False = Caffe original
    lrn: bool = False  # Caffe's local response norm after conv1/conv2 (only meaningful with bn = false)
    groups: Annotated[int, In(1, 2)] = 1  # 2 = Caffe's two-GPU grouped conv2/4/5
    fc_dim: Units = 4096  # fc6/fc7 width
    dropout: Dropout = 0.5  # dropout before fc6/fc7 (the papers' value)


def _channels(width: float) -> tuple[int, int, int, int, int]:
    return tuple(max(8, int(round(c * width))) for c in (96, 256, 384, 384, 256))  # type: ignore[return-value]


@register_backbone("alexnet", config=AlexNetConfig)
class AlexNet(FcTrunk):
    """AlexNet (Caffe layout, optional BatchNorm); taps conv1..conv5 (after ReLU), pool5, fc6, fc7."""

    name = "alexnet"
    default_taps = ("conv1", "conv2", "conv3", "conv4", "conv5")

    def __init__(self, cfg: AlexNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.in_channels, self.image_size = cfg.in_channels, cfg.image_size
        c1, c2, c3, c4, c5 = _channels(cfg.width)
        g = cfg.groups

        def conv(cin: int, cout: int, k: int, s: int, p: int, groups: int = 1) -> nn.Sequential:
            layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, s, p, groups=groups, bias=not cfg.bn)]
            layers += [nn.BatchNorm2d(cout)] if cfg.bn else []
            return nn.Sequential(*layers, nn.ReLU(inplace=True))

        def norm_pool() -> nn.Sequential:
            lrn: list[nn.Module] = [nn.LocalResponseNorm(5, 1e-4, 0.75)] if cfg.lrn else []
            return nn.Sequential(*lrn, nn.MaxPool2d(3, 2))

        self.conv1 = conv(cfg.in_channels, c1, 11, cfg.conv1_stride, 2)
        self.pool1 = norm_pool()
        self.conv2 = conv(c1, c2, 5, 1, 2, g)
        self.pool2 = norm_pool()
        self.conv3 = conv(c2, c3, 3, 1, 1)
        self.conv4 = conv(c3, c4, 3, 1, 1, g)
        self.conv5 = conv(c4, c5, 3, 1, 1, g)
        self.pool5 = nn.MaxPool2d(3, 2)

        s1 = conv_out(cfg.image_size, 11, cfg.conv1_stride, 2)
        s2 = conv_out(s1, 3, 2, 0)
        s3 = conv_out(s2, 3, 2, 0)
        s5 = conv_out(s3, 3, 2, 0)
        if s5 < 1:
            raise too_small("alexnet", cfg.image_size, f"no pool5 output at conv1_stride {cfg.conv1_stride}")
        self.pool5_size = s5
        st = cfg.conv1_stride
        self.fc6 = self.fc_stage(c5 * s5 * s5, cfg.fc_dim, cfg.dropout, cfg.bn)
        self.fc7 = self.fc_stage(cfg.fc_dim, cfg.fc_dim, cfg.dropout, cfg.bn)
        self.feature_info = {
            "conv1": TapInfo(c1, st, s1),
            "conv2": TapInfo(c2, st * 2, s2),
            "conv3": TapInfo(c3, st * 4, s3),
            "conv4": TapInfo(c4, st * 4, s3),
            "conv5": TapInfo(c5, st * 4, s3),
            "pool5": TapInfo(c5, st * 8, s5),
            "fc6": TapInfo(cfg.fc_dim, 0, 1),
            "fc7": TapInfo(cfg.fc_dim, 0, 1),
        }
        init_weights(self)

    def stages(self) -> list[tuple[str, nn.Module]]:
        return [
            ("conv1", self.conv1), ("pool1", self.pool1), ("conv2", self.conv2), ("pool2", self.pool2),
            ("conv3", self.conv3), ("conv4", self.conv4), ("conv5", self.conv5), ("pool5", self.pool5),
            ("fc6", self.fc6), ("fc7", self.fc7),
        ]

    @classmethod
    def tiny(cls) -> dict[str, object]:
        return {"image_size": 64, "width": 0.125, "conv1_stride": 2, "fc_dim": 32}
