"""Benchmark (issue 18, part 3): RotNet's batch construction at the paper's ImageNet geometry, today's code against the
code it replaced, measured in the same run.

RotNet AlexNet (rotation/paper-alexnet.toml): 192 images of 224 px per step, a random horizontal flip each, all four
rotations -> 768 normalised inputs. The baseline is the replaced pipeline, kept here verbatim in behaviour: a per-image
flip loop, the four-step normalisation (x / 255 - mean) / std of the N float images, then torch.stack of four
torch.rot90 copies. The current path flips by one masked copy, rotates the uint8 images into their slots of one
output, and normalises the 4N images once (a conversion, then the three steps in place: no further buffers).
Outputs are checked bit-identical before timing. The other tasks' make_batch (Jigsaw, Context, Damaged Jigsaw, Context
Encoders) are not yet covered here (issue 18 stays open).

Last line: `make_batch ratio R` (baseline ms / current ms at the first thread count).
Run:  python benchmarks/bench_make_batch.py [threads ...]     (default 1 2)
"""

from __future__ import annotations

import sys
import time

import torch

from sslbench.backbones.base import build_backbone
from sslbench.recipes import load_recipe
from sslbench.registry import TASKS
from sslbench.transforms import MEAN, STD

N, SIDE = 192, 224  # rotation/paper-alexnet.toml: batch_size 192, image_size 224


def baseline(images: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The replaced RotNet make_batch (flip only: crop_pad 0 in the paper AlexNet recipe)."""
    n, _, h, w = images.shape
    torch.randint(0, 1, (n,), generator=generator)  # the crop draws it made (pad 0), to keep the same stream
    torch.randint(0, 1, (n,), generator=generator)
    flips = torch.rand(n, generator=generator) < 0.5
    out = torch.empty_like(images)
    for i in range(n):
        out[i] = images[i].flip(-1) if flips[i] else images[i]
    x = (out.float() / 255.0 - MEAN) / STD
    rotated = torch.stack([torch.rot90(x, k, dims=(2, 3)) for k in range(4)], dim=1)
    return {"inputs": rotated.flatten(0, 1), "labels": torch.arange(4).repeat(n)}


def best_ms(fn, repeats: int) -> float:  # noqa: ANN001
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def main(threads: list[int]) -> None:
    recipe = load_recipe("pretrain", "rotation", "paper", flavour="alexnet")
    cfg = recipe.component.cfg
    assert cfg.flip and not cfg.crop_pad, "the paper AlexNet recipe flips and does not crop"
    task = TASKS.get("rotation")(cfg, build_backbone(recipe.backbone.name, recipe.backbone.cfg))
    images = torch.randint(0, 256, (N, 3, SIDE, SIDE), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    ours = task.make_batch(images, {}, torch.Generator().manual_seed(1))
    theirs = baseline(images, torch.Generator().manual_seed(1))
    assert torch.equal(ours["labels"], theirs["labels"])
    assert torch.equal(ours["inputs"], theirs["inputs"])
    print(f"RotNet AlexNet make_batch, {N} images of {SIDE} px -> {4 * N} inputs (best of 5)")
    print("| threads | replaced (ms) | current (ms) | ratio |")
    print("|---|---|---|---|")
    ratios = []
    for t in threads:
        torch.set_num_threads(t)
        gen = torch.Generator().manual_seed(2)
        old = best_ms(lambda: baseline(images, gen), 5)  # noqa: B023
        new = best_ms(lambda: task.make_batch(images, {}, gen), 5)  # noqa: B023
        ratios.append(old / new)
        print(f"| {t} | {old:.0f} | {new:.0f} | {old / new:.2f}x |")
    print(f"make_batch ratio {ratios[0]:.2f}")


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [1, 2])
