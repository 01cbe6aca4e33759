"""Benchmark (a): conv1..conv5 linear probes trained together in one pass of the frozen trunk, against the
naive baseline of five separate probe runs (one per tap), same trunk, data and schedule, same process.

Measured in the streaming mode of the paper-scale protocol (the trunk runs on every batch of every epoch,
as with random crops), where the trunk dominates; the cached mode of the mini recipes is reported too.
Target: one pass >= 4x faster than five runs.   Run:  python benchmarks/bench_probes.py
"""

from __future__ import annotations

import argparse
import time

import torch

from sslbench.checkpoint import load_trunk
from sslbench.config import load_recipe
from sslbench.protocols.probing import PoolSpec, linear_head, train_probes

TAPS = ("conv1", "conv2", "conv3", "conv4", "conv5")


def timed(recipe, taps, cache: bool) -> float:  # noqa: ANN001
    trunk = load_trunk("random", recipe.backbone, taps)
    pools = {t: recipe.method.cfg.pool.get(t, PoolSpec()) for t in taps}
    start = time.perf_counter()
    train_probes(trunk, recipe, taps, pools, linear_head, 20, cache, 4, torch.device("cpu"), False)
    return time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--images", type=int, default=1024)
    p.add_argument("--epochs", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(2)
    recipe = load_recipe("protocol", "linear", "mini", [f"data.num_images={args.images}", "data.num_test=256",
                                                        f"schedule.epochs={args.epochs}"])
    timed(recipe, TAPS, True)  # warm-up: renders and caches the embedded images
    for cache in (False, True):
        together = timed(recipe, TAPS, cache)
        separate = sum(timed(recipe, (t,), cache) for t in TAPS)
        mode = "cached features (mini)" if cache else "streamed trunk (paper)"
        print(f"{mode:26s} one pass {together:6.1f} s | five runs {separate:6.1f} s | speed-up {separate / together:4.1f}x")


if __name__ == "__main__":
    main()
