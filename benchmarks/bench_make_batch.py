"""Benchmark (issue 18, part 3): every pretext task's batch construction at its paper geometry, the code it replaced
against today's, measured in the same run.

Geometries (the paper recipes): RotNet AlexNet 192 x 224 px -> 768 rotated inputs; Jigsaw and Damaged Jigsaw 256 x
256 px -> 9 tiles of 64 px each; Context 56 x 398 px -> 9 patches of 96 px each; Context Encoders 64 x 224 px.

"replaced" is the code before issue 18, run in a child process with torch's default 4 KB pages
(THP_MEM_ALLOC_ENABLE=0): for RotNet, Jigsaw and Context Encoders their old make_batch, kept here verbatim in
behaviour (Context Encoders' holes through torch's affine_grid); for all tasks the old cut_windows (torch's index
kernel, one offset per pixel). "current" is the task's make_batch in a
child process as sslbench runs it (importing sslbench turns torch's transparent huge pages on). The current outputs
are checked bit-identical to the replaced ones before timing. A third column, "current, 4 KB pages", separates the
code's share from the pages'.

Last line: `make_batch ratio R` (replaced / current, RotNet, at the first thread count).
Run:  python benchmarks/bench_make_batch.py [threads ...]     (default 1 2)
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time

TASK_NAMES = {"rotation": "alexnet", "jigsaw": None, "damaged-jigsaw": None, "context": None, "inpainting": None}
REPEATS = 5


def child(mode: str, threads: int) -> None:
    """In its own process (page size and code fixed at start): best-of-5 ms of each task's make_batch."""
    import sslbench  # noqa: F401, I001  (before torch: it sets torch's page mode)
    import torch

    import sslbench.transforms as transforms
    from sslbench.backbones.base import build_backbone
    from sslbench.recipes import load_recipe
    from sslbench.registry import TASKS

    torch.set_num_threads(threads)
    replaced_cut = make_replaced_cut(torch)
    modules = [transforms] + [importlib.import_module(f"sslbench.tasks.{m}") for m in ("jigsaw", "damaged_jigsaw",
                                                                                          "context")]
    inpainting = importlib.import_module("sslbench.tasks.inpainting")
    today = {"cut_windows": transforms.cut_windows, "affine_grid": inpainting.affine_grid}

    def use_replaced(replaced: bool) -> None:
        """The old helpers patched in (the tasks call them through their modules), or today's back."""
        for module in modules:
            module.cut_windows = replaced_cut if replaced else today["cut_windows"]
        inpainting.affine_grid = (lambda theta, size: torch.nn.functional.affine_grid(
            theta, [theta.shape[0], 1, size, size], align_corners=False)) if replaced else today["affine_grid"]

    results = {}
    for name, flavour in TASK_NAMES.items():
        recipe = load_recipe("pretrain", name, "paper", flavour=flavour)
        task = TASKS.get(name)(recipe.component.cfg, build_backbone(recipe.backbone.name, recipe.backbone.cfg))
        n, side = recipe.data.batch_size, recipe.data.image_size
        images = torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        current = task.make_batch
        old = {"rotation": lambda x, t, g, task=task: replaced_rotation(torch, task, x, g),
               "jigsaw": lambda x, t, g, task=task: replaced_jigsaw(torch, task, x, g),
               "inpainting": lambda x, t, g, task=task: replaced_inpainting(torch, task, x, g)}.get(name, current)
        if mode == "replaced":
            use_replaced(True)
            fn = old
        else:  # today's outputs against the replaced code's, with the old helpers
            fn = current
            a = current(images, {}, torch.Generator().manual_seed(1))
            use_replaced(True)
            b = old(images, {}, torch.Generator().manual_seed(1))
            use_replaced(False)
            for key in b:
                assert torch.equal(a[key], b[key]), f"{name}: {key} differs from the replaced code"
        gen = torch.Generator().manual_seed(2)
        fn(images, {}, gen)  # warm-up
        times = []
        for _ in range(REPEATS):
            start = time.perf_counter()
            fn(images, {}, gen)
            times.append(time.perf_counter() - start)
        results[name] = 1000 * min(times)
    print(json.dumps(results))


def make_replaced_cut(torch):  # noqa: ANN001, ANN201
    """cut_windows before issue 18: torch's advanced indexing of the unfolded view."""
    def cut_windows(images, rows, cols, size, channels=None):  # noqa: ANN001, ANN202
        n, c = images.shape[:2]
        windows = images.unfold(2, size, 1).unfold(3, size, 1)
        image = torch.arange(n).view(n, 1)
        if channels is not None:
            return windows[image, channels, rows, cols][:, :, None]
        if rows.dim() == 2:
            return windows[image, :, rows, cols]
        return windows[image[..., None], torch.arange(c).view(1, 1, c), rows, cols]
    return cut_windows


