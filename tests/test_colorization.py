"""Colorization (Zhang et al. 2016): the ab bins, soft-encoding, rebalancing and decoding against plain
references, the dense AlexNet head, the loss going down, the transfer input and the prior surviving a resume."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from sslbench.backbones.base import SharedConvStage, build_backbone
from sslbench.data.synthetic import embedded_images
from sslbench.recipes import load_recipe
from sslbench.registry import TASKS
from sslbench.tasks.colorization import (
    ab_gamut_bins,
    annealed_mean,
    dense_encoding,
    rebalance_weights,
    smoothed_prior,
    soft_encode,
)
from sslbench.training import build_optimizer, lr_at
from sslbench.transforms import TRANSFER_INPUTS, rgb8_to_lab, rgb_to_lab
from tests.conftest import fit_losses

TINY = ["backbone.width=0.125", "backbone.fc_dim=32", "data.image_size=32", "backbone.image_size=32",
        "data.num_images=48", "data.batch_size=16", "schedule.epochs=1", "engine.log_every=1"]


def make_task(extra: list[str] | None = None):  # noqa: ANN201
    r = load_recipe("pretrain", "colorization", "mini", TINY + (extra or []))
    return TASKS.get("colorization")(r.component.cfg, build_backbone(r.backbone.name, r.backbone.cfg)), r


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny Colorization pretraining, shared by the tests that evaluate or draw it."""
    from sslbench.engine import pretrain

    runs = tmp_path_factory.mktemp("colorization-runs")
    return Path(pretrain(load_recipe("pretrain", "colorization", "mini", TINY), runs, "cpu", progress=False).checkpoint)


def test_the_derived_bins_are_the_papers_313_in_its_order() -> None:
    bins = ab_gamut_bins(10)
    assert bins.shape == (313, 2) and bool((bins % 10 == 0).all())
    # the published pts_in_hull.npy starts at (-90, 50), (-90, 60) and ends at (100, -10), (100, 0), sorted by a, b
    assert bins[:2].tolist() == [[-90, 50], [-90, 60]] and bins[-2:].tolist() == [[100, -10], [100, 0]]
    assert (bins[:, 0].min(), bins[:, 0].max(), bins[:, 1].min(), bins[:, 1].max()) == (-90, 100, -110, 100)
    order = bins[:, 0] * 1000 + bins[:, 1]
    assert bool((order[1:] > order[:-1]).all())


def test_every_srgb_colour_rounds_to_a_bin_and_every_bin_is_within_a_grid_step_of_the_gamut() -> None:
    bins = ab_gamut_bins(10)
    levels = torch.arange(0, 256, 5, dtype=torch.uint8)
    rgb = torch.stack(torch.meshgrid(levels, levels, levels, indexing="ij")).reshape(1, 3, 1, -1)
    ab = rgb8_to_lab(rgb)[0, 1:, 0].T  # [P, 2]
    kept = {tuple(b) for b in bins.long().tolist()}
    assert {tuple(c) for c in (torch.round(ab / 10) * 10).long().tolist()} <= kept
    cheb = (bins[:, None, :] - ab[None]).abs().amax(-1).amin(1)  # each bin's distance to the nearest colour
    assert float(cheb.max()) < 15 and int((cheb <= 5).sum()) >= 250  # 261 bins hold a colour, the rest are close


def _reference_encoding(ab: np.ndarray, bins: np.ndarray, k: int, sigma: float) -> np.ndarray:
    """Brute force per pixel: distances to all bins, the k nearest, the kernel, normalised."""
    out = np.zeros((len(ab), len(bins)))
    for i, x in enumerate(ab):
        d = np.sqrt(((bins - x) ** 2).sum(1))
        near = np.argsort(d, kind="stable")[:k]
        w = np.exp(-(d[near] ** 2) / (2 * sigma**2))
        out[i, near] = w / w.sum()
    return out


