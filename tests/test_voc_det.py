"""voc-det (Fast R-CNN): box coding, RoI sampling, loss and NMS against hand-written references; the
proposal cache and file checks; a tiny end-to-end run through `evaluate`."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from sslbench.data.build import build_dataset
from sslbench.data.synthetic import CLASSES
from sslbench.errors import UserError
from sslbench.protocols import _proposals as rp
from sslbench.protocols import voc_det as vd
from sslbench.protocols.base import evaluate
from sslbench.recipes import load_recipe
from tests.conftest import tiny_alexnet, tiny_protocol

STDS = (0.1, 0.1, 0.2, 0.2)


def random_boxes(n: int, gen: torch.Generator, size: float = 100.0) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=gen) * size
    wh = 2.0 + torch.rand(n, 2, generator=gen) * size
    return torch.cat([xy, xy + wh - 1.0], dim=1)


def ref_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Straightforward VOC IoU (inclusive pixels), one pair at a time."""
    out = np.zeros((len(a), len(b)))
    for i, p in enumerate(a):
        for j, q in enumerate(b):
            iw = min(p[2], q[2]) - max(p[0], q[0]) + 1
            ih = min(p[3], q[3]) - max(p[1], q[1]) + 1
            inter = max(iw, 0) * max(ih, 0)
            area = lambda r: (r[2] - r[0] + 1) * (r[3] - r[1] + 1)  # noqa: E731
            out[i, j] = inter / (area(p) + area(q) - inter)
    return out


def ref_encode(roi: list[float], gt: list[float]) -> list[float]:
    """Fast R-CNN's bbox_transform written out for one box pair, then divided by the stds."""
    w, h = roi[2] - roi[0] + 1, roi[3] - roi[1] + 1
    gw, gh = gt[2] - gt[0] + 1, gt[3] - gt[1] + 1
    cx, cy, gx, gy = roi[0] + w / 2, roi[1] + h / 2, gt[0] + gw / 2, gt[1] + gh / 2
    raw = [(gx - cx) / w, (gy - cy) / h, math.log(gw / w), math.log(gh / h)]
    return [v / s for v, s in zip(raw, STDS)]


def test_box_coding_matches_reference_and_round_trips() -> None:
    gen = torch.Generator().manual_seed(0)
    rois, gt = random_boxes(50, gen).double(), random_boxes(50, gen).double()
    deltas = vd.encode_boxes(rois, gt, STDS)
    expected = torch.tensor([ref_encode(r.tolist(), g.tolist()) for r, g in zip(rois, gt)], dtype=torch.float64)
    torch.testing.assert_close(deltas, expected)
    torch.testing.assert_close(vd.decode_boxes(rois, deltas, STDS), gt)


def test_inclusive_iou_matches_reference() -> None:
    gen = torch.Generator().manual_seed(1)
    a, b = random_boxes(7, gen), random_boxes(5, gen)
    np.testing.assert_allclose(vd.inclusive_iou(a, b).numpy(), ref_iou(a.numpy(), b.numpy()), rtol=1e-5)


