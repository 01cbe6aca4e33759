"""Every registry member exercised at tiny size; duplicates refused; unknown names get the closest match."""

from __future__ import annotations

import pytest
import torch

from sslbench.backbones.base import build_backbone
from sslbench.config import build
from sslbench.errors import UserError
from sslbench.registry import BACKBONES, DATASETS, PROTOCOLS, TASKS, Registry

TINY_BACKBONE = {
    "alexnet": {"image_size": 64, "width": 0.125, "conv1_stride": 2, "fc_dim": 32},
    "nin": {"blocks": 3, "width": 0.1, "image_size": 32},
    "vgg16": {"image_size": 32, "width": 0.125, "fc_dim": 32},
}
_ALEX = {"width": 0.125, "fc_dim": 32}
# task -> (backbone, backbone config, image side, task config): the smallest geometry each task accepts
TASK_SETUP = {
    "rotation": ("nin", TINY_BACKBONE["nin"], 32, {}),
    "context": ("alexnet", {**_ALEX, "image_size": 32, "conv1_stride": 1}, 112, {"gap": 4, "jitter": 1, "head_dim": 32}),
    "jigsaw": ("alexnet", {**_ALEX, "image_size": 36, "conv1_stride": 2}, 120, {"num_permutations": 10, "cell": 40, "tile": 36, "fc7_dim": 32}),
    "damaged-jigsaw": ("alexnet", {**_ALEX, "image_size": 36, "conv1_stride": 2, "in_channels": 1}, 120,
                       {"num_permutations": 10, "cell": 40, "tile": 36, "fc7_dim": 32, "decoder_channels": 8}),
    "inpainting": ("alexnet", TINY_BACKBONE["alexnet"], 64, {"decoder_width": 8, "disc_width": 8, "adversarial": True}),
}


def test_duplicate_names_are_refused() -> None:
    reg: Registry[object] = Registry("thing", "test registry")
    reg.register("a")(object)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(int)


def test_unknown_name_lists_valid_names_and_closest() -> None:
    with pytest.raises(UserError, match=r"valid: .*rotation.*Did you mean 'rotation'"):
        TASKS.get("rotatoin")


def test_every_registry_member_is_tested_here() -> None:
    assert set(BACKBONES.names()) <= set(TINY_BACKBONE)
    assert set(TASKS.names()) <= set(TASK_SETUP)


@pytest.mark.parametrize("name", BACKBONES.names())
def test_backbone_taps_match_feature_info(name: str) -> None:
    cfg = build(BACKBONES.entry(name).config, dict(TINY_BACKBONE[name]), "test")
    net = build_backbone(name, cfg).eval()
    size = TINY_BACKBONE[name]["image_size"]
    out = net(torch.randn(2, 3, size, size), taps=tuple(net.feature_info))
    assert list(out) == list(net.feature_info)
    for tap, info in net.feature_info.items():
        assert out[tap].shape[1] == info.channels, tap
        if info.stride:
            assert out[tap].shape[-1] == info.size, tap


@pytest.mark.parametrize("name", BACKBONES.names())
def test_backbone_stops_at_the_last_tap(name: str) -> None:
    cfg = build(BACKBONES.entry(name).config, dict(TINY_BACKBONE[name]), "test")
    net = build_backbone(name, cfg)
    first = next(iter(net.feature_info))
    assert list(net(torch.randn(1, 3, cfg.image_size, cfg.image_size), taps=(first,))) == [first]


@pytest.mark.parametrize("name", TASKS.names())
def test_task_batch_and_loss_at_tiny_size(name: str) -> None:
    bb_name, bb_cfg, size, task_cfg = TASK_SETUP[name]
    cfg = build(BACKBONES.entry(bb_name).config, dict(bb_cfg), "test")
    task = TASKS.get(name)(build(TASKS.entry(name).config, dict(task_cfg), "test"), build_backbone(bb_name, cfg))
    images = torch.randint(0, 256, (4, 3, size, size), dtype=torch.uint8)
    batch = task.make_batch(images, torch.Generator().manual_seed(0))
    out = task(batch)
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()


@pytest.mark.parametrize("name", PROTOCOLS.names())
def test_protocol_runs_on_random_init_at_tiny_size(name: str, tmp_path) -> None:
    from sslbench.protocols.base import evaluate
    from tests.conftest import tiny_protocol

    recipe = tiny_protocol(name)
    out = evaluate(recipe, "random", tmp_path, "cpu", progress=False, argv=["test"])
    assert out.metrics and all(k.startswith(name + "/") for k in out.metrics)
    assert all(0.0 <= v <= 100.0 for v in out.metrics.values())
    assert (out.run_dir / "result.json").is_file() and (out.run_dir / "recipe.json").is_file()


@pytest.mark.parametrize("name", DATASETS.names())
def test_every_dataset_has_a_factory_and_summary(name: str) -> None:
    entry = DATASETS.entry(name)
    assert callable(entry.obj) and entry.summary
