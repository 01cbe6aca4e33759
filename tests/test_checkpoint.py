"""Loading trunks: a checkpoint pretrained at another input size is rebuilt at the protocol's size."""

from __future__ import annotations

import pytest
import torch

from sslbench.checkpoint import load_trunk
from sslbench.errors import UserError
from sslbench.config import load_recipe
from sslbench.engine import pretrain
from tests.conftest import tiny_alexnet, tiny_pretrain


@pytest.fixture(scope="module")
def rotnet_tiny(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """A tiny RotNet AlexNet checkpoint at 32 px, conv1 stride 1, fc 32: not the protocol recipe's shape."""
    return pretrain(tiny_pretrain("rotation", tiny_alexnet(), flavour="alexnet"), tmp_path_factory.mktemp("r"), "cpu",
                    progress=False)


def test_trunk_rebuilt_at_the_protocols_size_keeps_convolutions(rotnet_tiny) -> None:
    out = rotnet_tiny
    protocol = load_recipe("protocol", "linear", "mini", ["backbone.width=0.125", "backbone.fc_dim=32", "backbone.conv1_stride=1"])
    trunk = load_trunk(str(out.checkpoint), protocol.backbone, ("conv5", "fc7"))
    assert trunk.backbone.cfg.image_size == protocol.backbone.cfg.image_size == 64
    assert any(k.startswith("fc6") for k in trunk.reinitialised) and not any(k.startswith("conv") for k in trunk.reinitialised)
    state = torch.load(out.checkpoint, map_location="cpu", weights_only=False)["backbone_state"]
    assert torch.equal(trunk.backbone.state_dict()["conv3.0.weight"], state["conv3.0.weight"])
    assert trunk.backbone(torch.zeros(2, 3, 64, 64), taps=("fc7",))["fc7"].shape == (2, 32)


def test_random_like_a_checkpoint_is_its_architecture_freshly_initialised(rotnet_tiny, tmp_path) -> None:
    protocol = load_recipe("protocol", "linear", "mini")  # its own backbone: width 0.25, stride 2, fc 512
    ckpt = str(rotnet_tiny.checkpoint)
    trunk = load_trunk("random:" + ckpt, protocol.backbone, ("conv5", "fc7"))
    cfg = trunk.backbone.cfg
    assert (cfg.image_size, cfg.width, cfg.conv1_stride, cfg.fc_dim) == (64, 0.125, 1, 32)  # the checkpoint's, at 64 px
    assert (trunk.method, trunk.variant, trunk.checkpoint) == ("random", "rotation trunk", "random:" + ckpt)
    trained = load_trunk(ckpt, protocol.backbone, ("conv5",))
    assert trunk.label == trained.label and trunk.prepare is trained.prepare
    assert not torch.equal(trunk.backbone.state_dict()["conv3.0.weight"], trained.backbone.state_dict()["conv3.0.weight"])
    torch.save(trained.backbone.state_dict(), tmp_path / "plain.pt")
    with pytest.raises(UserError, match="not an sslbench pretraining checkpoint"):
        load_trunk(f"random:{tmp_path / 'plain.pt'}", protocol.backbone, ("conv5",))
    with pytest.raises(UserError, match="checkpoint not found"):
        load_trunk(f"random:{tmp_path / 'none.pt'}", protocol.backbone, ("conv5",))


def test_evaluating_random_like_records_random_init(rotnet_tiny, tmp_path) -> None:
    from sslbench.protocols.base import evaluate
    from tests.conftest import tiny_alexnet, tiny_protocol

    recipe = tiny_protocol("linear", tiny_alexnet(["protocol.taps=['conv1']"]))
    for init, method, kind in (("default", "random", "random"), ("rescale", "random-rescaled", "random+rescale")):
        out = evaluate(recipe, f"random:{rotnet_tiny.checkpoint}", tmp_path, "cpu", progress=False, init=init)
        prov = out.provenance
        assert (prov.method, prov.variant, prov.init) == (method, "rotation trunk", kind)