@pytest.mark.parametrize("k", [1, 5, 10])
@pytest.mark.parametrize("grid", [0, 10])  # all bins compared, or the lattice's 4 x 4 block (+ fallback)
def test_soft_encoding_matches_a_brute_force_reference(k: int, grid: int) -> None:
    bins = ab_gamut_bins(10)
    ab = (torch.rand(2, 2, 9, 11, generator=torch.Generator().manual_seed(k)) - 0.5) * 260  # also out of gamut
    index, weight = soft_encode(ab, bins, k, 5.0, grid)
    assert index.shape == weight.shape == (2, k, 9, 11)
    dense = dense_encoding(index, weight, len(bins)).permute(0, 2, 3, 1).reshape(-1, len(bins))
    ref = _reference_encoding(ab.permute(0, 2, 3, 1).reshape(-1, 2).double().numpy(), bins.double().numpy(), k, 5.0)
    np.testing.assert_allclose(dense.double().numpy(), ref, atol=1e-6)
    assert bool((weight[:, :1] >= weight[:, 1:] - 1e-7).all())  # the nearest first
    if not grid:
        assert bool((weight[:, :-1] >= weight[:, 1:] - 1e-7).all())  # all by distance


def test_the_lattice_table_is_certain_almost_everywhere_and_right_where_it_is() -> None:
    from sslbench.tasks.colorization import _BLOCK, LUT_SIDE, _block_table

    for k in (1, 5, 10):
        members, certain = _block_table(k)
        assert float(certain.float().mean()) > 0.8, k  # the rest is ranked per pixel
        u = torch.rand(4000, 2, generator=torch.Generator().manual_seed(k), dtype=torch.float64)
        row = (u[:, 0] * LUT_SIDE).long() * LUT_SIDE + (u[:, 1] * LUT_SIDE).long()
        d2 = (u[:, :1] - _BLOCK[0]).square() + (u[:, 1:] - _BLOCK[1]).square()
        exact = torch.topk(d2, k, dim=1, largest=False).indices.sort(1).values
        ok = certain[row]
        assert torch.equal(members[row][ok].sort(1).values, exact[ok])
        assert torch.equal(members[row][ok, 0], d2[ok].argmin(1))


def test_rebalancing_weights_have_expectation_one_under_the_prior_and_follow_eq_4() -> None:
    bins = ab_gamut_bins(10)
    counts = torch.rand(len(bins), generator=torch.Generator().manual_seed(0)) ** 4 * 1000
    prior = smoothed_prior(counts, bins, 5.0)
    assert abs(float(prior.sum()) - 1) < 1e-6 and bool((prior > 0).all())
    for lam in (0.0, 0.5, 1.0):
        w = rebalance_weights(prior, lam)
        assert abs(float((prior.double() * w.double()).sum()) - 1) < 1e-5
        raw = 1 / ((1 - lam) * prior.double() + lam / len(bins))
        np.testing.assert_allclose(w.double().numpy(), (raw / (prior.double() * raw).sum()).numpy(), rtol=1e-5)
    assert torch.allclose(rebalance_weights(prior, 1.0), torch.ones(len(bins)))  # lambda = 1: no rebalancing


def test_the_prior_is_smoothed_by_a_gaussian_over_the_bin_centres() -> None:
    bins = ab_gamut_bins(10)
    counts = torch.zeros(len(bins))
    centre = int(((bins - torch.tensor([0.0, 0.0])).abs().sum(1)).argmin())
    counts[centre] = 7
    prior = smoothed_prior(counts, bins, 5.0)
    d2 = (bins - bins[centre]).square().sum(1).double()
    expected = torch.exp(-d2 / 50)
    torch.testing.assert_close(prior.double(), expected / expected.sum(), rtol=1e-5, atol=1e-7)


def test_the_annealed_mean_is_the_mode_as_t_goes_to_0_and_the_mean_at_1() -> None:
    bins = ab_gamut_bins(10)
    logits = torch.randn(2, len(bins), 3, 4, generator=torch.Generator().manual_seed(0)) * 3
    mode = bins[logits.argmax(1)].permute(0, 3, 1, 2)
    torch.testing.assert_close(annealed_mean(logits, bins, 1e-4), mode, atol=1e-3, rtol=0)
    mean = torch.einsum("nqhw,qc->nchw", torch.softmax(logits, 1), bins)
    torch.testing.assert_close(annealed_mean(logits, bins, 1.0), mean)
    # T = 0.38 sits between the two: more saturated than the mean
    sat = [float(annealed_mean(logits, bins, t).norm(dim=1).mean()) for t in (1.0, 0.38)]
    assert sat[1] > sat[0]


