"""Benchmark (issue 18): the feed ratio of RotNet AlexNet and Jigsaw pretraining at the paper's geometry on the CPU.

Steps/s of the real engine (`sslbench.engine.pretrain`: JPEG files read by the ImageFolder loader with the recipe's
train crop, make_batch, forward, backward, SGD), against the same steps on one batch already in memory (make_batch
+ step only: benchmarks/timing.py). Both at the paper recipes' geometry (rotation/paper-alexnet.toml: 224 px;
jigsaw/paper.toml: 256 px -> 9 tiles of 64 px) with a smaller batch for a 2-core CPU (`--batch`, default 24
images), with and without engine.prefetch, and with 0 or 1 loader workers. The files are the embedded data written
in the ImageNet layout at 256 px. One more row decodes with data.decode = "device" (on the CPU that is the main
process, batched decode_jpeg; the figure a GPU would change), outside the ratio.

Last line: `feed ratio R` (the lower of the two tasks' best loaded steps/s over their resident ones).
Run:  python benchmarks/bench_feed.py [--batch 24] [--steps 6]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import torch

from sslbench.backbones.base import build_backbone
from sslbench.data.layouts.imagenet import write_imagenet
from sslbench.engine import pretrain
from sslbench.recipes import load_recipe
from sslbench.registry import TASKS
from timing import pretrain_rate

TASKS_RUN = {"rotation": ("RotNet AlexNet", "alexnet"), "jigsaw": ("Jigsaw", None)}


def engine_rate(name: str, root: Path, runs: Path, batch: int, steps: int, workers: int, prefetch: bool,
                decode: str = "loader") -> float:
    """Images/s between the first and the last logged step of a real pretraining (loading included)."""
    recipe = load_recipe("pretrain", name, "paper", [
        f"data.batch_size={batch}", f"data.num_images={batch * (steps + 1)}", f"data.workers={workers}",
        f"schedule.max_steps={steps + 1}", "engine.log_every=1", "engine.checkpoint_every=100000",
        f"engine.prefetch={str(prefetch).lower()}", f"data.decode={decode}"], data={"imagenet": str(root)},
        flavour=TASKS_RUN[name][1])
    out = pretrain(recipe, runs, device="cpu", progress=False, argv=[])
    times = [json.loads(line)["time"] for line in (out.run_dir / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    return (len(times) - 1) * batch / (times[-1] - times[0])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=24)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(2)
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        root = write_imagenet(Path(tmp), args.batch * (args.steps + 1), 8, 256, 0)
        for name, (label, flavour) in TASKS_RUN.items():
            recipe = load_recipe("pretrain", name, "paper", [f"data.batch_size={args.batch}"], flavour=flavour)
            torch.manual_seed(0)
            task = TASKS.get(name)(recipe.component.cfg, build_backbone(recipe.backbone.name, recipe.backbone.cfg))
            side = recipe.data.image_size
            images = torch.randint(0, 256, (args.batch, 3, side, side), dtype=torch.uint8)
            resident = pretrain_rate(task, recipe.optim, images, args.steps, warmup=1)
            print(f"\n{label}, {args.batch} images of {side} px per step, 2 threads")
            print("| feed | images/s | ratio |")
            print("|---|---|---|")
            print(f"| resident batch (make_batch + step) | {resident:.1f} | 1.00 |")
            best = 0.0
            for workers, prefetch, decode in ((0, False, "loader"), (0, True, "loader"), (1, False, "loader"),
                                              (1, True, "loader"), (1, True, "device")):
                rate = engine_rate(name, root, Path(tmp) / f"runs-{name}", args.batch, args.steps, workers, prefetch,
                                   decode)
                if decode == "loader":  # the ratio is the default decoder's; data.decode = device is shown beside
                    best = max(best, rate)
                print(f"| JPEG files, {workers} loader worker(s), prefetch {'on' if prefetch else 'off'}"
                      f"{', data.decode=device (in the main process here)' if decode == 'device' else ''} | "
                      f"{rate:.1f} | {rate / resident:.2f} |")
            ratios.append(best / resident)
    print(f"feed ratio {min(ratios):.2f}")

if __name__ == "__main__":
    main()
