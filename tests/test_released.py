"""`sslbench import --from rotnet`: state dicts in the key layouts of gidariss/FeatureLearningRotNet's AlexNet and
NIN (architectures/AlexNet.py, NetworkInNetwork.py, their shapes ported here) become checkpoints every protocol
reads, and the imported trunk computes what the source network computes, conv biases folded into BatchNorm included."""

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
    torch.save({"_feature_blocks.0.conv.weight": torch.zeros(1)}, tmp_path / "nin.pth")
    with pytest.raises(UserError, match="neither RotNet.s ImageNet AlexNet"):
        import_released("rotnet", tmp_path / "nin.pth", tmp_path / "b.pt")
    with pytest.raises(UserError, match="unknown --from 'vissl'; valid: rotnet"):
        import_released("vissl", tmp_path / "nin.pth", tmp_path / "c.pt")
    assert not list(tmp_path.glob("*.pt"))  # nothing written


class BasicBlock(nn.Module):
    """RotNet's NIN unit: layers = Conv (no bias), BatchNorm, ReLU."""

    def __init__(self, cin: int, cout: int, k: int) -> None:
        super().__init__()
        self.layers = nn.Sequential()
        self.layers.add_module("Conv", nn.Conv2d(cin, cout, k, 1, (k - 1) // 2, bias=False))
        self.layers.add_module("BatchNorm", nn.BatchNorm2d(cout))
        self.layers.add_module("ReLU", nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class ReleasedNin(nn.Module):
    """RotNet's NetworkInNetwork layout with use_avg_on_conv3 = False (its CIFAR configs)."""

    def __init__(self, stages: int) -> None:
        super().__init__()
        blocks = [nn.Sequential() for _ in range(stages)]
        spec = [[(3, 192, 5), (192, 160, 1), (160, 96, 1)], [(96, 192, 5), (192, 192, 1), (192, 192, 1)]]
        spec += [[(192, 192, 3), (192, 192, 1), (192, 192, 1)]] * (stages - 2)
        for s, layers in enumerate(spec):
            for j, (cin, cout, k) in enumerate(layers, 1):
                blocks[s].add_module(f"Block{s + 1}_ConvB{j}", BasicBlock(cin, cout, k))
        blocks[0].add_module("Block1_MaxPool", nn.MaxPool2d(3, 2, 1))
        blocks[1].add_module("Block2_AvgPool", nn.AvgPool2d(3, 2, 1))
        head = nn.Sequential()
        head.add_module("Classifier", nn.Linear(192, 4))
        self._feature_blocks = nn.ModuleList([*blocks, head])

    def upto(self, x: torch.Tensor, last: int) -> torch.Tensor:
        for block in self._feature_blocks[: last + 1]:
            x = block(x)
        return x


@pytest.mark.parametrize("stages", [3, 4])
def test_rotnets_cifar_nin_imports_with_its_number_of_blocks(stages: int, tmp_path: Path) -> None:
    torch.manual_seed(stages)
    net = ReleasedNin(stages)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    torch.save({"epoch": 200, "network": net.state_dict()}, tmp_path / "model_net_epoch200")
    out = import_released("rotnet", tmp_path / "model_net_epoch200", tmp_path / "nin.pt")
    recipe = load_recipe("pretrain", "rotation", "paper", [f"backbone.blocks={stages}"])
    trunk = load_trunk(TrunkSpec("file", str(out)), recipe.backbone)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours = trunk.backbone.eval()(x, taps=(f"block{stages}",))[f"block{stages}"]
        assert torch.allclose(ours, net.eval().upto(x, stages - 1), atol=1e-4)
    state = read_checkpoint(out)
    assert torch.equal(state["model"]["head.fc.weight"], net._feature_blocks[stages].Classifier.weight)