def test_the_dense_head_is_fc6_fc7_run_as_convolutions_with_the_trunks_own_weights() -> None:
    net = build_backbone("alexnet", load_recipe("pretrain", "colorization", "mini", TINY).backbone.cfg).eval()
    k = net.pool5_size
    pool5 = torch.randn(3, net.feature_info["pool5"].channels, k, k)
    conv6 = SharedConvStage(net.fc6, k, 1)(pool5)
    torch.testing.assert_close(conv6.flatten(1), net.fc6(pool5), rtol=1e-4, atol=1e-5)
    head = net.dense_fc_head()
    assert not list(head.head.parameters())  # a view: nothing of its own, nothing copied
    out = head.head(torch.randn(2, net.feature_info["conv5"].channels, 9, 9))
    out.sum().backward()
    assert out.shape == (2, net.feature_info["fc7"].channels, 9, 9) and net.fc6[1].weight.grad is not None


def test_the_paper_net_classifies_a_12x12_grid_at_180_px_and_transfers_a_6x6_pool5() -> None:
    r = load_recipe("pretrain", "colorization", "paper", ["backbone.width=0.125", "backbone.fc_dim=64"])
    task = TASKS.get("colorization")(r.component.cfg, build_backbone(r.backbone.name, r.backbone.cfg))
    task.eval()
    logits = task.logits(torch.zeros(1, 1, 180, 180))
    assert logits.shape == (1, 313, 12, 12)
    batch = task.make_batch(torch.zeros(1, 3, 180, 180, dtype=torch.uint8), {}, torch.Generator().manual_seed(0))
    assert batch["bins"].shape == (1, 5, 23, 23)  # data_ab_ss: every 8th pixel of 180
    assert task.backbone.pool5_size == 6 and task.backbone.feature_info["conv5"].size == 14


def test_colorization_loss_goes_down_on_embedded_images() -> None:
    torch.manual_seed(0)
    task, r = make_task()
    images = embedded_images("unlabeled", 32, 16, 0)
    task.restore(task.setup(torch.utils.data.TensorDataset(images), torch.Generator().manual_seed(0)))
    opt = build_optimizer(task.parameters(), dataclasses.replace(r.optim, lr=1e-2))
    batch = task.make_batch(images, {}, torch.Generator().manual_seed(0))
    losses = fit_losses(task, opt, [batch] * 40)
    assert losses[-1] < 0.6 * losses[0], losses


def test_rebalancing_weighs_each_pixel_by_its_nearest_bins_weight() -> None:
    task, _ = make_task(["task.gray_threshold=0"])
    task.eval()
    prior = torch.full((313,), 1e-4)
    prior[:10] = (1 - prior[10:].sum()) / 10
    task.restore({"prior": prior})
    batch = task.make_batch(embedded_images("unlabeled", 32, 4, 0), {}, torch.Generator().manual_seed(0))
    plain = dataclasses.replace(task.cfg, rebalance=False)
    with torch.no_grad():
        weighted = task.loss(batch)
        task.cfg = plain
        unweighted = task.loss(batch)
    assert torch.isclose(weighted["ce"], unweighted["ce"]) and not torch.isclose(weighted["loss"], unweighted["loss"])
    assert torch.isclose(unweighted["loss"], unweighted["ce"])
    # the reference, pixel by pixel: -sum_q z_q log p_q, times the weight of the nearest bin, averaged
    with torch.no_grad():
        logits = torch.nn.functional.interpolate(task.logits(batch["input"]), size=batch["bins"].shape[-2:],
                                                 mode="bilinear", align_corners=False)
    logp = torch.log_softmax(logits, 1)
    total, n = 0.0, 0
    for i in range(logp.shape[0]):
        for y in range(logp.shape[2]):
            for x in range(logp.shape[3]):
                bins, z = batch["bins"][i, :, y, x], batch["weights"][i, :, y, x]
                ce = -float((z * logp[i, bins, y, x]).sum())
                total += float(task.weights[bins[0]]) * ce
                n += 1
    assert abs(float(weighted["loss"]) - total / n) < 1e-4


def test_gray_images_carry_no_loss() -> None:
    task, _ = make_task()
    gray = torch.full((2, 3, 32, 32), 128, dtype=torch.uint8)
    batch = task.make_batch(gray, {}, torch.Generator().manual_seed(0))
    assert batch["nongray"].tolist() == [0.0, 0.0] and float(task.loss(batch)["loss"].detach()) == 0.0


