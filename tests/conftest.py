"""Shared fixtures: CPU only, tiny recipes, the embedded-data cache in a per-session temp dir."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

from sslbench.plugins import load_all
from sslbench.recipes import load_recipe

load_all()
# two cores: one torch thread per pytest-xdist worker (`pytest -n 2`), both to a single process
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else 2)

TINY_PRETRAIN = ["data.num_images=48", "data.batch_size=16", "schedule.epochs=1", "engine.log_every=1"]
TINY_PROTOCOL = ["data.num_images=48", "data.num_test=32", "data.batch_size=16", "schedule.epochs=1"]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist the slow tests first (the slowest, reproduce rotations-linear, is 40% of the suite), so
    they run beside the others instead of after them; a plain `pytest` keeps the files' order."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        items.sort(key=lambda item: item.get_closest_marker("slow") is None)


@pytest.fixture(autouse=True, scope="session")
def _embedded_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    os.environ["SSLBENCH_CACHE"] = str(tmp_path_factory.mktemp("embedded-cache"))


def tiny_alexnet(extra: list[str] | None = None) -> list[str]:
    """A tiny AlexNet at 32 px for tests (the mini recipes are sized for minutes, not seconds)."""
    return ["backbone.image_size=32", "data.image_size=32", "backbone.width=0.125", "backbone.fc_dim=32",
            "backbone.conv1_stride=1", *(extra or [])]


def tiny_pretrain(task: str, extra: list[str] | None = None, flavour: str = ""):
    return load_recipe("pretrain", task, "mini", TINY_PRETRAIN + (extra or []), flavour=flavour)


def tiny_protocol(protocol: str, extra: list[str] | None = None):
    return load_recipe("protocol", protocol, "mini", TINY_PROTOCOL + (extra or []))


@contextmanager
def crash_at_call(cls: type, n: int) -> Iterator[None]:
    """`cls.loss` raises KeyboardInterrupt at its n-th call (a kill in the middle of a run), within the block."""
    real, calls = cls.loss, {"n": 0}

    def crashing(self, batch):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real(self, batch)

    cls.loss = crashing
    try:
        yield
    finally:
        cls.loss = real


def fit_losses(task, optimizer, batches, key: str = "loss") -> list[float]:  # noqa: ANN001
    """Optimise `task` on each batch in turn and return `key` of every step (the loss-goes-down tests)."""
    values = []
    for batch in batches:
        out = task(batch)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        values.append(float(out[key].detach()))
    return values
