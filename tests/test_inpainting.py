"""Context Encoders: the masks cover what they claim, the band carries 10x weight, the hole holds the mean pixel,
the two players' gradients stay apart, the reconstruction loss goes down, and a checkpoint gives a PNG grid."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from sslbench.backbones.alexnet import AlexNetConfig
from sslbench.backbones.base import build_backbone
from sslbench.data.synthetic import embedded_images
from sslbench.engine import pretrain
from sslbench.errors import UserError
from sslbench.tasks.inpainting import (
    ChannelwiseFC,
    Inpainting,
    InpaintingConfig,
    blob_holes,
    block_boxes,
    boxes_to_holes,
    central_holes,
    masked_l2,
    overlap_band,
    silhouette_holes,
)
from sslbench.training import build_optimizer
from sslbench.transforms import MEAN, normalize
from tests.conftest import fit_losses, tiny_alexnet, tiny_pretrain

TINY = AlexNetConfig(image_size=32, width=0.125, conv1_stride=1, fc_dim=32)


def tiny_task(**cfg: object) -> Inpainting:
    defaults = {"decoder_width": 8, "disc_width": 8, "flip": False}
    return Inpainting(InpaintingConfig(**{**defaults, **cfg}), build_backbone("alexnet", TINY))  # type: ignore[arg-type]


def images(n: int = 6, size: int = 32) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))


# ---------------------------------------------------------------- masks


@pytest.mark.parametrize(("size", "overlap", "hole"), [(128, 4, (36, 92)), (64, 2, (18, 46)), (32, 0, (8, 24))])
def test_central_hole_is_the_centre_quarter_less_its_band(size: int, overlap: int, hole: tuple[int, int]) -> None:
    """128 px / 4 px band: the released train.lua's 64 px centre [32, 96) and 56 px hole [36, 92)."""
    holes = central_holes(2, size, 0.25, overlap)
    expected = np.zeros((size, size), bool)
    expected[hole[0] : hole[1], hole[0] : hole[1]] = True
    assert all(np.array_equal(h.numpy(), expected) for h in holes)
    predicted = holes | overlap_band(holes, overlap)  # what the network predicts: the centre square
    assert predicted[0].sum() == (size // 2) ** 2 and predicted[0, size // 4 : 3 * size // 4, size // 4 : 3 * size // 4].all()


def test_central_batch_targets_the_centre_square() -> None:
    task = tiny_task(mask="central", overlap=2)
    x = images()
    batch = task.make_batch(x, {}, torch.Generator().manual_seed(0))
    assert batch["target"].shape == (6, 3, 16, 16) and batch["weights"].shape == (6, 1, 16, 16)
    assert torch.allclose(batch["target"], x[:, :, 8:24, 8:24].float() / 127.5 - 1)
    assert (batch["weights"] > 0).all()  # every predicted pixel is hole or band
    assert (batch["weights"][:, :, 2:14, 2:14] == 1).all() and batch["weights"].sum() == 6 * (144 + 10 * (256 - 144))


def reference_blocks(boxes: np.ndarray, size: int, coverage: float) -> np.ndarray:
    """Paint boxes one at a time; stop before the first that would push coverage over `coverage`."""
    out = np.zeros((len(boxes), size, size), bool)
    for i, image_boxes in enumerate(boxes):
        for j, (y0, x0, y1, x1) in enumerate(image_boxes):
            trial = out[i].copy()
            trial[y0:y1, x0:x1] = True
            if trial.mean() > coverage and j > 0:
                break
            out[i] = trial
    return out


def test_random_blocks_match_a_box_by_box_reference() -> None:
    boxes = block_boxes(40, 64, torch.Generator().manual_seed(0))
    assert (boxes[..., :2] >= 0).all() and (boxes[..., 2:] <= 64).all()  # every block lies inside the image
    sides = boxes[..., 2:] - boxes[..., :2]
    assert (sides >= 8).all() and (sides <= 16).all()
    holes = boxes_to_holes(boxes, 64, 0.25)
    assert np.array_equal(holes.numpy(), reference_blocks(boxes.numpy(), 64, 0.25))
    cover = holes.float().mean((1, 2))
    assert (cover <= 0.25).all() and (cover > 0.25 - 1 / 16).all()  # one more block would add at most 1/16


def test_random_regions_cover_about_a_quarter() -> None:
    g = torch.Generator().manual_seed(0)
    silhouettes = silhouette_holes(300, 64, 0.25, g).float().mean((1, 2))
    assert silhouettes.min() > 0.2 and silhouettes.max() < 0.3 and abs(silhouettes.mean() - 0.25) < 0.01
    blobs = blob_holes(50, 64, 0.25, g)
    assert (blobs.flatten(1).sum(1) == 1024).all()  # the 25% quantile: exactly a quarter of the pixels
    assert not torch.equal(blobs[0], blobs[1])


def reference_band(hole: np.ndarray, overlap: int) -> np.ndarray:
    band = np.zeros_like(hole)
    ys, xs = np.nonzero(hole)
    for y in range(hole.shape[0]):
        for x in range(hole.shape[1]):
            near = np.maximum(np.abs(ys - y), np.abs(xs - x)).min(initial=10**6) <= overlap
            band[y, x] = near and not hole[y, x]
    return band


@pytest.mark.parametrize("mask", ["central", "random-blocks", "random-regions"])
def test_band_weights_are_ten_times_the_hole_and_the_hole_holds_the_mean(mask: str) -> None:
    task = tiny_task(mask=mask, overlap=2)
    x = images()
    batch = task.make_batch(x, {}, torch.Generator().manual_seed(1))
    holes = batch["holes"]
    full = torch.zeros(6, 1, 32, 32)
    task.region(full).copy_(batch["weights"])
    for h, w in zip(holes.numpy(), full[:, 0].numpy()):
        band = reference_band(h, 2)
        assert (w[h] == 1).all() and (w[band] == 10).all() and (w[~h & ~band] == 0).all()
    inputs = batch["inputs"]
    assert (inputs.permute(1, 0, 2, 3)[:, holes] == 0).all()  # normalised 0 = the ImageNet mean pixel
    unnormalised = inputs * torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) + MEAN
    assert torch.allclose(unnormalised.permute(1, 0, 2, 3)[:, holes], MEAN.view(3, 1).expand(3, int(holes.sum())))
    visible = ~holes[:, None].expand_as(inputs)
    assert torch.allclose(inputs[visible], normalize(x)[visible], atol=1e-5)  # what transfer feeds the trunk


