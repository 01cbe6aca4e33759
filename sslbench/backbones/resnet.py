"""ResNet-50 / ResNet-101 (He et al. 2016) as torchvision builds them, with named taps.

torchvision's Bottleneck blocks (stride on the 3x3 convolution, "ResNet v1.5") and its module names (conv1,
bn1, layer1..layer4), so torchvision's and the field's released ResNet weights load by name (their `fc` aside:
the trunk ends at the global pool). Taps: conv1 (stride 2, after ReLU), res2..res5 (layer1..layer4, strides
4..32) and pool (res5 averaged, the vector a classifier reads). `width` scales every channel count (tests and
mini scale). The Task Ensemble (Doersch & Zisserman 2017) trains ResNet-101; the MMSelfSup / VISSL benchmarks
use ResNet-50.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from torch import nn
from torchvision.models.resnet import Bottleneck, conv1x1

from sslbench.backbones.base import (
    Backbone,
    FcnHead,
    Geometry,
    RegionHead,
    TapInfo,
    conv_out,
    layer_geometry,
    too_small,
)
from sslbench.config import In, WidthMult
from sslbench.errors import UserError
from sslbench.registry import register_backbone

DEPTHS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}  # bottlenecks per stage (He et al. 2016, Table 1)
PLANES = (64, 128, 256, 512)
ROI_GRID = 14  # RoIs pooled from res4 to 14x14, res5 halves them to 7x7 (Detectron's C4 head, ROI_XFORM_RESOLUTION)


@dataclass(frozen=True)
class ResNetConfig:
    depth: Literal[50, 101] = 50  # ResNet-50 (MMSelfSup / VISSL benchmarks) or ResNet-101 (the Task Ensemble)
    width: WidthMult = 1.0  # multiplier on every channel count (1/16 in the tests)
    # input side: fixes feature_info's sizes (the trunk itself is fully convolutional)
    image_size: Annotated[int, In(32, 4096)] = 224
    in_channels: Annotated[int, In(1, 4)] = 3  # 1 for gray / L-channel inputs


@register_backbone("resnet", config=ResNetConfig)
class ResNet(Backbone):
    """torchvision's ResNet-50/101 up to the global pool; taps conv1, res2..res5, pool."""

    name = "resnet"
    default_taps = ("conv1", "res2", "res3", "res4", "res5")
    head_tap = "pool"
    fuse_tap = "pool"
    spatial_tap = "res5"
    dense_tap = "res5"
    region_tap = "res4"
    fcn_tap = "res5"

    def __init__(self, cfg: ResNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.in_channels, self.image_size = cfg.in_channels, cfg.image_size
        stem = max(1, round(64 * cfg.width))
        self.conv1 = nn.Conv2d(cfg.in_channels, stem, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.inplanes = stem
        layers = []
        for i, (planes, blocks) in enumerate(zip(PLANES, DEPTHS[cfg.depth])):
            layers.append(self._make_layer(max(1, round(planes * cfg.width)), blocks, 1 if i == 0 else 2))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        sizes = [conv_out(cfg.image_size, 7, 2, 3)]
        for _ in range(4):
            sizes.append(conv_out(sizes[-1], 3, 2, 1))  # the max pool, then the stride-2 convs of res3..res5
        if sizes[-1] < 1:
            raise too_small("resnet", cfg.image_size, "five stride-2 layers")
        channels = [stem] + [layer[-1].conv3.out_channels for layer in layers]
        strides = (2, 4, 8, 16, 32)
        names = ("conv1", "res2", "res3", "res4", "res5")
        self.feature_info = {n: TapInfo(c, s, z) for n, c, s, z in zip(names, channels, strides, sizes)}
        self.feature_info["pool"] = TapInfo(channels[-1], 0, 1)
        self.flatten = nn.Flatten(1)
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        out = planes * Bottleneck.expansion
        downsample = None
        if stride != 1 or self.inplanes != out:
            downsample = nn.Sequential(conv1x1(self.inplanes, out, stride), nn.BatchNorm2d(out))
        layers = [Bottleneck(self.inplanes, planes, stride, downsample, base_width=64)]
        self.inplanes = out
        layers += [Bottleneck(out, planes, base_width=64) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def stages(self) -> list[tuple[str, nn.Module]]:
        """The registered modules chained per call (not stored: a BatchNorm swapped in for bn1, SyncBatchNorm under
        DDP, must be the one that runs); the chains register nothing, so state_dict keys stay torchvision's."""
        return [
            ("conv1", nn.Sequential(self.conv1, self.bn1, self.relu)),
            ("res2", nn.Sequential(self.maxpool, self.layer1)),
            ("res3", self.layer2), ("res4", self.layer3), ("res5", self.layer4),
            ("pool", nn.Sequential(self.avgpool, self.flatten)),
        ]

    def region_head(self) -> RegionHead:
        res5_and_pool = nn.Sequential(self.layer4, self.avgpool, self.flatten)
        return RegionHead(self.region_tap, self.feature_info["res4"].stride, ROI_GRID, res5_and_pool,
                          self.feature_info["pool"].channels, align=True)

    def fcn_head(self, dropout: float | None = None) -> FcnHead:
        return FcnHead(self.fcn_tap, nn.Identity(), self.feature_info["res5"].channels)

    def tap_geometry(self, tap: str) -> list[Geometry]:
        """The main path only: a block's 1x1 / 3x3 / 1x1 convolutions, not its downsampling shortcut."""
        out = layer_geometry(self.conv1) + layer_geometry(self.maxpool)
        if tap == "conv1":
            return out[:1]
        for name, layer in zip(("res2", "res3", "res4", "res5"), (self.layer1, self.layer2, self.layer3, self.layer4)):
            for block in layer:
                out += layer_geometry(block.conv1) + layer_geometry(block.conv2) + layer_geometry(block.conv3)
            if name == tap:
                return out
        raise UserError(f"resnet: tap {tap!r} is a vector, it has no spatial geometry")

    @classmethod
    def label(cls, cfg: ResNetConfig) -> str:
        return f"resnet{cfg.depth}" + (f"-w{cfg.width:g}" if cfg.width != 1.0 else "")

    @classmethod
    def tiny(cls) -> dict[str, object]:
        return {"depth": 50, "width": 0.0625, "image_size": 64}
