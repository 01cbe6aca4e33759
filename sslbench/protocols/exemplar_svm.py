"""Exemplar-CNN's SVM protocol (Dosovitskiy et al., NIPS 2014, Sec. 4; released code/testing): the frozen network
applied to whole images, every layer's map max-pooled over its 4 quadrants, the layers concatenated and
standardised; one-vs-rest linear SVMs (liblinear's squared hinge) with one C for all classes chosen by
cross-validated accuracy (sslbench.svm.fit_multiclass); accuracy on the test split.

`benchmark` picks the data set's official protocol (each a recipe flavour):
- "stl10": the 10 predefined training folds of STL-10 (fold_indices.txt, 1,000 of the 5,000 train images
  each), each scored on the 8,000 test images; mean and sd over the folds.
- "cifar10-400": 10 random subsets (seeded) of 400 training images per class; mean and sd.
- "cifar10": the whole training set, once.
- "caltech101" / "caltech256": 10 random splits (seeded) of the one split of images: `per_class` (30) training
  images of every class, the next `test_per_class` (Caltech-101: at most 50) or all the rest for test; the score
  is the mean per-class accuracy (its C chosen by that score too); features pooled by a spatial pyramid
  (`pyramid`, the released code's levels for Caltech: code/testing/run_net_on_Caltech_matcaffe_distr.m). The
  background / clutter folder is not a class (the loader leaves it out).
Reports 'exemplar-svm/<benchmark>' (mean accuracy, percent), '.../sd' and '.../split<i>' where there are
several, and 'exemplar-svm/features' (the table's #features: the network's units over its layers, where the
backbone counts them, else the taps' channels).

The release divides each layer's features by their 99.99th percentile and weights a pyramid's grids (coarser
ones more: code/testing/make_features_from_maps_f1.m); with `standardize` (per-feature zero mean, unit
variance) any per-feature scale cancels, so neither is applied here.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
import torch
from torch import Tensor

from sslbench.backbones.base import Backbone
from sslbench.checkpoint import Trunk
from sslbench.config import In, Recipe
from sslbench.data.build import build_dataset, embedded_root
from sslbench.data.layouts.stl10 import read_stl10_folds
from sslbench.errors import UserError
from sslbench.protocols._probing import FrozenFeatures, PoolSpec, extract, sanity_check
from sslbench.protocols.base import EvalContext, Protocol
from sslbench.registry import register_protocol
from sslbench.runtime import write_json
from sslbench.svm import Score, accuracy_score, fit_multiclass, mean_class_accuracy

# log-spaced over the released searches' ranges (code/testing/svm_params_search.m: STL C in [2e-4, 2e-1], CIFAR
# [1e-3, 1]; drawn at random there, a fixed grid here)
COSTS = tuple(float(c) for c in np.geomspace(2e-4, 1.0, 12))
# each benchmark's data set (the recipe's data.dataset must be it)
DATASET = {"stl10": "stl10", "cifar10-400": "cifar10", "cifar10": "cifar10", "caltech101": "caltech101",
           "caltech256": "caltech256"}
CALTECH = ("caltech101", "caltech256")


@dataclass(frozen=True)
class ExemplarSvmConfig:
    # the recipe flavours stl10, cifar10-400, caltech101, caltech256
    benchmark: Literal["stl10", "cifar10-400", "cifar10", "caltech101", "caltech256"] = "cifar10"
    taps: tuple[str, ...] = ()  # the layers whose responses are features (empty: every tap, as the paper)
    pool_size: Annotated[int, In(1, 16)] = 2  # each map max-pooled to pool_size x pool_size (2: the paper's quadrants)
    pyramid: tuple[Annotated[int, In(1, 16)], ...] = ()  # instead, a spatial pyramid of these grid sides (Caltech)
    costs: tuple[Annotated[float, In(0, 1e9, open_lo=True)], ...] = COSTS  # C values searched; ties: first
    folds: Annotated[int, In(2, 20)] = 3  # cross-validation folds on each training set, scored by accuracy
    subsets: Annotated[int, In(1, 100)] = 10  # cifar10-400, caltech: random training subsets / splits (paper: 10)
    per_class: Annotated[int, In(1, 10**6)] = 400  # cifar10-400, caltech: training images per class (400, 30)
    test_per_class: Annotated[int, In(0, 10**6)] = 0  # caltech: test images per class at most (0: all the rest)
    standardize: bool = True  # zero mean, unit variance per feature, from each training set
    tol: Annotated[float, In(0, 1, open_lo=True)] = 1e-3  # solver stop (sslbench.svm)


@register_protocol("exemplar-svm", config=ExemplarSvmConfig)
class ExemplarSvm(Protocol):
    """Quadrant-pooled features of every layer, one-vs-rest linear SVMs, C by cross-validated accuracy."""

    name = "exemplar-svm"
    trains_by_sgd = False
    count_keys = "features"
    metric_keys = r"(stl10|cifar10-400|cifar10|caltech101|caltech256)(/sd|/split\d+)?|features"

    def taps(self, backbone: Backbone) -> tuple[str, ...]:
        return self.cfg.taps or tuple(backbone.default_taps)

    def preflight(self, recipe: Recipe) -> None:
        want = DATASET[self.cfg.benchmark]
        if recipe.data.dataset != want:
            raise UserError(f"exemplar-svm: benchmark {self.cfg.benchmark!r} is measured on {want}, the recipe reads "
                            f"{recipe.data.dataset}; set data.dataset = \"{want}\" or pick the benchmark of that data "
                            "set (the exemplar-svm flavours)")

    def run(self, trunk: Trunk, recipe: Recipe, ctx: EvalContext) -> dict[str, float]:
        cfg, d = self.cfg, recipe.data
        caltech = cfg.benchmark in CALTECH
        taps = self.taps(trunk.backbone)
        pool = PoolSpec("pyramid", levels=cfg.pyramid) if cfg.pyramid else PoolSpec("adaptive_max", cfg.pool_size)
        features = FrozenFeatures(trunk, taps, {t: pool for t in taps}, ctx.device)
        before = copy.deepcopy(trunk.backbone.state_dict())
        train_ds = build_dataset(d, d.train_split, d.num_images)
        train_x, train_y = _features(features, train_ds, recipe, ctx, taps, d.train_split)
        skipped = len(train_ds) - len(train_y)  # type: ignore[arg-type]
        if caltech:  # one split of images: each training set's test images are drawn beside it
            test_x, test_y = train_x, train_y
            splits = caltech_splits(train_y, cfg.subsets, cfg.per_class, cfg.test_per_class, recipe.seed,
                                    list(getattr(train_ds, "classes", [])))
        else:
            test_x, test_y = _features(features, build_dataset(d, d.test_split, d.num_test), recipe, ctx, taps,
                                       d.test_split)
            splits = [(rows, None) for rows in self._training_sets(train_y, recipe, skipped)]
        sanity_check(trunk.backbone, before)
        score: Score = mean_class_accuracy if caltech else accuracy_score
        accuracies, chosen = [], []
        for i, (rows, test_rows) in enumerate(splits):
            x, y = train_x[rows], train_y[rows]
            xt, yt = (test_x, test_y) if test_rows is None else (test_x[test_rows], test_y[test_rows])
            if cfg.standardize:
                mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
                x, xt = (x - mean) / std, (xt - mean) / std
            fit = fit_multiclass(x.to(ctx.device), y.to(ctx.device), cfg.costs, cfg.folds, score=score, tol=cfg.tol)
            acc = 100.0 * score(fit.decision(xt.to(ctx.device)).cpu(), yt)
            accuracies.append(acc)
            chosen.append(fit.cost)
            ctx.log.write(i, {f"{cfg.benchmark}/accuracy": acc}, prefix="test")
        if ctx.ddp.is_main:
            write_json(ctx.run_dir / "svm.json", {
                "benchmark": cfg.benchmark, "score": "mean per-class accuracy" if caltech else "accuracy",
                "costs": list(cfg.costs), "chosen_cost": chosen, "accuracy": accuracies,
                "train_sizes": [len(r) for r, _ in splits],
                "test_sizes": [len(test_y) if t is None else len(t) for _, t in splits]})
        out = {self.key(cfg.benchmark): float(np.mean(accuracies)), self.key("features"): float(_units(trunk, taps))}
        if len(accuracies) > 1:
            out[self.key(cfg.benchmark, "sd")] = float(np.std(accuracies, ddof=1))
            out.update({self.key(cfg.benchmark, f"split{i}"): a for i, a in enumerate(accuracies)})
        return out

    def _training_sets(self, labels: Tensor, recipe: Recipe, skipped: int = 0) -> list[Tensor]:
        """Row indices of each training set the benchmark names; `skipped`: train images the loader could not read
        (the STL-10 folds, image numbers, then no longer name the right rows)."""
        cfg, n = self.cfg, len(labels)
        if cfg.benchmark == "stl10":
            if skipped:
                raise UserError(f"exemplar-svm: {skipped} STL-10 train image(s) could not be read, so the "
                                "fold indices (image numbers) no longer name the right rows; repair the data set")
            folds = stl10_folds(recipe)
            bad = [i for i, f in enumerate(folds) if len(f) == 0 or int(f.max()) >= n]
            if bad:
                raise UserError(f"exemplar-svm: STL-10 fold {bad[0]} names train images beyond the {n} read; read the "
                                "whole train split (data.num_images = 0)")
            return folds
        if cfg.benchmark == "cifar10":
            return [torch.arange(n)]
        g = torch.Generator().manual_seed(recipe.seed)
        out = []
        for _ in range(cfg.subsets):
            rows = []
            for c in labels.unique().tolist():
                idx = torch.nonzero(labels == c)[:, 0]
                if len(idx) < cfg.per_class:
                    raise UserError(f"exemplar-svm: class {c} has {len(idx)} training images, fewer than "
                                    f"protocol.per_class = {cfg.per_class}; lower it or read more images")
                rows.append(idx[torch.randperm(len(idx), generator=g)[: cfg.per_class]])
            out.append(torch.cat(rows).sort().values)
        return out


def caltech_splits(labels: Tensor, splits: int, train: int, test: int, seed: int,
                   classes: list[str]) -> list[tuple[Tensor, Tensor]]:
    """(train rows, test rows) of each of `splits` random splits (seeded): per class, `train` images for training and
    the next `test` (0: all the rest) for test, drawn from one random order of the class's images."""
    g = torch.Generator().manual_seed(seed)
    present = labels.unique().tolist()
    members = {c: torch.nonzero(labels == c)[:, 0] for c in present}
    small = [c for c in present if len(members[c]) <= train]
    if small:
        c = small[0]
        name = classes[c] if c < len(classes) else str(c)
        raise UserError(f"exemplar-svm: class {name!r} has {len(members[c])} readable images; the split needs "
                        f"protocol.per_class = {train} for training and at least one for test ({len(small)} such "
                        "classes); lower per_class or read more images (data.num_images = 0 reads all)")
    out = []
    for _ in range(splits):
        train_rows, test_rows = [], []
        for c in present:
            idx = members[c][torch.randperm(len(members[c]), generator=g)]
            train_rows.append(idx[:train])
            test_rows.append(idx[train: train + test] if test else idx[train:])
        out.append((torch.cat(train_rows).sort().values, torch.cat(test_rows).sort().values))
    return out


def _features(features: FrozenFeatures, ds: object, recipe: Recipe, ctx: EvalContext, taps: tuple[str, ...],
              what: str) -> tuple[Tensor, Tensor]:
    x, target = extract(features, ds, recipe, ctx, what)
    labels = target["label"].long()
    if not len(labels):
        raise UserError(f"exemplar-svm: no readable image in the {what} split; check the data (sslbench data check)")
    return torch.cat([x[t] for t in taps], 1), labels


def _units(trunk: Trunk, taps: tuple[str, ...]) -> int:
    """The table's #features: the backbone's own count (ExemplarNet: units over its layers) or the taps' channels."""
    count = getattr(trunk.backbone, "num_features", None)
    return count() if count is not None else sum(trunk.backbone.feature_info[t].channels for t in taps)


def stl10_folds(recipe: Recipe) -> list[Tensor]:
    """The 10 predefined training folds of the recipe's STL-10 (its root, or the embedded data's)."""
    d = recipe.data
    return [torch.from_numpy(f) for f in read_stl10_folds(Path(d.root or str(embedded_root(d))))]
