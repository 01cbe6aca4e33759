"""Loading trunks: a checkpoint pretrained at another input size is rebuilt at the protocol's size."""

from __future__ import annotations

import pytest
import torch

from sslbench.checkpoint import TrunkSpec, load_trunk
from sslbench.engine import pretrain
from sslbench.errors import UserError
from sslbench.recipes import load_recipe
from tests.conftest import tiny_alexnet, tiny_pretrain


@pytest.fixture(scope="module")
def rotnet_tiny(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """A tiny RotNet AlexNet checkpoint at 32 px, conv1 stride 1, fc 32: not the protocol recipe's shape."""
    return pretrain(tiny_pretrain("rotation", tiny_alexnet(), flavour="alexnet"), tmp_path_factory.mktemp("r"), "cpu",
                    progress=False)


def test_trunk_rebuilt_at_the_protocols_size_keeps_convolutions(rotnet_tiny) -> None:
    out = rotnet_tiny
    protocol = load_recipe("protocol", "linear", "mini", ["backbone.width=0.125", "backbone.fc_dim=32", "backbone.conv1_stride=1"])
    trunk = load_trunk(TrunkSpec.parse(str(out.checkpoint)), protocol.backbone)
    assert trunk.backbone.cfg.image_size == protocol.backbone.cfg.image_size == 64
    assert any(k.startswith("fc6") for k in trunk.reinitialised) and not any(k.startswith("conv") for k in trunk.reinitialised)
    state = torch.load(out.checkpoint, map_location="cpu", weights_only=False)["backbone_state"]
    assert torch.equal(trunk.backbone.state_dict()["conv3.0.weight"], state["conv3.0.weight"])
    assert trunk.backbone(torch.zeros(2, 3, 64, 64), taps=("fc7",))["fc7"].shape == (2, 32)


def test_random_like_a_checkpoint_is_its_architecture_freshly_initialised(rotnet_tiny, tmp_path) -> None:
    protocol = load_recipe("protocol", "linear", "mini")  # its own backbone: width 0.25, stride 2, fc 512
    ckpt = str(rotnet_tiny.checkpoint)
    trunk = load_trunk(TrunkSpec.parse("random:" + ckpt), protocol.backbone)
    cfg = trunk.backbone.cfg
    assert (cfg.image_size, cfg.width, cfg.conv1_stride, cfg.fc_dim) == (64, 0.125, 1, 32)  # the checkpoint's, at 64 px
    assert (trunk.method, trunk.variant, trunk.checkpoint) == ("random", "rotation trunk", "random:" + ckpt)
    trained = load_trunk(TrunkSpec.parse(ckpt), protocol.backbone)
    assert trunk.label == trained.label and trunk.prepare is trained.prepare
    assert not torch.equal(trunk.backbone.state_dict()["conv3.0.weight"], trained.backbone.state_dict()["conv3.0.weight"])
    torch.save(trained.backbone.state_dict(), tmp_path / "plain.pt")
    with pytest.raises(UserError, match="not an sslbench pretraining checkpoint"):
        load_trunk(TrunkSpec.parse(f"random:{tmp_path / 'plain.pt'}"), protocol.backbone)
    with pytest.raises(UserError, match="checkpoint not found"):
        load_trunk(TrunkSpec.parse(f"random:{tmp_path / 'none.pt'}"), protocol.backbone)


def test_evaluating_random_like_records_random_init(rotnet_tiny, tmp_path) -> None:
    from sslbench.protocols.base import evaluate
    from tests.conftest import tiny_alexnet, tiny_protocol

    recipe = tiny_protocol("linear", tiny_alexnet(["protocol.taps=['conv1']"]))
    for init, method, kind in (("default", "random", "random"), ("rescale", "random", "random+rescale")):
        out = evaluate(recipe, f"random:{rotnet_tiny.checkpoint}", tmp_path, "cpu", progress=False, init=init)
        prov = out.provenance
        assert (prov.method, prov.variant, prov.init) == (method, "rotation trunk", kind)


def test_trunk_spec_round_trips_what_checkpoint_names() -> None:
    for text, kind in (("random", "random"), ("random:runs/a/checkpoint.pt", "random-like"), ("w.pt", "file")):
        spec = TrunkSpec.parse(text)
        assert spec.kind == kind and str(spec) == text and spec.is_random == (kind != "file")
    with pytest.raises(UserError, match="random: needs a checkpoint"):
        TrunkSpec.parse("random:")


def test_the_checkpoint_records_its_transfer_input_by_name(tmp_path) -> None:
    """A Jigsaw trunk transfers with per-image, per-channel normalisation (as its tiles), named in its checkpoint:
    loading imports no task; a format-1 checkpoint (before the name was recorded) had the joint per-image one."""
    recipe = tiny_pretrain("jigsaw", ["backbone.width=0.125", "backbone.fc_dim=32", "backbone.conv1_stride=1",
                                      "backbone.image_size=24", "task.tile=24", "task.cell=26", "task.fc7_dim=32",
                                      "task.num_permutations=10", "data.image_size=80"])
    out = pretrain(recipe, tmp_path, "cpu", progress=False)
    state = torch.load(out.checkpoint, map_location="cpu", weights_only=False)
    assert state["format"] == "sslbench-pretrain-2" and state["transfer_input"] == "per-channel-std"
    protocol = load_recipe("protocol", "linear", "mini")
    assert load_trunk(TrunkSpec.parse(str(out.checkpoint)), protocol.backbone).transfer_input == "per-channel-std"
    del state["transfer_input"]
    state["format"] = "sslbench-pretrain-1"  # written before transfer inputs were recorded: derived from the task
    torch.save(state, tmp_path / "old.pt")
    assert load_trunk(TrunkSpec.parse(str(tmp_path / "old.pt")), protocol.backbone).transfer_input == "per-image-std"
