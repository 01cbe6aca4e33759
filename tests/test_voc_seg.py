"""voc-seg (FCN-32s): upsampling, convolutionalised fc layers, crop geometry, loss, smoke run, bad input."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sslbench.backbones.alexnet import AlexNet, AlexNetConfig
from sslbench.backbones.base import build_backbone
from sslbench.backbones.nin import NINConfig
from sslbench.config import DataConfig
from sslbench.errors import UserError
from sslbench.protocols.base import evaluate
from sslbench.protocols.voc_seg import (
    SEG_CLASSES,
    FCN32s,
    VocSegConfig,
    bilinear_upsampler,
    check_masks,
    fcn_placement,
    output_size,
    pixel_loss,
    score_grid,
    segmentation_data,
)
from tests.conftest import tiny_alexnet, tiny_protocol

TINY = AlexNetConfig(image_size=32, width=0.125, conv1_stride=1, fc_dim=32)


@pytest.mark.parametrize("factor", [2, 3, 4, 16])
def test_bilinear_upsampler_is_bilinear_interpolation(factor: int) -> None:
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64)
    up = bilinear_upsampler(3, factor, learn=False).double()(x)  # [2, 3, 6f-1, 5f-1]
    assert not bilinear_upsampler(3, factor, False).weight.requires_grad
    # Output f-1 + f*j lies on input j: between the inputs it is bilinear interpolation with aligned corners,
    inner = up[..., factor - 1 : factor - 1 + 4 * factor + 1, factor - 1 : factor - 1 + 3 * factor + 1]
    ref = F.interpolate(x, size=(4 * factor + 1, 3 * factor + 1), mode="bilinear", align_corners=True)
    torch.testing.assert_close(inner, ref)
    # and beyond the outer inputs it interpolates towards zero (the deconvolution's implicit zeros).
    padded = F.pad(x, (1, 1, 1, 1))
    full = F.interpolate(padded, size=(6 * factor + 1, 5 * factor + 1), mode="bilinear", align_corners=True)
    torch.testing.assert_close(up, full[..., 1:-1, 1:-1])


def test_score_grid_matches_receptive_fields() -> None:
    """Cell centres from the formula vs the support of each output's gradient in a replica conv stack."""
    layers = [(11, 2, 2), (3, 2, 0), (5, 1, 2), (3, 2, 0), (3, 1, 1), (3, 1, 1), (3, 2, 0), (2, 1, 0), (1, 1, 0)]
    net = nn.Sequential(*(nn.Conv1d(1, 1, k, s, p, bias=False) for k, s, p in layers))
    for conv in net:
        nn.init.ones_(conv.weight)  # positive weights: no cancellation hides part of a receptive field
    size = 200
    x = torch.ones(1, 1, size, requires_grad=True)
    out = net(x)
    assert out.shape[-1] == output_size(layers, size)
    stride, first = score_grid(layers)
    assert stride == 16
    for j in (3, 4, out.shape[-1] // 2):  # cells whose receptive field padding does not clip
        (grad,) = torch.autograd.grad(out[0, 0, j], x, retain_graph=True)
        support = torch.nonzero(grad[0, 0]).flatten()
        assert (support.min() + support.max()) / 2 == first + stride * j


def test_crop_offset_matches_caffe_fcn_alexnet() -> None:
    """voc-fcn-alexnet (fcn.berkeleyvision.org): conv1 pad 100, upscore kernel 63 stride 32, Crop offset 18."""
    caffe = AlexNetConfig(bn=False, width=0.0625, fc_dim=16)  # Caffe's geometry; channel counts do not matter
    fcn = FCN32s(AlexNet(caffe), VocSegConfig(pad=98), 500)
    assert fcn.stride == 32 and fcn.upsample.kernel_size == (63, 63)
    assert fcn_placement(fcn.layers, 500, 98)[0] == 18
    stride, first = score_grid(fcn.layers)
    offset, extra = fcn_placement(fcn.layers, 500, 98)
    cells = output_size(fcn.layers, 500 + 2 * 98 + extra)
    assert first - 98 + stride * (cells - 1) >= 499  # a score cell on or past the last pixel


@pytest.mark.parametrize("bn", [True, False])
def test_convolutionalised_fc_equals_linear(bn: bool) -> None:
    torch.manual_seed(0)
    trunk = AlexNet(replace(TINY, bn=bn))
    for m in trunk.modules():  # non-trivial BatchNorm statistics and affine
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2), m.weight.data.uniform_(0.5, 2)
            m.bias.data.uniform_(-1, 1)
    fcn = FCN32s(trunk, VocSegConfig(pad=20), 32).eval()
    trunk.eval()
    k, c5 = trunk.pool5_size, trunk.feature_info["pool5"].channels
    pool5 = torch.randn(4, c5, k, k)
    linear = trunk.fc7(trunk.fc6(pool5))  # [4, D]
    conv = fcn.head(pool5)  # [4, D, 1, 1]: fc6, fc7 as convolutions
    torch.testing.assert_close(conv[..., 0, 0], linear, atol=1e-5, rtol=1e-5)
    # On a larger map every output position is the Linear layers on its pool5 window.
    big = torch.randn(2, c5, k + 2, k + 1)
    conv = fcn.head(big)  # [2, D, 3, 2]
    for i in range(3):
        for j in range(2):
            ref = trunk.fc7(trunk.fc6(big[..., i : i + k, j : j + k]))
            torch.testing.assert_close(conv[..., i, j], ref, atol=1e-5, rtol=1e-5)


