"""VOC07 linear SVMs on frozen features (Goyal, Mahajan, Gupta, Misra, ICCV 2019 benchmark).

Per tap: the frozen trunk's map, pooled as the linear probes pool it (a PoolSpec per tap, recipe data), and
L2-normalised, for VOC2007 trainval and test; one-vs-rest linear SVMs (squared hinge, L2 penalty, positive
class weight 2), C per class chosen by 3-fold cross-validation on trainval scored by AP over the cost grid;
AP per class on test. Images where a class appears only as difficult objects are left out for that class,
in training and in scoring. Every class x cost x fold problem of a tap is solved in one batch (sslbench.svm).
Reports 'voc07-svm/<tap>/mAP' and 'voc07-svm/<tap>/AP/<class>' (percent), and 'voc07-svm/best/mAP', the best tap's
(chosen on test, as Goyal et al.'s tables report each method's best layer); the chosen C and the cross-validation
APs go to svm-<tap>.json in the run directory.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import numpy as np
import torch
from torch import Tensor

from sslbench.backbones.base import Backbone
from sslbench.checkpoint import Trunk
from sslbench.config import In, Positive, Recipe
from sslbench.data.build import build_dataset
from sslbench.data.classes import VOC_CLASSES
from sslbench.errors import UserError
from sslbench.metrics import multilabel_map
from sslbench.progress import console
from sslbench.protocols._probing import FrozenFeatures, PoolSpec, extract, sanity_check
from sslbench.protocols.base import EvalContext, Protocol
from sslbench.registry import register_protocol
from sslbench.runtime import write_json
from sslbench.svm import fit_one_vs_rest

# The released benchmark's grid: --costs_list 1e-7..100 (GETTING_STARTED.md) plus the 0.5^4..0.5^19 that
# svm_helper.parse_cost_list appends, in that order (the order decides ties).
GOYAL_COSTS = (1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 0.01, 0.1, 1.0, 10.0, 100.0, *(0.5**k for k in range(4, 20)))


@dataclass(frozen=True)
class VocSvmConfig:
    taps: tuple[str, ...] = ("conv1", "conv2", "conv3", "conv4", "conv5")  # trunk outputs, one set of SVMs each
    pool: dict[str, PoolSpec] = field(default_factory=dict)  # per-tap pooling before L2 norm (missing: 6x6 max)
    # C values searched by cross-validation; ties go to the first listed
    costs: tuple[Annotated[float, In(0, 1e9, open_lo=True)], ...] = GOYAL_COSTS
    # cross-validation folds on trainval (Goyal et al.: 3, scikit-learn's stratified split)
    folds: Annotated[int, In(2, 100)] = 3
    positive_weight: Positive = 2.0  # cost weight of positives (the released code's class_weight {1: 2, -1: 1})
    train_difficult: Literal["ignore", "negative"] = "ignore"  # difficult-only images in training: dropped
    # per class (VISSL, PROTOCOLS.md) or kept as negatives (fair_self_supervision_benchmark train_svm_kfold.py)
    voc07_ap: bool = False  # test AP: false = area under the PR envelope (the released test_svm.py); true = 11-point
    # solver stop: gradient norm / weight norm (1e-3 matched LinearSVC's CV APs to ~1e-3)
    tol: Annotated[float, In(0, 1, open_lo=True)] = 1e-3
    intercept_scaling: Positive = 1.0  # liblinear's constant feature for the (penalised) intercept


@register_protocol("voc07-svm", config=VocSvmConfig)
class VocSvm(Protocol):
    """One-vs-rest linear SVMs per tap on VOC2007 (Goyal et al. 2019), C by 3-fold CV; test AP and mAP."""

    name = "voc07-svm"
    trains_by_sgd = False
    metric_keys = r"[\w-]+/(mAP|AP/\w+)"

    def taps(self, backbone: Backbone) -> tuple[str, ...]:
        return self.cfg.taps

    def run(self, trunk: Trunk, recipe: Recipe, ctx: EvalContext) -> dict[str, float]:
        cfg, d = self.cfg, recipe.data
        if not cfg.taps:
            raise UserError("voc07-svm: no taps to evaluate; set protocol.taps (e.g. [\"conv1\", \"conv5\"])")
        features = FrozenFeatures(trunk, cfg.taps, cfg.pool, ctx.device)
        before = copy.deepcopy(trunk.backbone.state_dict())
        train = _split(features, build_dataset(d, d.train_split, d.num_images), recipe, ctx, d.train_split)
        test = _split(features, build_dataset(d, d.test_split, d.num_test), recipe, ctx, d.test_split)
        sanity_check(trunk.backbone, before)
        positive = train.labels > 0
        ignore = (train.difficult > 0) & ~positive if cfg.train_difficult == "ignore" else torch.zeros_like(positive)
        classes = trainable_classes(positive, ignore, d.train_split)
        metrics: dict[str, float] = {}
        for step, tap in enumerate(cfg.taps):
            metrics.update(self._tap(tap, train, test, positive, ignore, classes, ctx, step))
        best = best_tap(metrics, cfg.taps)
        metrics[self.key("best", "mAP")] = metrics[self.key(best, "mAP")]
        return metrics

    def _tap(self, tap: str, train: Split, test: Split, positive: Tensor, ignore: Tensor, classes: Tensor,
             ctx: EvalContext, step: int) -> dict[str, float]:
        cfg = self.cfg
        fit = fit_one_vs_rest(
            l2_normalise(train.features[tap]).to(ctx.device), positive[:, classes], ignore[:, classes], cfg.costs,
            cfg.folds, cfg.positive_weight, cfg.intercept_scaling, cfg.tol,
        )
        scores = fit.decision(l2_normalise(test.features[tap]).to(ctx.device)).cpu().numpy()
        mean_ap, per_class = multilabel_map(scores, test.labels[:, classes].numpy(),
                                            test.difficult[:, classes].numpy() > 0, use_07_metric=cfg.voc07_ap)
        if np.isnan(mean_ap):
            raise UserError("voc07-svm: the test split has no positive image of any trained class; raise data.num_test")
        names = [VOC_CLASSES[c] for c in classes.tolist()]
        if ctx.ddp.is_main:
            write_json(ctx.run_dir / f"svm-{tap}.json", {  # NaN (nothing to measure) as null: strict JSON
                "classes": names, "costs": list(cfg.costs), "chosen_cost": fit.cost.tolist(),
                "cv_ap": [[_number(a) for a in row] for row in fit.cv_ap.tolist()],
                "test_ap": [_number(a) for a in per_class]})
        ctx.log.write(step, {f"{tap}/mAP": 100.0 * mean_ap}, prefix="test")
        out = {self.key(tap, "mAP"): 100.0 * mean_ap}
        # A class with no positive test image has no AP (NaN): no entry rather than a made-up 0.
        out.update({self.key(tap, "AP", n): 100.0 * float(a) for n, a in zip(names, per_class) if np.isfinite(a)})
        return out


@dataclass
class Split:
    features: dict[str, Tensor]  # tap -> pooled features [N, D] (CPU, float32)
    labels: Tensor  # [N, 20] 1 = a non-difficult object of the class
    difficult: Tensor  # [N, 20] 1 = the class appears only as difficult objects


def _split(features: FrozenFeatures, ds: Any, recipe: Recipe, ctx: EvalContext, what: str) -> Split:
    """Pooled features of every readable image of ds, with its image-level labels."""
    x, target = extract(features, ds, recipe, ctx, what, "labels,difficult")
    if not len(target["labels"]):
        raise UserError(f"voc07-svm: no readable image in the {what} split; check the data set (sslbench data check)")
    return Split(x, target["labels"], target["difficult"])


def best_tap(metrics: dict[str, float], taps: tuple[str, ...]) -> str:
    """The tap with the highest test mAP (the first of equals): Goyal et al. report each method's best layer, so
    'voc07-svm/best/mAP' is chosen on the test split, as their tables are."""
    return max(taps, key=lambda tap: (metrics[f"voc07-svm/{tap}/mAP"], -taps.index(tap)))


def _number(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


def l2_normalise(x: Tensor) -> Tensor:
    """Rows to unit L2 norm; + 1e-5 as the released svm_helper.normalize_features (an all-zero row stays 0)."""
    return x / (x.norm(dim=1, keepdim=True) + 1e-5)


def trainable_classes(positive: Tensor, ignore: Tensor, split: str) -> Tensor:
    """Indices of the classes with both a positive and a negative training image; the others are left out
    (no SVM can rank without both; at mini scale a tiny split can miss a class), with a warning."""
    kept = ~ignore
    ok = (positive & kept).any(0) & (~positive & kept).any(0)
    if not ok.any():
        raise UserError(f"voc07-svm: no class has both positive and negative images in the {split} split "
                        f"({positive.shape[0]} images); raise data.num_images")
    missing = [VOC_CLASSES[c] for c in torch.nonzero(~ok).flatten().tolist()]
    if missing:
        console.print(f"[yellow]voc07-svm: no SVM for {', '.join(missing)}: the {split} split "
                      f"({positive.shape[0]} images) lacks positives or negatives; they are left out of the "
                      "mAP[/yellow]")
    return torch.nonzero(ok).flatten()
