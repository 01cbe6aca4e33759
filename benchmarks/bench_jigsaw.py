"""Benchmark (c): Jigsaw / damaged-jigsaw batch construction and CPU pretraining throughput.

1. Batch construction, images/s: the tasks' vectorised `make_batch` (one gather cuts every tile of the batch,
   per-tile statistics in one reduction) against a straightforward per-tile PIL pipeline as in the released
   PyTorch port (per image: PIL crop of each tile, per-tile numpy normalisation, then shuffle and stack).
   Both use the jigsaw mini recipe's geometry (128 px images, 42 px cells, 36 px tiles) and the paper's
   (256 px images, 85 px cells, 64 px tiles), with channel jitter off (the PIL baseline has none).
   Damaged Jigsaw's baseline does the same per tile plus PIL's LittleCMS sRGB -> Lab transform, the
   per-tile normalised L as input, ab and the removed RGB tile as targets.
2. Pretraining, images/s on the CPU (make_batch + forward + backward + SGD step) for both mini recipes.
Run:  python benchmarks/bench_jigsaw.py [threads]     (default 2)
"""

from __future__ import annotations

import functools
import sys
import time

import numpy as np
import torch
from PIL import Image, ImageCms

from sslbench.backbones.base import build_backbone
from sslbench.data.synthetic import embedded_images
from sslbench.recipes import load_recipe
from sslbench.registry import TASKS
from sslbench.transforms import GRID
from timing import pretrain_rate

GRAY_P = 0.3


def naive_batch(images: torch.Tensor, perms: np.ndarray, cell: int, tile: int,
                rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """One image, one tile at a time, through PIL and numpy (the released loaders' structure)."""
    crop = GRID * cell
    out, labels = [], []
    for img in images:
        pil = Image.fromarray(img.permute(1, 2, 0).numpy())
        if rng.random() < GRAY_P:
            pil = pil.convert("L").convert("RGB")
        y0, x0 = rng.integers(0, pil.height - crop + 1), rng.integers(0, pil.width - crop + 1)
        tiles = []
        for k in range(GRID * GRID):
            oy, ox = rng.integers(0, cell - tile + 1, size=2)
            top, left = y0 + (k // GRID) * cell + oy, x0 + (k % GRID) * cell + ox
            t = np.asarray(pil.crop((left, top, left + tile, top + tile)), dtype=np.float32) / 255.0
            t = (t - t.mean()) / max(float(t.std()), 1e-3)
            tiles.append(torch.from_numpy(t).permute(2, 0, 1))
        label = int(rng.integers(len(perms)))
        out.append(torch.stack([tiles[j] for j in perms[label]]))
        labels.append(label)
    return {"tiles": torch.stack(out), "labels": torch.tensor(labels)}


_LAB = None


def _to_lab(tile: Image.Image) -> np.ndarray:
    """One RGB tile -> float Lab (L 0..100, a/b about -128..127) through PIL's LittleCMS sRGB -> LAB transform."""
    global _LAB
    if _LAB is None:
        _LAB = ImageCms.buildTransformFromOpenProfiles(ImageCms.createProfile("sRGB"), ImageCms.createProfile("LAB"),
                                                       "RGB", "LAB")
    lab = np.asarray(ImageCms.applyTransform(tile, _LAB), dtype=np.float32)
    return np.stack([lab[..., 0] * (100.0 / 255.0), lab[..., 1] - 128.0, lab[..., 2] - 128.0])


_XYZ = np.array([[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169],
                 [0.019334, 0.119193, 0.950227]]) / np.array([0.950456, 1.0, 1.088754])[:, None]


def _to_lab_formula(tile: Image.Image) -> np.ndarray:
    """One RGB tile -> float Lab by the CIE formulas in numpy (what skimage's rgb2lab computes): the same
    values as the task's own Lab, where LittleCMS returns 8-bit ones."""
    rgb = np.asarray(tile, dtype=np.float64) / 255.0
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = linear @ _XYZ.T
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])]).astype(np.float32)


