"""Recipe schemas: frozen dataclasses and their validation.

A recipe (``recipes/<task>/<scale>.toml`` or ``recipes/protocols/<protocol>/<scale>.toml``, read by
sslbench.recipes) is validated section by section against typed dataclasses: an unknown key or a wrong type
is an error naming the key and the file. `build` is the validator every typed file of sslbench goes
through (recipes, table files). Registry lookups (a task's or backbone's config class) need the plugins
loaded (sslbench.plugins.load_all), which the entry points do.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from sslbench.errors import UserError
from sslbench.registry import BACKBONES, PROTOCOLS, TASKS, Registry

SCALES = ("mini", "paper")
Kind = Literal["pretrain", "protocol"]


def section_of(kind: str) -> str:
    """The recipe section that configures the task (pretraining) or the protocol (evaluation)."""
    return "task" if kind == "pretrain" else "protocol"


def registry_of(kind: str) -> Registry[Any]:
    return TASKS if kind == "pretrain" else PROTOCOLS


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "embedded"  # registered data set name; "embedded" = the procedural synthetic set
    root: str = ""  # path of the real data set on disk; empty for the embedded data
    train_split: str = "unlabeled"  # split the method trains on
    test_split: str = ""  # split a protocol reports on (empty for pretraining)
    image_size: int = 64  # side of the square images fed to the network
    num_images: int = 0  # cap on training images (0 = the whole split)
    num_test: int = 0  # cap on test images (0 = the whole split)
    batch_size: int = 64  # global batch size (split evenly across DDP ranks)
    workers: int = 0  # DataLoader worker processes
    synth_seed: int = 0  # seed of the embedded generator (fixes the images, not the training)


@dataclass(frozen=True)
class OptimConfig:
    name: Literal["sgd", "adam", "adamw"] = "sgd"  # optimizer family
    lr: float = 0.01  # base learning rate at the global batch size
    momentum: float = 0.9  # SGD momentum
    nesterov: bool = False  # Nesterov momentum (RotNet's code uses it)
    weight_decay: float = 5e-4  # L2 penalty
    betas: tuple[float, float] = (0.9, 0.999)  # Adam betas (Context Encoders: beta1 0.5)
    grad_clip: float = 0.0  # max gradient norm, 0 = off (VOC07 cls protocol: 10)


@dataclass(frozen=True)
class ScheduleConfig:
    epochs: int = 1  # passes over the training split
    kind: Literal["constant", "step", "multistep", "cosine"] = "multistep"  # learning-rate shape
    milestones: tuple[int, ...] = ()  # epochs where multistep multiplies the rate by gamma
    step_size: int = 10  # epochs between drops for kind = "step"
    gamma: float = 0.1  # multiplier at each drop
    warmup_epochs: float = 0.0  # linear warm-up length
    max_steps: int = 0  # stop after this many optimizer steps (0 = run all epochs)


@dataclass(frozen=True)
class EngineConfig:
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"  # auto = bf16 autocast on CUDA, off on CPU
    checkpoint_every: int = 200  # optimizer steps between atomic checkpoints
    log_every: int = 10  # optimizer steps between metrics.jsonl / TensorBoard points
    sync_bn: bool = True  # BatchNorm over the global batch under DDP (SyncBatchNorm on CUDA, GlobalBatchNorm on gloo)
    channels_last: bool = False  # NHWC memory format (faster convs on some CPUs/GPUs)
    threads: int = 0  # torch CPU threads (0 = torch's default)


@dataclass(frozen=True)
class Named:
    """A registry-typed section: its name and the registered class's validated config."""

    name: str
    cfg: Any


@dataclass(frozen=True)
class Recipe:
    kind: Kind
    name: str  # task or protocol name
    source: str  # file the recipe came from
    scale: str
    seed: int
    component: Named  # the [task] (pretraining) or [protocol] (evaluation) section: `name`'s validated config
    backbone: Named
    data: DataConfig
    optim: OptimConfig
    schedule: ScheduleConfig
    engine: EngineConfig
    overrides: tuple[str, ...] = field(default=())

    @property
    def section(self) -> str:
        return section_of(self.kind)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "kind": self.kind,
            "name": self.name,
            "source": self.source,
            "scale": self.scale,
            "seed": self.seed,
            "overrides": list(self.overrides),
        }
        out[self.section] = {"name": self.component.name, **_asdict(self.component.cfg)}
        out["backbone"] = {"name": self.backbone.name, **_asdict(self.backbone.cfg)}
        for key in ("data", "optim", "schedule", "engine"):
            out[key] = _asdict(getattr(self, key))
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def _asdict(obj: Any) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(obj), default=list))


