"""The paper recipes as the authors ran them: one mechanism test per point of the fidelity review (D1-D15).

Every check builds the paper recipe's own network on the CPU (no data: the shapes, layer order and rates are
the facts under test) and compares it with the released code's numbers, which the recipes cite.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from sslbench.backbones.base import build_backbone
from sslbench.checkpoint import at_protocol_size
from sslbench.recipes import load_recipe
from sslbench.training import lr_at


def _paper(kind: str, name: str, flavour: str = ""):  # noqa: ANN202
    return load_recipe(kind, name, "paper", flavour=flavour)


def _probe_dims(protocol_flavour: str, trunk_recipe) -> dict[str, int]:  # noqa: ANN001
    from sslbench.protocols._probing import PoolSpec, pool_features

    recipe = _paper("protocol", "linear", protocol_flavour)
    net = build_backbone(trunk_recipe.name, trunk_recipe.cfg).eval()
    size = trunk_recipe.cfg.image_size
    with torch.no_grad():
        maps = net(torch.zeros(1, 3, size, size), taps=recipe.component.cfg.taps)
    return {t: pool_features(m, recipe.component.cfg.pool.get(t, PoolSpec())).shape[1] for t, m in maps.items()}


def test_d1_linear_probe_lr_is_rotnets_lut_and_d8_rotnet_blocks_drops_at_20_40_45() -> None:
    linear = _paper("protocol", "linear")
    assert linear.optim.lr == 0.01 and linear.schedule.milestones == (5, 15, 25) and linear.schedule.gamma == 0.2
    rates = [lr_at(epoch * 10, 10, linear.optim.lr, linear.schedule) for epoch in (0, 5, 15, 25)]
    assert rates == pytest.approx([0.01, 0.002, 4e-4, 8e-5])  # the LUT of the released config
    blocks = _paper("protocol", "rotnet-blocks")
    rates = [lr_at(epoch * 10, 10, blocks.optim.lr, blocks.schedule) for epoch in (19, 20, 40, 45)]
    assert rates == pytest.approx([0.1, 0.02, 0.004, 0.0008])


def test_d5_rotnets_alexnet_and_d7_each_probe_protocol_pools_to_its_own_9k_dims() -> None:
    rotnet = _paper("pretrain", "rotation", "alexnet").backbone
    assert rotnet.cfg.channels == (64, 192, 384, 256, 256) and rotnet.cfg.dropout == 0.0 and rotnet.cfg.bn
    assert _probe_dims("", rotnet) == {"conv1": 9216, "conv2": 9408, "conv3": 9600, "conv4": 9216, "conv5": 9216}
    zhang = _paper("protocol", "linear", "zhang").backbone  # CaffeNet at 227: the trunk Zhang et al. probed
    assert _probe_dims("zhang", zhang) == {"conv1": 9600, "conv2": 9216, "conv3": 9600, "conv4": 9600, "conv5": 9216}
    assert _paper("protocol", "linear").backbone.cfg.channels == rotnet.cfg.channels  # its random row: RotNet's net


def test_d9_the_context_trunk_is_deepcontexts_pool5_3x3_lrn_then_bn_without_scale() -> None:
    cfg = _paper("pretrain", "context").backbone.cfg
    net = build_backbone("alexnet", cfg)
    assert net.pool5_size == 3 and net.feature_info["conv1"].size == 24  # 96 -> 24 -> 12 -> 6 -> 3 (Caffe ceil)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in [*net.conv1, *net.conv2])
    assert isinstance(net.pool1[0], nn.MaxPool2d) and isinstance(net.pool1[1], nn.LocalResponseNorm)  # pool, LRN
    bns = [m for m in net.modules() if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d))]
    assert len(bns) == 5 and not any(m.affine for m in bns)  # conv3-5, fc6, fc7; no scale/shift
    assert net(torch.zeros(2, 3, 96, 96), taps=("pool5",))["pool5"].shape[-1] == 3


@pytest.mark.parametrize("task", ["jigsaw", "damaged-jigsaw"])
def test_d3_a_jigsaw_tile_tower_transfers_as_a_stride_4_alexnet(task: str) -> None:
    trained = _paper("pretrain", task).backbone
    assert trained.cfg.conv1_stride == 2 and build_backbone("alexnet", trained.cfg).pool5_size == 2
    for protocol in ("voc-det", "voc-cls", "voc-seg"):
        target = at_protocol_size(trained, _paper("protocol", protocol).backbone)
        net = build_backbone("alexnet", target.cfg)
        assert target.cfg.conv1_stride == 4
        assert net.pool5_size == 6 and net.feature_info["conv5"].stride == 16  # Fast R-CNN's 6x6 RoI grid at 1/16


def test_d3_a_trunk_transferred_at_another_stride_is_labelled() -> None:
    from sslbench.backbones.base import backbone_label

    trained = _paper("pretrain", "jigsaw").backbone
    assert backbone_label("alexnet", trained.cfg).endswith("-s2")
    assert not backbone_label("alexnet", at_protocol_size(trained, _paper("protocol", "voc-det").backbone).cfg
                              ).endswith("-s2")


@pytest.mark.parametrize("bn", [True, False])
def test_d10_dropout_follows_fc6_and_fc7_as_caffes_drop6_drop7(bn: bool) -> None:
    cfg = _paper("protocol", "voc-cls").backbone.cfg
    net = build_backbone("alexnet", type(cfg)(**{**cfg.__dict__, "bn": bn}))
    for stage in (net.fc6, net.fc7):
        kinds = [type(m).__name__ for m in stage]
        assert kinds == ["Flatten", "Linear", *(["BatchNorm1d"] if bn else []), "ReLU", "Dropout"]


def test_d2_voc_cls_paper_rates_are_1x_with_biases_2x() -> None:
    cfg = _paper("protocol", "voc-cls").component.cfg
    assert cfg.fc_lr_mult == 1.0 and cfg.bias_lr_mult == 2.0 and cfg.head_init_bias == 0.1 and cfg.ap == "sklearn"
    assert _paper("protocol", "voc-cls").schedule.max_steps == 80000


def test_d14_the_rotnet_code_schedule_is_a_flavour_beside_the_papers() -> None:
    paper, code = _paper("pretrain", "rotation", "alexnet"), _paper("pretrain", "rotation", "alexnet-code")
    assert (paper.schedule.epochs, paper.schedule.milestones) == (30, (10, 20))
    assert (code.schedule.epochs, code.schedule.milestones) == (50, (15, 30, 45))
    assert [lr_at(e, 1, code.optim.lr, code.schedule) for e in (14, 15, 30, 45)] == pytest.approx([1e-2, 1e-3, 1e-4,
                                                                                                    1e-5])


@pytest.mark.parametrize("per_channel", [True, False])
def test_d15_jigsaw_normalises_each_tile_per_channel_and_transfers_the_same_way(per_channel: bool) -> None:
    from tests.test_jigsaw import EXACT, make_task

    assert _paper("pretrain", "jigsaw").component.cfg.tile_norm_per_channel  # the PyTorch port's normalisation
    task = make_task([*EXACT, "task.tile_norm=true", f"task.tile_norm_per_channel={str(per_channel).lower()}"])
    images = torch.randint(0, 256, (2, 3, 72, 72), dtype=torch.uint8)
    images[:, 0] //= 4  # a colour cast: the red channel darker
    tiles = task.make_batch(images, {}, torch.Generator().manual_seed(0))["tiles"]  # [2, 9, 3, 24, 24]
    channel_means = tiles.mean((3, 4))
    assert torch.allclose(channel_means, torch.zeros_like(channel_means), atol=1e-5) == per_channel
    assert task.transfer_input() == ("per-channel-std" if per_channel else "per-image-std")
    from sslbench.transforms import TRANSFER_INPUTS

    x = TRANSFER_INPUTS.get(task.transfer_input())(images)
    assert torch.allclose(x.mean((2, 3)), torch.zeros(2, 3), atol=1e-5) == per_channel


def test_d11_selective_search_runs_rcnns_fast_mode_in_the_paper_recipe() -> None:
    from sslbench.data.synthetic import render_sample
    from sslbench.protocols._proposals import cache_path, selective_search

    cfg = _paper("protocol", "voc-det").component.cfg
    assert (cfg.search, cfg.min_proposal_size) == ("rcnn-fast", 20)
    image = torch.from_numpy(render_sample(0, "test", 3, 96).image).permute(2, 0, 1).contiguous()
    rcnn, opencv = selective_search(image, "rcnn-fast"), selective_search(image, "opencv-fast")
    assert len(rcnn) and len(opencv) and (len(rcnn) != len(opencv) or not np.array_equal(rcnn, opencv))
    assert (rcnn[:, 2:] >= rcnn[:, :2]).all() and rcnn.max() <= 95
    assert cache_path("voc", 96, ["a"], "rcnn-fast") != cache_path("voc", 96, ["a"], "opencv-fast")  # mode keys it


@pytest.mark.parametrize("per_epoch", [74, 530])  # VOC2012 train alone (1464 / 20), train_aug (10582 / 20)
def test_d4_voc_seg_drops_its_rate_at_50k_and_100k_steps_with_or_without_sbd(per_epoch: int) -> None:
    recipe = _paper("protocol", "voc-seg")
    rates = [lr_at(step, per_epoch, recipe.optim.lr, recipe.schedule) for step in (49_999, 50_000, 99_999, 100_000)]
    assert rates == pytest.approx([1e-4, 1e-5, 1e-5, 1e-6])


def test_d4_the_paper_voc_seg_asks_for_sbd_in_one_line() -> None:
    from sslbench.errors import UserError
    from sslbench.protocols.voc_seg import segmentation_data

    recipe = _paper("protocol", "voc-seg")
    assert recipe.component.cfg.sbd == "required"
    with pytest.raises(UserError, match=r"--data sbd=PATH .*SBD/download"):
        segmentation_data(recipe.data, recipe.component.cfg.sbd)


def test_schedule_milestones_in_epochs_and_in_steps_are_one_or_the_other() -> None:
    from sslbench.errors import UserError

    with pytest.raises(UserError, match="keep one"):
        load_recipe("protocol", "voc-seg", "paper", ["schedule.milestones=[5]"])


# ---------------------------------------------------------------- --dry-run of every paper recipe (no data here)


def _paper_recipes() -> list[tuple[str, str, str]]:
    from sslbench.plugins import load_all
    from sslbench.recipes import list_recipes

    load_all()
    out = []
    for entry in list_recipes():
        folder, stem = entry.rsplit("/", 1)
        if not stem.startswith("paper"):
            continue
        flavour = stem.split("-", 1)[1] if "-" in stem else ""
        kind, name = ("protocol", folder.split("/", 1)[1]) if folder.startswith("protocols/") else ("pretrain", folder)
        out.append((kind, name, flavour))
    return out


@pytest.mark.parametrize(("kind", "name", "flavour"), _paper_recipes())
def test_the_dry_run_of_every_paper_recipe_builds_its_network_and_counts_its_steps(kind: str, name: str,
                                                                                   flavour: str) -> None:
    from sslbench.dryrun import dry_eval, dry_pretrain

    recipe = _paper("pretrain" if kind == "pretrain" else "protocol", name, flavour)
    run = dry_pretrain(recipe) if kind == "pretrain" else dry_eval(recipe)
    assert run.parameters > 0 and run.steps > 0 and run.flops_per_step > 0 and run.taps
    sgd = not any(note.startswith("no SGD") for note in run.notes)  # voc07-svm: one pass of features, a solver
    assert run.images_seen == run.steps * (recipe.data.batch_size if sgd else 1)
    assert all("needs --data" in line or "embedded" in line for line in run.data)  # paper data, asked for


def test_a_paper_run_without_its_data_is_one_line_before_any_work(tmp_path) -> None:  # noqa: ANN001
    from sslbench.engine import pretrain
    from sslbench.errors import UserError

    with pytest.raises(UserError, match=r"--scale paper reads the real imagenet: pass --data imagenet=PATH"):
        pretrain(_paper("pretrain", "rotation", "alexnet"), tmp_path / "runs", "cpu", progress=False)
    assert not (tmp_path / "runs").exists()


def test_reproduce_dry_run_lists_every_run_a_table_needs(capsys) -> None:  # noqa: ANN001
    import sys

    from sslbench.cli import main
    argv = sys.argv
    sys.argv = ["sslbench", "reproduce", "rotations", "--scale", "paper", "--dry-run"]
    try:
        main()
    finally:
        sys.argv = argv
    out = capsys.readouterr().out
    assert "pretrain rotation [alexnet] (paper)" in out and "pretrain rotation (paper)" in out
    assert "eval rotnet-blocks on rotation (paper)" in out and "eval linear on random (paper)" in out
    assert "eval voc-seg on rotation (paper)" in out and "sbd train_aug: 10,582 images" in out
    assert "probe dims after pooling: conv1 9,216, conv2 9,408, conv3 9,600, conv4 9,216, conv5 9,216" in out


def test_rotnet_on_cifar_normalises_with_cifars_statistics_and_transfers_the_same_way() -> None:
    from sslbench.tasks.rotation import Rotation
    from sslbench.transforms import TRANSFER_INPUTS

    recipe = _paper("pretrain", "rotation")
    task = Rotation(recipe.component.cfg, build_backbone(recipe.backbone.name, recipe.backbone.cfg))
    assert task.transfer_input() == "cifar"
    mean = torch.tensor([125.3, 123.0, 113.9]).round().to(torch.uint8).view(1, 3, 1, 1).expand(1, 3, 32, 32)
    x = TRANSFER_INPUTS.get("cifar")(mean.contiguous())
    assert x.abs().max() < 0.01  # the CIFAR mean colour is ~0 after normalisation
    inputs = task.make_batch(mean.contiguous(), {}, torch.Generator().manual_seed(0))["inputs"]
    assert inputs[..., 8:24, 8:24].abs().max() < 0.01  # inside the 4 px of the padded random crop


def test_d16_context_colour_dropping_has_the_released_codes_uniform_noise_as_an_option() -> None:
    from sslbench.tasks.context import drop_colors

    kept = torch.rand(64, 1, 8, 8) * 255
    keep = torch.randint(0, 3, (64,))
    out = drop_colors(kept, keep, 0.01, torch.Generator().manual_seed(0), "uniform")
    rows = torch.arange(64)
    assert torch.equal(out[rows, keep], kept[:, 0])
    others = torch.stack([out[rows, (keep + k) % 3] for k in (1, 2)])
    assert others.min() >= -0.5 and others.max() < 0.5 and others.std() > 0.2  # U(-0.5, 0.5): std 0.29
    gauss = drop_colors(kept, keep, 0.01, torch.Generator().manual_seed(0))
    spread = torch.stack([gauss[rows, (keep + k) % 3] for k in (1, 2)]).std(dim=(0, 2, 3))
    torch.testing.assert_close(spread, 0.01 * kept.flatten(1).std(1), rtol=0.3, atol=0)


@pytest.mark.parametrize("bn", [True, False])
def test_weights_saved_before_the_dropout_moved_still_load(bn: bool) -> None:
    import re

    from sslbench.backbones.alexnet import AlexNetConfig
    from sslbench.backbones.base import upgrade_fc_layout

    net = build_backbone("alexnet", AlexNetConfig(image_size=64, width=0.125, conv1_stride=2, fc_dim=32, bn=bn))
    new = net.state_dict()
    assert upgrade_fc_layout(new) is new  # today's layout is left alone
    old = {re.sub(r"^(fc[67])\.(\d+)\.", lambda m: f"{m.group(1)}.{int(m.group(2)) + 1}.", k): v for k, v in new.items()}
    assert old.keys() != new.keys()
    upgraded = upgrade_fc_layout(old)
    assert upgraded.keys() == new.keys() and all(torch.equal(upgraded[k], new[k]) for k in new)
    net.load_state_dict(upgraded)


@pytest.mark.parametrize("protocol", ["voc-cls", "voc-det"])
def test_fine_tuning_keeps_caffes_drop6_drop7_whatever_the_trunks_pretraining_used(protocol: str) -> None:
    rotnet = build_backbone("alexnet", _paper("pretrain", "rotation", "alexnet").backbone.cfg)  # dropout 0
    cfg = _paper("protocol", protocol).component.cfg
    assert cfg.fc_dropout == 0.5
    rotnet.set_fc_dropout(cfg.fc_dropout)
    rates = [m.p for stage in (rotnet.fc6, rotnet.fc7) for m in stage if isinstance(m, nn.Dropout)]
    assert rates == [0.5, 0.5]


def test_reproduce_gives_each_run_the_data_of_its_own_data_set_and_checks_the_plan_first() -> None:
    from sslbench.errors import UserError
    from sslbench.reproduce import Options, check_plan, plan, plan_recipe

    data = {"imagenet": "/data/ilsvrc", "voc2007": "/data/voc07", "voc2012": "/data/voc12", "cifar10": "/data/cifar"}
    opts = Options(scale="paper", data=data)
    assert plan_recipe("pretrain", "rotation", opts, flavour="alexnet").data.root == "/data/ilsvrc"
    assert plan_recipe("pretrain", "rotation", opts).data.root == "/data/cifar"
    assert plan_recipe("protocol", "voc-cls", opts).data.root == "/data/voc07"
    assert plan_recipe("protocol", "voc-seg", opts).data.root == "/data/voc12"
    specs = plan(["rotations-pascal"])
    with pytest.raises(UserError, match="--data sbd=PATH"):  # voc-seg's paper setting, before any run
        check_plan(specs, opts)
    with_sbd = Options(scale="paper", data={**data, "sbd": "/data/sbd"})
    assert plan_recipe("protocol", "voc-seg", with_sbd).component.cfg.sbd == "/data/sbd"
    check_plan(specs, with_sbd)
    with pytest.raises(UserError, match="--scale paper reads the real voc2007"):
        check_plan(specs, Options(scale="paper", data={"imagenet": "/data/ilsvrc"}))


def test_the_context_fusion_heads_bn7_has_no_scale_or_shift_as_deepcontexts() -> None:
    from sslbench.tasks.context import ContextPrediction as Context

    recipe = _paper("pretrain", "context")
    task = Context(recipe.component.cfg, build_backbone(recipe.backbone.name, recipe.backbone.cfg))
    (bn7,) = [m for m in task.head.modules() if isinstance(m, nn.BatchNorm1d)]
    assert not bn7.affine and recipe.component.cfg.drop_noise == "gaussian"


def test_d22_the_probes_train_on_random_crops_of_256_px_images_not_zero_padded_ones() -> None:
    for flavour in ("", "zhang"):
        recipe = _paper("protocol", "linear", flavour)
        assert (recipe.data.train_crop, recipe.data.load_size, recipe.component.cfg.crop_pad) == ("random", 256, 0)


def test_d19_the_svm_protocol_pools_with_goyals_fixed_windows() -> None:
    from sslbench.protocols._probing import PoolSpec, pool_features

    recipe = _paper("protocol", "voc07-svm")
    net = build_backbone(recipe.backbone.name, recipe.backbone.cfg).eval()
    with torch.no_grad():
        maps = net(torch.rand(1, 3, 224, 224), taps=recipe.component.cfg.taps)
    dims = {t: pool_features(m, recipe.component.cfg.pool[t]).shape[1] for t, m in maps.items()}
    assert dims == {"conv1": 9600, "conv2": 9216, "conv3": 9600, "conv4": 9600, "conv5": 9216}
    x = torch.arange(2 * 3 * 12 * 12, dtype=torch.float32).view(2, 3, 12, 12)
    expected = torch.stack([x[..., i:i + 5, j:j + 5].mean((-1, -2)) for i in range(0, 8, 3) for j in range(0, 8, 3)],
                           -1).flatten(1)  # 5x5 windows at stride 3, by hand
    torch.testing.assert_close(pool_features(x, PoolSpec(kind="avg_window", kernel=5, stride=3)),
                               expected.view(2, 3, 3, 3).flatten(1))


def test_a_mini_dry_run_counts_the_embedded_sample_not_the_real_release() -> None:
    from sslbench.data.build import embedded_split_size
    from sslbench.dryrun import dry_eval

    recipe = load_recipe("protocol", "voc-det", "mini", ["data.num_images=0", "data.num_test=50"])
    run = dry_eval(recipe)
    assert embedded_split_size(recipe.data, "trainval") == 100  # 2 x max(num_test, 16) for VOC's paired trainval
    assert run.per_epoch == 100 // recipe.data.batch_size and "voc2007 trainval: 100 images" in run.data[0]


def test_d6_the_random_area_rescale_keeps_the_aspect_and_draws_the_pixel_count_in_range() -> None:
    from sslbench.transforms import random_area_size

    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        w, h = random_area_size(500, 375, (150_000, 450_000), 96, g)
        assert 150_000 * 0.99 <= w * h <= 450_000 * 1.01 and abs(w / h - 500 / 375) < 0.01
    # too few pixels for a 398 px square: the scale rises until the shorter side is 398
    w, h = random_area_size(500, 375, (1000, 1000), 398, g)
    assert (w, h) == (531, 398)
    a, b = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert random_area_size(640, 480, (150_000, 450_000), 96, a) == random_area_size(640, 480, (150_000, 450_000), 96, b)


def test_d6_the_random_resized_box_follows_randomresizedcrops_rule() -> None:
    from sslbench.transforms import random_resized_box

    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        top, left, h, w = random_resized_box(320, 240, g)
        assert 0 <= top <= 240 - h and 0 <= left <= 320 - w
        if (h, w) != (240, 320):  # a draw, not the fallback: area 8-100 %, w/h in [3/4, 4/3] up to rounding
            assert 0.08 * 320 * 240 * 0.95 <= h * w <= 320 * 240 and 3 / 4 - 0.05 <= w / h <= 4 / 3 + 0.05
    # nothing fits a 1000:10 strip at ratios 3/4-4/3: torchvision's fallback, the centre crop at ratio 4/3
    assert random_resized_box(1000, 10, torch.Generator().manual_seed(0)) == (0, 493, 10, 13)


@pytest.mark.parametrize("crop,extra", [("random_resized", {}), ("random", {"load_size": 40}),
                                        ("random_area", {"load_area": (1500, 3000)})])
def test_d6_train_crops_are_random_squares_drawn_from_the_items_generator(crop: str, extra: dict) -> None:
    from sslbench.config import DataConfig
    from sslbench.data.build import build_dataset

    cfg = DataConfig(dataset="imagenet", train_split="train", image_size=32, train_crop=crop, **extra)
    ds = build_dataset(cfg, "train", 4)

    def draw(seed: int) -> torch.Tensor:
        return ds.draw(1, torch.Generator().manual_seed(seed))[0]

    assert draw(0).shape == (3, 32, 32) and torch.equal(draw(0), draw(0))
    assert not all(torch.equal(draw(0), draw(s)) for s in range(1, 6))  # the crop moves with the draw
    centre = build_dataset(DataConfig(dataset="imagenet", train_split="train", image_size=32), "train", 4)
    assert torch.equal(ds[1][0], centre[1][0])  # indexing (and every test split) stays the centre crop


def test_d6_context_prediction_rescales_to_150k_450k_pixels_and_crops_its_grid() -> None:
    from sslbench.config import DataConfig
    from sslbench.errors import UserError
    from sslbench.tasks.context import grid_extent

    recipe = _paper("pretrain", "context")
    cfg = recipe.component.cfg
    assert (recipe.data.train_crop, recipe.data.load_area) == ("random_area", (150_000, 450_000))
    assert recipe.data.image_size == grid_extent(recipe.backbone.cfg.image_size, cfg.gap, cfg.jitter) == 398
    with pytest.raises(UserError, match="load_area"):
        DataConfig(train_crop="random_area")
