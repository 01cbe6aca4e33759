"""Name -> class registries for tasks, backbones, protocols and data sets.

Each registry states the contract of what it holds; registering a name twice is an error,
and asking for an unknown name lists the valid ones with the closest match.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable, Generic, TypeVar

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

    def register(self, name: str, *, config: type | None = None) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered by {self._entries[name].obj!r}")
            doc = (getattr(obj, "__doc__", None) or "").strip().splitlines()
            self._entries[name] = Entry(name, obj, config, doc[0] if doc else "")
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
    "nn.Module classes built as cls(cfg) whose forward(x, taps=(...)) returns {tap: feature map} "
    "and whose feature_info maps every tap name to its (channels, stride).",
)
TASKS: Registry[Any] = Registry(
    "task",
    "PretextTask subclasses built as cls(cfg, backbone): make_batch(images, generator) is pure "
    "(no model), loss(batch) returns a dict with a 'loss' entry; the engine never branches on names.",
)
PROTOCOLS: Registry[Any] = Registry(
    "protocol",
    "Protocol subclasses: run(backbone, data, recipe, ctx) -> Result with metrics keyed "
    "'<protocol>/<column>' (e.g. 'linear/conv3').",
)
DATASETS: Registry[Any] = Registry(
    "data set",
    "Factories build(root, split, cfg) -> torch Dataset of (uint8 image [3,H,W], target dict); "
    "root None means the embedded synthetic data.",
)


def register_backbone(name: str, *, config: type) -> Callable[[T], T]:
    return BACKBONES.register(name, config=config)


def register_task(name: str, *, config: type) -> Callable[[T], T]:
    return TASKS.register(name, config=config)


def register_protocol(name: str, *, config: type) -> Callable[[T], T]:
    return PROTOCOLS.register(name, config=config)


def register_dataset(name: str) -> Callable[[T], T]:
    return DATASETS.register(name)


def load_all() -> None:
    """Import every module that registers something (registration happens at import)."""
    import sslbench.backbones  # noqa: F401
    import sslbench.data  # noqa: F401
    import sslbench.protocols  # noqa: F401
    import sslbench.tasks  # noqa: F401