def replaced_rotation(torch, task, images, generator):  # noqa: ANN001, ANN201
    """RotNet's make_batch before issue 18 (flip only: crop_pad 0 in the paper AlexNet recipe)."""
    from sslbench.transforms import MEAN, STD

    n = images.shape[0]
    torch.randint(0, 1, (n,), generator=generator)  # the crop draws it made (pad 0), to keep the same stream
    torch.randint(0, 1, (n,), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    out = torch.empty_like(images)
    for i in range(n):
        out[i] = images[i].flip(-1) if flips[i] else images[i]
    x = (out.float() / 255.0 - MEAN) / STD
    rotated = torch.stack([torch.rot90(x, k, dims=(2, 3)) for k in range(4)], dim=1)
    return {"inputs": rotated.flatten(0, 1), "labels": torch.arange(4).repeat(n)}


def replaced_jigsaw(torch, task, images, generator):  # noqa: ANN001, ANN201
    """Jigsaw's make_batch before issue 18: whole-batch passes (cut, float, /255, gray by gather, normalise)."""
    from sslbench.tasks import jigsaw
    from sslbench.transforms import luma, standardize_

    cfg = task.cfg
    n, c, h, w = images.shape
    perms = task.permutations
    labels = torch.randint(0, len(perms), (n,), generator=generator)
    corners = jigsaw.tile_corners(n, c, h, w, cfg.cell, cfg.tile, cfg.random_offsets, cfg.channel_jitter, generator)
    corners = jigsaw.shuffle_tiles(corners, perms[labels])
    tiles = jigsaw.cut_windows(images, corners[..., 0], corners[..., 1], cfg.tile).float()
    tiles.div_(255.0)
    pick = torch.nonzero(torch.rand(n, generator=generator) < cfg.gray_prob).flatten()
    if len(pick):
        tiles[pick] = luma(tiles[pick]).expand(-1, -1, 3, -1, -1)
    standardize_(tiles, (3, 4) if cfg.tile_norm_per_channel else (2, 3, 4))
    return {"tiles": tiles, "labels": labels}


def replaced_inpainting(torch, task, images, generator):  # noqa: ANN001, ANN201
    """Context Encoders' make_batch before issue 18: a flipped copy, whole-batch float passes, the band as the OR
    of 2 x (2 overlap + 1) shifted views. (Its silhouette holes used torch's affine_grid: patched in by the
    replaced child.)"""
    import functools

    import torch.nn.functional as F

    from sslbench.tasks.inpainting import make_holes
    from sslbench.transforms import MEAN, STD

    n = images.shape[0]
    flips = torch.rand(n, generator=generator) < 0.5
    images = images.clone()
    images[flips] = images[flips].flip(-1)
    holes = make_holes(task.cfg, n, task.size, generator)
    overlap, size = task.cfg.overlap, holes.shape[-1]
    padded = F.pad(holes, (overlap, overlap, overlap, overlap))
    rows = functools.reduce(torch.logical_or, [padded[:, :, i: i + size] for i in range(2 * overlap + 1)])
    band = functools.reduce(torch.logical_or, [rows[:, i: i + size] for i in range(2 * overlap + 1)]) & ~holes
    weights = (holes.float() + task.cfg.overlap_weight * band.float())[:, None]
    pixels = images.float()
    return {"inputs": torch.addcmul(-MEAN / STD, pixels, 1 / (255 * STD)).masked_fill_(holes[:, None], 0.0),
            "target": task.region(pixels).div(127.5).sub_(1.0), "weights": task.region(weights), "holes": holes}


def run_child(mode: str, threads: int, pages: str | None) -> dict[str, float]:
    env = dict(os.environ)
    env.pop("THP_MEM_ALLOC_ENABLE", None)
    if pages:
        env["THP_MEM_ALLOC_ENABLE"] = pages
    out = subprocess.run([sys.executable, __file__, "--child", mode, str(threads)], env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(threads: list[int]) -> None:
    print(f"make_batch at the paper geometry, best of {REPEATS}, ms per batch")
    print("| task | threads | replaced | current, 4 KB pages | current | ratio |")
    print("|---|---|---|---|---|---|")
    first = None
    for t in threads:
        old = run_child("replaced", t, "0")
        small = run_child("current", t, "0")
        new = run_child("current", t, None)
        for name in TASK_NAMES:
            ratio = old[name] / new[name]
            print(f"| {name} | {t} | {old[name]:.0f} | {small[name]:.0f} | {new[name]:.0f} | {ratio:.2f}x |")
        first = first or old["rotation"] / new["rotation"]
    print(f"make_batch ratio {first:.2f}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(sys.argv[2], int(sys.argv[3]))
    else:
        main([int(a) for a in sys.argv[1:]] or [1, 2])
