"""The lasso of the Task Ensemble (Doersch & Zisserman, ICCV 2017, Sec. 3.3): a head reads, instead of a stage's
output (its last residual unit), a learned linear combination sum_k alpha_k x_k of the outputs of every unit of that
stage, with an L1 penalty on alpha that drives the weights of the units the head does not need to zero ("each head
receives a linear combination of unit outputs within block3, weighted by the matrix alpha, which is trained to be
sparse": github.com/google-deepmind/multiself README).

Pretraining (the multitask task) gives every sub-task's head a combination of its own; evaluation (`LassoEval`, a
protocol's `lasso` option: the table's "Eval Only" and "Pre-train & Eval" rows) gives the evaluation's head one,
trained with it. The weights start at the last unit alone (the network without the lasso); the paper's
initialisation and penalty weight could not be confirmed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import torch
from torch import Tensor, nn

from sslbench.backbones.base import Backbone
from sslbench.config import In
from sslbench.errors import UserError


@dataclass(frozen=True)
class LassoEval:
    """A protocol's eval-side lasso: its head reads the combination of `stage`'s units (the table's "eval lasso")."""

    enabled: bool = False
    stage: str = "res4"  # the stage whose units are combined (the paper: block 3, ResNet-101's res4)
    l1: Annotated[float, In(0, 1e3)] = 1e-3  # the L1 penalty's weight on the combination weights
    # the combination weights' learning rate, a fraction of optim.lr (pretraining's lasso needs 0.1: multitask's
    # lasso_lr_scale; the mini evaluations trained at 1.0 without diverging)
    lr_scale: Annotated[float, In(0, 1e3)] = 1.0


class LassoCombination(nn.Module):
    """sum_k alpha_k x_k over K same-shaped maps, alpha [K] learned; `penalty()` = sum |alpha| (the L1 term)."""

    def __init__(self, k: int) -> None:
        super().__init__()
        alpha = torch.zeros(k)
        alpha[-1] = 1.0  # the last unit alone: the network without the lasso
        self.alpha = nn.Parameter(alpha)

    def forward(self, maps: list[Tensor]) -> Tensor:
        out = maps[0] * self.alpha[0]
        for a, x in zip(self.alpha[1:], maps[1:]):
            out = out + a * x
        return out

    def penalty(self) -> Tensor:
        return self.alpha.abs().sum()


def unit_taps(backbone: Backbone, stage: str, who: str) -> list[str]:
    """The unit taps of `stage` ('res4_1', ...), in order; a stage that is not the trunk's last (the pooled vector
    after it would not be the combination's) or has no unit taps is refused in one line naming `who`."""
    if stage not in backbone.feature_info or backbone.spatial_tap != stage:
        raise UserError(f"{who}: the lasso stage {stage!r} must be the trunk's last stage ({backbone.spatial_tap}); "
                        "e.g. resnet with backbone.stages = 3 and the lasso on \"res4\"")
    units = [t for t in backbone.feature_info if t.startswith(f"{stage}_")]
    if not units:
        raise UserError(f"{who}: {backbone.name} has no unit taps in {stage} for the lasso (a resnet has them)")
    return units


class TrunkView(nn.Module):
    """A head's view of a trunk: the trunk's taps, with `stage` (and the pooled vector after it) replaced by the lasso
    combination of the stage's unit outputs where a lasso is given. Every other attribute (roles, feature_info,
    tap_geometry, ...) is the trunk's. `owns`: the trunk is a registered submodule (a protocol's fine-tuned trunk:
    its parameters train and move with the view); else it is held by reference (multitask: the shared trunk's
    parameters stay the composite's, once in the state dict)."""

    def __init__(self, trunk: Backbone, stage: str = "", lasso: LassoCombination | None = None,
                 owns: bool = False) -> None:
        super().__init__()
        if owns:
            self.owned = trunk
        object.__setattr__(self, "trunk", trunk)
        self.stage, self.lasso = stage, lasso
        self.units = [t for t in trunk.feature_info if t.startswith(f"{stage}_")] if lasso is not None else []
        self.frozen_after: str | None = None

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["trunk"], name)

    def freeze_after(self, tap: str) -> None:
        """Recorded, not applied: the trunk's later stages may serve other heads."""
        self.frozen_after = tap

    def forward(self, x: Tensor, taps: tuple[str, ...] | None = None) -> dict[str, Tensor]:
        trunk = self.__dict__["trunk"]
        taps = tuple(taps) if taps is not None else trunk.default_taps
        replaced = {self.stage, "pool"} & set(taps) if self.lasso is not None else set()
        if not replaced:
            return trunk(x, taps=taps)
        order = list(trunk.feature_info).index
        out = trunk(x, taps=tuple(sorted((set(taps) - replaced) | set(self.units), key=order)))
        combined = self.lasso([out[u] for u in self.units])
        if self.stage in replaced:
            out[self.stage] = combined
        if "pool" in replaced:
            out["pool"] = torch.flatten(nn.functional.adaptive_avg_pool2d(combined, 1), 1)
        return out


def lasso_view(trunk: Backbone, spec: LassoEval, who: str) -> TrunkView:
    """`trunk` behind a fresh eval-side lasso on `spec.stage` (the trunk registered: it fine-tunes with the head)."""
    return TrunkView(trunk, spec.stage, LassoCombination(len(unit_taps(trunk, spec.stage, who))), owns=True)


def with_penalty(out: dict[str, Tensor], penalty: Tensor, weight: float) -> dict[str, Tensor]:
    """A loss dict with `weight` x the lasso's `penalty` added to its "loss" and the penalty logged as "lasso_l1"."""
    return {**out, "loss": out["loss"] + weight * penalty, "lasso_l1": penalty.detach()}


def lasso_groups(params: list[nn.Parameter], alphas: list[nn.Parameter], lr_scale: float) -> list[dict[str, Any]]:
    """Optimizer groups: the combination weights `alphas` at `lr_scale` of the rate, the other `params` at the rate."""
    ids = {id(a) for a in alphas}
    rest = [p for p in params if id(p) not in ids]
    return ([{"params": alphas, "lr_scale": lr_scale}] if alphas else []) + ([{"params": rest}] if rest else [])
