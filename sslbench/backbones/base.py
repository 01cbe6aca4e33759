"""The backbone contract: forward(x, taps) -> {tap: feature map}; feature_info names every tap."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from torch import Tensor, nn

from sslbench.errors import UserError
from sslbench.registry import BACKBONES


@dataclass(frozen=True)
class TapInfo:
    channels: int  # channels of the tap's output (features for fc taps)
    stride: int  # input pixels per output pixel (0 for fc taps, which have no spatial layout)
    size: int  # spatial side of the tap at the configured image size (1 for fc taps)


class Backbone(nn.Module):
    """A trunk whose intermediate outputs are addressable by name.

    Subclasses define `stages`: an ordered list of (tap name, module); forward runs them in order
    and stops after the last requested tap, so a probe on conv2 never pays for conv3..fc7.
    """

    feature_info: dict[str, TapInfo]
    default_taps: tuple[str, ...]  # the taps a linear probe reads by default
    head_tap: str  # the tap a pretext head sits on (alexnet: fc7, nin: its last block)
    in_channels: int  # 3 for RGB, 1 for L-channel / grayscale trunks

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


def build_backbone(name: str, cfg: Any) -> Backbone:
    return BACKBONES.get(name)(cfg)


def backbone_label(name: str, cfg: Any) -> str:
    """Short human label used in tables: e.g. 'alexnet-bn', 'nin-4blocks', 'alexnet-bn-gray' (1-channel input:
    a gray trunk and an RGB one of the same shape are different rows)."""
    cls = BACKBONES.get(name)
    label = cls.label(cfg) if hasattr(cls, "label") else name
    return label + ("-gray" if getattr(cfg, "in_channels", 3) == 1 else "")


def conv_out(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


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
