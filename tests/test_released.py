"""`sslbench import --from rotnet`: a state dict in the key layout of gidariss/FeatureLearningRotNet's AlexNet
(architectures/AlexNet.py, its shapes ported here) becomes a checkpoint every protocol reads, and the imported trunk
computes what the source network computes, conv biases folded into BatchNorm included."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from sslbench.checkpoint import TrunkSpec, load_trunk, read_checkpoint
from sslbench.errors import UserError
from sslbench.recipes import load_recipe
from sslbench.released import import_released


def rotnet_alexnet() -> nn.ModuleList:
    """The source network's layout: _feature_blocks = conv1, pool1, conv2, pool2, conv3, conv4, conv5, pool5,
    fc_block, classifier (RotNet's AlexNet.py, num_classes 4)."""
    def conv(cin: int, cout: int, k: int, s: int, p: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, k, s, p), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

    return nn.ModuleList([
        conv(3, 64, 11, 4, 2), nn.MaxPool2d(3, 2), conv(64, 192, 5, 1, 2), nn.MaxPool2d(3, 2),
        conv(192, 384, 3, 1, 1), conv(384, 256, 3, 1, 1), conv(256, 256, 3, 1, 1), nn.MaxPool2d(3, 2),
        nn.Sequential(nn.Flatten(), nn.Linear(6 * 6 * 256, 4096, bias=False), nn.BatchNorm1d(4096), nn.ReLU(inplace=True),
                      nn.Linear(4096, 4096, bias=False), nn.BatchNorm1d(4096), nn.ReLU(inplace=True)),
        nn.Sequential(nn.Linear(4096, 4)),
    ])


class Released(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self._feature_blocks = rotnet_alexnet()

    def upto(self, x: torch.Tensor, last: int) -> torch.Tensor:
        for block in self._feature_blocks[: last + 1]:
            x = block(x)
        return x


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory) -> tuple[Released, Path]:
    torch.manual_seed(0)
    net = Released()
    for m in net.modules():  # non-trivial statistics and biases, so a wrong fold or mapping shows
        if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
        if isinstance(m, nn.Conv2d):
            m.bias.data.uniform_(-0.3, 0.3)
    path = tmp_path_factory.mktemp("rotnet") / "model_net_epoch30"
    torch.save({"epoch": 30, "network": net.state_dict()}, path)
    return net.eval(), path


def test_the_imported_trunk_computes_what_the_released_network_computes(released, tmp_path: Path) -> None:  # noqa: ANN001
    net, path = released
    out = import_released("rotnet", path, tmp_path / "rotnet.pt")
    recipe = load_recipe("pretrain", "rotation", "paper", flavour="alexnet")
    trunk = load_trunk(TrunkSpec("file", str(out)), recipe.backbone)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        ours = trunk.backbone.eval()(x, taps=("conv5", "fc7"))
        assert torch.allclose(ours["conv5"], net.upto(x, 6), atol=1e-4)
        assert torch.allclose(ours["fc7"], net.upto(x, 8), atol=1e-4)
    state = read_checkpoint(out)
    assert state["task"] == "rotation" and state["imported_from"]["epoch"] == 30 and state["imported_from"]["head"]
    assert torch.equal(state["model"]["head.fc.weight"], net._feature_blocks[9][0].weight)
    assert trunk.method == "rotation" and trunk.label == state["backbone"]["label"]


def test_a_key_without_a_place_or_another_network_is_one_line(released, tmp_path: Path) -> None:  # noqa: ANN001
    net, _ = released
    extra = {**net.state_dict(), "_feature_blocks.10.0.weight": torch.zeros(1)}
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(UserError, match=r"keys with no place in the RotNet AlexNet mapping: _feature_blocks.10.0"):
        import_released("rotnet", tmp_path / "extra.pth", tmp_path / "a.pt")
    torch.save({"_feature_blocks.0.Block1_ConvB1.weight": torch.zeros(1)}, tmp_path / "nin.pth")
    with pytest.raises(UserError, match="not RotNet's ImageNet AlexNet"):
        import_released("rotnet", tmp_path / "nin.pth", tmp_path / "b.pt")
    with pytest.raises(UserError, match="unknown --from 'vissl'; valid: rotnet"):
        import_released("vissl", tmp_path / "nin.pth", tmp_path / "c.pt")
    assert not list(tmp_path.glob("*.pt"))  # nothing written