def test_roi_sampling_proportions_and_labels() -> None:
    gen = torch.Generator().manual_seed(2)
    gt = torch.tensor([[20.0, 20.0, 59.0, 59.0], [100.0, 100.0, 139.0, 139.0]])
    classes = torch.tensor([3, 7])
    shifts = torch.arange(0, 40, 0.5)  # shifted copies of both boxes: IoU from 1 down to 0
    props = torch.cat([gt[k] + torch.stack([s, 0 * s, s, 0 * s], 1) for s in shifts[:, None] for k in range(2)])
    iou = ref_iou(torch.cat([gt, props]).numpy(), gt.numpy())
    best = iou.max(1)
    n_fg, n_bg = int((best >= 0.5).sum()), int(((best >= 0.1) & (best < 0.5)).sum())
    assert n_fg > 16 and n_bg > 48  # enough of both for a full sample of 64

    s = vd.sample_rois(props, gt, classes, 64, 0.25, 0.5, (0.1, 0.5), gen)
    assert len(s.rois) == 64 and int((s.labels > 0).sum()) == 16  # round(0.25 * 64) foreground
    got = ref_iou(s.rois.numpy(), gt.numpy())
    fg = s.labels.numpy() > 0
    assert (got[fg].max(1) >= 0.5).all()
    assert ((got[~fg].max(1) >= 0.1) & (got[~fg].max(1) < 0.5)).all()
    np.testing.assert_array_equal(s.labels.numpy()[fg], classes.numpy()[got[fg].argmax(1)] + 1)
    np.testing.assert_array_equal(s.gt.numpy()[fg], gt.numpy()[got[fg].argmax(1)])
    assert len({tuple(r) for r in s.rois.tolist()}) == 64  # drawn without replacement

    few = vd.sample_rois(props, gt, classes, 4 * n_fg + 8, 0.75, 0.5, (0.1, 0.5), gen)
    assert int((few.labels > 0).sum()) == n_fg  # every foreground candidate, the rest background
    assert len(few.rois) == n_fg + min(n_bg, 3 * n_fg + 8)


def test_loss_matches_reference() -> None:
    gen = torch.Generator().manual_seed(3)
    scores, deltas = torch.randn(6, 21, generator=gen), torch.randn(6, 84, generator=gen)
    labels, targets = torch.tensor([4, 0, 20, 0, 0, 1]), torch.randn(6, 4, generator=gen)
    out = vd.fast_rcnn_loss(scores, deltas, labels, targets, 1.0)
    ce = np.mean([-(scores[i, labels[i]] - torch.logsumexp(scores[i], 0)).item() for i in range(6)])
    smooth = lambda x: 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5  # noqa: E731
    box = sum(smooth((deltas[i, 4 * labels[i] + k] - targets[i, k]).item())
              for i in range(6) if labels[i] > 0 for k in range(4)) / 6
    assert out["loss"].item() == pytest.approx(ce + box, rel=1e-5)


def test_postprocess_threshold_and_per_class_nms() -> None:
    props = torch.tensor([[10.0, 10.0, 49.0, 49.0], [12.0, 12.0, 51.0, 51.0], [80.0, 80.0, 99.0, 99.0]])
    probs = torch.zeros(3, 21)
    probs[0, 1 + 5], probs[1, 1 + 5], probs[1, 1 + 9], probs[2, 1 + 5] = 0.9, 0.8, 0.7, 0.01
    boxes, scores, labels = vd.postprocess(props, probs, torch.zeros(3, 84), 120, 120, vd.VOCDetConfig())
    # Same class 5: the overlapping weaker box is suppressed; class 9 keeps its own; 0.01 < threshold.
    assert labels.tolist() == [5, 9] and scores.tolist() == pytest.approx([0.9, 0.7])
    np.testing.assert_allclose(boxes, props[[0, 1]].numpy())


def tiny_det(extra: list[str] | None = None):
    return tiny_protocol("voc-det", tiny_alexnet([
        "data.num_images=8", "data.num_test=8", "data.batch_size=2", "schedule.epochs=1", "schedule.max_steps=3",
        "train_scales=[32]", "test_scale=32", "rois_per_image=16", *(extra or []),
    ]))


