"""voc-seg-mmseg: MMSelfSup's FCN R50-D8 benchmark built from mmsegmentation's registry on an sslbench ResNet-50.
The tests that need mmseg run in a second virtual environment with `sslbench[mmseg]` (the README's set-up; CI runs
them there), and are skipped in the main one, where only the config and the missing-package line are checked."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from sslbench.errors import UserError
from sslbench.protocols.base import evaluate
from sslbench.protocols.voc_seg_mmseg import VocSegMMSegConfig, model_config, pipelines
from sslbench.recipes import load_recipe

HAS_MMSEG = importlib.util.find_spec("mmseg") is not None
needs_mmseg = pytest.mark.skipif(not HAS_MMSEG, reason="mmseg is not installed here: the README's second venv "
                                 "(bash scripts/mmseg-venv.sh) runs this test")


def test_the_model_and_pipeline_are_mmselfsups_fcn_r50_d8() -> None:
    paper = load_recipe("protocol", "voc-seg-mmseg", "paper").component.cfg
    model = model_config(paper, 50)
    # open-mmlab/mmselfsup configs/benchmarks/mmsegmentation/_base_/models/fcn_r50-d8.py
    b = model["backbone"]
    assert (b["type"], b["style"], b["strides"], b["dilations"], b["contract_dilation"]) == (
        "ResNet", "pytorch", (1, 2, 1, 1), (1, 1, 2, 4), True)
    d, a = model["decode_head"], model["auxiliary_head"]
    assert (d["in_channels"], d["in_index"], d["channels"], d["num_convs"], d["concat_input"]) == (2048, 3, 512, 2, True)
    assert (a["in_channels"], a["in_index"], a["channels"], a["num_convs"], a["concat_input"]) == (1024, 2, 256, 1, False)
    assert d["loss_decode"]["loss_weight"] == 1.0 and a["loss_decode"]["loss_weight"] == 0.4
    assert d["num_classes"] == a["num_classes"] == 21 and b["norm_cfg"]["type"] == "SyncBN"
    # _base_/schedules/schedule_20k.py and _base_/datasets/pascal_voc12_aug.py
    assert (paper.max_iters, paper.lr, paper.momentum, paper.weight_decay, paper.eta_min, paper.power) == (
        20000, 0.01, 0.9, 5e-4, 1e-4, 0.9)
    train, test = pipelines(paper)
    assert [t["type"] for t in train] == ["RandomResize", "RandomCrop", "RandomFlip", "PhotoMetricDistortion", "Pad"]
    assert train[0]["scale"] == (2048, 512) and train[0]["ratio_range"] == (0.5, 2.0)
    assert train[1]["crop_size"] == (512, 512) and train[1]["cat_max_ratio"] == 0.75
    assert test == [{"type": "Resize", "scale": (2048, 512), "keep_ratio": True}]
    assert paper.sbd == "required" and load_recipe("protocol", "voc-seg-mmseg", "paper").data.batch_size == 16


@pytest.mark.skipif(HAS_MMSEG, reason="mmseg is installed here")
def test_without_mmseg_it_says_how_to_install_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r'pip install "sslbench\[mmseg\]"'):
        evaluate(load_recipe("protocol", "voc-seg-mmseg", "mini"), "random", tmp_path / "runs", device="cpu",
                 progress=False)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@needs_mmseg
def test_the_trunk_is_what_mmsegs_backbone_starts_from(tmp_path: Path) -> None:
    from sslbench.checkpoint import TrunkSpec, load_trunk
    from sslbench.protocols.voc_seg_mmseg import build_model, mmseg

    mmseg()
    recipe = load_recipe("protocol", "voc-seg-mmseg", "mini")
    trunk = load_trunk(TrunkSpec.parse("random"), recipe.backbone)
    model = build_model(VocSegMMSegConfig(norm="BN", crop=64), trunk, tmp_path)
    model.init_weights()  # what the runner does first: the init_cfg Pretrained load
    ours = trunk.backbone.state_dict()
    theirs = model.backbone.state_dict()
    assert all(torch.equal(theirs[k], ours[k]) for k in ours), "mmseg's backbone did not start from the trunk"
    x = torch.randn(1, 3, 64, 64)
    model.backbone.eval()  # mmseg's ResNet.train() returns None: no chaining
    with torch.no_grad():  # same weights, stride-8 dilation aside: res2 (layer1, undilated) must agree
        assert torch.allclose(model.backbone(x)[0], trunk.backbone.eval()(x, taps=("res2",))["res2"], atol=1e-5)


@needs_mmseg
def test_sslbench_and_mmseg_score_the_same_predictions_alike() -> None:
    from mmengine.structures import PixelData
    from mmseg.evaluation import IoUMetric
    from mmseg.structures import SegDataSample

    from sslbench.protocols.voc_seg_mmseg import mmseg, sslbench_metric

    mmseg()
    rng = np.random.default_rng(0)
    theirs, ours = IoUMetric(iou_metrics=["mIoU"]), sslbench_metric()()
    theirs.dataset_meta = {"classes": tuple(str(c) for c in range(21))}
    for _ in range(5):
        gt = torch.from_numpy(rng.integers(0, 6, (1, 40, 50)))  # classes 0..5 present, 6..20 absent
        gt[:, :3] = 255  # VOC's outlines: ignored
        pred = torch.from_numpy(np.where(rng.random((1, 40, 50)) < 0.6, gt.numpy() % 255, rng.integers(0, 8, (1, 40, 50))))
        sample = SegDataSample(gt_sem_seg=PixelData(data=gt), pred_sem_seg=PixelData(data=pred)).to_dict()
        theirs.process({}, [sample])
        ours.process({}, [sample])
    a = theirs.compute_metrics(theirs.results)["mIoU"]
    b = ours.compute_metrics(ours.results)["mIoU"]
    assert abs(a - b) < 0.006 and 5 < b < 95  # mmseg rounds to 2 decimals


@needs_mmseg
@pytest.mark.slow
def test_voc_seg_mmseg_trains_and_tests_in_mmengine(tmp_path: Path) -> None:
    recipe = load_recipe("protocol", "voc-seg-mmseg", "mini", ["protocol.max_iters=3", "data.num_images=8",
                                                               "data.num_test=4"])
    out = evaluate(recipe, "random", tmp_path / "runs", device="cpu", progress=False)
    assert set(out.metrics) == {"voc-seg-mmseg/mIoU", "voc-seg-mmseg/aAcc"}
    assert all(0.0 <= v <= 100.0 for v in out.metrics.values())
    assert not (out.run_dir / "mmseg" / "trunk.pth").exists()
    recipe = load_recipe("protocol", "voc-seg-mmseg", "mini", ["protocol.norm=SyncBN"])
    with pytest.raises(UserError, match="SyncBN synchronises across GPUs"):
        evaluate(recipe, "random", tmp_path / "runs", device="cpu", progress=False)