def test_the_transfer_input_is_the_centred_l_channel() -> None:
    task, _ = make_task()
    images = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8)
    x = TRANSFER_INPUTS.get(task.transfer_input())(images)
    torch.testing.assert_close(x, rgb_to_lab(images.float() / 255)[:, :1] - 50, atol=1e-3, rtol=0)
    colour = TRANSFER_INPUTS.get("lab")(images)
    assert colour.shape == (2, 3, 8, 8) and torch.allclose(colour[:, :1], x)


def test_a_resumed_run_restores_the_prior_exactly(tmp_path: Path) -> None:
    from sslbench.engine import pretrain
    from sslbench.tasks.colorization import Colorization
    from tests.conftest import crash_at_call

    recipe = load_recipe("pretrain", "colorization", "mini", TINY + ["schedule.epochs=2", "engine.checkpoint_every=2"])
    with crash_at_call(Colorization, 4), pytest.raises(KeyboardInterrupt):
        pretrain(recipe, tmp_path, "cpu", progress=False)
    (run,) = tmp_path.glob("colorization-*")
    first = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    prior = first["setup"]["prior"]
    assert prior.shape == (313,) and abs(float(prior.sum()) - 1) < 1e-5
    # a resume reads the prior from the checkpoint, never recomputes it: alter the stored one and it must survive
    altered = prior.roll(7)
    first["setup"]["prior"] = altered
    torch.save(first, run / "checkpoint.pt")
    out = pretrain(recipe, tmp_path, "cpu", progress=False, resume=True)
    final = torch.load(out.checkpoint, map_location="cpu", weights_only=True)
    assert torch.equal(final["setup"]["prior"], altered) and "weights" not in final["model"]
    task, _ = __import__("sslbench.show", fromlist=["load_task"]).load_task(out.checkpoint)
    torch.testing.assert_close(task.weights, rebalance_weights(altered, 0.5))


def test_a_schedule_can_give_each_milestone_its_own_multiplier() -> None:
    r = load_recipe("pretrain", "colorization", "paper")
    rates = [lr_at(s, 16014, r.optim.lr, r.schedule) for s in (0, 239_999, 240_000, 300_000, 400_000, 449_999)]
    np.testing.assert_allclose(rates, [3e-5, 3e-5, 1e-5, 3e-6, 1e-6, 1e-6], rtol=1e-4)


def test_the_colour_transfer_widens_conv1_with_zero_filters_so_the_trunk_computes_the_same() -> None:
    from sslbench.checkpoint import Trunk, with_transfer_input
    from sslbench.errors import UserError

    task, r = make_task()
    net = task.backbone.eval()
    gray = Trunk(backbone=net, method="colorization", label="alexnet-bn-w0.125-s2-gray", checkpoint="x",
                 transfer_input="lab-l", variant="gray")
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        before = net(gray.prepare(images), taps=("conv5",))["conv5"]
    colour = with_transfer_input(gray, "lab")
    assert colour.variant == "color" and colour.backbone.in_channels == 3 and not colour.label.endswith("-gray")
    with torch.no_grad():
        after = colour.backbone(colour.prepare(images), taps=("conv5",))["conv5"]
    torch.testing.assert_close(after, before)
    assert with_transfer_input(gray, "lab-l") is gray
    with torch.no_grad():  # the trunk it was given is untouched
        torch.testing.assert_close(net(gray.prepare(images), taps=("conv5",))["conv5"], before)
    with pytest.raises(UserError, match="does not extend"):
        with_transfer_input(dataclasses.replace(gray, transfer_input="imagenet"), "lab")


def test_a_colour_evaluation_is_its_own_result_in_the_store() -> None:
    from sslbench.protocols.base import init_label

    assert init_label(False, "default") == "checkpoint"
    assert init_label(False, "default", "lab") == "checkpoint+input:lab"
    assert init_label(True, "rescale", "lab") == "random+input:lab+rescale"  # rescaled rows stay recognisable


def test_eval_with_the_colour_input_stores_a_color_row(tmp_path: Path, pretrained: Path) -> None:
    from sslbench.protocols.base import evaluate
    from tests.conftest import tiny_protocol

    recipe = tiny_protocol("linear", ["protocol.taps=['conv1','conv2']", "backbone.image_size=32",
                                      "data.image_size=32"])
    gray = evaluate(recipe, str(pretrained), tmp_path, "cpu", progress=False)
    colour = evaluate(recipe, str(pretrained), tmp_path, "cpu", progress=False, transfer_input="lab")
    assert (gray.provenance.variant, gray.provenance.init) == ("gray", "checkpoint")
    assert (colour.provenance.variant, colour.provenance.init) == ("color", "checkpoint+input:lab")


