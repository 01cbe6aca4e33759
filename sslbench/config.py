"""TOML recipes -> frozen dataclasses.

A recipe is one TOML file, ``recipes/<task>/<scale>.toml`` or
``recipes/protocols/<protocol>/<scale>.toml``. Every section is validated against a typed
dataclass: an unknown key or a wrong type is an error naming the key and the file. ``--set key=value``
overrides go into the raw TOML before validation, so they pass through the same checks.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from sslbench.errors import UserError
from sslbench.registry import BACKBONES, DATASETS, PROTOCOLS, TASKS, unknown_name_message

SCALES = ("mini", "paper")


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def recipes_dir() -> Path:
    return repo_root() / "recipes"


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
    sync_bn: bool = True  # SyncBatchNorm under multi-GPU DDP (not on CPU/gloo, where torch lacks it)
    channels_last: bool = False  # NHWC memory format (faster convs on some CPUs/GPUs)
    threads: int = 0  # torch CPU threads (0 = torch's default)


@dataclass(frozen=True)
class Named:
    """A registry-typed section: its name and the registered class's validated config."""

    name: str
    cfg: Any


@dataclass(frozen=True)
class Recipe:
    kind: Literal["pretrain", "protocol"]
    name: str  # task or protocol name
    source: str  # file the recipe came from
    scale: str
    seed: int
    method: Named  # [task] or [protocol]
    backbone: Named
    data: DataConfig
    optim: OptimConfig
    schedule: ScheduleConfig
    engine: EngineConfig
    overrides: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        out = {
            "kind": self.kind,
            "name": self.name,
            "source": self.source,
            "scale": self.scale,
            "seed": self.seed,
            "overrides": list(self.overrides),
        }
        section = "task" if self.kind == "pretrain" else "protocol"
        out[section] = {"name": self.method.name, **_asdict(self.method.cfg)}
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


# ---------------------------------------------------------------- loading


def recipe_path(kind: str, name: str, scale: str, flavour: str = "") -> Path:
    """recipes/[protocols/]<name>/<scale>[-<flavour>].toml; a flavour is a variant such as 'alexnet'."""
    if scale not in SCALES:
        raise UserError(f"unknown scale {scale!r}; valid: {', '.join(SCALES)}")
    base = recipes_dir() / ("protocols" if kind == "protocol" else "") / name
    path = base / (f"{scale}-{flavour}.toml" if flavour else f"{scale}.toml")
    if not path.is_file():
        available = sorted(p.stem for p in base.glob("*.toml")) if base.is_dir() else []
        raise UserError(
            f"no recipe {path.stem!r} for {kind} {name!r}: expected {path}"
            + (f"; available recipes: {', '.join(available)}" if available else "")
        )
    return path


def list_recipes() -> list[str]:
    root = recipes_dir()
    return sorted(str(p.relative_to(root).with_suffix("")) for p in root.rglob("*.toml"))


def parse_override(text: str) -> tuple[list[str], Any]:
    """'optim.lr=0.005' -> (['optim', 'lr'], 0.005); values are TOML, bare words are strings."""
    if "=" not in text:
        raise UserError(f"--set expects key=value (e.g. optim.lr=0.005), found {text!r}")
    key, value_text = text.split("=", 1)
    try:
        value = tomllib.loads(f"v = {value_text}")["v"]
    except tomllib.TOMLDecodeError:
        value = value_text
    return key.strip().split("."), value


def apply_overrides(raw: dict[str, Any], overrides: list[str], method_section: str) -> None:
    for text in overrides:
        keys, value = parse_override(text)
        if len(keys) == 1:  # bare key: the task's / protocol's own option (e.g. layers=fc8)
            keys = [method_section, *keys]
        table = raw
        for k in keys[:-1]:
            table = table.setdefault(k, {})
            if not isinstance(table, dict):
                raise UserError(f"--set {text}: {k!r} is not a section")
        table[keys[-1]] = value


def load_recipe(
    kind: Literal["pretrain", "protocol"],
    name: str,
    scale: str = "mini",
    overrides: list[str] | tuple[str, ...] = (),
    data: dict[str, str] | None = None,
    seed: int | None = None,
    path: Path | None = None,
    flavour: str = "",
) -> Recipe:
    from sslbench.registry import load_all

    load_all()
    registry = TASKS if kind == "pretrain" else PROTOCOLS
    if name not in registry:
        raise UserError(unknown_name_message(registry.kind, name, registry.names()))
    path = path or recipe_path(kind, name, scale, flavour)
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML ({exc})") from None
    return recipe_from_dict(kind, name, raw, str(path), scale, list(overrides), data, seed)


def recipe_from_dict(
    kind: Literal["pretrain", "protocol"],
    name: str,
    raw: dict[str, Any],
    source: str,
    scale: str,
    overrides: list[str],
    data: dict[str, str] | None = None,
    seed: int | None = None,
) -> Recipe:
    section = "task" if kind == "pretrain" else "protocol"
    where = source if not overrides else f"{source} (with --set {' '.join(overrides)})"
    apply_overrides(raw, overrides, section)
    allowed = {"seed", section, "backbone", "data", "optim", "schedule", "engine"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(allowed))}")
    registry = TASKS if kind == "pretrain" else PROTOCOLS
    extra_sets = {f.name for f in dataclasses.fields(registry.entry(name).config)}
    main = [dataset for dataset in (data or {}) if dataset not in extra_sets]
    if len(main) > 1:
        options = sorted(extra_sets & set(DATASETS.names()))
        plus = f" (plus {', '.join(options)}, which {name} adds to it)" if options else ""
        raise UserError(f"--data takes one data set per run{plus}, found {', '.join(main)}; pass one of them")
    for dataset, root in (data or {}).items():
        if dataset in extra_sets:  # a data set the method adds to its main one (voc-seg's sbd) is its option
            raw.setdefault(section, {})[dataset] = root
        else:
            raw.setdefault("data", {}).update(dataset=dataset, root=root)
    method_raw = dict(raw.get(section, {}))
    method_raw.pop("name", None)
    method = Named(name, build(registry.entry(name).config, method_raw, f"{where} [{section}]"))
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
        method=method,
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
    section = "task" if kind == "pretrain" else "protocol"
    raw[section].pop("name", None)
    return recipe_from_dict(kind, name, raw, source, scale, [])
