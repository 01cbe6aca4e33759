"""conv1..conv5 linear probes on a frozen trunk (Zhang et al. 2016 split-brain / RotNet protocol).

Each tap's map is pooled to ~9k dims (the pooling is recipe data, per tap), then BatchNorm without
affine + Linear; all probes train together on one pass of the frozen trunk. Reports top-1 (%) per tap
as 'linear/<tap>' and the best tap's top-5 as 'linear/top5-best'.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from sslbench.backbones.base import Backbone
from sslbench.backbones.lasso import LassoEval
from sslbench.checkpoint import Trunk
from sslbench.config import In, Pixels, Recipe
from sslbench.protocols._probing import PoolSpec, check_lasso_probe, linear_head, train_probes
from sslbench.protocols.base import EvalContext, Protocol
from sslbench.registry import register_protocol


@dataclass(frozen=True)
class LinearProbeConfig:
    taps: tuple[str, ...] = ("conv1", "conv2", "conv3", "conv4", "conv5")  # trunk outputs to probe
    pool: dict[str, PoolSpec] = field(default_factory=dict)  # per-tap pooling (missing taps: 6x6 max)
    # classes of the probe data set (embedded / VOC: 20, ImageNet: 1000)
    num_classes: Annotated[int, In(2, 100_000)] = 20
    cache_features: bool = True  # compute pooled features once (no augmentation); paper scale: false
    crop_pad: Pixels = 0  # random-crop padding when streaming (paper: crops + flips each epoch)
    # eval-side lasso: the head of `lasso.stage` (a probed tap, pooled linearly) reads a learned combination of the
    # stage's unit outputs (the Task Ensemble's "eval lasso" rows; sslbench.backbones.lasso)
    lasso: LassoEval = LassoEval()


@register_protocol("linear", config=LinearProbeConfig)
class LinearProbe(Protocol):
    """Linear probes on conv1..conv5 of a frozen trunk, trained together in one pass."""

    name = "linear"
    metric_keys = r"[\w-]+"  # one key per tap, and top5-best

    def taps(self, backbone: Backbone) -> tuple[str, ...]:
        return self.cfg.taps

    def preflight(self, recipe: Recipe) -> None:
        lasso = self.lasso()
        if lasso is not None:  # before any run directory or data
            check_lasso_probe(self.cfg.taps, self.cfg.pool, lasso, recipe.name)

    def run(self, trunk: Trunk, recipe: Recipe, ctx: EvalContext) -> dict[str, float]:
        cfg = self.cfg
        report = train_probes(trunk, recipe, cfg.taps, cfg.pool, linear_head, cfg.num_classes, cfg.cache_features,
                              cfg.crop_pad, ctx, self.lasso())
        metrics = {self.key(t): v for t, v in report.top1.items()}
        best = max(report.top1, key=report.top1.__getitem__)
        metrics[self.key("top5-best")] = report.top5[best]
        return metrics