def test_make_batch_is_pure_given_the_generator() -> None:
    task = tiny_task(mask="random-regions", flip=True)
    a = task.make_batch(images(), {}, torch.Generator().manual_seed(5))
    b = task.make_batch(images(), {}, torch.Generator().manual_seed(5))
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("mask", ["central", "random-blocks", "random-regions"])
def test_make_batch_matches_the_whole_batch_formula_at_any_chunk_size(mask: str, monkeypatch) -> None:
    """inputs = normalize(images) with the hole at 0, target = the region in [-1, 1]: built a few images at a time,
    the same bits as the whole-batch expressions."""
    from sslbench.transforms import MEAN, STD

    task = tiny_task(mask=mask, flip=True)
    monkeypatch.setattr("sslbench.transforms.CACHE_BYTES", 1)  # one image per chunk
    batch = task.make_batch(images(), {}, torch.Generator().manual_seed(5))
    flips = torch.rand(6, generator=torch.Generator().manual_seed(5)) < 0.5
    x = torch.where(flips.view(-1, 1, 1, 1), images().flip(-1), images()).float()
    inputs = torch.addcmul(-MEAN / STD, x, 1 / (255 * STD)).masked_fill_(batch["holes"][:, None], 0.0)
    assert torch.equal(batch["inputs"], inputs) and torch.equal(batch["target"], task.region(x).div(127.5).sub(1))


@pytest.mark.parametrize("size", [7, 32, 224])
def test_affine_grid_is_torchs_bit_for_bit(size: int) -> None:
    from sslbench.tasks.inpainting import affine_grid

    theta = torch.randn(5, 2, 3, generator=torch.Generator().manual_seed(size))
    want = torch.nn.functional.affine_grid(theta, [5, 1, size, size], align_corners=False)
    assert torch.equal(affine_grid(theta, size), want)


@pytest.mark.parametrize("overlap", [0, 1, 2, 3, 4, 7, 8, 13])
def test_overlap_band_matches_or_of_every_shift(overlap: int) -> None:
    holes = torch.rand(3, 30, 30, generator=torch.Generator().manual_seed(overlap)) < 0.04
    padded = torch.nn.functional.pad(holes, (overlap,) * 4)
    grown = torch.zeros_like(holes)
    for dy in range(2 * overlap + 1):
        for dx in range(2 * overlap + 1):
            grown |= padded[:, dy:dy + 30, dx:dx + 30]
    assert torch.equal(overlap_band(holes, overlap), grown & ~holes)


# ---------------------------------------------------------------- math


def test_channelwise_fc_is_one_linear_layer_per_channel() -> None:
    layer = ChannelwiseFC(5, 3)
    x = torch.randn(4, 5, 3, 3)
    expected = torch.stack([torch.nn.functional.linear(x[:, c].flatten(1), layer.weight[c], layer.bias[c])
                            for c in range(5)], 1).view(4, 5, 3, 3)
    assert torch.allclose(layer(x), expected, atol=1e-6)


def test_masked_l2_matches_a_pixel_loop() -> None:
    pred, target = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    weights = torch.randint(0, 3, (2, 1, 4, 4)).float() * 5
    num = den = 0.0
    for n in range(2):
        for y in range(4):
            for x in range(4):
                for c in range(3):
                    num += float(weights[n, 0, y, x]) * float(pred[n, c, y, x] - target[n, c, y, x]) ** 2
                    den += float(weights[n, 0, y, x])
    assert masked_l2(pred, target, weights).item() == pytest.approx(num / den, rel=1e-5)


