"""`sslbench import`: state dicts in the key layouts of gidariss/FeatureLearningRotNet's AlexNet and NIN
(architectures/AlexNet.py, NetworkInNetwork.py), bbrattoli/JigsawPuzzlePytorch's Network (JigsawNetwork.py) and
VISSL's alexnet_rotnet / alexnet_jigsaw / resnet trunks (vissl/models/trunks/), their shapes ported here, become
checkpoints every protocol reads, and the imported trunk computes what the source network computes, conv biases
folded into BatchNorm included."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from sslbench.checkpoint import TrunkSpec, load_trunk, read_checkpoint
from sslbench.errors import UserError
from sslbench.recipes import load_recipe
from sslbench.released import import_released


def randomise_(net: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics and conv biases, so a wrong fold or mapping shows."""
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
        if isinstance(m, nn.Conv2d) and m.bias is not None:
            m.bias.data.uniform_(-0.3, 0.3)
    return net.eval()


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
    net = randomise_(Released())
    path = tmp_path_factory.mktemp("rotnet") / "model_net_epoch30"
    torch.save({"epoch": 30, "network": net.state_dict()}, path)
    return net, path


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
    with pytest.raises(UserError, match="unknown --from 'caffe'; valid: rotnet, jigsaw-pytorch, vissl"):
        import_released("caffe", tmp_path / "nin.pth", tmp_path / "c.pt")
    with pytest.raises(UserError, match="--task names the pretext task of a VISSL ResNet trunk"):
        import_released("rotnet", tmp_path / "nin.pth", tmp_path / "d.pt", task="rotation")
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
    net = randomise_(ReleasedNin(stages))
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


