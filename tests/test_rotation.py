"""RotNet: the batch holds every image in all four rotations (checked against numpy), and the loss goes down."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sslbench.backbones.base import build_backbone
from sslbench.data.synthetic import embedded_images
from sslbench.recipes import load_recipe
from sslbench.registry import TASKS
from sslbench.tasks.rotation import write_rotations
from sslbench.training import build_optimizer
from tests.conftest import fit_losses


def test_write_rotations_matches_numpy_rot90() -> None:
    images = torch.randint(0, 256, (3, 3, 5, 5), dtype=torch.uint8)
    out = write_rotations(images.new_empty((3, 4, 3, 5, 5)), images).flatten(0, 1)
    assert out.shape == (12, 3, 5, 5)
    for i in range(3):
        for k in range(4):
            expected = np.rot90(images[i].numpy(), k, axes=(1, 2))  # counter-clockwise k * 90 degrees
            assert np.array_equal(out[4 * i + k].numpy(), expected)


def test_make_batch_is_pure_given_the_generator() -> None:
    r = load_recipe("pretrain", "rotation", overrides=["backbone.width=0.1", "backbone.blocks=3"])
    task = TASKS.get("rotation")(r.component.cfg, build_backbone(r.backbone.name, r.backbone.cfg))
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    a = task.make_batch(images, {}, torch.Generator().manual_seed(1))
    b = task.make_batch(images, {}, torch.Generator().manual_seed(1))
    assert torch.equal(a["inputs"], b["inputs"]) and torch.equal(a["labels"], b["labels"])


def test_rotation_loss_goes_down_on_embedded_images() -> None:
    torch.manual_seed(0)
    r = load_recipe("pretrain", "rotation", overrides=["backbone.width=0.15", "backbone.blocks=3", "optim.lr=0.1"])
    task = TASKS.get("rotation")(r.component.cfg, build_backbone(r.backbone.name, r.backbone.cfg))
    opt = build_optimizer(task.parameters(), r.optim)
    images = embedded_images("unlabeled", 32, 32, 0)
    gen = torch.Generator().manual_seed(0)
    losses = fit_losses(task, opt, (task.make_batch(images, {}, gen) for _ in range(50)))
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:3]), losses


def loop_crop_flip(images: torch.Tensor, pad: int, flip: bool, generator: torch.Generator) -> torch.Tensor:
    """The per-image loop random_crop_flip replaced, as the reference: same draws, one image at a time."""
    n, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (pad, pad, pad, pad)) if pad else images
    ys = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    xs = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flips = (torch.rand(n, generator=generator) < 0.5) & flip
    out = torch.empty_like(images)
    for i in range(n):
        crop = padded[i, :, ys[i] : ys[i] + h, xs[i] : xs[i] + w]
        out[i] = crop.flip(-1) if flips[i] else crop
    return out


@pytest.mark.parametrize(("pad", "flip"), [(0, True), (4, True), (4, False), (0, False)])
def test_the_gathered_crop_and_flip_is_the_per_image_loop(pad: int, flip: bool) -> None:
    from sslbench.transforms import random_crop_flip

    images = torch.randint(0, 256, (9, 3, 12, 12), dtype=torch.uint8)
    ours = random_crop_flip(images, pad, flip, torch.Generator().manual_seed(3))
    assert torch.equal(ours, loop_crop_flip(images, pad, flip, torch.Generator().manual_seed(3)))


def test_the_in_place_normalisation_is_the_four_step_formula_bit_for_bit() -> None:
    from sslbench.transforms import CIFAR_MEAN, CIFAR_STD, MEAN, STD, normalize, normalize_cifar

    images = torch.arange(256, dtype=torch.uint8).repeat(3 * 4).view(4, 3, 16, 16)  # every byte in every channel
    for fn, mean, std in ((normalize, MEAN, STD), (normalize_cifar, CIFAR_MEAN, CIFAR_STD)):
        reference = (images.float() / 255.0 - mean) / std
        assert torch.equal(fn(images), reference)
    floats = images.float()
    normalize(floats)
    assert torch.equal(floats, images.float())  # float input is copied, not normalised in place


@pytest.mark.parametrize("pad", [4, 0])  # CIFAR's padded crops; the paper AlexNet's flips only (done per chunk)
def test_rotation_make_batch_is_todays_bit_for_bit(pad: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rotations written into their float slots + the in-place normalisation, a chunk at a time, give exactly
    what normalising, then stacking torch.rot90 copies, gave."""
    from sslbench.transforms import normalize, normalize_cifar

    monkeypatch.setattr("sslbench.transforms.CACHE_BYTES", 1)  # one image per chunk
    recipe = load_recipe("pretrain", "rotation", "mini", [f"task.crop_pad={pad}", "task.flip=true"])
    task = TASKS.get("rotation")(recipe.component.cfg, build_backbone(recipe.backbone.name, recipe.backbone.cfg))
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    batch = task.make_batch(images, {}, torch.Generator().manual_seed(5))
    cropped = loop_crop_flip(images, pad, True, torch.Generator().manual_seed(5))
    x = (normalize_cifar if recipe.component.cfg.normalize == "cifar" else normalize)(cropped)
    reference = torch.stack([torch.rot90(x, k, dims=(2, 3)) for k in range(4)], dim=1).flatten(0, 1)
    assert torch.equal(batch["inputs"], reference)
    assert torch.equal(batch["labels"], torch.arange(4).repeat(6))
