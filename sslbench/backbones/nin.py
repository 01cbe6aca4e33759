"""RotNet's CIFAR Network-in-Network (Gidaris et al. 2018, released NetworkInNetwork.py).

Each block is three conv-BN-ReLU layers: block1 = 5x5 192, 1x1 160, 1x1 96, then 3x3/2 max pool;
block2 = 5x5 192, 1x1 192, 1x1 192, then 3x3/2 average pool; block3.. = 3x3 192, 1x1 192, 1x1 192.
`width` scales the 192/160/96 channel counts (mini scale).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from torch import nn

from sslbench.backbones.base import Backbone, TapInfo, init_weights, too_small
from sslbench.config import In, Side, WidthMult
from sslbench.errors import UserError
from sslbench.registry import register_backbone


@dataclass(frozen=True)
class NINConfig:
    blocks: Annotated[int, In(3, 5)] = 4  # 3, 4 or 5 conv blocks: the rows of the seed's ConvB table
    width: WidthMult = 1.0  # multiplier on 192/160/96 channels (mini: ~0.33)
    image_size: Side = 32  # CIFAR-10 side
    in_channels: Annotated[int, In(1, 4)] = 3  # RGB


def _layer(cin: int, cout: int, k: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, 1, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


@register_backbone("nin", config=NINConfig)
class NIN(Backbone):
    """RotNet's CIFAR Network-in-Network with 3-5 blocks; taps block1..blockN."""

    name = "nin"

    def __init__(self, cfg: NINConfig) -> None:
        super().__init__()
        if not 3 <= cfg.blocks <= 5:
            raise UserError(f"nin: backbone.blocks must be 3, 4 or 5, found {cfg.blocks}")
        if cfg.image_size < 4:
            raise too_small("nin", cfg.image_size, "two stride-2 pools")
        self.cfg = cfg
        self.in_channels, self.image_size = cfg.in_channels, cfg.image_size
        c192, c160, c96 = (max(8, int(round(c * cfg.width))) for c in (192, 160, 96))
        self.block1 = nn.Sequential(
            _layer(cfg.in_channels, c192, 5), _layer(c192, c160, 1), _layer(c160, c96, 1), nn.MaxPool2d(3, 2, 1)
        )
        self.block2 = nn.Sequential(
            _layer(c96, c192, 5), _layer(c192, c192, 1), _layer(c192, c192, 1), nn.AvgPool2d(3, 2, 1)
        )
        self.extra = nn.ModuleList(
            nn.Sequential(_layer(c192, c192, 3), _layer(c192, c192, 1), _layer(c192, c192, 1))
            for _ in range(cfg.blocks - 2)
        )
        s1 = (cfg.image_size - 1) // 2 + 1
        s2 = (s1 - 1) // 2 + 1
        self.feature_info = {"block1": TapInfo(c96, 2, s1), "block2": TapInfo(c192, 4, s2)}
        for i in range(3, cfg.blocks + 1):
            self.feature_info[f"block{i}"] = TapInfo(c192, 4, s2)
        self.default_taps = tuple(self.feature_info)
        init_weights(self)

    @property
    def head_tap(self) -> str:  # type: ignore[override]
        return f"block{self.cfg.blocks}"

    @property
    def spatial_tap(self) -> str:  # type: ignore[override]
        return self.head_tap

    @property
    def dense_tap(self) -> str:  # type: ignore[override]
        return self.head_tap

    def stages(self) -> list[tuple[str, nn.Module]]:
        return [("block1", self.block1), ("block2", self.block2)] + [
            (f"block{i + 3}", m) for i, m in enumerate(self.extra)
        ]

    @classmethod
    def label(cls, cfg: NINConfig) -> str:
        return f"nin-{cfg.blocks}blocks" + (f"-w{cfg.width:g}" if cfg.width != 1.0 else "")

    @classmethod
    def tiny(cls) -> dict[str, object]:
        return {"blocks": 3, "width": 0.1, "image_size": 32}
