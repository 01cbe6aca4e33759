"""ResNet-50 / ResNet-101 (He et al. 2016) as torchvision builds them, with named taps; and ResNet v2.

version 1: torchvision's Bottleneck blocks (stride on the 3x3 convolution, "ResNet v1.5") and its module names
(conv1, bn1, layer1..layer4), so torchvision's and the field's released ResNet weights load by name (their `fc`
aside: the trunk ends at the global pool). version 2: the pre-activation units of He et al., "Identity Mappings
in Deep Residual Networks" (ECCV 2016), as tf-slim's resnet_v2 builds them: BatchNorm-ReLU before each
convolution, the shortcut a projection of the pre-activated input where the shape changes, a plain 7x7 stem
without BatchNorm, and BatchNorm-ReLU after the last stage ("postnorm"). The Task Ensemble (Doersch & Zisserman
2017) trains ResNet-v2-101 through block 3 only (github.com/google-deepmind/multiself README: "the procedure only
trains Resnet-v2-101 through block 3"): `stages = 3`. Differences from tf-slim: its stride-2 sits in the *last*
unit of blocks 1-3, here in the first (as torchvision): res4 is at stride 16 here, 32 in tf-slim's default.

Taps: conv1 (stride 2), res2..res5 (layer1..layer4, strides 4..32; up to `stages` + 1), every residual unit's
output ('res4_1' .. 'res4_23' for ResNet-101's res4; the last unit's is the stage's own tap too) and pool (the last
stage averaged, the vector a classifier reads). `width` scales every channel count (tests and mini scale). The
MMSelfSup / VISSL benchmarks use ResNet-50 v1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from torch import Tensor, nn
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
TORCHVISION_LAYOUT = {"version": 1, "stages": 4, "width": 1.0, "in_channels": 3}  # what torchvision / detectron2 hold
ROI_GRID = 14  # RoIs pooled from res4 to 14x14, res5 halves them to 7x7 (Detectron's C4 head, ROI_XFORM_RESOLUTION)


@dataclass(frozen=True)
class ResNetConfig:
    depth: Literal[50, 101] = 50  # ResNet-50 (MMSelfSup / VISSL benchmarks) or ResNet-101 (the Task Ensemble)
    width: WidthMult = 1.0  # multiplier on every channel count (1/16 in the tests)
    # input side: fixes feature_info's sizes (the trunk itself is fully convolutional)
    image_size: Annotated[int, In(32, 4096)] = 224
    in_channels: Annotated[int, In(1, 4)] = 3  # 1 for gray / L-channel inputs
    version: Literal[1, 2] = 1  # 1: torchvision's (post-activation, v1.5); 2: pre-activation (tf-slim resnet_v2)
    stages: Annotated[int, In(1, 4)] = 4  # residual stages kept: 4 = res2..res5; 3 = through res4 (the Task Ensemble)


class PreActBottleneck(nn.Module):
    """tf-slim's resnet_v2 bottleneck: pre = ReLU(BN(x)); out = shortcut + conv3(ReLU(BN(conv2(ReLU(BN(conv1(pre))))))),
    the shortcut x itself, or a 1x1 projection of `pre` where channels or stride change; stride on the 3x3."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out = planes * Bottleneck.expansion
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.conv1 = conv1x1(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=True)  # tf-slim: the unit's last conv has a bias, no BN
        self.relu = nn.ReLU(inplace=False)
        self.shortcut = nn.Conv2d(inplanes, out, 1, stride, bias=True) if stride != 1 or inplanes != out else None

    def forward(self, x: Tensor) -> Tensor:
        pre = self.relu(self.bn1(x))
        shortcut = x if self.shortcut is None else self.shortcut(pre)
        y = self.relu(self.bn2(self.conv1(pre)))
        y = self.relu(self.bn3(self.conv2(y)))
        return shortcut + self.conv3(y)