def test_pixel_loss_ignores_255() -> None:
    torch.manual_seed(0)
    logits = torch.randn(2, 21, 6, 5)
    target = torch.randint(0, 21, (2, 6, 5))
    target[0, :2] = 255
    target[1, :, 0] = 255
    loss = pixel_loss(logits, target)
    log_p = torch.log_softmax(logits, 1)
    terms = [-log_p[n, target[n, y, x], y, x] for n in range(2) for y in range(6) for x in range(5) if target[n, y, x] != 255]
    torch.testing.assert_close(loss, torch.stack(terms).mean())
    changed = logits.clone()
    changed[0, :, :2] = 100 * torch.randn(21, 2, 5)  # scores at ignored pixels do not matter
    torch.testing.assert_close(pixel_loss(changed, target), loss)
    nothing = logits.clone().requires_grad_()
    empty = pixel_loss(nothing, torch.full_like(target, 255))
    empty.backward()
    assert empty.item() == 0.0 and not nothing.grad.any()


def test_batchnorm_frozen_while_training() -> None:
    fcn = FCN32s(AlexNet(TINY), VocSegConfig(pad=20, bn_train=False), 32).train()
    assert fcn.training and fcn.head[0][0].training  # dropout trains
    assert all(not m.training for m in fcn.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    live = FCN32s(AlexNet(TINY), VocSegConfig(pad=20, bn_train=True), 32).train()
    assert all(m.training for m in live.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
    assert fcn(torch.randn(2, 3, 32, 40)).shape == (2, 21, 32, 40)  # fully convolutional: any size


def test_smoke_random_init_through_evaluate(tmp_path) -> None:
    recipe = tiny_protocol("voc-seg", tiny_alexnet(["data.num_images=16", "data.num_test=8", "data.batch_size=8", "protocol.pad=10"]))
    out = evaluate(recipe, "random", tmp_path, device="cpu", progress=False, store=False)
    assert 0.0 <= out.metrics["voc-seg/mIoU"] <= 100.0
    per_class = {k.split("/")[-1]: v for k, v in out.metrics.items() if k.startswith("voc-seg/IoU/")}
    assert per_class and set(per_class) <= set(SEG_CLASSES)
    assert math.isclose(out.metrics["voc-seg/mIoU"], float(np.mean(list(per_class.values()))), rel_tol=1e-9)
    assert (out.run_dir / "result.json").is_file()


def test_bad_input() -> None:
    with pytest.raises(UserError, match="voc2012"):
        segmentation_data(DataConfig(dataset="cifar10", train_split="train", test_split="test"))
    with pytest.raises(UserError, match="not a directory"):
        segmentation_data(DataConfig(dataset="voc2012", root="/nonexistent/voc", train_split="train", test_split="val"))
    nin = build_backbone("nin", NINConfig())
    with pytest.raises(UserError, match="nin has no fully convolutional head"):
        FCN32s(nin, VocSegConfig(), 32)
    with pytest.raises(UserError, match=r"protocol\.pad=7"):
        FCN32s(AlexNet(TINY), VocSegConfig(pad=0), 32)
    masks = torch.zeros(2, 4, 4, dtype=torch.int64)
    masks[1, 0, 0] = 38  # an RGB-ish value read as a class index
    with pytest.raises(UserError, match="found 38"):
        check_masks(masks, 21, "train")
    masks[1, 0, 0] = 255
    check_masks(masks, 21, "train")


def test_sbd_joins_the_training_set(tmp_path) -> None:
    import json

    recipe = tiny_protocol("voc-seg", tiny_alexnet(["data.num_images=0", "data.num_test=8", "data.batch_size=16",
                                                    "protocol.pad=10", "schedule.epochs=1", "protocol.sbd=embedded"]))
    out = evaluate(recipe, "random", tmp_path, device="cpu", progress=False, store=False)
    sizes = [json.loads(line) for line in (out.run_dir / "metrics.jsonl").read_text().splitlines()]
    sizes = next(s for s in sizes if "train_images" in s)
    voc_train, _ = segmentation_data(recipe.data)
    assert sizes["train_images"] > len(voc_train) and sizes["test_images"] == 8
    assert 0.0 <= out.metrics["voc-seg/mIoU"] <= 100.0
    with pytest.raises(UserError, match="pairs with the embedded VOC data"):
        segmentation_data(replace(recipe.data, root=str(tmp_path)), "embedded")


def test_data_sbd_sets_the_protocol_option() -> None:
    from sslbench.recipes import load_recipe

    r = load_recipe("protocol", "voc-seg", "mini", [], {"voc2012": "/data/VOCdevkit", "sbd": "/data/sbd"})
    assert (r.data.dataset, r.data.root, r.component.cfg.sbd) == ("voc2012", "/data/VOCdevkit", "/data/sbd")
    r = load_recipe("protocol", "voc-seg", "mini", [], None)
    assert r.component.cfg.sbd == "" and r.data.root == ""


def test_native_test_scores_every_val_image_at_its_own_size_one_at_a_time() -> None:
    """D12: FCN's test scored each image at its stored size: the confusion counts every labelled pixel of images
    of different shapes, none squared or resampled."""
    from sslbench.checkpoint import TrunkSpec, load_trunk
    from sslbench.protocols.base import EvalContext
    from sslbench.protocols.voc_seg import test_confusion
    from sslbench.runlog import MetricLogger
    from sslbench.runtime import Dist

    recipe = tiny_protocol("voc-seg", tiny_alexnet(["protocol.pad=10", "protocol.native_test=true"]))
    trunk = load_trunk(TrunkSpec("random"), recipe.backbone)
    model = FCN32s(trunk.backbone, recipe.component.cfg, 48)
    shapes = [(40, 56), (48, 30), (33, 33)]
    g = torch.Generator().manual_seed(0)
    items = [(torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8),
              torch.randint(0, 21, (h, w), generator=g)) for h, w in shapes]
    items[0][1][:5] = 255  # ignored pixels are not counted
    ctx = EvalContext(torch.device("cpu"), Dist(), MetricLogger(Path("."), enabled=False), progress=False)
    confusion = test_confusion(model, trunk, items, recipe, ctx)
    assert confusion.sum() == sum(h * w for h, w in shapes) - 5 * 56


def test_the_score_layers_bias_learns_at_2x_without_decay_as_fcns_score_fr(monkeypatch: pytest.MonkeyPatch) -> None:
    import sslbench.protocols.voc_seg as vs

    seen = {}

    class Stop(Exception):
        pass

    def fake_fit(name, model, groups, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        seen["groups"] = groups
        raise Stop

    monkeypatch.setattr(vs, "Fit", fake_fit)
    recipe = tiny_protocol("voc-seg", tiny_alexnet(["protocol.pad=10"]))
    from sslbench.checkpoint import TrunkSpec, load_trunk

    trunk = load_trunk(TrunkSpec("random"), recipe.backbone)
    model = FCN32s(trunk.backbone, recipe.component.cfg, 32)
    with pytest.raises(Stop):
        vs.train_fcn(model, trunk, list(range(64)), recipe, None)
    rest, bias = seen["groups"]
    assert bias["params"] == [model.score[1].bias] and bias["lr_scale"] == 2.0 and bias["weight_decay"] == 0.0
    assert len(rest["params"]) + 1 == len([p for p in model.parameters() if p.requires_grad])
