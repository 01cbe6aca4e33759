"""Context Prediction: labels proved by finding both patches back in the image, grid geometry, colour
handling against straightforward references, determinism, and the loss going down."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sslbench.backbones.alexnet import AlexNet, AlexNetConfig
from sslbench.backbones.base import build_backbone
from sslbench.backbones.nin import NIN, NINConfig
from sslbench.config import build
from sslbench.errors import UserError
from sslbench.recipes import load_recipe
from sslbench.tasks.context import (
    NEIGHBOURS,
    ContextConfig,
    ContextPrediction,
    downsample,
    downsample_sides,
    drop_colors,
    grid_positions,
    neighbour_pairs,
    normalize_patches,
    project_out_green_magenta,
    row_std,
)
from tests.conftest import fit_losses

PATCH = 21  # the smallest side a stride-1 AlexNet accepts: fast tests


def tiny_task(**task: object) -> ContextPrediction:
    backbone = AlexNet(AlexNetConfig(image_size=PATCH, width=0.125, conv1_stride=1, fc_dim=32, dropout=0.0))
    return ContextPrediction(build(ContextConfig, {"downsample_min": 3, **task}, "test"), backbone)


def reference_normalize(patch: np.ndarray) -> np.ndarray:
    centred = patch - patch.mean(axis=(1, 2), keepdims=True)
    return centred / (np.sqrt((centred**2).mean()) + 1e-6)


def normalised_crops(image: torch.Tensor, p: int) -> torch.Tensor:
    """Every p x p crop of `image` (row-major positions), each normalised like reference_normalize."""
    crops = F.unfold(image[None].double() / 255.0, p)[0].T.reshape(-1, 3, p, p)
    centred = crops - crops.mean(dim=(2, 3), keepdim=True)
    return centred / (centred.square().mean(dim=(1, 2, 3), keepdim=True).sqrt() + 1e-6)


def locate(crops: torch.Tensor, width: int, patch: torch.Tensor) -> tuple[int, int]:
    """Brute force: the one (y, x) whose normalised crop equals `patch`."""
    hits = ((crops - patch.double()).abs().amax(dim=(1, 2, 3)) < 1e-4).nonzero().flatten().tolist()
    assert len(hits) == 1, hits
    return divmod(hits[0], width - patch.shape[-1] + 1)


@pytest.mark.parametrize("pairs,jitter", [("all", 0), ("all", 2), ("center", 2)])
def test_every_label_is_the_position_of_the_second_patch_found_in_the_image(pairs: str, jitter: int) -> None:
    gap = 4
    task = tiny_task(gap=gap, jitter=jitter, pairs=pairs, aberration="none", downsample_prob=0.0)
    images = torch.randint(0, 256, (2, 3, 3 * PATCH + 2 * gap + 2 * jitter + 3, 80), dtype=torch.uint8)
    batch = task.make_batch(images, {}, torch.Generator().manual_seed(3))
    assert len(batch["labels"]) == (40 if pairs == "all" else 8) * 2
    crops = [normalised_crops(image, PATCH) for image in images]
    where = {k: locate(crops[k // 9], images.shape[3], patch) for k, patch in enumerate(batch["patches"])}
    for first, second, label in zip(batch["first"].tolist(), batch["second"].tolist(), batch["labels"].tolist()):
        assert second // 9 == first // 9  # both patches from the same image
        (y1, x1), (y2, x2) = where[first], where[second]
        dx, dy = NEIGHBOURS[label]
        step = PATCH + gap
        assert abs(x2 - x1 - dx * step) <= 2 * jitter and abs(y2 - y1 - dy * step) <= 2 * jitter, (label, x1, y1, x2, y2)


def test_neighbour_pairs_match_a_hand_written_3x3_table() -> None:
    first, second, labels = neighbour_pairs("center")
    assert first.tolist() == [4] * 8 and second.tolist() == [0, 1, 2, 3, 5, 6, 7, 8] and labels.tolist() == list(range(8))
    first, second, labels = neighbour_pairs("all")
    assert len(labels) == 40  # 4 corners x 3 + 4 edges x 5 + centre x 8
    for a, b, label in zip(first.tolist(), second.tolist(), labels.tolist()):
        assert (b % 3 - a % 3, b // 3 - a // 3) == NEIGHBOURS[label]


@pytest.mark.parametrize("gap,jitter", [(48, 7), (4, 2), (2, 1), (0, 0)])
def test_jittered_patches_never_overlap_nor_leave_the_image(gap: int, jitter: int) -> None:
    patch = 96 if gap == 48 else 10
    side = 3 * patch + 2 * gap + 2 * jitter
    g = torch.Generator().manual_seed(0)
    for height, width in ((side, side), (side + 17, side + 5)):
        ys, xs = grid_positions(500, height, width, patch, gap, jitter, g)
        assert ys.min() >= 0 and xs.min() >= 0 and ys.max() <= height - patch and xs.max() <= width - patch
        dy = (ys[:, :, None] - ys[:, None, :]).abs()
        dx = (xs[:, :, None] - xs[:, None, :]).abs()
        apart = (dy >= patch) | (dx >= patch)
        assert apart[:, ~torch.eye(9, dtype=torch.bool)].all()


def test_projection_removes_the_green_magenta_component() -> None:
    x = torch.rand(5, 3, 6, 6)
    b = np.array([-1.0, 2.0, -1.0])
    a = np.eye(3) - np.outer(b, b) / (b @ b)  # the paper's A = I - B^T B / (B B^T)
    expected = np.einsum("ij,njhw->nihw", a, x.numpy())
    out = project_out_green_magenta(x)
    assert np.allclose(out.numpy(), expected, atol=1e-6)
    task = tiny_task(gap=4, jitter=2, aberration="projection")
    batch = task.make_batch(torch.randint(0, 256, (2, 3, 80, 80), dtype=torch.uint8), {}, torch.Generator().manual_seed(0))
    along = torch.einsum("c,nchw->nhw", torch.tensor(b, dtype=torch.float32) / math.sqrt(6), batch["patches"])
    assert along.abs().max() < 1e-4 and batch["patches"].abs().max() > 0.5


def test_color_dropping_keeps_exactly_one_channel() -> None:
    x = torch.rand(6, 3, 8, 8)
    keep = torch.tensor([0, 1, 2, 2, 1, 0])
    kept = x[torch.arange(6), keep][:, None]
    assert kept.shape == (6, 1, 8, 8)
    out = drop_colors(kept, keep, 0.01, torch.Generator().manual_seed(0))
    for i, c in enumerate(keep.tolist()):
        assert torch.equal(out[i, c], x[i, c])
        for other in {0, 1, 2} - {c}:
            ratio = out[i, other].std() / x[i, c].std()
            assert 0.005 < ratio < 0.02  # Gaussian noise of ~1/100 the kept channel's std
    task = tiny_task(gap=4, jitter=2, aberration="color-dropping")
    batch = task.make_batch(torch.randint(0, 256, (4, 3, 80, 80), dtype=torch.uint8), {}, torch.Generator().manual_seed(0))
    std = batch["patches"].std(dim=(2, 3))  # [M, 3]
    assert ((std > 0.5).sum(1) == 1).all() and ((std < 0.05).sum(1) == 2).all()
    kept = std.argmax(1)
    assert 0 < (kept == 0).sum() < len(kept)  # the kept channel varies from patch to patch


def test_normalize_patches_matches_numpy() -> None:
    x = torch.rand(4, 3, 5, 5) * 200
    out = normalize_patches(x)
    for i in range(4):
        assert np.allclose(out[i].numpy(), reference_normalize(x[i].numpy()), atol=1e-5)


def test_downsample_matches_one_patch_at_a_time_and_its_sides_follow_the_released_code() -> None:
    x = torch.rand(12, 3, 16, 16)
    sides = torch.tensor([0, 5, 5, 9, 0, 15, 3, 0, 9, 12, 0, 4])
    out = downsample(x, sides)
    for i, s in enumerate(sides.tolist()):
        if s == 0:
            assert torch.equal(out[i], x[i])
        else:
            small = F.interpolate(x[i : i + 1], size=(s, s), mode="bilinear", align_corners=False)
            assert torch.allclose(out[i], F.interpolate(small, size=(16, 16), mode="bilinear", align_corners=False)[0])
    drawn = downsample_sides(30000, 96, 10, 1 / 3, torch.Generator().manual_seed(0))
    chosen = drawn[drawn > 0]
    assert abs(len(chosen) / 30000 - 1 / 3) < 0.02 and chosen.min() >= 10 and chosen.max() <= 95


def test_make_batch_is_pure_given_the_generator() -> None:
    task = tiny_task(gap=4, jitter=2)
    images = torch.randint(0, 256, (3, 3, 80, 80), dtype=torch.uint8)
    a = task.make_batch(images, {}, torch.Generator().manual_seed(1))
    b = task.make_batch(images, {}, torch.Generator().manual_seed(1))
    c = task.make_batch(images, {}, torch.Generator().manual_seed(2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["patches"], c["patches"])


def test_bad_settings_are_user_errors() -> None:
    with pytest.raises(UserError, match="needs images of at least"):
        tiny_task(gap=4, jitter=2).make_batch(torch.zeros(1, 3, 40, 40, dtype=torch.uint8), {}, torch.Generator())
    with pytest.raises(UserError, match="overlap"):
        tiny_task(gap=2, jitter=2)
    with pytest.raises(UserError, match="needs a backbone with a fuse tap; nin has none"):
        ContextPrediction(ContextConfig(), NIN(NINConfig(blocks=3, width=0.1)))


def test_context_loss_goes_down_on_a_fixed_batch() -> None:
    torch.manual_seed(0)
    task = tiny_task(gap=4, jitter=2)
    opt = torch.optim.SGD(task.parameters(), lr=0.05, momentum=0.9)
    batch = task.make_batch(torch.randint(0, 256, (4, 3, 80, 80), dtype=torch.uint8), {}, torch.Generator().manual_seed(0))
    losses = fit_losses(task, opt, [batch] * 30)
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3]), losses


def test_mini_recipes_build() -> None:
    for flavour in ("", "vgg"):
        r = load_recipe("pretrain", "context", "mini", flavour=flavour)
        task = ContextPrediction(r.component.cfg, build_backbone(r.backbone.name, r.backbone.cfg))
        extent = 3 * task.patch + 2 * r.component.cfg.gap + 2 * r.component.cfg.jitter
        assert extent < r.data.image_size and task.variant() == "color-dropping"


def test_every_trainable_parameter_gets_a_gradient() -> None:
    """DDP needs it: the trunk's own fc7, which the fusion head replaces, is frozen instead of left unused."""
    task = tiny_task(gap=4, jitter=2)
    task(task.make_batch(torch.randint(0, 256, (2, 3, 80, 80), dtype=torch.uint8), {}, torch.Generator()))["loss"].backward()
    missing = [name for name, p in task.named_parameters() if p.requires_grad and p.grad is None]
    frozen = [name for name, p in task.named_parameters() if not p.requires_grad]
    assert not missing and frozen and all(name.startswith("backbone.fc7.") for name in frozen)


def test_row_std_matches_torch_std() -> None:
    x = torch.rand(7, 500, dtype=torch.float64) * 255
    torch.testing.assert_close(row_std(x), x.std(1))