# ---------------------------------------------------------------- losses and gradients


def test_discriminator_learns_from_l_d_only_and_the_encoder_from_l_g_only() -> None:
    torch.manual_seed(0)
    task = tiny_task(mask="central", adversarial=True)
    out = task(task.make_batch(images(), {}, torch.Generator().manual_seed(0)))
    assert torch.allclose(out["loss"], out["gen"] + out["disc"])
    disc = [p for p in task.disc.parameters()]
    encoder = [p for p in task.backbone.parameters() if p.requires_grad] + list(task.decoder.parameters())

    def grads(loss: torch.Tensor, params: list[torch.Tensor]) -> list[torch.Tensor | None]:
        return list(torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True))

    assert all(g is None for g in grads(out["gen"], disc))  # L_G never reaches D
    assert all(g is None for g in grads(out["disc"], encoder))  # L_D never reaches the generator
    for total, own in zip(grads(out["loss"], disc), grads(out["disc"], disc)):
        assert total is not None and torch.equal(total, own)
    for total, own in zip(grads(out["loss"], encoder), grads(out["gen"], encoder)):
        assert total is not None and torch.equal(total, own)
    assert all(not p.requires_grad for p in [*task.backbone.fc6.parameters(), *task.backbone.fc7.parameters()])


def test_reconstruction_only_has_no_discriminator() -> None:
    task = tiny_task(adversarial=False)
    out = task(task.make_batch(images(), {}, torch.Generator().manual_seed(0)))
    assert task.disc is None and torch.equal(out["loss"], out["rec"]) and "disc" not in out
    assert task.variant() == "rec, random-regions-silhouettes"
    assert tiny_task(adversarial=True, mask="central").variant() == "rec+adv, central"


def test_reconstruction_loss_goes_down_on_embedded_images() -> None:
    torch.manual_seed(0)
    task = tiny_task(mask="central", adversarial=True)
    opt = build_optimizer(task.parameters(), dataclasses.replace(tiny_pretrain("inpainting").optim, lr=2e-3))
    x = embedded_images("unlabeled", 32, 16, 0)
    gen = torch.Generator().manual_seed(0)
    rec = fit_losses(task, opt, (task.make_batch(x, {}, gen) for _ in range(30)), key="rec")
    assert np.mean(rec[-5:]) < 0.6 * np.mean(rec[:3]), rec


def test_bad_setups_say_what_to_change() -> None:
    with pytest.raises(UserError, match="overlap"):
        tiny_task(mask="central", overlap=20)
    with pytest.raises(UserError, match="data.image_size"):
        tiny_task().make_batch(images(size=40), {}, torch.Generator())
    with pytest.raises(UserError, match="coverage"):
        tiny_task(coverage=1.5)


# ---------------------------------------------------------------- the PNG grid


def test_a_pretrained_checkpoint_gives_a_png_grid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    from sslbench.cli import main as cli
    from sslbench.show import show

    recipe = tiny_pretrain("inpainting", tiny_alexnet(["task.decoder_width=8", "task.mask=central",
                                                       "task.adversarial=true", "task.disc_width=8"]))
    outcome = pretrain(recipe, tmp_path / "runs", device="cpu", progress=False, argv=[])
    out = show("inpainting", outcome.checkpoint, tmp_path / "grid.png", num=3)
    with Image.open(out) as png:  # three labelled 32 px columns, three rows, 2 px gaps
        assert png.format == "PNG" and png.size == (3 * 32 + 4, 12 + 3 * (32 + 2) - 2)
    argv = ["sslbench", "show", "inpainting", str(outcome.checkpoint), str(tmp_path / "cli.png"), "--num", "2"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("sys.argv", argv)
        cli()
    assert (tmp_path / "cli.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.MonkeyPatch.context() as mp, pytest.raises(SystemExit) as exit_:
        mp.setattr("sys.argv", ["sslbench", "show", "inpainting", str(tmp_path / "missing.pt"), str(tmp_path / "x.png")])
        cli()
    assert exit_.value.code == 1 and "checkpoint not found" in capsys.readouterr().err
    with pytest.raises(UserError, match="unknown figure 'rotation'"):
        show("rotation", outcome.checkpoint, tmp_path / "y.png")


def test_the_generator_trains_at_ten_times_the_discriminators_rate() -> None:
    """Released train.lua: optimStateG's rate is 10 x opt.lr when the joint loss is used; D's is opt.lr."""
    joint = tiny_task(adversarial=True)
    (g, d) = joint.param_groups()
    disc = {id(p) for p in joint.disc.parameters()}
    assert g["lr_scale"] == 10.0 and "lr_scale" not in d
    assert {id(p) for p in d["params"]} == disc and not disc & {id(p) for p in g["params"]}
    assert {id(p) for p in g["params"]} | disc == {id(p) for p in joint.parameters() if p.requires_grad}
    (only,) = tiny_task(adversarial=False).param_groups()  # L_rec alone: one group at the recipe's rate
    assert "lr_scale" not in only
