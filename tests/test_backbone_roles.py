"""Protocols ask backbones for roles, not layer names: a ResNet runs linear, voc-cls, voc-det and voc-seg
unchanged, VGG-16 runs voc-seg, and a backbone lacking a role is a one-line error before any work."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from sslbench.backbones.base import build_backbone
from sslbench.backbones.resnet import ResNet, ResNetConfig
from sslbench.config import Recipe, recipe_from_dict
from sslbench.errors import UserError
from sslbench.protocols.base import evaluate
from sslbench.recipes import apply_overrides, recipe_path
from sslbench.registry import BACKBONES
from tests.conftest import TINY_PROTOCOL

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


def with_backbone(protocol: str, backbone: dict[str, Any], extra: list[str]) -> Recipe:
    """The protocol's mini recipe with another [backbone] table (the tiny preset of that backbone)."""
    path = recipe_path("protocol", protocol, "mini")
    raw = tomllib.loads(path.read_text())
    raw["backbone"] = backbone
    overrides = TINY_PROTOCOL + extra
    apply_overrides(raw, overrides, "protocol")
    return recipe_from_dict("protocol", protocol, raw, str(path), "mini", tuple(overrides))


RESNET = {"name": "resnet", **ResNet.tiny()}
RESNET_RUNS = {
    "linear": ["protocol.taps=['res2','res5']"],
    "voc-cls": ["layers=all", "protocol.test_crops=1", "data.image_size=72"],
    "voc-det": ["data.num_images=4", "data.num_test=4", "data.batch_size=2", "schedule.max_steps=2",
                "protocol.max_proposals=20"],
    "voc-seg": ["protocol.pad=0", "data.num_images=20", "data.num_test=10", "data.batch_size=10"],
}


@pytest.mark.slow
@pytest.mark.parametrize("protocol", sorted(RESNET_RUNS))
def test_resnet_runs_the_transfer_protocols_unchanged(protocol: str, tmp_path: Path) -> None:
    out = evaluate(with_backbone(protocol, RESNET, RESNET_RUNS[protocol]), "random", tmp_path, "cpu", progress=False)
    assert out.metrics and all(0.0 <= v <= 100.0 for v in out.metrics.values())
    assert out.provenance.backbone == "resnet50-w0.0625"


def test_vgg16_runs_voc_seg(tmp_path: Path) -> None:
    vgg = {"name": "vgg16", **BACKBONES.get("vgg16").tiny()}
    recipe = with_backbone("voc-seg", vgg, ["data.num_images=20", "data.num_test=10", "data.batch_size=10"])
    out = evaluate(recipe, "random", tmp_path, "cpu", progress=False)
    assert 0.0 <= out.metrics["voc-seg/mIoU"] <= 100.0


def test_a_missing_role_is_a_one_line_error_before_any_work(tmp_path: Path) -> None:
    nin = {"name": "nin", **BACKBONES.get("nin").tiny()}
    for protocol, role in (("voc-det", "region tap"), ("voc-seg", "fcn tap")):
        with pytest.raises(UserError, match=f"{protocol} needs a backbone with a {role}; nin has none"):
            evaluate(with_backbone(protocol, nin, []), "random", tmp_path, "cpu", progress=False)
    assert not list(tmp_path.iterdir())  # refused before the run directory
    with pytest.raises(UserError, match="layers=fc6-8 trains the trunk's fully connected layers; resnet has none"):
        evaluate(with_backbone("voc-cls", RESNET, ["layers=fc6-8"]), "random", tmp_path, "cpu", progress=False)


def test_resnet_keeps_torchvisions_names_and_shapes() -> None:
    """ResNet-50 at full width is torchvision's resnet50 without its fc: its weights load by name."""
    import torchvision

    ours = ResNet(ResNetConfig(depth=50, image_size=64)).state_dict()
    theirs = {k: v for k, v in torchvision.models.resnet50().state_dict().items() if not k.startswith("fc.")}
    assert ours.keys() == theirs.keys() and all(ours[k].shape == theirs[k].shape for k in ours)
    net = build_backbone("resnet", ResNetConfig(depth=101, width=0.0625, image_size=64))
    out = net(torch.zeros(1, 3, 64, 64), taps=("res4", "pool"))
    assert out["res4"].shape[-1] == net.feature_info["res4"].size == 4 and out["pool"].shape == (1, 128)
    stride, first = __import__("sslbench.protocols.voc_seg", fromlist=["score_grid"]).score_grid(net.tap_geometry("res5"))
    assert (stride, first) == (32, 0.0)  # the main path only: the downsampling shortcuts do not count
