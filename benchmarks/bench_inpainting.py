"""Benchmark: Context Encoder batch construction and pretraining throughput on CPU.

(1) make_batch with vectorised masks (one set of tensor ops over the whole batch: box unions by a min-max
    first-cover index, silhouettes by one affine_grid/grid_sample, blobs by one bicubic upsample and per-image quantile,
    the overlap band by one max-pool) against a straightforward per-image loop with PIL/numpy/scipy: rectangles
    painted one at a time, silhouettes rotated / resized / pasted with PIL until one fits, blobs resized with
    PIL, the band by scipy's binary dilation, the mean fill and normalisation per image.
    Target: >= 3x for every mask type.
(2) Pretraining images/s of the mini recipe (central mask, L_rec), with the adversarial loss, and with
    random-region masks, Adam step included, at 64 px.
Run:  python benchmarks/bench_inpainting.py [--batch 64] [--threads 2]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from PIL import Image
from scipy.ndimage import binary_dilation

from sslbench.backbones.base import build_backbone
from sslbench.config import Recipe
from sslbench.data.synthetic import embedded_images
from sslbench.recipes import load_recipe
from sslbench.registry import TASKS
from sslbench.tasks.inpainting import MAX_BLOCKS, Inpainting, silhouette_bank
from sslbench.transforms import MEAN, STD
from timing import pretrain_rate

MASKS = {"central": ["task.mask=central"], "random-blocks": ["task.mask=random-blocks"],
         "silhouettes": ["task.regions=silhouettes"], "blobs": ["task.regions=blobs"]}


# ---------------------------------------------------------------- the per-image baseline


def naive_blocks(rng: np.random.Generator, size: int, coverage: float) -> np.ndarray:
    hole = np.zeros((size, size), bool)
    for i in range(MAX_BLOCKS):
        h, w = rng.integers(size // 8, size // 4 + 1, 2)
        y, x = rng.integers(0, size - h + 1), rng.integers(0, size - w + 1)
        trial = hole.copy()
        trial[y : y + h, x : x + w] = True
        if i and trial.mean() > coverage:
            break
        hole = trial
    return hole


def naive_silhouette(rng: np.random.Generator, size: int, coverage: float, shapes: list[Image.Image],
                     areas: np.ndarray) -> np.ndarray:
    for _ in range(16):
        k = int(rng.integers(len(shapes)))
        stretch, angle = math.exp(rng.uniform(-0.5, 0.5)), rng.uniform(0, 360)
        shape = shapes[k].transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else shapes[k]
        scale = size / shape.width * math.sqrt(coverage / areas[k])  # bank pixels -> image pixels at the target area
        w, h = max(1, round(shape.width * scale * stretch)), max(1, round(shape.height * scale / stretch))
        warped = shape.resize((w, h), Image.Resampling.BILINEAR).rotate(angle, Image.Resampling.BILINEAR, expand=True)
        box = warped.getbbox()
        if box is None:
            continue
        warped = warped.crop(box)
        if warped.width <= size and warped.height <= size:
            break
    canvas = Image.new("L", (size, size))
    canvas.paste(warped, (int(rng.integers(0, max(1, size - warped.width + 1))),
                          int(rng.integers(0, max(1, size - warped.height + 1)))))
    return np.asarray(canvas) > 127


def naive_blobs(rng: np.random.Generator, size: int, coverage: float) -> np.ndarray:
    noise = Image.fromarray(rng.random((8, 8)).astype(np.float32), mode="F")
    smooth = np.asarray(noise.resize((size, size), Image.Resampling.BICUBIC))
    return smooth <= np.quantile(smooth, coverage)


def naive_batch(images: torch.Tensor, task: Inpainting, rng: np.random.Generator) -> dict[str, torch.Tensor]:
    cfg, size = task.cfg, task.size
    bank, areas, _, _ = silhouette_bank()
    shapes = [Image.fromarray((m[0].numpy() * 255).astype(np.uint8)) for m in bank]
    mean, std = MEAN.view(3, 1, 1).numpy(), STD.view(3, 1, 1).numpy()
    inputs, targets, weights, holes = [], [], [], []
    for image in images.numpy():
        if rng.random() < 0.5:
            image = image[:, :, ::-1]
        if cfg.mask == "central":
            hole = np.zeros((size, size), bool)
            hole[task.top + cfg.overlap : task.top + task.side - cfg.overlap,
                 task.top + cfg.overlap : task.top + task.side - cfg.overlap] = True
        elif cfg.mask == "random-blocks":
            hole = naive_blocks(rng, size, cfg.coverage)
        elif cfg.regions == "silhouettes":
            hole = naive_silhouette(rng, size, cfg.coverage, shapes, areas.numpy())
        else:
            hole = naive_blobs(rng, size, cfg.coverage)
        band = binary_dilation(hole, np.ones((2 * cfg.overlap + 1,) * 2, bool)) & ~hole
        x = (image / 255.0 - mean) / std
        x[:, hole] = 0.0
        r = slice(task.top, task.top + task.side)
        inputs.append(x.astype(np.float32))
        targets.append((image[:, r, r] / 127.5 - 1).astype(np.float32))
        weights.append((hole + cfg.overlap_weight * band)[None, r, r].astype(np.float32))
        holes.append(hole)
    stack = lambda xs: torch.from_numpy(np.stack(xs))  # noqa: E731
    return {"inputs": stack(inputs), "target": stack(targets), "weights": stack(weights), "holes": stack(holes)}


# ---------------------------------------------------------------- measurements


def build(extra: list[str]) -> tuple[Inpainting, Recipe]:
    r = load_recipe("pretrain", "inpainting", "mini", extra)
    return TASKS.get("inpainting")(r.component.cfg, build_backbone(r.backbone.name, r.backbone.cfg)), r


def construction(mask: str, images: torch.Tensor, reps: int) -> tuple[float, float]:
    """images/s of each, from the fastest of `reps` interleaved batches (other processes share the CPU)."""
    task, _ = build(MASKS[mask])
    gen, rng = torch.Generator().manual_seed(0), np.random.default_rng(0)
    fast = slow = math.inf
    for _ in range(reps + 1):  # the first round warms up (the silhouette bank, the allocator)
        t0 = time.perf_counter()
        task.make_batch(images, {}, gen)
        t1 = time.perf_counter()
        naive_batch(images, task, rng)
        t2 = time.perf_counter()
        fast, slow = min(fast, t1 - t0), min(slow, t2 - t1)
    return len(images) / fast, len(images) / slow


def throughput(extra: list[str], images: torch.Tensor, steps: int) -> float:
    task, r = build(extra)
    return pretrain_rate(task, r.optim, images, steps)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--reps", type=int, default=20)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    images = embedded_images("unlabeled", 64, args.batch, 0)
    construction("central", images, 3)  # warm-up: thread pool, allocator, caches
    for mask in MASKS:
        fast, slow = construction(mask, images, args.reps)
        print(f"make_batch {mask:13s} vectorised {fast:7.0f} img/s | per-image PIL/numpy {slow:6.0f} img/s | {fast / slow:5.1f}x")
    for label, extra in (("mini recipe (central, L_rec)", []), ("+ adversarial loss", ["task.adversarial=true"]),
                         ("random regions, L_rec", ["task.mask=random-regions"])):
        print(f"pretraining {label:38s} {throughput(extra, images, args.steps):6.1f} img/s")


if __name__ == "__main__":
    main()
