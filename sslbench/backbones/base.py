"""The backbone contract: forward(x, taps) -> {tap: feature map}; feature_info names every tap; roles say what
heads may use.

No task or protocol names a layer of a particular network. A backbone declares its roles instead:
- `head_tap`: the vector a classifier sits on (AlexNet/VGG fc7, ResNet's pooled res5, NIN's last block);
- `fuse_tap`: the per-input vector a late-fusion pretext head concatenates (AlexNet/VGG fc6, ResNet pool);
- `spatial_tap`: the last spatial map, an encoder's output (AlexNet/VGG pool5, ResNet res5, NIN's last block);
- `dense_tap`: the last convolutional map before any pooling, what per-pixel heads read (AlexNet/VGG conv5,
  ResNet res5, NIN's last block);
- `fc_stages`: the fully connected stages above the last spatial map (AlexNet/VGG fc6, fc7; none for ResNet);
- `region_tap` / `region_head()`: what a Fast R-CNN head pools RoIs from and runs on them (AlexNet/VGG: conv5
  RoIs to the pool5 grid, then fc6, fc7; ResNet: res4 RoIs, then res5 and the global pool);
- `fcn_tap` / `fcn_head()`: the fully convolutional continuation for dense prediction (AlexNet/VGG: fc6/fc7 as
  convolutions on pool5; ResNet: res5 as it is);
- `freeze_after(tap)`: stages after a tap that a head does not use, frozen.
A role a backbone lacks is a one-line UserError naming the backbones that have it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from sslbench.errors import UserError
from sslbench.registry import BACKBONES

Geometry = tuple[int, int, int]  # (kernel, stride, padding) of one conv / pool layer


@dataclass(frozen=True)
class TapInfo:
    channels: int  # channels of the tap's output (features for fc taps)
    stride: int  # input pixels per output pixel (0 for fc taps, which have no spatial layout)
    size: int  # spatial side of the tap at the configured image size (1 for fc taps)


@dataclass(frozen=True)
class RegionHead:
    """A region head: RoIs pooled from `tap` (`stride` input pixels per cell) to `grid` x `grid`, then `head`
    -> one `dim` vector per RoI. `align`: RoIAlign (ResNet C4, Detectron) instead of RoI max pooling."""

    tap: str
    stride: int
    grid: int
    head: nn.Module
    dim: int
    align: bool = False


@dataclass(frozen=True)
class FcnHead:
    """The fully convolutional continuation of a trunk: `tap`'s map through `head` -> `dim` channels."""

    tap: str
    head: nn.Module
    dim: int