def test_show_colorization_draws_gray_input_prediction_and_truth(tmp_path: Path, pretrained: Path) -> None:
    from PIL import Image

    from sslbench.show import show

    png = show("colorization", pretrained, tmp_path / "col.png", num=3)
    with Image.open(png) as im:
        assert im.size[0] > 3 * 32 and im.size[1] > 3 * 32  # three panels side by side, three rows
    task, _ = __import__("sslbench.show", fromlist=["load_task"]).load_task(pretrained)
    panels = task.examples(embedded_images("test", 32, 2, 0), torch.Generator().manual_seed(0))
    assert [name for name, _ in panels] == ["input (L)", "colourised", "original"]
    gray = panels[0][1].float()
    assert float((gray - gray.mean(1, keepdim=True)).abs().max()) <= 2  # the input panel has no colour


def test_the_dense_head_at_the_papers_geometry_is_the_strided_fc6_fc7_at_the_matching_cell() -> None:
    """At 224 px conv5 is 14x14; the trunk's own path pools it to 6x6 (3/2) and applies fc6 / fc7 once; the dense
    head's cell (6, 6) reads exactly those pool5 cells, with the dilated filter."""
    r = load_recipe("pretrain", "colorization", "paper", ["backbone.width=0.125", "backbone.fc_dim=32"])
    net = build_backbone(r.backbone.name, r.backbone.cfg).eval()
    x = torch.randn(1, 1, 224, 224) * 30
    with torch.no_grad():
        maps = net(x, taps=("conv5", "fc7"))
        dense = net.dense_fc_head().head(maps["conv5"])
    assert maps["conv5"].shape[-1] == 14 and dense.shape[-1] == 14
    torch.testing.assert_close(dense[0, :, 6, 6], maps["fc7"][0], rtol=1e-4, atol=1e-4)


def test_the_paper_trunk_transfers_at_227_px_without_losing_fc6() -> None:
    from sslbench.checkpoint import resize_trunk

    r = load_recipe("pretrain", "colorization", "paper")
    for protocol in ("voc-cls", "voc-det", "voc-seg", "linear"):
        p = load_recipe("protocol", protocol, "paper")
        _, reinit = resize_trunk(build_backbone(r.backbone.name, r.backbone.cfg), r.backbone, p.backbone)
        assert reinit == (), (protocol, reinit)


def test_colorization_runs_on_vgg16_at_its_output_stride() -> None:
    from sslbench.config import build
    from sslbench.registry import BACKBONES

    r = load_recipe("pretrain", "colorization", "mini")
    cfg = build(BACKBONES.entry("vgg16").config, {"image_size": 32, "width": 0.125, "fc_dim": 16, "in_channels": 1},
                "test")
    task = TASKS.get("colorization")(r.component.cfg, build_backbone("vgg16", cfg)).eval()
    with torch.no_grad():
        logits = task.logits(torch.zeros(2, 1, 64, 64))
    assert logits.shape == (2, 313, 4, 4)  # conv5 of VGG at 64 px: stride 16


def test_a_gray_result_is_not_reused_for_a_colour_evaluation(tmp_path: Path, pretrained: Path) -> None:
    from sslbench.config import recipe_key
    from sslbench.protocols.base import evaluate, init_label
    from sslbench.reproduce import _evaluated
    from sslbench.results import ResultStore
    from tests.conftest import tiny_protocol

    recipe = tiny_protocol("linear", ["protocol.taps=['conv1']", "backbone.image_size=32", "data.image_size=32"])
    evaluate(recipe, str(pretrained), tmp_path, "cpu", progress=False)
    store = ResultStore(tmp_path / "results.sqlite")
    key, ckpt = recipe_key(recipe), str(pretrained)
    assert _evaluated(store, "linear", key, ckpt, init_label(False, "default"))
    assert not _evaluated(store, "linear", key, ckpt, init_label(False, "default", "lab"))
    again = evaluate(recipe, ckpt, tmp_path, "cpu", progress=False, transfer_input="lab-l")  # its own input
    assert again.provenance.init == "checkpoint"
