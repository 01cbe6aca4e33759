"""Benchmark (a): conv1..conv5 linear probes trained together in one pass of the frozen trunk, against the
naive baseline of five separate probe runs (one per tap), same trunk, data, schedule and process.

Two data paths:
- paper path: images read from JPEG files in the ImageFolder layout (the embedded data written by
  `write_imagenet`, 96 px files resized to 64) and the trunk run on every batch of every epoch (random
  crops), as at paper scale: decoding and the trunk are shared by the five heads in one pass.
- mini path: the embedded arrays, features computed once and cached (the mini recipes).
Target (paper path): one pass >= 4x faster than five runs.     Run:  python benchmarks/bench_probes.py
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from sslbench.checkpoint import TrunkSpec, load_trunk
from sslbench.data.layouts.imagenet import write_imagenet
from sslbench.protocols._probing import PoolSpec, linear_head, train_probes
from sslbench.protocols.base import EvalContext
from sslbench.recipes import load_recipe
from sslbench.runlog import MetricLogger
from sslbench.runtime import Dist

TAPS = ("conv1", "conv2", "conv3", "conv4", "conv5")


def timed(recipe, taps, cache: bool) -> float:  # noqa: ANN001
    trunk = load_trunk(TrunkSpec("random"), recipe.backbone)
    pools = {t: recipe.component.cfg.pool.get(t, PoolSpec()) for t in taps}
    ctx = EvalContext(torch.device("cpu"), Dist(), MetricLogger(Path("."), enabled=False), progress=False)
    start = time.perf_counter()
    train_probes(trunk, recipe, taps, pools, linear_head, 20, cache, 4, ctx)
    return time.perf_counter() - start


def compare(label: str, recipe, cache: bool) -> None:  # noqa: ANN001
    timed(recipe, TAPS[:1], cache)  # warm-up (caches, allocator)
    together = timed(recipe, TAPS, cache)
    separate = sum(timed(recipe, (t,), cache) for t in TAPS)
    print(f"{label:44s} one pass {together:6.1f} s | five runs {separate:6.1f} s | speed-up {separate / together:4.1f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--images", type=int, default=640)
    p.add_argument("--epochs", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(2)
    base = [f"data.num_images={args.images}", "data.num_test=200", f"schedule.epochs={args.epochs}"]
    with tempfile.TemporaryDirectory() as tmp:
        root = write_imagenet(Path(tmp), args.images, 200, 96, 0)
        paper_path = load_recipe("protocol", "linear", "mini", base + ["data.dataset=imagenet", f"data.root={root}",
                                                                       "data.train_split=train", "data.test_split=val"])
        compare("paper path (JPEG ImageFolder, streamed trunk)", paper_path, cache=False)
    mini = load_recipe("protocol", "linear", "mini", base)
    compare("mini path (embedded arrays, cached features)", mini, cache=True)


if __name__ == "__main__":
    main()
