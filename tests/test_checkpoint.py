"""Loading trunks: a checkpoint pretrained at another input size is rebuilt at the protocol's size."""

from __future__ import annotations

import torch

from sslbench.checkpoint import load_trunk
from sslbench.config import load_recipe
from sslbench.engine import pretrain
from tests.conftest import tiny_alexnet, tiny_pretrain


def test_trunk_rebuilt_at_the_protocols_size_keeps_convolutions(tmp_path) -> None:
    out = pretrain(tiny_pretrain("rotation", tiny_alexnet(), flavour="alexnet"), tmp_path, "cpu", progress=False)
    protocol = load_recipe("protocol", "linear", "mini", ["backbone.width=0.125", "backbone.fc_dim=32", "backbone.conv1_stride=1"])
    trunk = load_trunk(str(out.checkpoint), protocol.backbone, ("conv5", "fc7"))
    assert trunk.backbone.cfg.image_size == protocol.backbone.cfg.image_size == 64
    assert any(k.startswith("fc6") for k in trunk.reinitialised) and not any(k.startswith("conv") for k in trunk.reinitialised)
    state = torch.load(out.checkpoint, map_location="cpu", weights_only=False)["backbone_state"]
    assert torch.equal(trunk.backbone.state_dict()["conv3.0.weight"], state["conv3.0.weight"])
    assert trunk.backbone(torch.zeros(2, 3, 64, 64), taps=("fc7",))["fc7"].shape == (2, 32)
