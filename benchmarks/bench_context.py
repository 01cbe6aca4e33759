"""Benchmark: Context Prediction batch construction and pretraining throughput on CPU.

(a) `ContextPrediction.make_batch` (one batched gather for all patches, resizes grouped by size, colour
dropping and normalisation as tensor ops) against a straightforward per-patch pipeline: PIL crop, PIL
down/up resize, numpy colour dropping and normalisation, one patch at a time; at the mini recipe's geometry
(32 px patches, 156 px images) and the paper's (96 px patches, 512 px images).
(b) Pretraining images/s (make_batch + forward + backward + SGD step) of the mini recipes.
    Run:  python benchmarks/bench_context.py [threads]     (default 2; use 1 on a machine shared with other jobs,
    where two OpenMP threads per process oversubscribe the cores and torch slows down many times over)
"""

from __future__ import annotations

import random
import sys
import time

import numpy as np
import torch
from PIL import Image

from sslbench.backbones.base import build_backbone
from sslbench.data.synthetic import embedded_images
from sslbench.recipes import load_recipe
from sslbench.registry import TASKS
from sslbench.tasks.context import NEIGHBOURS, ContextPrediction
from timing import pretrain_rate as training_rate


def naive_batch(images: torch.Tensor, task: ContextPrediction, rng: random.Random) -> dict[str, torch.Tensor]:
    cfg, p = task.cfg, task.patch
    step = p + cfg.gap
    patches, first, second, labels = [], [], [], []
    for img in images:
        pil = Image.fromarray(img.permute(1, 2, 0).numpy())
        extent = 3 * p + 2 * cfg.gap + 2 * cfg.jitter
        oy, ox = rng.randint(0, pil.height - extent), rng.randint(0, pil.width - extent)
        base = len(patches)
        for cell in range(9):
            y = oy + cfg.jitter + (cell // 3) * step + rng.randint(-cfg.jitter, cfg.jitter)
            x = ox + cfg.jitter + (cell % 3) * step + rng.randint(-cfg.jitter, cfg.jitter)
            crop = pil.crop((x, y, x + p, y + p))
            if rng.random() < cfg.downsample_prob:
                side = int(np.sqrt(rng.random() * ((p - 1) ** 2 - cfg.downsample_min**2) + cfg.downsample_min**2))
                crop = crop.resize((side, side), Image.BILINEAR).resize((p, p), Image.BILINEAR)
            arr = np.asarray(crop, np.float32).transpose(2, 0, 1) / 255.0
            keep = rng.randrange(3)
            for c in range(3):
                if c != keep:
                    arr[c] = np.random.normal(0, cfg.noise_ratio * arr[keep].std(), arr[c].shape)
            arr = arr - arr.mean(axis=(1, 2), keepdims=True)
            patches.append(arr / (np.sqrt((arr**2).mean()) + 1e-6))
        for a in range(9):
            for label, (dx, dy) in enumerate(NEIGHBOURS):
                row, col = a // 3 + dy, a % 3 + dx
                if 0 <= row < 3 and 0 <= col < 3:
                    first.append(base + a)
                    second.append(base + row * 3 + col)
                    labels.append(label)
    return {"patches": torch.from_numpy(np.stack(patches)), "first": torch.tensor(first),
            "second": torch.tensor(second), "labels": torch.tensor(labels)}


def build(overrides: list[str], flavour: str = "") -> tuple[ContextPrediction, object]:
    r = load_recipe("pretrain", "context", "mini", overrides, flavour=flavour)
    return TASKS.get("context")(r.component.cfg, build_backbone(r.backbone.name, r.backbone.cfg)), r


def batch_construction(overrides: list[str], image_size: int, n: int, reps: int) -> tuple[float, float]:
    task, _ = build(overrides)
    images = embedded_images("unlabeled", image_size, n, 0)
    gen, rng = torch.Generator().manual_seed(0), random.Random(0)
    task.make_batch(images, {}, gen), naive_batch(images, task, rng)  # warm-up: first-touch allocations, caches
    t0 = time.perf_counter()
    for _ in range(reps):
        task.make_batch(images, {}, gen)
    t1 = time.perf_counter()
    for _ in range(reps):
        naive_batch(images, task, rng)
    t2 = time.perf_counter()
    return reps * n / (t1 - t0), reps * n / (t2 - t1)


def pretrain_rate(flavour: str, steps: int) -> tuple[float, int]:
    task, r = build([], flavour)
    n = r.data.batch_size
    images = embedded_images("unlabeled", r.data.image_size, n, 0)
    return training_rate(task, r.optim, images, steps, warmup=1), n


def main() -> None:
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
    geometries = (
        ("mini: 32 px patches, 156 px images", [], 156, 64, 5),
        ("paper: 96 px patches, 512 px images", ["backbone.image_size=96", "task.gap=48", "task.jitter=7",
                                                 "task.downsample_min=10"], 512, 16, 5),
    )
    for name, overrides, size, n, reps in geometries:
        fast, slow = batch_construction(overrides, size, n, reps)
        print(f"batch construction, {name}: make_batch {fast:7.0f} img/s | per-patch PIL {slow:6.0f} img/s | {fast / slow:4.1f}x")
    for flavour, steps in (("", 5), ("vgg", 5)):
        rate, n = pretrain_rate(flavour, steps)
        print(f"pretraining, mini{'-' + flavour if flavour else ''} recipe (batch {n} images = {9 * n} patches): {rate:6.1f} images/s")


if __name__ == "__main__":
    main()
