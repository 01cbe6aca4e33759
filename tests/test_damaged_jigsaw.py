"""CDJP: the missing tile is the one the label names and is absent from the input, the tiles are gray (L of
Lab, checked against OpenCV), each loss term is finite and weighted as configured, and the loss goes down."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sslbench.backbones.base import build_backbone
from sslbench.data.synthetic import embedded_images
from sslbench.errors import UserError
from sslbench.recipes import load_recipe
from sslbench.registry import TASKS
from sslbench.tasks.damaged_jigsaw import AB_SCALE
from sslbench.training import build_optimizer
from sslbench.transforms import TRANSFER_INPUTS
from tests.conftest import fit_losses
from tests.test_transforms import cv2_lab

TINY_NET = ["backbone.width=0.125", "backbone.fc_dim=32", "backbone.conv1_stride=1", "task.fc7_dim=32",
            "backbone.image_size=24", "task.tile=24", "task.num_permutations=20", "task.decoder_channels=8"]
EXACT = TINY_NET + ["task.cell=24", "task.random_offsets=false", "task.tile_norm=false"]  # tiles fill their cells


def make_task(overrides: list[str]):
    r = load_recipe("pretrain", "damaged-jigsaw", "mini", overrides)
    return TASKS.get("damaged-jigsaw")(r.component.cfg, build_backbone(r.backbone.name, r.backbone.cfg))


def test_missing_tile_is_the_labelled_one_and_absent_and_the_rest_is_gray_l() -> None:
    task = make_task(EXACT)
    images = torch.randint(0, 256, (6, 3, 72, 72), dtype=torch.uint8)
    batch = task.make_batch(images, {}, torch.Generator().manual_seed(0))
    tiles = batch["tiles"]
    assert tiles.shape == (6, 9, 1, 24, 24)  # one channel: no colour reaches the towers
    lightness = cv2_lab(images)[:, :1] / 50.0 - 1.0
    rgb = images.float() / 127.5 - 1.0
    for i in range(6):
        perm = task.permutations[batch["labels"][i]].tolist()
        slot = int(batch["missing_slot"][i])
        assert int(batch["missing"][i]) == perm[slot]  # the label names the cell that was removed
        assert torch.count_nonzero(tiles[i, slot]) == 0  # and its slot is empty
        r, c = divmod(perm[slot], 3)
        region = (slice(None), slice(r * 24, r * 24 + 24), slice(c * 24, c * 24 + 24))
        assert torch.allclose(batch["target_tile"][i], rgb[i][region], atol=1e-6)
        for s, cell in enumerate(perm):
            rr, cc = divmod(cell, 3)
            expected = lightness[i, :, rr * 24 : rr * 24 + 24, cc * 24 : cc * 24 + 24]
            if s == slot:
                assert not torch.allclose(tiles[i, s], expected, atol=1e-2)  # its content appears nowhere
            else:
                assert torch.allclose(tiles[i, s], expected, atol=0.01)  # L / 50 - 1 within OpenCV's 0.5
                ab = cv2_lab(images[i : i + 1])[0, 1:, rr * 24 : rr * 24 + 24, cc * 24 : cc * 24 + 24] / AB_SCALE
                assert torch.allclose(batch["target_ab"][i, s], ab, atol=0.005)


def test_loss_terms_are_finite_and_weighted_as_configured() -> None:
    torch.manual_seed(0)
    weights = {"perm": 0.5, "inpaint": 2.0, "color": 3.0}
    task = make_task(TINY_NET + ["task.cell=28"] + [f"task.{k}_weight={v}" for k, v in weights.items()])
    images = torch.randint(0, 256, (4, 3, 84, 84), dtype=torch.uint8)
    batch = task.make_batch(images, {}, torch.Generator().manual_seed(0))
    task.eval()  # no dropout: the same terms on both calls
    out = task(batch)
    terms = {k: out[f"{k}_loss"] for k in weights}
    assert all(torch.isfinite(v) and v > 0 for v in terms.values())
    assert torch.allclose(out["loss"], sum(weights[k] * terms[k] for k in weights))
    unweighted = make_task(TINY_NET + ["task.cell=28"] + [f"task.{k}_weight=1.0" for k in weights])
    unweighted.load_state_dict(task.state_dict())
    again = unweighted.eval()(batch)
    for k in weights:
        assert torch.allclose(again[f"{k}_loss"], terms[k])
    assert torch.allclose(again["loss"], sum(terms.values()))


def test_variant_names_a_switched_off_loss() -> None:
    assert make_task(TINY_NET + ["task.cell=28", "task.inpaint_weight=0"]).variant() == "no-inpaint"


def test_rgb_backbone_and_negative_weights_are_refused() -> None:
    with pytest.raises(UserError, match="backbone.in_channels=1"):
        make_task(TINY_NET + ["task.cell=28", "backbone.in_channels=3"])
    with pytest.raises(UserError, match="weight"):
        make_task(TINY_NET + ["task.cell=28", "task.color_weight=-1"])


def test_trunk_input_is_one_normalised_lightness_channel() -> None:
    images = torch.randint(0, 256, (3, 3, 20, 20), dtype=torch.uint8)
    x = TRANSFER_INPUTS.get(make_task(TINY_NET + ["task.cell=28"]).transfer_input())(images)
    assert x.shape == (3, 1, 20, 20)
    assert torch.allclose(x.mean((1, 2, 3)), torch.zeros(3), atol=1e-5)


def test_damaged_jigsaw_loss_goes_down_on_embedded_images() -> None:
    """One fixed batch of damaged puzzles: the network must learn to fit all three targets together."""
    torch.manual_seed(0)
    r = load_recipe("pretrain", "damaged-jigsaw", "mini", TINY_NET + ["task.cell=28", "optim.lr=0.05"])
    task = TASKS.get("damaged-jigsaw")(r.component.cfg, build_backbone(r.backbone.name, r.backbone.cfg))
    opt = build_optimizer(task.parameters(), r.optim)
    images = embedded_images("unlabeled", 84, 16, 0)
    batch = task.make_batch(images, {}, torch.Generator().manual_seed(0))
    losses = fit_losses(task, opt, [batch] * 20)
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:3]), losses
