"""Name -> class registries for backbones, tasks, protocols, data sets and data layouts.

Each registry states the contract of what it holds; registering a name twice is an error,
and asking for an unknown name lists the valid ones with the closest match. This module is a leaf: it
imports no plugin; `sslbench.plugins.load_all` (the composition root) imports the modules that register.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sslbench.errors import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    config: type | None  # the frozen dataclass that holds this entry's recipe section
    summary: str


class Registry(Generic[T]):
    def __init__(self, kind: str, contract: str) -> None:
        self.kind = kind
        self.contract = contract
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, *, config: type | None = None, summary: str = "") -> Callable[[T], T]:
        """Register `obj` under `name`; its summary (for `sslbench list`) is `summary` or its docstring's first line."""
        def deco(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered by {self._entries[name].obj!r}")
            doc = (getattr(obj, "__doc__", None) or "").strip().splitlines()
            self._entries[name] = Entry(name, obj, config, summary or (doc[0] if doc else ""))
            return obj

        return deco

    def entry(self, name: str) -> Entry[T]:
        if name not in self._entries:
            raise UserError(unknown_name_message(self.kind, name, self.names()))
        return self._entries[name]

    def get(self, name: str) -> T:
        return self.entry(name).obj

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries


def unknown_name_message(kind: str, name: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return f"unknown {kind} {name!r}; valid: {', '.join(valid)}.{hint}"


BACKBONES: Registry[Any] = Registry(
    "backbone",
    "Backbone subclasses built as cls(cfg): forward(x, taps=(...)) returns {tap: feature map} and stops at the "
    "last tap asked for; feature_info gives each tap's channels, stride and size; roles (fuse_tap, head_tap, "
    "region_head(), fcn_head(), fc_stages, freeze_after) say what heads may use, so that no consumer names a layer.",
)
TASKS: Registry[Any] = Registry(
    "task",
    "PretextTask subclasses built as cls(cfg, backbone): setup(dataset, generator) once before training (its "
    "state saved with the checkpoint), make_batch(images, targets, generator) pure (no model), param_groups(), "
    "loss(batch) -> dict with a 'loss' entry, transfer_input() naming a transform; the engine never branches on names.",
)
PROTOCOLS: Registry[Any] = Registry(
    "protocol",
    "Protocol subclasses built as cls(cfg): taps() lists the taps it reads, run(trunk, recipe, ctx) -> "
    "{metric key: value}, keys '<protocol>/<column>' (e.g. 'linear/conv3'), trained on the one fit loop.",
)
DATASETS: Registry[Any] = Registry(
    "data set",
    "Factories build(root, split, image_size, num, synth_seed) -> torch Dataset of (uint8 image [3,H,W], "
    "target dict) items (None for an unreadable file); root None means the embedded synthetic data.",
)
LAYOUTS: Registry[Any] = Registry(
    "data layout",
    "Layout records of the real on-disk layouts (sslbench.data.layouts): writer of the embedded data, the data "
    "set that reads it, the splits `data check` reads; one module per layout.",
)


def register_backbone(name: str, *, config: type) -> Callable[[T], T]:
    return BACKBONES.register(name, config=config)


def register_task(name: str, *, config: type) -> Callable[[T], T]:
    return TASKS.register(name, config=config)


def register_protocol(name: str, *, config: type) -> Callable[[T], T]:
    return PROTOCOLS.register(name, config=config)


def register_dataset(name: str) -> Callable[[T], T]:
    return DATASETS.register(name)
