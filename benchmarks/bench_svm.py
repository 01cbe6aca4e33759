"""Benchmark (c): the VOC07 SVM protocol's batched solver against the usual implementation, a per-class,
per-C scikit-learn LinearSVC loop with the same 3-fold cross-validation (Goyal et al.'s train_svm_kfold.py).

Features: a trunk's conv3 map (average-pooled 6x6, L2-normalised) on the embedded data's train and test
splits, 20 multi-label classes with difficult flags, the full 26-value cost grid. Both sides run on one thread
(liblinear has no other mode); both wall and CPU time are printed, CPU time being the fair measure on a shared
machine. The baseline is the cheaper form of the loop: 3 CV fits per (class, C), then one
refit at the chosen C (the released script refits at every C, a third more). It can run on a subset of the
classes (--baseline-classes): its time is then scaled to 20 classes (the classes are independent fits of the
same cost) and the mAPs are compared on that subset.
Target: >= 10x faster, mAP within 0.3 points.        Run:  python benchmarks/bench_svm.py
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from sslbench.checkpoint import TrunkSpec, load_trunk
from sslbench.config import DataConfig
from sslbench.data.build import build_dataset
from sslbench.data.datasets import collate_skip_corrupt
from sslbench.metrics import multilabel_map
from sslbench.protocols._probing import FrozenFeatures, PoolSpec
from sslbench.protocols.voc_svm import GOYAL_COSTS, l2_normalise
from sslbench.recipes import load_recipe
from sslbench.svm import fit_one_vs_rest


def features(checkpoint: str, split: str, num: int) -> tuple[torch.Tensor, np.ndarray, np.ndarray]:
    """conv3 features, labels [N, 20], difficult [N, 20] of the embedded split at 64 px."""
    recipe = load_recipe("protocol", "voc07-svm", "mini")
    trunk = load_trunk(TrunkSpec.parse(checkpoint), recipe.backbone)
    extract = FrozenFeatures(trunk, ("conv3",), {"conv3": PoolSpec("adaptive_avg", 6)}, torch.device("cpu"))
    ds = build_dataset(DataConfig(dataset="embedded", image_size=64), split, num)
    loader = torch.utils.data.DataLoader(ds, batch_size=250, collate_fn=collate_skip_corrupt)
    x, labels, difficult = [], [], []
    for images, target in loader:
        x.append(extract(images)["conv3"])
        labels.append(target["labels"])
        difficult.append(target["difficult"])
    return l2_normalise(torch.cat(x)), torch.cat(labels).numpy() > 0, torch.cat(difficult).numpy() > 0


def baseline(
    x: np.ndarray, positive: np.ndarray, ignore: np.ndarray, x_test: np.ndarray, classes: list[int],
) -> tuple[np.ndarray, np.ndarray]:
    """Per class: drop ignored images; per C: 3-fold cross_val_score by AP; refit the best C. -> test scores, CV APs."""
    from sklearn.model_selection import cross_val_score
    from sklearn.svm import LinearSVC

    scores, cv = [], []
    for k in classes:
        keep = ~ignore[:, k]
        xk, yk = x[keep], np.where(positive[keep, k], 1, -1)
        svm = lambda c: LinearSVC(C=c, class_weight={1: 2, -1: 1}, intercept_scaling=1.0, penalty="l2",  # noqa: E731
                                  loss="squared_hinge", tol=1e-4, dual=True, max_iter=2000)
        cv.append([cross_val_score(svm(c), xk, yk, cv=3, scoring="average_precision").mean() for c in GOYAL_COSTS])
        scores.append(svm(GOYAL_COSTS[int(np.argmax(cv[-1]))]).fit(xk, yk).decision_function(x_test))
    return np.stack(scores, 1), np.array(cv)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--train", type=int, default=3000, help="training images (embedded 'train' split)")
    p.add_argument("--test", type=int, default=1500, help="test images (embedded 'test' split)")
    p.add_argument("--checkpoint", default="random", help="trunk: a checkpoint path or 'random'")
    p.add_argument("--baseline-classes", type=int, default=20, help="classes the scikit-learn loop runs (time scaled to 20)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")  # liblinear's ConvergenceWarning at C = 100, as in the released runs
    x, positive, difficult = features(args.checkpoint, "train", args.train)
    x_test, test_labels, test_difficult = features(args.checkpoint, "test", args.test)
    ignore = difficult & ~positive
    print(f"features: train {tuple(x.shape)}, test {tuple(x_test.shape)}, {len(GOYAL_COSTS)} costs, 20 classes, 3 folds")

    classes = list(range(args.baseline_classes))
    with threadpool_limits(args.threads):
        wall, cpu = time.perf_counter(), time.process_time()
        fit = fit_one_vs_rest(x, torch.from_numpy(positive), torch.from_numpy(ignore), GOYAL_COSTS)
        ours = (time.perf_counter() - wall, time.process_time() - cpu)
        ours_scores = fit.decision(x_test).numpy()
        wall, cpu = time.perf_counter(), time.process_time()
        base_scores, base_cv = baseline(x.double().numpy(), positive, ignore, x_test.double().numpy(), classes)
        base = ((time.perf_counter() - wall) * 20 / len(classes), (time.process_time() - cpu) * 20 / len(classes))

    labels, difficult = test_labels[:, classes], test_difficult[:, classes]
    ours_map, _ = multilabel_map(ours_scores[:, classes], labels, difficult, use_07_metric=False)
    base_map, _ = multilabel_map(base_scores, labels, difficult, use_07_metric=False)
    cv_gap = float(np.abs(fit.cv_ap.numpy()[classes] - base_cv).max())  # [classes, costs], costs in GOYAL_COSTS order
    scaled = "" if len(classes) == 20 else f" (measured on {len(classes)} classes, scaled to 20)"
    print(f"batched solver   wall {ours[0]:7.1f} s  cpu {ours[1]:7.1f} s   mAP {100 * ours_map:6.2f}")
    print(f"LinearSVC loop   wall {base[0]:7.1f} s  cpu {base[1]:7.1f} s   mAP {100 * base_map:6.2f}{scaled}")
    print(f"speed-up {base[0] / ours[0]:5.1f}x wall, {base[1] / ours[1]:5.1f}x cpu   "
          f"mAP difference {100 * (ours_map - base_map):+.2f} points   "
          f"max |CV AP difference| {100 * cv_gap:.2f} points   same C chosen for "
          f"{int((fit.cost.numpy()[classes] == np.array(GOYAL_COSTS)[base_cv.argmax(1)]).sum())}/{len(classes)} classes")


if __name__ == "__main__":
    main()
