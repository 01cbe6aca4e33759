"""voc-cls: VOC07 classification by fine-tuning fc8 / fc6..fc8 / all layers."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import sslbench.protocols.base as protocol_base
from sslbench.backbones.nin import NINConfig
from sslbench.config import Named
from sslbench.data.synthetic import CLASSES
from sslbench.errors import UserError
from sslbench.protocols.base import evaluate
from sslbench.protocols.voc_cls import MEAN_PIXEL, VocClsConfig, classification_ap, masked_bce, rescale_crop_flip
from tests.conftest import tiny_alexnet, tiny_protocol

STAGES = ("conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5", "fc6", "fc7")
TRAINED = {"fc8": (), "fc6-8": ("fc6", "fc7"), "all": STAGES}


def _stage_state(backbone: torch.nn.Module, stage: str) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in getattr(backbone, stage).state_dict().items()}


@pytest.mark.parametrize("layers", ["fc8", "fc6-8", "all"])
def test_fine_tunes_only_the_chosen_layers(layers: str, tmp_path, monkeypatch) -> None:
    seen = {}
    load = protocol_base.load_trunk

    def spy(*args, **kwargs):
        trunk = load(*args, **kwargs)
        seen["trunk"], seen["before"] = trunk, {s: _stage_state(trunk.backbone, s) for s in STAGES}
        return trunk

    monkeypatch.setattr(protocol_base, "load_trunk", spy)
    recipe = tiny_protocol("voc-cls", tiny_alexnet([f"layers={layers}", "protocol.test_crops=2"]))
    out = evaluate(recipe, "random", tmp_path, "cpu", progress=False, argv=["test"])

    key = f"voc-cls/{layers}"
    assert f"{key}/mAP" in out.metrics
    assert {k.split("/AP/")[1] for k in out.metrics if "/AP/" in k} <= set(CLASSES)
    assert all(k.startswith(key + "/") and 0.0 <= v <= 100.0 for k, v in out.metrics.items())
    after = seen["trunk"].backbone
    for stage in (s for s in STAGES if seen["before"][s]):  # pooling stages hold no state
        now = _stage_state(after, stage)
        same = all(torch.equal(now[k], v) for k, v in seen["before"][stage].items())
        grads = {p.requires_grad for p in getattr(after, stage).parameters()}
        if stage in TRAINED[layers]:
            assert not same and grads == {True}, f"{stage} should have trained ({layers})"
        else:
            assert same, f"{stage} should be frozen ({layers}): weights or BatchNorm statistics changed"
            assert grads == {False}, f"{stage} should not require gradients ({layers})"


def test_masked_bce_matches_a_hand_computed_reference() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 20, generator=g, dtype=torch.float64) * 3
    labels = (torch.rand(5, 20, generator=g) < 0.3).double()
    ignore = (torch.rand(5, 20, generator=g) < 0.2).double()
    total = 0.0
    for n in range(5):
        for c in range(20):
            if ignore[n, c] > 0:
                continue
            p = 1.0 / (1.0 + math.exp(-float(logits[n, c])))
            y = float(labels[n, c])
            total -= y * math.log(p) + (1 - y) * math.log(1 - p)
    assert masked_bce(logits, labels, ignore).item() == pytest.approx(total / 5, rel=1e-10)


def test_difficult_entries_get_no_gradient() -> None:
    logits = torch.randn(4, 20, requires_grad=True)
    ignore = torch.zeros(4, 20)
    ignore[1, 3] = ignore[2, 7] = 1.0
    masked_bce(logits, (torch.rand(4, 20) < 0.5).float(), ignore).backward()
    assert logits.grad[1, 3] == 0 and logits.grad[2, 7] == 0
    assert (logits.grad != 0).sum() == 4 * 20 - 2


def test_rescale_crop_flip_crops_pads_and_mirrors() -> None:
    images = torch.randint(0, 256, (6, 3, 40, 40), dtype=torch.uint8)
    g = torch.Generator().manual_seed(0)
    same_scale = rescale_crop_flip(images, 32, 1.0, 1.0, True, g)
    assert same_scale.shape == (6, 3, 32, 32) and same_scale.dtype == torch.uint8
    for img, view in zip(images, same_scale):  # each view is a 32 px window of its image, maybe mirrored
        windows = img.unfold(1, 32, 1).unfold(2, 32, 1).permute(1, 2, 0, 3, 4).reshape(-1, 3, 32, 32)
        assert any(torch.equal(w, view) or torch.equal(w.flip(-1), view) for w in windows)
    small = rescale_crop_flip(images, 64, 1.0, 1.0, False, g)  # 40 px image on a 64 px mean-colour canvas
    assert (small == MEAN_PIXEL.view(3, 1, 1)).all(1).sum() == 6 * (64 * 64 - 40 * 40)


def test_a_trunk_whose_classifier_tap_is_a_map_is_refused(tmp_path) -> None:
    recipe = tiny_protocol("voc-cls", tiny_alexnet())
    nin = dataclasses.replace(recipe, backbone=Named("nin", NINConfig(blocks=3, width=0.1, image_size=32)))
    with pytest.raises(UserError, match="voc-cls puts fc8 on a vector; nin's classifier tap 'block3' is a feature map"):
        evaluate(nin, "random", tmp_path, "cpu", progress=False, argv=["test"])
    assert not list(tmp_path.glob("eval-*"))



def test_test_crops_depend_on_the_image_not_on_the_batching() -> None:
    """Crop k of test image i is drawn from (seed, i, k): scores are the same at any batch size (and any number
    of processes, each scoring its shard)."""
    from sslbench.checkpoint import TrunkSpec, load_trunk
    from sslbench.data.build import build_dataset
    from sslbench.protocols.base import EvalContext
    from sslbench.protocols.voc_cls import FineTuneNet, _test_scores
    from sslbench.runlog import MetricLogger
    from sslbench.runtime import Dist

    scores = []
    for batch in (16, 5):
        recipe = tiny_protocol("voc-cls", tiny_alexnet([f"data.batch_size={batch}", "protocol.test_crops=3"]))
        torch.manual_seed(0)
        trunk = load_trunk(TrunkSpec("random"), recipe.backbone)
        cfg = recipe.component.cfg
        net = FineTuneNet(trunk.backbone, "all", 20, VocClsConfig(head_dropout=0.0))
        ctx = EvalContext(torch.device("cpu"), Dist(), MetricLogger(Path("."), enabled=False), progress=False)
        test = build_dataset(recipe.data, recipe.data.test_split, recipe.data.num_test)
        scores.append(_test_scores(net, test, recipe, cfg, trunk.backbone.image_size, trunk, ctx)[0])
    np.testing.assert_allclose(scores[0], scores[1], rtol=1e-5, atol=1e-5)


def test_the_released_metric_is_sklearns_ap_with_its_tie_break_and_difficult_left_out() -> None:
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=(40, 3)), 1)  # rounded: many ties, where the -1e-5 * gt tie-break matters
    labels = rng.random((40, 3)) < 0.4
    difficult = rng.random((40, 3)) < 0.1
    mean, per_class = classification_ap(scores, labels, difficult, "sklearn")
    for c in range(3):
        keep = ~difficult[:, c]  # train_cls.py: gts <= 1 (255 = difficult is left out)
        gt = labels[keep, c].astype(float)
        expected = average_precision_score(gt, scores[keep, c] - 1e-5 * gt)
        assert per_class[c] == pytest.approx(expected, abs=1e-12)
    assert mean == pytest.approx(per_class.mean())
    voc07, _ = classification_ap(scores, labels, difficult, "voc07")
    assert voc07 != pytest.approx(mean)  # the 11-point AP is another number on the same ranking


@pytest.mark.parametrize("layers", ["fc8", "fc6-8", "all"])
def test_fine_tuning_rates_are_the_released_codes_weights_1x_biases_2x_and_drop7_is_the_trunks(layers: str) -> None:
    from sslbench.checkpoint import TrunkSpec, load_trunk
    from sslbench.protocols.voc_cls import FineTuneNet

    recipe = tiny_protocol("voc-cls", tiny_alexnet(["backbone.bn=false"]))
    trunk = load_trunk(TrunkSpec("random"), recipe.backbone)
    net = FineTuneNet(trunk.backbone, layers, 20, VocClsConfig())
    groups = net.param_groups(1.0, 2.0)
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    named = [*net.trained.named_parameters(), *(("fc8." + n, p) for n, p in net.fc8.named_parameters())]
    assert len(scale) == len(named)  # every trained parameter in exactly one group
    assert all(scale[id(p)] == (2.0 if name.endswith("bias") else 1.0) for name, p in named)
    assert net.fc8[1].bias.detach().eq(0.1).all()
    # fc7 ends in its own drop7 (Caffe's order); a second dropout before fc8 only when fc7 is frozen
    assert isinstance(trunk.backbone.fc7[-1], torch.nn.Dropout)
    assert net.fc8[0].p == (0.5 if layers == "fc8" else 0.0)