def test_proposal_cache_is_written_once_and_reused(monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = tiny_det()
    ds = build_dataset(recipe.data, "trainval", 4)
    real = rp.selective_search(ds[0][0])
    assert real.ndim == 2 and real.shape[1] == 4 and len(real) > 0
    assert (real[:, 2] >= real[:, 0]).all() and (real[:, 3] >= real[:, 1]).all() and real.max() <= 31
    calls = []
    monkeypatch.setattr(rp, "selective_search", lambda image, mode="opencv-fast": calls.append(1) or np.array([[0, 0, 9, 9]], np.float32))
    first = rp.proposals_for(ds, "", "voc2007-trainval", 32, "synth_seed=0", 0, False)
    assert len(calls) == len(ds) == 4
    ids = rp.image_ids(ds)
    path = rp.cache_path("voc2007-trainval", 32, rp.image_files(ds))
    assert path.is_file() and sorted(np.load(path).files) == sorted(ids)
    second = rp.proposals_for(ds, "", "voc2007-trainval", 32, "synth_seed=0", 0, False)
    assert len(calls) == 4  # read back, not searched again
    assert all(np.array_equal(a, b) for a, b in zip(first, second))


def test_malformed_proposals_file_names_the_file(tmp_path: Path) -> None:
    ds = build_dataset(tiny_det().data, "test", 2)
    ids = rp.image_ids(ds)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip archive")
    wrong_shape = tmp_path / "shape.npz"
    np.savez(wrong_shape, **{i: np.zeros((3, 5)) for i in ids})
    missing = tmp_path / "missing.npz"
    np.savez(missing, **{ids[0]: np.zeros((3, 4))})
    for path, what in ((garbage, "not a readable"), (wrong_shape, re.escape("shape [3, 5]")), (missing, "no boxes for 1 of 2")):
        with pytest.raises(UserError, match=what) as err:
            rp.proposals_for(ds, str(path), "voc2007-test", 32, "", 0, False)
        assert str(path) in str(err.value)


def test_clean_proposals_clips_filters_and_caps() -> None:
    boxes = np.array([[-5, 0, 10, 10], [0, 0, 10, 10], [3, 3, 3, 20], [5, 5, 40, 40], [1, 1, 8, 8]], np.float32)
    out = rp.clean_proposals(boxes, 32, 32, 2, 2)
    np.testing.assert_array_equal(out, [[0, 0, 10, 10], [5, 5, 31, 31]])  # duplicate, 1-px-wide box dropped


def test_smoke_evaluate_with_precomputed_proposals(tmp_path: Path) -> None:
    recipe = tiny_det()
    props = {}
    for split in ("trainval", "test"):
        ds = build_dataset(recipe.data, split, 8)
        for i, (_, target) in zip(rp.image_ids(ds), (ds[k] for k in range(len(ds)))):
            jitter = target["boxes"] + torch.tensor([[1.0, -1.0, 2.0, 1.0]])
            grid = torch.tensor([[x, y, x + 11, y + 11] for x in range(0, 24, 6) for y in range(0, 24, 6)], dtype=torch.float32)
            props[i] = torch.cat([jitter, grid]).numpy()
    file = tmp_path / "proposals.npz"
    np.savez(file, **props)
    out = evaluate(tiny_det([f"proposals={str(file)!r}"]), "random", tmp_path / "runs", device="cpu", progress=False)
    m = out.metrics
    assert 0.0 <= m["voc-det/mAP"] <= 100.0
    per_class = {k for k in m if k.startswith("voc-det/AP/")}
    assert per_class and per_class <= {f"voc-det/AP/{c}" for c in CLASSES}
    assert m["voc-det/mAP"] == pytest.approx(np.mean([m[k] for k in per_class]))
    assert (out.run_dir / "result.json").is_file()


def test_head_pools_conv5_to_the_trunk_pool5_grid() -> None:
    from sslbench.checkpoint import TrunkSpec, load_trunk

    recipe = tiny_det()
    trunk = load_trunk(TrunkSpec("random"), recipe.backbone)
    model = vd.FastRCNN(trunk.backbone).eval()
    assert model.grid == trunk.backbone.pool5_size
    assert model.spatial_scale == 1.0 / trunk.backbone.feature_info["conv5"].stride
    rois = torch.tensor([[0, 0, 0, 20, 20], [1, 4, 4, 30, 30], [1, 0, 0, 47, 47]], dtype=torch.float32)
    scores, deltas = model(torch.randn(2, 3, 48, 48), rois)
    assert scores.shape == (3, 21) and deltas.shape == (3, 84)


def test_bad_settings_and_missing_data_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="bg_iou"):
        vd.check_config(vd.VOCDetConfig(bg_iou=(0.5, 0.1)))
    with pytest.raises(UserError, match="train_scales"):
        vd.check_config(vd.VOCDetConfig(train_scales=()))
    paper = load_recipe("protocol", "voc-det", "paper")
    with pytest.raises(UserError, match="--data voc2007="):
        evaluate(paper, "random", tmp_path / "runs", device="cpu", progress=False)


