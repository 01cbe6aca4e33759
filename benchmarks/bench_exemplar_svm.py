"""Benchmark (i): Exemplar-CNN's SVM stage, sslbench's batched multi-class solver against a per-class, per-C
scikit-learn LinearSVC loop on the same features.

Features: the random exemplar-net of the exemplar-svm mini recipe on the embedded STL-10 train / test images
(96 px, all layers max-pooled over 4 quadrants, standardised: 1,920 dims at half width). One training fold of
`--train` images, the 12-value cost grid, 3-fold cross-validation scored by accuracy. The baseline fits, for
every C and fold, the 10 one-vs-rest LinearSVC problems one class at a time (what liblinear does inside a
multi-class LinearSVC), scores the argmax accuracy, then refits at the chosen C. Both on one thread.
Target: >= 10x faster, the same chosen C, test accuracy within 0.3 points.
Run:  python benchmarks/bench_exemplar_svm.py [--train 1000]
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
from sklearn.model_selection import StratifiedKFold
from sklearn.svm import LinearSVC
from threadpoolctl import threadpool_limits

from sslbench.checkpoint import TrunkSpec, load_trunk
from sslbench.plugins import load_all
from sslbench.protocols.exemplar_svm import COSTS
from sslbench.recipes import load_recipe
from sslbench.svm import fit_multiclass


def features(n_train: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    from sslbench.data.build import build_dataset
    from sslbench.protocols._probing import FrozenFeatures, PoolSpec

    load_all()
    r = load_recipe("protocol", "exemplar-svm", "mini", [f"data.num_test={n_train}"], flavour="stl10")
    torch.manual_seed(0)
    trunk = load_trunk(TrunkSpec("random"), r.backbone)
    taps = tuple(trunk.backbone.default_taps)
    f = FrozenFeatures(trunk, taps, {t: PoolSpec("adaptive_max", 2) for t in taps}, torch.device("cpu"))
    out = []
    for split in ("train", "test"):
        ds = build_dataset(r.data, split, n_train)
        images = torch.stack([ds[i][0] for i in range(len(ds))])
        labels = torch.tensor([int(ds[i][1]["label"]) for i in range(len(ds))])
        x = torch.cat([torch.cat([v for v in f(images[i : i + 100]).values()], 1) for i in range(0, len(ds), 100)])
        out += [x, labels]
    mean, std = out[0].mean(0), out[0].std(0).clamp_min(1e-6)
    return (out[0] - mean) / std, out[1], (out[2] - mean) / std, out[3]


def baseline(x: np.ndarray, y: np.ndarray, folds: int) -> tuple[float, LinearSVC | None]:
    classes = np.unique(y)
    split = list(StratifiedKFold(folds).split(x, y))
    scores = []
    for c in COSTS:
        accs = []
        for train, test in split:
            margins = np.stack([LinearSVC(C=c, dual=True, max_iter=10_000).fit(x[train], y[train] == k)
                               .decision_function(x[test]) for k in classes], 1)
            accs.append(float((classes[margins.argmax(1)] == y[test]).mean()))
        scores.append(np.mean(accs))
    best = COSTS[int(np.argmax(scores))]
    return best, LinearSVC(C=best, dual=True, max_iter=10_000).fit(x, y)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--train", type=int, default=1000)
    args = ap.parse_args()
    x, y, xt, yt = features(args.train)
    print(f"{len(x)} training / {len(xt)} test images, {x.shape[1]} features, {len(COSTS)} costs, 3 folds, 1 thread")
    torch.set_num_threads(1)
    start = time.perf_counter()
    fit = fit_multiclass(x, y, COSTS, folds=3)
    ours = time.perf_counter() - start
    ours_acc = 100 * float((fit.predict(xt) == yt).double().mean())
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        start = time.perf_counter()
        best, clf = baseline(x.numpy(), y.numpy(), 3)
        naive = time.perf_counter() - start
    naive_acc = 100 * float((clf.predict(xt.numpy()) == yt.numpy()).mean())
    print("| solver | time | chosen C | test accuracy |")
    print("|---|---|---|---|")
    print(f"| sslbench fit_multiclass | {ours:.2f} s | {fit.cost:.3g} | {ours_acc:.2f} |")
    print(f"| LinearSVC loop (per class, per C, per fold) | {naive:.2f} s | {best:.3g} | {naive_acc:.2f} |")
    print(f"speed-up {naive / ours:.1f}x, accuracy difference {abs(ours_acc - naive_acc):.2f} points")


if __name__ == "__main__":
    main()