class Backbone(nn.Module):
    """A trunk whose intermediate outputs are addressable by name.

    Subclasses define `stages`: an ordered list of (tap name, module); forward runs them in order
    and stops after the last requested tap, so a probe on conv2 never pays for conv3..fc7.
    """

    feature_info: dict[str, TapInfo]
    default_taps: tuple[str, ...]  # the taps a linear probe reads by default
    head_tap: str
    fuse_tap: str | None = None
    spatial_tap: str | None = None
    dense_tap: str | None = None
    region_tap: str | None = None
    fcn_tap: str | None = None
    fc_stages: tuple[str, ...] = ()
    in_channels: int  # 3 for RGB, 1 for L-channel / grayscale trunks
    image_size: int  # the input side the trunk is built for (fc layers, feature_info sizes)
    name: ClassVar[str] = "backbone"  # the registered name (set by each subclass), for messages

    def stages(self) -> list[tuple[str, nn.Module]]:
        raise NotImplementedError

    def forward(self, x: Tensor, taps: Sequence[str] | None = None) -> dict[str, Tensor]:
        taps = tuple(taps) if taps is not None else self.default_taps
        unknown = [t for t in taps if t not in self.feature_info]
        if unknown:
            raise UserError(
                f"{type(self).__name__} has no tap {unknown[0]!r}; its taps are {', '.join(self.feature_info)}"
            )
        wanted, out = set(taps), {}
        for name, module in self.stages():
            x = module(x)
            if name in wanted:
                out[name] = x
                if len(out) == len(wanted):
                    break
        return out

    # ---- roles

    def role(self, role: str, user: str) -> str:
        """The tap of `role` ("fuse_tap", "spatial_tap", "dense_tap", "region_tap", "fcn_tap"), or a UserError
        saying that `user` needs it."""
        tap = getattr(self, role)
        if tap is None:
            have = [n for n in BACKBONES.names() if getattr(BACKBONES.get(n), role, None) is not None]
            raise UserError(f"{user} needs a backbone with a {role.replace('_', ' ')}; {self.name} has none; "
                            f"use one of {', '.join(have)}")
        return tap

    def region_head(self) -> RegionHead:
        """The region head on `region_tap` (backbones that have one override this)."""
        raise UserError(f"{self.name} has no region head for detection; use alexnet, vgg16 or resnet")

    def fcn_head(self, dropout: float | None = None) -> FcnHead:
        """The fully convolutional head on `fcn_tap` (backbones that have one override this)."""
        raise UserError(f"{self.name} has no fully convolutional head for segmentation; use alexnet, vgg16 or resnet")

    def freeze_after(self, tap: str) -> None:
        """Stages after `tap` are not part of the network that trains (a head replaces them): frozen, so that no
        optimizer moves them and DistributedDataParallel does not wait for gradients they never get."""
        names = [name for name, _ in self.stages()]
        for _, module in self.stages()[names.index(tap) + 1 :]:
            module.requires_grad_(False)

    def tap_geometry(self, tap: str) -> list[Geometry]:
        """(kernel, stride, padding) of every conv / pool on the path from the input to `tap`, in order."""
        out: list[Geometry] = []
        for name, module in self.stages():
            out += layer_geometry(module)
            if name == tap:
                return out
        raise UserError(f"{self.name} has no tap {tap!r}")

    # ---- labels and presets

    @classmethod
    def label(cls, cfg: Any) -> str:
        """Short label used in tables (e.g. 'alexnet-bn-w0.25')."""
        return cls.name

    @classmethod
    def tiny(cls) -> dict[str, Any]:
        """The smallest config that builds (tests exercise every registered backbone with it)."""
        raise NotImplementedError