@register_backbone("resnet", config=ResNetConfig)
class ResNet(Backbone):
    """torchvision's ResNet-50/101 up to the global pool; taps conv1, res2..res5, pool."""

    name = "resnet"
    head_tap = "pool"
    fuse_tap = "pool"

    def __init__(self, cfg: ResNetConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.in_channels, self.image_size = cfg.in_channels, cfg.image_size
        v2 = cfg.version == 2
        stem = max(1, round(64 * cfg.width))
        self.conv1 = nn.Conv2d(cfg.in_channels, stem, 7, 2, 3, bias=v2)
        self.bn1 = nn.BatchNorm2d(stem) if not v2 else None  # v2: the stem is a plain convolution
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.inplanes = stem
        layers = []
        for i, (planes, blocks) in enumerate(list(zip(PLANES, DEPTHS[cfg.depth]))[: cfg.stages]):
            width = max(1, round(planes * cfg.width))
            stride = 1 if i == 0 else 2
            layers.append(self._make_v2_layer(width, blocks, stride) if v2 else self._make_layer(width, blocks, stride))
        for i, layer in enumerate(layers, 1):
            setattr(self, f"layer{i}", layer)
        channels = [stem] + [max(1, round(p * cfg.width)) * Bottleneck.expansion for p in PLANES[: cfg.stages]]
        self.postnorm = nn.BatchNorm2d(channels[-1]) if v2 and cfg.stages == 4 else None  # tf-slim: after block 4
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        sizes = [conv_out(cfg.image_size, 7, 2, 3)]
        for _ in range(cfg.stages):
            sizes.append(conv_out(sizes[-1], 3, 2, 1))  # the max pool, then the stride-2 convs of res3..
        if sizes[-1] < 1:
            raise too_small("resnet", cfg.image_size, f"{cfg.stages + 1} stride-2 layers")
        names = ("conv1", "res2", "res3", "res4", "res5")[: cfg.stages + 1]
        strides = (2, 4, 8, 16, 32)[: cfg.stages + 1]
        self.feature_info = {}
        for n, c, st, z, layer in zip(names, channels, strides, sizes, [None, *layers]):
            if layer is not None:
                for k in range(1, len(layer) + 1):
                    self.feature_info[f"{n}_{k}"] = TapInfo(c, st, z)
            self.feature_info[n] = TapInfo(c, st, z)
        self.feature_info["pool"] = TapInfo(channels[-1], 0, 1)
        self.default_taps = names
        self.spatial_tap = self.dense_tap = self.fcn_tap = names[-1]
        self.region_tap = "res4" if cfg.stages == 4 else None  # the C4 head needs res5 above res4
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

    def _make_v2_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [PreActBottleneck(self.inplanes, planes, stride)]
        self.inplanes = planes * Bottleneck.expansion
        layers += [PreActBottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def residual_stages(self) -> list[nn.Sequential]:
        return [getattr(self, f"layer{i}") for i in range(1, self.cfg.stages + 1)]

    def stages(self) -> list[tuple[str, nn.Module]]:
        """The registered modules chained per call (not stored: a BatchNorm swapped in for bn1, SyncBatchNorm under
        DDP, must be the one that runs); the chains register nothing, so state_dict keys stay torchvision's. Each
        residual unit is a stage of its own ('res4_k'), the stage's tap an identity after its last unit."""
        stem = [self.conv1] if self.bn1 is None else [self.conv1, self.bn1, self.relu]
        out: list[tuple[str, nn.Module]] = [("conv1", nn.Sequential(*stem))]
        for i, (name, layer) in enumerate(zip(("res2", "res3", "res4", "res5"), self.residual_stages())):
            units = list(layer)
            if i == 0:
                units[0] = nn.Sequential(self.maxpool, units[0])
            out += [(f"{name}_{k}", unit) for k, unit in enumerate(units, 1)]
            out.append((name, nn.Identity()))
        tail = [self.postnorm, self.relu] if self.postnorm is not None else []
        out.append(("pool", nn.Sequential(*tail, self.avgpool, self.flatten)))
        return out

    def region_head(self) -> RegionHead:
        self.role("region_tap", "a Fast R-CNN head (resnet: res4 RoIs through res5; backbone.stages = 4)")
        tail = [self.postnorm, self.relu] if self.postnorm is not None else []
        res5_and_pool = nn.Sequential(self.layer4, *tail, self.avgpool, self.flatten)
        return RegionHead(self.region_tap, self.feature_info["res4"].stride, ROI_GRID, res5_and_pool,
                          self.feature_info["pool"].channels, align=True)

    def fcn_head(self, dropout: float | None = None) -> FcnHead:
        return FcnHead(self.fcn_tap, nn.Identity(), self.feature_info[self.fcn_tap].channels)

    def tap_geometry(self, tap: str) -> list[Geometry]:
        """The main path only: a unit's 1x1 / 3x3 / 1x1 convolutions, not its shortcut."""
        out = layer_geometry(self.conv1) + layer_geometry(self.maxpool)
        if tap == "conv1":
            return out[:1]
        for name, layer in zip(("res2", "res3", "res4", "res5"), self.residual_stages()):
            for k, unit in enumerate(layer, 1):
                out += layer_geometry(unit.conv1) + layer_geometry(unit.conv2) + layer_geometry(unit.conv3)
                if tap == f"{name}_{k}":
                    return out
            if name == tap:
                return out
        raise UserError(f"resnet: tap {tap!r} is a vector, it has no spatial geometry")

    @classmethod
    def label(cls, cfg: ResNetConfig) -> str:
        version = "-v2" if cfg.version == 2 else ""
        stages = f"-to-res{cfg.stages + 1}" if cfg.stages != 4 else ""
        return f"resnet{cfg.depth}{version}{stages}" + (f"-w{cfg.width:g}" if cfg.width != 1.0 else "")

    @classmethod
    def tiny(cls) -> dict[str, object]:
        return {"depth": 50, "width": 0.0625, "image_size": 64}


def layout_differences(cfg: ResNetConfig) -> list[str]:
    """How `cfg` differs from the ResNet torchvision's resnet50()/resnet101() and detectron2's R-50/R-101 build
    ('backbone.version = 2 (torchvision's: 1)'), [] where they hold it."""
    return [f"backbone.{k} = {getattr(cfg, k)!r} (torchvision's: {v!r})" for k, v in TORCHVISION_LAYOUT.items()
            if getattr(cfg, k) != v]


def detectron2_name(key: str) -> str:
    """A torchvision ResNet key -> detectron2's (its ResNet backbone's module names, as detectron2's
    tools/convert-torchvision-to-d2.py and MoCo's detection/convert-pretrain-to-detectron2.py rename them):
    conv1 / bn1 -> stem.conv1 / stem.conv1.norm, layer<i> -> res<i+1>, bn<j> -> conv<j>.norm, downsample.0 / .1 ->
    shortcut / shortcut.norm."""
    if not key.startswith("layer"):
        key = "stem." + key
    for i in range(1, 5):
        key = key.replace(f"layer{i}.", f"res{i + 1}.")
    for j in range(1, 4):
        key = key.replace(f"bn{j}.", f"conv{j}.norm.")
    return key.replace("downsample.0.", "shortcut.").replace("downsample.1.", "shortcut.norm.")


def detectron2_weights(weights: dict[str, Tensor], author: str) -> dict[str, object]:
    """torchvision's ResNet state dict (no fc) -> what detectron2's checkpointer reads from a .pkl: its names,
    numpy arrays, BatchNorm's num_batches_tracked left out (detectron2's frozen / synchronised norms have none)."""
    model = {detectron2_name(k): v.detach().cpu().numpy() for k, v in weights.items()
             if not k.endswith("num_batches_tracked")}
    return {"model": model, "__author__": author, "matching_heuristics": True}