def naive_damaged_batch(images: torch.Tensor, perms: np.ndarray, cell: int, tile: int,
                        rng: np.random.Generator, to_lab=_to_lab) -> dict[str, torch.Tensor]:  # noqa: ANN001
    """Damaged Jigsaw, one tile at a time: PIL crop, Lab (PIL/LittleCMS, or the formula in numpy), per-tile
    normalised L as the input, ab as the colour target, one slot emptied and its RGB tile kept as the
    inpainting target."""
    crop = GRID * cell
    gray_all, ab_all, targets, labels, missing = [], [], [], [], []
    for img in images:
        pil = Image.fromarray(img.permute(1, 2, 0).numpy())
        y0, x0 = rng.integers(0, pil.height - crop + 1), rng.integers(0, pil.width - crop + 1)
        label = int(rng.integers(len(perms)))
        slot = int(rng.integers(GRID * GRID))
        grays, abs_ = [], []
        for s, k in enumerate(perms[label]):
            oy, ox = rng.integers(0, cell - tile + 1, size=2)
            top, left = y0 + (k // GRID) * cell + oy, x0 + (k % GRID) * cell + ox
            t = pil.crop((left, top, left + tile, top + tile))
            lab = to_lab(t)
            light = (lab[0] - lab[0].mean()) / max(float(lab[0].std()), 1e-3)
            grays.append(np.zeros_like(light) if s == slot else light)
            abs_.append(lab[1:] / 110.0)
            if s == slot:
                targets.append(torch.from_numpy(np.asarray(t, np.float32).transpose(2, 0, 1) / 127.5 - 1.0))
        gray_all.append(torch.from_numpy(np.stack(grays))[:, None])
        ab_all.append(torch.from_numpy(np.stack(abs_)))
        labels.append(label)
        missing.append(slot)
    return {"tiles": torch.stack(gray_all), "labels": torch.tensor(labels), "missing_slot": torch.tensor(missing),
            "target_tile": torch.stack(targets), "target_ab": torch.stack(ab_all)}


def build(task: str, overrides: list[str]):
    r = load_recipe("pretrain", task, "mini", overrides)
    return r, TASKS.get(task)(r.component.cfg, build_backbone(r.backbone.name, r.backbone.cfg))


def batch_construction(task_name: str, image_size: int, cell: int, tile: int, batch: int = 128,
                       reps: int = 5) -> tuple[float, ...]:
    """Images/s of make_batch, then of each per-tile baseline (Damaged Jigsaw: LittleCMS Lab, formula Lab)."""
    geometry = [f"task.cell={cell}", f"task.tile={tile}", f"backbone.image_size={tile}",
                "task.num_permutations=100", f"data.image_size={image_size}"]
    if task_name == "jigsaw":
        geometry.append("task.channel_jitter=0")  # the PIL baseline has none
    _, task = build(task_name, geometry)
    baselines = [naive_batch] if task_name == "jigsaw" else [
        naive_damaged_batch, functools.partial(naive_damaged_batch, to_lab=_to_lab_formula)]
    images = embedded_images("unlabeled", image_size, batch)
    perms = task.permutations.numpy()
    gen, rng = torch.Generator().manual_seed(0), np.random.default_rng(0)
    rates = []
    for make in [lambda: task.make_batch(images, {}, gen)] + [functools.partial(b, images, perms, cell, tile, rng)
                                                          for b in baselines]:
        make()  # warm-up
        t0 = time.perf_counter()
        for _ in range(reps):
            make()
        rates.append(reps * batch / (time.perf_counter() - t0))
    return tuple(rates)


def pretrain_throughput(task_name: str, steps: int = 6) -> float:
    r, task = build(task_name, [])
    images = embedded_images("unlabeled", r.data.image_size, r.data.batch_size)
    return pretrain_rate(task, r.optim, images, steps)


def main() -> None:
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
    for name in ("jigsaw", "damaged-jigsaw"):
        for size, cell, tile in ((128, 42, 36), (256, 85, 64)):
            fast, *slow = batch_construction(name, size, cell, tile)
            kinds = ["per-tile PIL"] if name == "jigsaw" else ["per-tile PIL + LittleCMS Lab", "per-tile PIL + formula Lab"]
            versus = " | ".join(f"{k} {r:6.0f} img/s ({fast / r:4.1f}x)" for k, r in zip(kinds, slow))
            print(f"{name} make_batch {size} px, {cell} px cells, {tile} px tiles: vectorised {fast:7.0f} img/s | {versus}")
    for name in ("jigsaw", "damaged-jigsaw"):
        print(f"pretrain {name:15s} (mini recipe, CPU): {pretrain_throughput(name):6.1f} img/s")


if __name__ == "__main__":
    main()
