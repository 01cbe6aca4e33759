"""Every registry member exercised at tiny size; duplicates refused; unknown names get the closest match."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from sslbench.backbones.base import build_backbone
from sslbench.config import build
from sslbench.errors import UserError
from sslbench.registry import BACKBONES, DATASETS, LAYOUTS, PROTOCOLS, TASKS, Registry
from sslbench.transforms import TRANSFER_INPUTS


def test_duplicate_names_are_refused() -> None:
    reg: Registry[object] = Registry("thing", "test registry")
    reg.register("a")(object)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(int)


def test_unknown_name_lists_valid_names_and_closest() -> None:
    with pytest.raises(UserError, match=r"valid: .*rotation.*Did you mean 'rotation'"):
        TASKS.get("rotatoin")


def tiny_backbone(name: str):  # noqa: ANN201
    cls = BACKBONES.get(name)
    return build_backbone(name, build(BACKBONES.entry(name).config, cls.tiny(), "test"))


@pytest.mark.parametrize("name", BACKBONES.names())
def test_backbone_taps_match_feature_info(name: str) -> None:
    net = tiny_backbone(name).eval()
    size = net.image_size
    out = net(torch.randn(2, 3, size, size), taps=tuple(net.feature_info))
    assert list(out) == list(net.feature_info)
    for tap, info in net.feature_info.items():
        assert out[tap].shape[1] == info.channels, tap
        if info.stride:
            assert out[tap].shape[-1] == info.size, tap


@pytest.mark.parametrize("name", BACKBONES.names())
def test_backbone_stops_at_the_last_tap(name: str) -> None:
    net = tiny_backbone(name)
    first = next(iter(net.feature_info))
    assert list(net(torch.randn(1, 3, net.image_size, net.image_size), taps=(first,))) == [first]


@pytest.mark.parametrize("name", BACKBONES.names())
def test_backbone_roles_name_its_taps(name: str) -> None:
    """Every role a backbone declares is one of its taps; the ones it lacks are a one-line error naming who has them."""
    net = tiny_backbone(name).eval()
    for role in ("head_tap", "fuse_tap", "spatial_tap", "dense_tap", "region_tap", "fcn_tap"):
        tap = getattr(net, role)
        if tap is None:
            with pytest.raises(UserError, match=f"needs a backbone with a {role.replace('_', ' ')}; {name} has none"):
                net.role(role, "a test")
        else:
            assert net.role(role, "a test") == tap and tap in net.feature_info, role
    assert set(net.fc_stages) <= {stage for stage, _ in net.stages()}
    assert net.label(net.cfg).startswith(name[:3]) and BACKBONES.entry(name).summary


@pytest.mark.parametrize("name", TASKS.names())
def test_task_batch_and_loss_at_tiny_size(name: str) -> None:
    cls = TASKS.get(name)
    setup = cls.tiny()
    cfg = build(BACKBONES.entry(setup.backbone).config, dict(setup.backbone_cfg), "test")
    task = cls(build(TASKS.entry(name).config, dict(setup.cfg), "test"), build_backbone(setup.backbone, cfg))
    images = torch.randint(0, 256, (4, 3, setup.image_size, setup.image_size), dtype=torch.uint8)
    task.restore(task.setup(torch.utils.data.TensorDataset(images), torch.Generator().manual_seed(0)))
    batch = task.make_batch(images, {"index": torch.arange(4), **setup.targets}, torch.Generator().manual_seed(0))
    out = task(batch)
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    grouped = [p for group in task.param_groups() for p in group["params"]]
    assert len(grouped) == len({id(p) for p in grouped}) and all(p.requires_grad for p in grouped)
    assert {id(p) for p in task.parameters() if p.grad is not None} <= {id(p) for p in grouped}
    assert cls.display_name and task.transfer_input() in TRANSFER_INPUTS


def installed(name: str) -> object:
    """A protocol name, skipped where the optional package it runs on is not installed."""
    needs = PROTOCOLS.get(name).requires
    missing = bool(needs) and importlib.util.find_spec(needs) is None
    return pytest.param(name, marks=pytest.mark.skipif(missing, reason=f"{name} runs on {needs}, not installed"))


@pytest.mark.parametrize("name", [installed(n) for n in PROTOCOLS.names()])
def test_protocol_runs_on_random_init_at_tiny_size(name: str, tmp_path) -> None:
    from sslbench.protocols.base import evaluate
    from tests.conftest import tiny_protocol

    recipe = tiny_protocol(name)
    out = evaluate(recipe, "random", tmp_path, "cpu", progress=False, argv=["test"])
    assert out.metrics and all(PROTOCOLS.get(name).fills(k) for k in out.metrics), sorted(out.metrics)
    protocol = PROTOCOLS.get(name)
    assert all(v >= 0 if protocol.is_count(k) else 0.0 <= v <= 100.0 for k, v in out.metrics.items()), out.metrics
    assert (out.run_dir / "result.json").is_file() and (out.run_dir / "recipe.json").is_file()


@pytest.mark.parametrize("name", DATASETS.names())
def test_every_dataset_has_a_factory_and_summary(name: str) -> None:
    entry = DATASETS.entry(name)
    assert callable(entry.obj) and entry.summary


@pytest.mark.parametrize("name", LAYOUTS.names())
def test_every_layout_is_read_by_the_data_set_of_its_name(name: str) -> None:
    layout = LAYOUTS.get(name)
    assert name in DATASETS and layout.check_splits and layout.tree.startswith("<root>")
