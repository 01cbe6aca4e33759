"""RotNet's CIFAR evaluation: a non-linear classifier on each NIN block's frozen feature map.

Gidaris et al. 2018 (Sec. 3.1): 3 fully connected layers, the two hidden ones with 200 units,
batch-norm and ReLU, trained on each block's output of the frozen self-supervised network.
Reports top-1 (%) per block as 'rotnet-blocks/block<i>' (the ConvB<i> columns).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from sslbench.backbones.base import Backbone
from sslbench.checkpoint import Trunk
from sslbench.config import In, Pixels, Recipe, Units
from sslbench.protocols._probing import PoolSpec, mlp_head, train_probes
from sslbench.protocols.base import EvalContext, Protocol
from sslbench.registry import register_protocol


@dataclass(frozen=True)
class RotNetBlocksConfig:
    blocks: tuple[Annotated[int, In(1, 5)], ...] = ()  # blocks to probe (empty = every block of the trunk)
    hidden: Units = 200  # hidden units of the 3-layer classifier (paper: 200)
    pool: dict[str, PoolSpec] = field(default_factory=dict)  # per-block pooling ('none' = full map, the paper)
    num_classes: Annotated[int, In(2, 100_000)] = 10  # CIFAR-10
    cache_features: bool = True  # mini: features once; paper: false (random crops + flips every epoch)
    crop_pad: Pixels = 4  # CIFAR random-crop padding when streaming


@register_protocol("rotnet-blocks", config=RotNetBlocksConfig)
class RotNetBlocks(Protocol):
    """RotNet CIFAR protocol: a 3-layer non-linear classifier on every frozen NIN block."""

    name = "rotnet-blocks"
    metric_keys = r"block\d+"

    def taps(self, backbone: Backbone) -> tuple[str, ...]:
        return tuple(f"block{b}" for b in self.cfg.blocks) or tuple(backbone.feature_info)

    def run(self, trunk: Trunk, recipe: Recipe, ctx: EvalContext) -> dict[str, float]:
        taps = self.taps(trunk.backbone)
        pools = {t: self.cfg.pool.get(t, PoolSpec("none", 0)) for t in taps}
        report = train_probes(trunk, recipe, taps, pools, mlp_head(self.cfg.hidden), self.cfg.num_classes,
                              self.cfg.cache_features, self.cfg.crop_pad, ctx)
        return {self.key(t): v for t, v in report.top1.items()}
