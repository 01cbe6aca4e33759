"""The lasso's trunk view (the combination it reads, the trunk it owns or only references) and the protocols'
eval-side lasso: linear, nyu-depth and Faster R-CNN train its weights, label the row 'eval-lasso', and refuse a
lasso they cannot apply in one line before any work."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from sslbench.backbones.base import build_backbone
from sslbench.backbones.lasso import LassoEval, TrunkView, lasso_view
from sslbench.backbones.resnet import ResNetConfig
from sslbench.errors import UserError
from sslbench.protocols.base import evaluate
from sslbench.recipes import load_recipe

TRUNK = ["backbone.depth=50", "backbone.width=0.0625"]  # res4: 6 units
CASES = {
    "linear": ("task-ensemble", ["data.num_images=32", "data.num_test=16", "data.batch_size=16", "schedule.epochs=2",
                                 "data.image_size=64"]),
    "nyu-depth": ("", ["data.num_images=8", "data.num_test=4", "data.batch_size=4", "schedule.epochs=2",
                       "data.image_size=48"]),
    "voc-det": ("faster-rcnn", ["data.num_images=4", "data.num_test=2", "schedule.epochs=1",
                                "protocol.rpn_pre_nms=200", "protocol.rpn_post_nms=50"]),
}


def _trunk() -> torch.nn.Module:
    return build_backbone("resnet", ResNetConfig(depth=50, version=2, stages=3, width=0.0625, in_channels=1,
                                                 image_size=32))


def test_the_view_reads_the_combination_of_the_units() -> None:
    trunk = _trunk().eval()
    view = lasso_view(trunk, LassoEval(enabled=True), "test").eval()
    assert view.units == [f"res4_{i}" for i in range(1, 7)]
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        units = trunk(x, taps=tuple(view.units))
        assert torch.allclose(view(x, taps=("res4",))["res4"], units["res4_6"])  # it starts as the last unit alone
        view.lasso.alpha.copy_(torch.tensor([0.5, 0.0, -1.0, 0.0, 2.0, 0.25]))
        expect = sum(a * units[u] for a, u in zip(view.lasso.alpha.tolist(), view.units))
        out = view(x, taps=("res3", "res4", "pool"))
        assert torch.allclose(out["res4"], expect, atol=1e-5)
        assert torch.allclose(out["pool"], expect.mean((2, 3)), atol=1e-5)
        assert torch.equal(out["res3"], trunk(x, taps=("res3",))["res3"])
    owned = {n for n, _ in view.named_parameters()}  # a protocol's view trains the trunk with its head
    assert "lasso.alpha" in owned and any(n.startswith("owned.") for n in owned)
    shared = {n for n, _ in TrunkView(trunk, "res4", view.lasso).named_parameters()}  # multitask's: the weights only
    assert shared == {"lasso.alpha"}
    with pytest.raises(UserError, match="must be the trunk's last stage"):
        lasso_view(trunk, LassoEval(enabled=True, stage="res3"), "test")


@pytest.mark.parametrize("protocol", sorted(CASES))
def test_eval_lasso_trains_its_weights_and_labels_the_row(protocol: str, tmp_path: Path) -> None:
    flavour, extra = CASES[protocol]
    recipe = load_recipe("protocol", protocol, "mini", [*TRUNK, *extra, "protocol.lasso.enabled=true",
                                                        "protocol.lasso.l1=0.01", "engine.log_every=1"],
                         flavour=flavour)
    out = evaluate(recipe, "random", tmp_path, "cpu", progress=False, argv=["test"])
    assert out.provenance.variant == "eval-lasso" and out.metrics
    logged = [json.loads(line) for line in (out.run_dir / "metrics.jsonl").read_text().splitlines()]
    l1 = [r["lasso_l1"] for r in logged if "lasso_l1" in r]
    assert l1 and l1[0] == pytest.approx(1.0, abs=0.05) and l1[-1] != l1[0]  # sum |alpha| starts at 1, then moves


@pytest.mark.parametrize("protocol,extra,match", [
    ("linear", ["protocol.pool.res4={kind=\"adaptive_max\", size=4}"], "only for a linear pooling"),
    ("linear", ["protocol.lasso.stage=res3", "protocol.taps=[\"res3\", \"res4\"]",
                "protocol.pool.res3={kind=\"adaptive_avg\", size=4}"], "must be the trunk's last stage"),
    ("linear", ["protocol.taps=[\"res3\"]"], "is not among the probed taps"),
    ("nyu-depth", ["protocol.lasso.stage=res3"], "must be the trunk's last stage"),
    ("voc-det", ["protocol.detector=fast-rcnn"], "res4 of Faster R-CNN"),
])
def test_a_lasso_the_protocol_cannot_apply_is_one_line(protocol: str, extra: list[str], match: str,
                                                        tmp_path: Path) -> None:
    flavour, tiny = CASES[protocol]
    recipe = load_recipe("protocol", protocol, "mini", [*TRUNK, *tiny, "protocol.lasso.enabled=true", *extra],
                         flavour=flavour)
    with pytest.raises(UserError, match=match) as err:
        evaluate(recipe, "random", tmp_path / "runs", "cpu", progress=False)
    assert "\n" not in str(err.value)
    assert not list((tmp_path / "runs").glob("eval-*"))  # refused before any run directory was kept