class PortLRN(nn.Module):
    """JigsawPuzzlePytorch Utils/Layers.py LRN (across channels): x / (1 + alpha * avg_5(x^2))^beta."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        div = nn.functional.avg_pool3d(x.pow(2).unsqueeze(1), (5, 1, 1), 1, (2, 0, 0)).squeeze(1)
        return x / div.mul(1e-4).add(1.0).pow(0.75)


class JigsawPort(nn.Module):
    """JigsawNetwork.py's Network, module names and shapes as released (classes permutations)."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.conv = nn.Sequential()
        layers = [("conv1_s1", nn.Conv2d(3, 96, 11, 2, 0)), ("relu1_s1", nn.ReLU()), ("pool1_s1", nn.MaxPool2d(3, 2)),
                  ("lrn1_s1", PortLRN()), ("conv2_s1", nn.Conv2d(96, 256, 5, padding=2, groups=2)),
                  ("relu2_s1", nn.ReLU()), ("pool2_s1", nn.MaxPool2d(3, 2)), ("lrn2_s1", PortLRN()),
                  ("conv3_s1", nn.Conv2d(256, 384, 3, padding=1)), ("relu3_s1", nn.ReLU()),
                  ("conv4_s1", nn.Conv2d(384, 384, 3, padding=1, groups=2)), ("relu4_s1", nn.ReLU()),
                  ("conv5_s1", nn.Conv2d(384, 256, 3, padding=1, groups=2)), ("relu5_s1", nn.ReLU()),
                  ("pool5_s1", nn.MaxPool2d(3, 2))]
        for name, layer in layers:
            self.conv.add_module(name, layer)
        self.fc6 = nn.Sequential()
        self.fc6.add_module("fc6_s1", nn.Linear(256 * 3 * 3, 1024))
        self.fc6.add_module("relu6_s1", nn.ReLU())
        self.fc7 = nn.Sequential()
        self.fc7.add_module("fc7", nn.Linear(9 * 1024, 4096))
        self.fc7.add_module("relu7", nn.ReLU())
        self.classifier = nn.Sequential()
        self.classifier.add_module("fc8", nn.Linear(4096, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [B, 9, 3, 75, 75], as the port's forward
        b = x.shape[0]
        z = torch.cat([self.fc6(self.conv(x[:, i]).reshape(b, -1)).unsqueeze(1) for i in range(9)], 1)
        return self.classifier(self.fc7(z.reshape(b, -1)))


@pytest.fixture(scope="module")
def jigsaw_port(tmp_path_factory: pytest.TempPathFactory) -> tuple[JigsawPort, Path, Path]:
    torch.manual_seed(1)
    net = randomise_(JigsawPort(classes=30))
    for m in net.modules():  # the port's weights_init scale keeps activations away from zero through the LRN
        if isinstance(m, nn.Conv2d | nn.Linear):
            nn.init.xavier_normal_(m.weight)
    folder = tmp_path_factory.mktemp("jps")
    torch.save(net.state_dict(), folder / "jps_069_350000.pth.tar")
    perms = np.stack([np.random.default_rng(i).permutation(9) for i in range(30)]) + 1  # 1-based, as the port's
    np.save(folder / "permutations_30.npy", perms)
    return net, folder / "jps_069_350000.pth.tar", folder / "permutations_30.npy"


def test_jigsaw_pytorchs_network_imports_trunk_and_head(jigsaw_port, tmp_path: Path) -> None:  # noqa: ANN001
    from sslbench.show import load_task
    from sslbench.tasks.jigsaw import tower_features

    net, path, perms = jigsaw_port
    out = import_released("jigsaw-pytorch", path, tmp_path / "jps.pt", permutations=perms)
    state = read_checkpoint(out)
    assert state["task"] == "jigsaw" and state["imported_from"]["initialised"] == ["fc7.1"]  # the trunk's fc7: unused by the CFN
    assert torch.equal(state["model"]["permutations"], torch.from_numpy(np.load(perms) - 1))
    task, _ = load_task(out)
    tiles = torch.randn(2, 9, 3, 75, 75)
    with torch.no_grad():
        assert torch.allclose(task.head(tower_features(task.backbone, tiles)), net(tiles), atol=1e-4, rtol=1e-4)
        conv5 = task.backbone(tiles[:, 0], taps=("conv5",))["conv5"]
        assert torch.allclose(conv5, net.conv[:14](tiles[:, 0]), atol=1e-4)
    # without the permutation file fc8 (whose classes are that file's order) stays sslbench's, and says so
    plain = read_checkpoint(import_released("jigsaw-pytorch", path, tmp_path / "trunk.pt"))
    assert plain["imported_from"]["initialised"] == ["fc7.1", "head.3"] and plain["imported_from"]["permutations"] == "sslbench's"
    assert torch.equal(plain["model"]["head.0.weight"], net.fc7.fc7.weight)
    trunk = load_trunk(TrunkSpec("file", str(out)), load_recipe("protocol", "voc-cls", "paper").backbone)
    assert trunk.method == "jigsaw" and trunk.backbone.cfg.conv1_stride == 4 and not trunk.backbone.cfg.bn
    assert torch.equal(trunk.backbone.state_dict()["conv5.0.weight"], net.conv.conv5_s1.weight)


def test_a_bad_permutation_file_or_foreign_keys_are_one_line(jigsaw_port, tmp_path: Path) -> None:  # noqa: ANN001
    net, path, _ = jigsaw_port
    np.save(tmp_path / "p.npy", np.tile(np.arange(9), (29, 1)))
    with pytest.raises(UserError, match="holds 29 permutations but the release's fc8 has 30 classes"):
        import_released("jigsaw-pytorch", path, tmp_path / "a.pt", permutations=tmp_path / "p.npy")
    np.save(tmp_path / "q.npy", np.zeros((30, 9)))
    with pytest.raises(UserError, match="a row is not a permutation"):
        import_released("jigsaw-pytorch", path, tmp_path / "a.pt", permutations=tmp_path / "q.npy")
    torch.save({**net.state_dict(), "fc7.bn.weight": torch.zeros(4096)}, tmp_path / "extra.pth")
    with pytest.raises(UserError, match="no place in the JigsawPuzzlePytorch mapping: fc7.bn.weight"):
        import_released("jigsaw-pytorch", tmp_path / "extra.pth", tmp_path / "a.pt")
    torch.save({k: v for k, v in net.state_dict().items() if k != "conv.conv3_s1.bias"}, tmp_path / "cut.pth")
    with pytest.raises(UserError, match="the release lacks conv3.0.bias, which its network has"):
        import_released("jigsaw-pytorch", tmp_path / "cut.pth", tmp_path / "a.pt")
    with pytest.raises(UserError, match="--permutations is JigsawPuzzlePytorch's"):
        import_released("rotnet", path, tmp_path / "a.pt", permutations=tmp_path / "p.npy")
    assert not list(tmp_path.glob("*.pt"))


def vissl_file(trunk: nn.Module, path: Path) -> Path:
    """A VISSL checkpoint: the trunk's state dict under classy_state_dict.base_model.model.trunk."""
    state = {f"_feature_blocks.{k}": v for k, v in trunk.state_dict().items()}
    torch.save({"phase_idx": 104, "iteration": 1, "classy_state_dict": {"base_model": {"model": {
        "trunk": state, "heads": {"0.clf.0.weight": torch.zeros(4, 9216)}}}}}, path)
    return path


def test_vissls_alexnet_rotnet_is_rotnets_trunk_without_fc(released, tmp_path: Path) -> None:  # noqa: ANN001
    net, _ = released
    vissl = nn.Sequential(*net._feature_blocks[:8])  # alexnet_rotnet.py: conv1 .. pool5 (and a Flatten)
    out = import_released("vissl", vissl_file(vissl, tmp_path / "rotnet.torch"), tmp_path / "v.pt")
    recipe = load_recipe("pretrain", "rotation", "paper", flavour="alexnet")
    trunk = load_trunk(TrunkSpec("file", str(out)), recipe.backbone)
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(trunk.backbone.eval()(x, taps=("pool5",))["pool5"], net.upto(x, 7), atol=1e-4)
    meta = read_checkpoint(out)["imported_from"]
    assert meta["source"] == "vissl" and meta["initialised"] == ["fc6.1", "fc6.2", "fc7.1", "fc7.2", "head.fc"]


def vissl_alexnet_jigsaw() -> nn.Sequential:
    """alexnet_jigsaw.py's _feature_blocks (up to pool5)."""
    def conv(cin: int, cout: int, k: int, s: int, p: int, g: int, bn: bool) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, k, s, p, groups=g), *([nn.BatchNorm2d(cout)] if bn else []),
                             nn.ReLU())

    lrn = nn.LocalResponseNorm(size=5, alpha=0.0001, beta=0.75)
    return nn.Sequential(conv(3, 96, 11, 2, 0, 1, False), nn.Sequential(nn.MaxPool2d(3, 2), lrn),
                         conv(96, 256, 5, 1, 2, 2, False), nn.Sequential(nn.MaxPool2d(3, 2), lrn),
                         conv(256, 384, 3, 1, 1, 1, True), conv(384, 384, 3, 1, 1, 2, True),
                         conv(384, 256, 3, 1, 1, 2, True), nn.MaxPool2d(3, 2))


