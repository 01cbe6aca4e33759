"""RotNet: the batch holds every image in all four rotations (checked against numpy), and the loss goes down."""

from __future__ import annotations

import numpy as np
import torch

from sslbench.backbones.base import build_backbone
from sslbench.data.synthetic import embedded_images
from sslbench.recipes import load_recipe
from sslbench.registry import TASKS
from sslbench.tasks.rotation import rotate_all
from sslbench.training import build_optimizer
from tests.conftest import fit_losses


def test_rotate_all_matches_numpy_rot90() -> None:
    images = torch.randint(0, 256, (3, 3, 5, 5), dtype=torch.uint8)
    out, labels = rotate_all(images)
    assert out.shape == (12, 3, 5, 5) and labels.tolist() == [0, 1, 2, 3] * 3
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