class FcTrunk(Backbone):
    """A conv trunk with Caffe-style fully connected fc6, fc7 on its pool5 grid (AlexNet, VGG-16): the roles
    the classic papers' heads use."""

    head_tap = "fc7"
    fuse_tap = "fc6"
    spatial_tap = "pool5"
    dense_tap = "conv5"
    region_tap = "conv5"
    fcn_tap = "pool5"
    fc_stages = ("fc6", "fc7")
    fc6: nn.Sequential
    fc7: nn.Sequential
    pool5_size: int

    def fc_stage(self, cin: int, cout: int, dropout: float, bn: bool, bn_affine: bool = True) -> nn.Sequential:
        """Flatten, Linear, [BatchNorm1d], ReLU, Dropout: one fully connected stage, in Caffe's order (fc6 ->
        relu6 -> drop6), so the dropout acts on the stage's output, never on pool5 or RoI features."""
        layers: list[nn.Module] = [nn.Flatten(1), nn.Linear(cin, cout, bias=not bn)]
        layers += [nn.BatchNorm1d(cout, affine=bn_affine)] if bn else []
        return nn.Sequential(*layers, nn.ReLU(inplace=True), nn.Dropout(dropout))

    def set_fc_dropout(self, rate: float) -> None:
        """The rate of drop6 / drop7 while a protocol fine-tunes fc6 / fc7 (Caffe's protocol nets keep 0.5 whatever
        the pretraining used: RotNet's and the Context net's trunks have none)."""
        for stage in self.fc_stages:
            for m in getattr(self, stage).modules():
                if isinstance(m, nn.Dropout):
                    m.p = rate

    def region_head(self) -> RegionHead:
        conv5 = self.feature_info[self.region_tap]
        return RegionHead(self.region_tap, conv5.stride, self.pool5_size, nn.Sequential(self.fc6, self.fc7),
                          self.feature_info["fc7"].channels)

    def fcn_head(self, dropout: float | None = None) -> FcnHead:
        fc6 = convolutionalise(self.fc6, self.pool5_size, dropout)
        head = nn.Sequential(fc6, convolutionalise(self.fc7, 1, dropout))
        return FcnHead(self.fcn_tap, head, self.feature_info["fc7"].channels)

    def dense_fc_head(self) -> FcnHead:
        """fc6 / fc7 applied densely on conv5: pool5 at stride 1 and fc6 dilated by pool5's stride, the a-trous form
        of the same weights (the Colorization AlexNet, richzhang/colorization train_alexnet/train_val.prototxt:
        pool5 3/1 pad 1, fc6 6x6 dilation 2). Output at conv5's stride. Shares fc6 / fc7's parameters with the
        trunk (a view, not a copy): what a per-pixel pretext head trains here is what transfers."""
        pool5 = dict(self.stages())["pool5"]
        pool = next(m for m in pool5.modules() if isinstance(m, nn.MaxPool2d))
        kernel = pool.kernel_size if isinstance(pool.kernel_size, int) else pool.kernel_size[0]
        stride = pool.stride if isinstance(pool.stride, int) else pool.stride[0]
        lo, hi = (kernel - 1) // 2, kernel - 1 - (kernel - 1) // 2  # VGG's 2x2: one more row / column below / right
        # zero padding is -inf padding here: conv5 ends in a ReLU, so the max never prefers a padded zero
        head = nn.Sequential(nn.ZeroPad2d((lo, hi, lo, hi)), nn.MaxPool2d(kernel, 1),
                             SharedConvStage(self.fc6, self.pool5_size, stride), SharedConvStage(self.fc7, 1, 1))
        return FcnHead(self.dense_tap or "conv5", head, self.feature_info["fc7"].channels)

    @classmethod
    def label(cls, cfg: Any) -> str:
        return cls.name + ("-bn" if cfg.bn else "") + (f"-w{cfg.width:g}" if cfg.width != 1.0 else "")


