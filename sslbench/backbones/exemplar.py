"""The Exemplar-CNN networks (Dosovitskiy et al., NIPS 2014, Sec. 4.1; the deck's three rows), as one backbone.

"64c5-128c5-256c5-512f": three convolutional layers of 64, 128, 256 filters of 5 x 5, each followed by ReLU and
2 x 2 max pooling, then a fully connected layer of 512 units with ReLU, on 32 x 32 patches. The fully connected
layer is a convolution whose filter covers the last pooled map at the training size, so that the network runs
on larger images (the SVM protocols apply it to whole 96 px STL-10 images) and gives a map there; at 32 px that
map is 1 x 1. Taps: conv1..convN (after pooling) and fc. `convs` / `fc` set the network: (64, 64) / 128,
(64, 128, 256) / 512, (92, 256, 512) / 1024 are the table's three; `width` scales them (mini scale).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from torch import nn

from sslbench.backbones.base import Backbone, TapInfo, init_weights, too_small
from sslbench.config import In, Side, Units, WidthMult
from sslbench.errors import UserError
from sslbench.registry import register_backbone

TABLE_NETWORKS = {"64c5-64c5-128f": ((64, 64), 128), "64c5-128c5-256c5-512f": ((64, 128, 256), 512),
                  "92c5-256c5-512c5-1024f": ((92, 256, 512), 1024)}


@dataclass(frozen=True)
class ExemplarNetConfig:
    convs: tuple[Units, ...] = (64, 128, 256)  # filters of each 5x5 conv layer (each followed by 2x2 max pooling)
    fc: Units = 512  # units of the fully connected layer
    kernel: Annotated[int, In(1, 11)] = 5  # conv filter side ("c5")
    image_size: Side = 32  # the training patches' side: fixes the fully connected layer's filter
    in_channels: Annotated[int, In(1, 4)] = 3
    width: WidthMult = 1.0  # multiplier on every layer's width (mini scale)
    # the paper's text: 2x2 max pooling after every conv layer; the released Caffe nets
    # (data/nets_config/64c5-128c5-256c5-512f/template/train.prototxt) pool 3x3 / 2 (rounding up) after conv1, conv2
    pool_kernel: Annotated[int, In(2, 3)] = 2
    pooled: Annotated[int, In(0, 16)] = 0  # conv layers followed by pooling, from the first (0: all)


def _scaled(n: int, width: float) -> int:
    return max(8, int(round(n * width)))


@register_backbone("exemplar-net", config=ExemplarNetConfig)
class ExemplarNet(Backbone):
    """Exemplar-CNN's conv-pool stack with a fully connected layer run as a convolution; taps conv1..N, fc."""

    name = "exemplar-net"
    head_tap = "fc"
    fuse_tap = "fc"

    def __init__(self, cfg: ExemplarNetConfig) -> None:
        super().__init__()
        if not cfg.convs:
            raise UserError("exemplar-net: backbone.convs is empty; give at least one layer, e.g. [64, 128, 256]")
        self.cfg = cfg
        self.in_channels, self.image_size = cfg.in_channels, cfg.image_size
        size, cin, layers, stride = cfg.image_size, cfg.in_channels, [], 1
        self.feature_info: dict[str, TapInfo] = {}
        for i, c in enumerate(cfg.convs, 1):
            cout = _scaled(c, cfg.width)
            pool = not cfg.pooled or i <= cfg.pooled
            layers.append(nn.Sequential(nn.Conv2d(cin, cout, cfg.kernel, 1, cfg.kernel // 2), nn.ReLU(inplace=True),
                                        *([nn.MaxPool2d(cfg.pool_kernel, 2, ceil_mode=True)] if pool else [])))
            size = -(-(size - cfg.pool_kernel) // 2) + 1 if pool else size
            stride *= 2 if pool else 1
            if size < 1:
                raise too_small("exemplar-net", cfg.image_size, f"no map left after conv{i}'s pooling")
            self.feature_info[f"conv{i}"] = TapInfo(cout, stride, size)
            cin = cout
        self.convs = nn.ModuleList(layers)
        units = _scaled(cfg.fc, cfg.width)
        self.fc = nn.Sequential(nn.Conv2d(cin, units, size), nn.ReLU(inplace=True))
        self.feature_info["fc"] = TapInfo(units, stride, 1)
        self.default_taps = tuple(self.feature_info)
        self.spatial_tap = self.dense_tap = f"conv{len(cfg.convs)}"
        init_weights(self)

    def stages(self) -> list[tuple[str, nn.Module]]:
        return [(f"conv{i}", m) for i, m in enumerate(self.convs, 1)] + [("fc", self.fc)]

    def num_features(self) -> int:
        """The table's "#features": the units of every layer summed (the paper's 256 / 960 / 1884 for its three
        networks: 64 + 64 + 128, 64 + 128 + 256 + 512, 92 + 256 + 512 + 1024)."""
        return sum(info.channels for info in self.feature_info.values())

    @classmethod
    def label(cls, cfg: ExemplarNetConfig) -> str:
        layers = "-".join(f"{c}c{cfg.kernel}" for c in cfg.convs) + f"-{cfg.fc}f"
        return "exemplar-" + layers + (f"-w{cfg.width:g}" if cfg.width != 1.0 else "")

    @classmethod
    def tiny(cls) -> dict[str, object]:
        return {"convs": (8, 8), "fc": 16, "image_size": 16}