# ---------------------------------------------------------------- validation


def build(cls: type, raw: dict[str, Any], where: str) -> Any:
    """raw TOML table -> frozen dataclass `cls`; unknown keys and wrong types raise UserError."""
    if not isinstance(raw, dict):
        raise UserError(f"{where}: expected a table, found {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise UserError(
            f"{where}: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(fields))}"
        )
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}") for k, v in raw.items()}
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)
    if origin is Literal:
        if value not in args:
            raise UserError(f"{where}: expected one of {list(args)}, found {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            try:
                return _coerce(arg, value, where)
            except UserError:
                continue
        raise UserError(f"{where}: expected {tp}, found {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where}: expected a list, found {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise UserError(f"{where}: expected a list of {len(args)} values, found {len(value)}")
        return tuple(_coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        if not isinstance(value, dict):
            raise UserError(f"{where}: expected a table, found {value!r}")
        return {str(k): _coerce(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise UserError(f"{where}: expected true or false, found {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where}: expected an integer, found {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where}: expected a number, found {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise UserError(f"{where}: expected a string, found {value!r}")
        return value
    raise TypeError(f"{where}: unsupported config type {tp!r}")


# ---------------------------------------------------------------- recipes from raw tables


def recipe_from_dict(kind: Kind, name: str, raw: dict[str, Any], source: str, scale: str,
                     overrides: tuple[str, ...] = (), seed: int | None = None) -> Recipe:
    """A raw recipe table (TOML or JSON, `overrides` already applied: they are recorded for provenance and
    named in errors) -> a validated Recipe; `seed` replaces the recipe's."""
    section = section_of(kind)
    where = source if not overrides else f"{source} (with --set {' '.join(overrides)})"
    allowed = {"seed", section, "backbone", "data", "optim", "schedule", "engine"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(allowed))}")
    entry = registry_of(kind).entry(name)
    component_raw = dict(raw.get(section, {}))
    component_raw.pop("name", None)
    component = Named(name, build(entry.config, component_raw, f"{where} [{section}]"))
    bb_raw = dict(raw.get("backbone", {}))
    bb_name = bb_raw.pop("name", None)
    if not isinstance(bb_name, str):
        raise UserError(f"{where} [backbone]: missing 'name'; valid: {', '.join(BACKBONES.names())}")
    backbone = Named(bb_name, build(BACKBONES.entry(bb_name).config, bb_raw, f"{where} [backbone]"))
    return Recipe(
        kind=kind,
        name=name,
        source=source,
        scale=scale,
        seed=seed if seed is not None else _coerce(int, raw.get("seed", 0), f"{where}.seed"),
        component=component,
        backbone=backbone,
        data=build(DataConfig, raw.get("data", {}), f"{where} [data]"),
        optim=build(OptimConfig, raw.get("optim", {}), f"{where} [optim]"),
        schedule=build(ScheduleConfig, raw.get("schedule", {}), f"{where} [schedule]"),
        engine=build(EngineConfig, raw.get("engine", {}), f"{where} [engine]"),
        overrides=tuple(overrides),
    )


def recipe_key(recipe: Recipe | str) -> str:
    """Identity of what a run computes (everything but where the recipe came from): reuse is keyed by it.

    Accepts a Recipe or its JSON (as stored with every result)."""
    d = json.loads(recipe) if isinstance(recipe, str) else recipe.to_dict()
    for key in ("source", "overrides"):
        d.pop(key, None)
    d.get("data", {}).pop("workers", None)
    return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def recipe_from_json(text: str) -> Recipe:
    """Inverse of Recipe.to_json (used to rebuild a run's recipe from its checkpoint)."""
    raw = json.loads(text)
    kind, name = raw.pop("kind"), raw.pop("name")
    source, scale = raw.pop("source"), raw.pop("scale")
    raw.pop("overrides", None)
    raw[section_of(kind)].pop("name", None)
    return recipe_from_dict(kind, name, raw, source, scale)
