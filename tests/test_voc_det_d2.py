"""voc-det-d2: the shipped detectron2 config is MoCo's VOC07+12 R50-C4 benchmark, the recipe's settings go over it,
trunks detectron2 cannot hold are refused in one line, and without detectron2 the protocol says how to install it
before any work. The detectron2 run itself is tested only where detectron2 imports (it is not on PyPI for this
torch; CI has none, so that test is skipped there)."""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

from sslbench.backbones.alexnet import AlexNetConfig
from sslbench.backbones.base import build_backbone
from sslbench.backbones.resnet import ResNetConfig
from sslbench.errors import UserError
from sslbench.protocols._engines import check_engine_trunk
from sslbench.protocols.base import evaluate
from sslbench.protocols.voc_det_d2 import CONFIG, config_file, settings
from sslbench.recipes import load_recipe

HAS_D2 = importlib.util.find_spec("detectron2") is not None


def flat(node: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in node.items():
        if isinstance(v, dict):
            out |= flat(v, f"{prefix}{k}.")
        else:  # yacs reads "(480, ...)" with literal_eval, as detectron2's get_cfg().merge_from_file does
            out[prefix + k] = ast.literal_eval(v) if isinstance(v, str) and v.startswith(("(", "[")) else v
    return out


def test_the_shipped_config_is_mocos_voc_r50_c4_benchmark() -> None:
    yaml = pytest.importorskip("yaml")
    cfg = flat(yaml.safe_load(config_file(CONFIG).read_text()))
    # facebookresearch/moco detection/configs: Base-RCNN-C4-BN.yaml, pascal_voc_R_50_C4_24k{,_moco}.yaml
    assert cfg["MODEL.ROI_HEADS.NAME"] == "Res5ROIHeadsExtraNorm" and cfg["MODEL.RESNETS.NORM"] == "naiveSyncBN"
    assert cfg["MODEL.BACKBONE.FREEZE_AT"] == 0 and cfg["TEST.PRECISE_BN.ENABLED"] is True
    assert (cfg["SOLVER.IMS_PER_BATCH"], cfg["SOLVER.BASE_LR"], cfg["SOLVER.MAX_ITER"]) == (16, 0.02, 24000)
    assert cfg["SOLVER.STEPS"] == (18000, 22000) and cfg["SOLVER.WARMUP_ITERS"] == 100
    assert cfg["INPUT.MIN_SIZE_TRAIN"] == tuple(range(480, 801, 32)) and cfg["INPUT.MIN_SIZE_TEST"] == 800
    assert cfg["DATASETS.TRAIN"] == ("voc_2007_trainval", "voc_2012_trainval") and cfg["DATASETS.TEST"] == (
        "voc_2007_test",)
    assert cfg["MODEL.ROI_HEADS.NUM_CLASSES"] == 20 and cfg["INPUT.FORMAT"] == "RGB"
    assert cfg["MODEL.PIXEL_MEAN"] == [123.675, 116.280, 103.530] and cfg["MODEL.PIXEL_STD"] == [58.395, 57.120,
                                                                                                 57.375]
    assert cfg["MODEL.RESNETS.STRIDE_IN_1X1"] is False
    # torchvision's normalisation on the 0-255 scale is sslbench's "imagenet" transfer input
    from sslbench.transforms import MEAN, STD

    assert [round(float(m) * 255, 3) for m in MEAN.flatten()] == cfg["MODEL.PIXEL_MEAN"]
    assert [round(float(s) * 255, 3) for s in STD.flatten()] == cfg["MODEL.PIXEL_STD"]


def test_the_recipes_settings_go_over_the_file_and_only_what_they_set() -> None:
    paper = load_recipe("protocol", "voc-det-d2", "paper")
    pairs = settings(paper.component.cfg, paper, Path("w.pkl"), Path("out"), "cuda:0")
    assert dict(zip(pairs[::2], pairs[1::2])) == {
        "MODEL.WEIGHTS": "w.pkl", "MODEL.DEVICE": "cuda:0", "OUTPUT_DIR": "out", "SEED": 0,
        "DATASETS.TRAIN": ("sslbench_voc_2007_trainval", "sslbench_voc_2012_trainval"),
        "DATASETS.TEST": ("sslbench_voc_2007_test",), "DATALOADER.NUM_WORKERS": 8, "TEST.PRECISE_BN.ENABLED": True,
        "MODEL.RESNETS.DEPTH": 50}
    mini = load_recipe("protocol", "voc-det-d2", "mini")
    got = dict(zip(*[iter(settings(mini.component.cfg, mini, Path("w"), Path("o"), "cpu"))] * 2))
    assert got["SOLVER.MAX_ITER"] == 200 and got["SOLVER.STEPS"] == (150,) and got["MODEL.RESNETS.NORM"] == "FrozenBN"
    assert got["DATASETS.TRAIN"] == ("sslbench_voc_2007_trainval",)


def check_trunk(backbone, transfer_input: str, checkpoint: str) -> None:  # noqa: ANN001
    check_engine_trunk("voc-det-d2", "detectron2's R-C4", backbone, transfer_input, checkpoint, "voc-det")


def test_trunks_detectron2_cannot_hold_are_one_line() -> None:
    alex = build_backbone("alexnet", AlexNetConfig(image_size=64, width=0.125, conv1_stride=2, fc_dim=32))
    with pytest.raises(UserError, match="has a alexnet trunk; detectron2's R-C4 takes ResNet.*use --protocol voc-det"):
        check_trunk(alex, "imagenet", "a.pt")
    v2 = build_backbone("resnet", ResNetConfig(depth=50, version=2, stages=3, width=0.0625))
    with pytest.raises(UserError, match=r"backbone.version = 2 \(torchvision's: 1\)"):
        check_trunk(v2, "imagenet", "b.pt")
    v1 = build_backbone("resnet", ResNetConfig(depth=50, version=1, stages=4))
    with pytest.raises(UserError, match="reads 'lab-l' input"):
        check_trunk(v1, "lab-l", "c.pt")
    check_trunk(v1, "imagenet", "d.pt")


@pytest.mark.skipif(HAS_D2, reason="detectron2 is installed here")
def test_without_detectron2_it_says_how_to_install_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"git clone https://github.com/facebookresearch/detectron2.git && pip install "
                                        r"--no-build-isolation -e detectron2"):
        evaluate(load_recipe("protocol", "voc-det-d2", "mini"), "random", tmp_path / "runs", device="cpu",
                 progress=False)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.slow
@pytest.mark.skipif(not HAS_D2, reason="detectron2 is not installed (no PyPI wheel for this torch; CI has none)")
def test_voc_det_d2_trains_and_tests_in_detectron2(tmp_path: Path) -> None:
    recipe = load_recipe("protocol", "voc-det-d2", "mini", ["protocol.max_iter=4", "protocol.steps=[3]",
                                                            "protocol.warmup_iters=1"])
    out = evaluate(recipe, "random", tmp_path / "runs", device="cpu", progress=False)
    assert set(out.metrics) == {"voc-det-d2/AP50", "voc-det-d2/AP", "voc-det-d2/AP75"}
    assert all(0.0 <= v <= 100.0 for v in out.metrics.values())
    assert (out.run_dir / "detectron2" / "config.yaml").is_file()