class SharedConvStage(nn.Module):
    """A fully connected stage (Flatten, Linear, [BatchNorm1d], ReLU, Dropout) run as a convolution over a map,
    with the stage's own parameters and BatchNorm statistics (not a copy, unlike `convolutionalise`): the Linear's
    weight viewed as a `kernel` x `kernel` filter, dilated by `dilation` and padded to keep the map's size. The
    stage is held by reference, not registered: its parameters stay the trunk's (one copy in the state dict)."""

    def __init__(self, stage: nn.Sequential, kernel: int, dilation: int) -> None:
        super().__init__()
        self.kernel, self.dilation = kernel, dilation
        self.padding = dilation * (kernel - 1) // 2
        object.__setattr__(self, "stage", stage)

    def forward(self, x: Tensor) -> Tensor:
        for m in self.stage:
            if isinstance(m, nn.Flatten):
                continue
            if isinstance(m, nn.Linear):
                w = m.weight.view(m.out_features, m.in_features // self.kernel**2, self.kernel, self.kernel)
                x = nn.functional.conv2d(x, w, m.bias, padding=self.padding, dilation=self.dilation)
            elif isinstance(m, nn.BatchNorm1d):
                x = m(x.flatten(2)).view_as(x)  # per-channel statistics over (N, H, W): BatchNorm2d's
            else:
                x = m(x)
        return x


_OLD_FC = re.compile(r"^(.*\bfc[67])\.(\d+)\.(.+)$")


def upgrade_fc_layout(weights: dict[str, Any]) -> dict[str, Any]:
    """Weights saved before the fully connected stages took Caffe's order (Flatten, Dropout, Linear, [BN], ReLU
    then; Flatten, Linear, [BN], ReLU, Dropout now) under the module indices they have now: the Linear moved from
    index 2 to 1 and the BatchNorm from 3 to 2. Recognised by fc6/fc7's index 2 holding a matrix (a Linear's
    weight; a BatchNorm's is a vector); anything else is returned as it is."""
    old = any(m and m.group(2) == "2" and m.group(3) == "weight" and getattr(v, "dim", lambda: 0)() == 2
              for k, v in weights.items() for m in [_OLD_FC.match(k)])
    if not old:
        return weights
    out: dict[str, Any] = {}
    for k, v in weights.items():
        m = _OLD_FC.match(k)
        out[f"{m.group(1)}.{int(m.group(2)) - 1}.{m.group(3)}" if m and m.group(2) in ("2", "3") else k] = v
    return out


def convolutionalise(fc: nn.Sequential, kernel: int, dropout: float | None = None) -> nn.Sequential:
    """A fully connected stage (Flatten, Linear, [BatchNorm1d], ReLU, Dropout) as the equivalent conv stage on a
    `kernel` x `kernel` map: the Linear becomes a conv with its weights reshaped (Flatten's order is C, H, W), a
    BatchNorm1d a BatchNorm2d with the same affine and statistics (in eval mode both apply the same per-channel
    affine); `dropout` replaces the stage's dropout rate (None keeps it). A copy: the fc stage is unchanged."""
    layers: list[nn.Module] = []
    for m in fc:
        if isinstance(m, nn.Flatten):
            continue
        if isinstance(m, nn.Linear):
            conv = nn.Conv2d(m.in_features // kernel**2, m.out_features, kernel, bias=m.bias is not None)
            with torch.no_grad():
                conv.weight.copy_(m.weight.view_as(conv.weight))
                if m.bias is not None:
                    conv.bias.copy_(m.bias)
            layers.append(conv)
        elif isinstance(m, nn.BatchNorm1d):
            bn = nn.BatchNorm2d(m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats)
            bn.load_state_dict(m.state_dict())
            layers.append(bn)
        elif isinstance(m, nn.Dropout):
            layers.append(nn.Dropout(m.p if dropout is None else dropout))
        elif isinstance(m, nn.ReLU):
            layers.append(nn.ReLU(inplace=True))
        else:
            raise UserError(f"cannot convolutionalise {type(m).__name__} in a fully connected stage")
    return nn.Sequential(*layers)


def layer_geometry(module: nn.Module) -> list[Geometry]:
    """(kernel, stride, padding) of every conv / pool inside a sequential `module`, in order (square, undilated)."""
    out = []
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
            k, s, p = (v if isinstance(v, int) else v[0] for v in (m.kernel_size, m.stride, m.padding))
            if getattr(m, "dilation", 1) not in (1, (1, 1)):
                raise UserError(f"dilated layer {m} is not supported by the crop geometry")
            out.append((k, s, p))
    return out


def build_backbone(name: str, cfg: Any) -> Backbone:
    return BACKBONES.get(name)(cfg)


def backbone_label(name: str, cfg: Any) -> str:
    """Short human label used in tables: e.g. 'alexnet-bn', 'nin-4blocks', 'alexnet-bn-gray' (1-channel input:
    a gray trunk and an RGB one of the same shape are different rows)."""
    label = BACKBONES.get(name).label(cfg)
    return label + ("-gray" if getattr(cfg, "in_channels", 3) == 1 else "")


def conv_out(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


def too_small(name: str, image_size: int, detail: str) -> UserError:
    """The one error of every backbone for an input too small for its layers."""
    return UserError(f"{name}: image_size {image_size} is too small ({detail}); raise backbone.image_size")


def init_weights(module: nn.Module) -> None:
    """Kaiming-normal convs / linears, zero biases, unit BN: the usual init of the PyTorch ports."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