def test_vissls_alexnet_jigsaw_keeps_stride_2_and_folds_conv3_to_5(tmp_path: Path) -> None:
    torch.manual_seed(2)
    vissl = randomise_(vissl_alexnet_jigsaw())
    out = import_released("vissl", vissl_file(vissl, tmp_path / "jigsaw.torch"), tmp_path / "v.pt")
    state = read_checkpoint(out)
    assert state["task"] == "jigsaw"
    recipe = load_recipe("pretrain", "jigsaw", "paper", ["backbone.bn_layers=conv3+", "backbone.lrn=true",
                                                         "backbone.conv1_pad=0", "backbone.transfer_stride=0"])
    trunk = load_trunk(TrunkSpec("file", str(out)), recipe.backbone)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.allclose(trunk.backbone.eval()(x, taps=("conv5",))["conv5"], vissl[:7](x), atol=1e-4)
    transfer = load_trunk(TrunkSpec("file", str(out)), load_recipe("protocol", "voc-cls", "paper").backbone)
    assert transfer.backbone.cfg.conv1_stride == 2  # as VISSL evaluates it (the port's checkpoint transfers at 4)


@pytest.fixture(scope="module")
def vissl_resnet50(tmp_path_factory: pytest.TempPathFactory) -> tuple[nn.Module, Path]:
    import torchvision

    torch.manual_seed(3)
    net = randomise_(torchvision.models.resnet50(weights=None))
    net.fc = nn.Identity()
    trunk = nn.Module()
    for name, child in net.named_children():  # resnext.py's ModuleDict: conv1, bn1, ..., layer1..layer4
        if name != "fc":
            trunk.add_module(name, child)
    return net, vissl_file(trunk, tmp_path_factory.mktemp("vissl") / "converted_vissl_rn50_rotnet.torch")


def test_a_vissl_resnet50_needs_its_task_and_computes_torchvisions_forward(vissl_resnet50, tmp_path: Path) -> None:  # noqa: ANN001
    net, path = vissl_resnet50
    with pytest.raises(UserError, match="does not say which pretext task trained it .none given.; pass --task"):
        import_released("vissl", path, tmp_path / "a.pt")
    out = import_released("vissl", path, tmp_path / "r50.pt", task="rotation")
    state = read_checkpoint(out)
    assert state["task"] == "rotation" and state["backbone"]["name"] == "resnet"
    assert state["transfer_input"] == "imagenet"  # RotNet's ImageNet setting, not its CIFAR one
    supervised = read_checkpoint(import_released("vissl", path, tmp_path / "sup.pt", task="supervised"))
    assert supervised["task"] == "supervised" and supervised["transfer_input"] == "imagenet"
    with pytest.raises(UserError, match="pass --task with one of rotation, supervised"):
        import_released("vissl", path, tmp_path / "a.pt", task="inpainting")
    from sslbench.config import recipe_from_json

    backbone = recipe_from_json(state["recipe"]).backbone
    assert (backbone.cfg.depth, backbone.cfg.version, backbone.cfg.stages) == (50, 1, 4)
    trunk = load_trunk(TrunkSpec("file", str(out)), backbone)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(trunk.backbone.eval()(x, taps=("pool",))["pool"].flatten(1), net(x), atol=1e-4)
    assert state["imported_from"]["initialised"] == ["head.fc"]