def test_a_cold_proposal_cache_gives_the_same_result_as_a_warm_one(tmp_path, monkeypatch) -> None:
    """Computing the proposals must not touch the random streams the detector trains with (a DataLoader without its
    own generator draws from the global RNG): the first run, which searches, trains exactly as the second, which reads."""
    import json

    from sslbench.protocols.base import evaluate
    from tests.conftest import tiny_alexnet, tiny_protocol

    monkeypatch.setenv("SSLBENCH_CACHE", str(tmp_path / "cache"))
    recipe = tiny_protocol("voc-det", tiny_alexnet(["data.image_size=48", "data.num_images=8", "data.num_test=4",
                                                    "data.batch_size=2", "schedule.max_steps=3", "engine.log_every=1"]))
    losses = []
    for runs in ("cold", "warm"):
        out = evaluate(recipe, "random", tmp_path / runs, "cpu", progress=False, store=False)
        losses.append([json.loads(line).get("loss") for line in (out.run_dir / "metrics.jsonl").read_text().splitlines()])
        assert list((tmp_path / "cache" / "proposals").glob("*.npz"))
    assert losses[0] == losses[1] and len([v for v in losses[0] if v is not None]) == 3


# ---------------------------------------------------------------- Faster R-CNN (ResNet C4, torchvision)


def test_faster_rcnn_boxes_go_to_torchvision_and_back() -> None:
    from sslbench.protocols._faster_rcnn import to_torchvision

    target = {"boxes": torch.tensor([[2.0, 3.0, 10.0, 20.0], [0.0, 0.0, 5.0, 5.0]]),
              "box_labels": torch.tensor([4, 7]), "box_difficult": torch.tensor([False, True])}
    t = to_torchvision(target)
    assert t["boxes"].tolist() == [[2.0, 3.0, 11.0, 21.0]] and t["labels"].tolist() == [5]  # difficult left out
    flipped = to_torchvision(target, flip_width=32)  # inclusive x 2..10 of a 32 px row -> 21..29, then +1
    assert flipped["boxes"].tolist() == [[21.0, 3.0, 30.0, 21.0]]


@pytest.mark.parametrize("stages", [3, 4])
def test_faster_rcnn_trains_and_tests_through_voc_eval(stages: int, tmp_path: Path) -> None:
    """A tiny train / test run on the embedded VOC layout, for a truncated trunk (a new res5 head) and a full one
    (the trunk's own res5); its mAP comes from sslbench.metrics.voc_eval."""
    from sslbench.backbones.alexnet import AlexNet, AlexNetConfig
    from sslbench.protocols._faster_rcnn import build_faster_rcnn

    extra = ["data.num_images=8", "data.num_test=4", "schedule.epochs=1", "backbone.width=0.0625",
             f"backbone.stages={stages}", "protocol.rpn_pre_nms=200", "protocol.rpn_post_nms=50"]
    recipe = load_recipe("protocol", "voc-det", "mini", extra, flavour="faster-rcnn")
    out = evaluate(recipe, "random", tmp_path, "cpu", progress=False, argv=["test"])
    assert "voc-det/mAP" in out.metrics and 0.0 <= out.metrics["voc-det/mAP"] <= 100.0
    from sslbench.backbones.base import build_backbone

    trunk = build_backbone(recipe.backbone.name, recipe.backbone.cfg)
    model = build_faster_rcnn(trunk, recipe.component.cfg)
    if stages == 4:
        assert model.roi_heads.box_head.res5 is trunk.layer4  # the trunk's own res5 where it has one
    else:
        assert not hasattr(trunk, "layer4") and len(model.roi_heads.box_head.res5) == 3  # a new one of its kind
    with pytest.raises(UserError, match="reads a res4 map"):
        build_faster_rcnn(build_backbone("alexnet", AlexNetConfig(**AlexNet.tiny())), recipe.component.cfg)
