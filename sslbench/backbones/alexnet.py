"""AlexNet in the Caffe layout the classic papers used (conv1..conv5, pool5, fc6, fc7).

Caffe's CaffeNet: conv1 96x11x11/4, pool 3/2 -> LRN, conv2 256x5x5 (pad 2, 2 groups), pool 3/2 -> LRN, conv3
384x3x3, conv4 384x3x3 (2 groups), conv5 256x3x3 (2 groups), pool5 3/2, fc6 4096 -> ReLU -> drop6, fc7 4096 ->
ReLU -> drop7. RotNet and the PyTorch Jigsaw ports add BatchNorm after every conv/fc; `bn` switches it.
The papers' variants are options, not copies: RotNet's channels 64/192/384/256/256 with no dropout
(gidariss/FeatureLearningRotNet architectures/AlexNet.py), the Context Prediction net's conv1 pad 5, Caffe's
ceil-mode pooling and BatchNorm without scale/shift on conv3..fc7 only (cdoersch/deepcontext train.py l.29-65).
`width` scales every channel count (mini scale); `conv1_stride` = 2 is what Jigsaw used on its 64 px tiles.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from torch import nn

from sslbench.backbones.base import FcTrunk, TapInfo, conv_out, init_weights, too_small
from sslbench.config import Dropout, In, Side, Units, WidthMult
from sslbench.registry import register_backbone

CAFFE_CHANNELS = (96, 256, 384, 384, 256)
ROTNET_CHANNELS = (64, 192, 384, 256, 256)  # FeatureLearningRotNet architectures/AlexNet.py


@dataclass(frozen=True)
class AlexNetConfig:
    image_size: Side = 224  # input side; fixes the pool5 size fc6 reads (224 -> 6x6 with stride 4)
    in_channels: Annotated[int, In(1, 4)] = 3  # 1 for the L channel (Colorization) or grayscale-only inputs
    width: WidthMult = 1.0  # multiplier on every channel count (0.25..0.5 at mini scale)
    channels: tuple[Units, Units, Units, Units, Units] = CAFFE_CHANNELS  # conv1..conv5 (RotNet: 64/192/384/256/256)
    conv1_stride: Annotated[int, In(1, 8)] = 4  # 4 as in Caffe; 2 for Jigsaw's 64 px tiles and small mini images
    # conv1 stride of this trunk when a protocol rebuilds it at its own input size (0: conv1_stride). Jigsaw's tile
    # towers run at stride 2 on 64 px tiles and transfer as an AlexNet at stride 4 on 227 px images.
    transfer_stride: Annotated[int, In(0, 8)] = 0
    # conv1 / pool1-2 padding when a protocol rebuilds this trunk at its own size (-1: as trained). The Colorization
    # net trains at conv1 pad 5, pools padded by 1 (180 px crops -> 12x12) and transfers as Caffe's AlexNet, whose
    # pool5 is 6x6 at 224 and 227 px (pad 2 and 0 here; pad 5 + 1 would give 7x7 at 227 and lose fc6)
    transfer_conv1_pad: Annotated[int, In(-1, 16)] = -1
    transfer_pool_pad: Annotated[int, In(-1, 1)] = -1
    conv1_pad: Annotated[int, In(0, 16)] = 2  # 2 (torchvision, RotNet at 224); 0 Caffe at 227; 5 deepcontext at 96
    # Caffe's pooling rounds up (96 px: pool5 3x3, not 2x2); at 224/227 with conv1 pad 0-2 both give 6x6 (with pad 5,
    # the Context net's, 224 px gives conv5 14x14 and pool5 7x7)
    ceil_mode: bool = False
    pool_pad: Annotated[int, In(0, 1)] = 0  # pool1 / pool2 padding (1: Colorization AlexNet train_val.prototxt)
    bn: bool = True  # BatchNorm after each conv/fc (RotNet, PyTorch Jigsaw); False = Caffe original
    bn_affine: bool = True  # False: BatchNorm without scale/shift (deepcontext's BN layers)
    bn_layers: Literal["all", "conv3+"] = "all"  # conv3+: BN on conv3..fc7 only (deepcontext: LRN on conv1/2)
    lrn: bool = False  # Caffe's local response norm after pool1/pool2 (CaffeNet order: pool, then LRN)
    groups: Annotated[int, In(1, 2)] = 1  # 2 = Caffe's two-GPU grouped conv2/4/5
    fc_dim: Units = 4096  # fc6/fc7 width
    dropout: Dropout = 0.5  # Caffe's drop6/drop7 after fc6/fc7 (0 for RotNet's AlexNet, which has none)


def _channels(cfg: AlexNetConfig) -> tuple[int, int, int, int, int]:
    return tuple(max(8, int(round(c * cfg.width))) for c in cfg.channels)  # type: ignore[return-value]


def _pool_out(size: int, ceil: bool, pad: int = 0) -> int:
    """Output side of a 3/2 max pool padded by `pad`, rounding down (PyTorch) or up (Caffe)."""
    size += 2 * pad
    return -(-(size - 3) // 2) + 1 if ceil else (size - 3) // 2 + 1


@register_backbone("alexnet", config=AlexNetConfig)
class AlexNet(FcTrunk):
    """AlexNet (Caffe layout, optional BatchNorm); taps conv1..conv5 (after ReLU), pool5, fc6, fc7."""

    name = "alexnet"
    default_taps = ("conv1", "conv2", "conv3", "conv4", "conv5")

    def __init__(self, cfg: AlexNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.in_channels, self.image_size = cfg.in_channels, cfg.image_size
        c1, c2, c3, c4, c5 = _channels(cfg)
        g = cfg.groups

        def conv(cin: int, cout: int, k: int, s: int, p: int, groups: int = 1, bn: bool = cfg.bn) -> nn.Sequential:
            layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, s, p, groups=groups, bias=not bn)]
            layers += [nn.BatchNorm2d(cout, affine=cfg.bn_affine)] if bn else []
            return nn.Sequential(*layers, nn.ReLU(inplace=True))

        def pool_norm() -> nn.Sequential:
            lrn: list[nn.Module] = [nn.LocalResponseNorm(5, 1e-4, 0.75)] if cfg.lrn else []
            return nn.Sequential(nn.MaxPool2d(3, 2, cfg.pool_pad, ceil_mode=cfg.ceil_mode), *lrn)

        early_bn = cfg.bn and cfg.bn_layers == "all"
        self.conv1 = conv(cfg.in_channels, c1, 11, cfg.conv1_stride, cfg.conv1_pad, bn=early_bn)
        self.pool1 = pool_norm()
        self.conv2 = conv(c1, c2, 5, 1, 2, g, bn=early_bn)
        self.pool2 = pool_norm()
        self.conv3 = conv(c2, c3, 3, 1, 1)
        self.conv4 = conv(c3, c4, 3, 1, 1, g)
        self.conv5 = conv(c4, c5, 3, 1, 1, g)
        self.pool5 = nn.MaxPool2d(3, 2, ceil_mode=cfg.ceil_mode)

        s1 = conv_out(cfg.image_size, 11, cfg.conv1_stride, cfg.conv1_pad)
        s2 = _pool_out(s1, cfg.ceil_mode, cfg.pool_pad)
        s3 = _pool_out(s2, cfg.ceil_mode, cfg.pool_pad)
        s5 = _pool_out(s3, cfg.ceil_mode)
        if min(s1, s2, s3, s5) < 1:
            raise too_small("alexnet", cfg.image_size, f"no pool5 output at conv1_stride {cfg.conv1_stride}")
        self.pool5_size = s5
        st = cfg.conv1_stride
        self.fc6 = self.fc_stage(c5 * s5 * s5, cfg.fc_dim, cfg.dropout, cfg.bn, cfg.bn_affine)
        self.fc7 = self.fc_stage(cfg.fc_dim, cfg.fc_dim, cfg.dropout, cfg.bn, cfg.bn_affine)
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

    @classmethod
    def label(cls, cfg: AlexNetConfig) -> str:
        variant = {CAFFE_CHANNELS: "", ROTNET_CHANNELS: "-rotnet"}.get(tuple(cfg.channels), "-c" + "x".join(
            str(c) for c in cfg.channels))
        stride = f"-s{cfg.conv1_stride}" if cfg.conv1_stride != 4 else ""  # Caffe's 4 is the usual AlexNet
        return ("alexnet" + variant + ("-bn" if cfg.bn else "") + (f"-w{cfg.width:g}" if cfg.width != 1.0 else "")
                + stride)

    def stages(self) -> list[tuple[str, nn.Module]]:
        return [
            ("conv1", self.conv1), ("pool1", self.pool1), ("conv2", self.conv2), ("pool2", self.pool2),
            ("conv3", self.conv3), ("conv4", self.conv4), ("conv5", self.conv5), ("pool5", self.pool5),
            ("fc6", self.fc6), ("fc7", self.fc7),
        ]

    @classmethod
    def tiny(cls) -> dict[str, object]:
        return {"image_size": 64, "width": 0.125, "conv1_stride": 2, "fc_dim": 32}
