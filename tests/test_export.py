"""`sslbench export torchvision`: a ResNet trunk that torchvision's resnet50 loads (strict, apart from fc) and that
computes what the trunk computes; every trunk torchvision cannot hold is one line before anything is written."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from sslbench.checkpoint import TrunkSpec, load_trunk
from sslbench.engine import pretrain
from sslbench.errors import UserError
from sslbench.export import export_torchvision
from sslbench.recipes import load_recipe
from tests.conftest import tiny_alexnet, tiny_pretrain

R50 = ["backbone.depth=50", "backbone.version=1", "backbone.stages=4", "backbone.width=1.0",
       "backbone.image_size=32", "data.image_size=32", "data.num_images=16", "data.batch_size=16",
       "schedule.epochs=1", "engine.log_every=1"]


@pytest.fixture(scope="module")
def resnet50(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One supervised step of a full-width ResNet-50 v1 (torchvision's shape)."""
    recipe = load_recipe("pretrain", "supervised", "mini", R50)
    return pretrain(recipe, tmp_path_factory.mktemp("r50") / "runs", device="cpu", progress=False, argv=[]).checkpoint


def test_torchvision_loads_the_export_strictly_but_fc_and_computes_the_trunks_features(resnet50: Path,
                                                                                         tmp_path: Path) -> None:
    out = export_torchvision(resnet50, tmp_path / "r50.pth")
    weights = torch.load(out, weights_only=True)
    model = torchvision.models.resnet50(weights=None)
    result = model.load_state_dict(weights, strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and not result.unexpected_keys
    model.fc = torch.nn.Identity()
    trunk = load_trunk(TrunkSpec("file", str(resnet50)), load_recipe("pretrain", "supervised", "mini", R50).backbone)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ours = trunk.backbone.eval()(x, taps=("pool",))["pool"].flatten(1)
        theirs = model.eval()(x)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_trunks_torchvision_cannot_hold_are_one_line(tmp_path: Path) -> None:
    v2 = pretrain(load_recipe("pretrain", "supervised", "mini", ["backbone.depth=50", "backbone.width=0.0625",
                                                                  "data.num_images=16", "schedule.epochs=1"]),
                  tmp_path / "runs", device="cpu", progress=False, argv=[]).checkpoint
    with pytest.raises(UserError, match=r"backbone.version = 2 \(torchvision's: 1\); backbone.stages = 3"):
        export_torchvision(v2, tmp_path / "v2.pth")
    alex = pretrain(tiny_pretrain("rotation", tiny_alexnet(), flavour="alexnet"), tmp_path / "runs", device="cpu",
                    progress=False, argv=[]).checkpoint
    with pytest.raises(UserError, match="its trunk is alexnet; export torchvision takes ResNet"):
        export_torchvision(alex, tmp_path / "a.pth")
    with pytest.raises(UserError, match="ending in .pth or .pt"):
        export_torchvision(alex, tmp_path / "a.onnx")
    with pytest.raises(UserError, match="checkpoint not found"):
        export_torchvision(tmp_path / "nothing.pt", tmp_path / "b.pth")
    assert not list(tmp_path.glob("*.pth"))  # nothing written


def detectron2_r50_names() -> dict[str, tuple[int, ...]]:
    """detectron2's ResNet-50 parameter names and shapes (its ResNet: stem.conv1 with .norm, res2..res5 of
    BottleneckBlocks conv1..conv3 with .norm, a projection `shortcut` in each stage's first block), written from
    the architecture (He et al. 2016 Table 1), not from any converter."""
    def conv(name: str, cout: int, cin: int, k: int) -> dict[str, tuple[int, ...]]:
        return {f"{name}.weight": (cout, cin, k, k),
                **{f"{name}.norm.{p}": (cout,) for p in ("weight", "bias", "running_mean", "running_var")}}

    names = conv("stem.conv1", 64, 3, 7)
    cin = 64
    for stage, blocks in zip(range(2, 6), (3, 4, 6, 3)):
        planes = 64 * 2 ** (stage - 2)
        for b in range(blocks):
            block_in = cin if b == 0 else 4 * planes
            names |= conv(f"res{stage}.{b}.conv1", planes, block_in, 1)
            names |= conv(f"res{stage}.{b}.conv2", planes, planes, 3)
            names |= conv(f"res{stage}.{b}.conv3", 4 * planes, planes, 1)
            if b == 0:
                names |= conv(f"res{stage}.0.shortcut", 4 * planes, cin, 1)
        cin = 4 * planes
    return names


def test_the_detectron2_export_has_r50s_names_and_shapes_and_the_trunks_values(resnet50: Path, tmp_path: Path) -> None:
    import pickle

    from sslbench.checkpoint import read_checkpoint
    from sslbench.export import export_detectron2

    out = export_detectron2(resnet50, tmp_path / "r50.pkl")
    with open(out, "rb") as f:
        obj = pickle.load(f)
    assert obj["matching_heuristics"] is True and obj["__author__"].startswith("sslbench")
    expected = detectron2_r50_names()
    assert {k: tuple(v.shape) for k, v in obj["model"].items()} == expected
    trunk = read_checkpoint(resnet50)["backbone_state"]
    assert (obj["model"]["res4.5.conv2.norm.running_var"] == trunk["layer3.5.bn2.running_var"].numpy()).all()
    assert (obj["model"]["res3.0.shortcut.weight"] == trunk["layer2.0.downsample.0.weight"].numpy()).all()
    with pytest.raises(UserError, match="ending in .pkl"):
        export_detectron2(resnet50, tmp_path / "r50.pth")
