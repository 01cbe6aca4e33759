"""Recipe schemas: frozen dataclasses and their validation.

A recipe (``recipes/<task>/<scale>.toml`` or ``recipes/protocols/<protocol>/<scale>.toml``, read by
sslbench.recipes) is validated section by section against typed dataclasses: an unknown key, a wrong type or
a value out of its range is an error naming the key and the file. Every numeric field declares its valid
range with its type, ``Annotated[int, In(1, 65536)]`` (tests check that none is missing); floats are finite.
`build` is the validator every typed file of sslbench goes through (recipes, table files). Registry lookups
(a task's or backbone's config class) need the plugins loaded (sslbench.plugins.load_all), which the entry
points do.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from sslbench.errors import UserError
from sslbench.registry import BACKBONES, PROTOCOLS, TASKS, Registry

SCALES = ("mini", "paper")
Kind = Literal["pretrain", "protocol"]


@dataclass(frozen=True)
class In:
    """The valid range of a numeric config field, declared with its type: ``Annotated[float, In(0, 1)]``.
    Bounds are inclusive unless `open_lo` / `open_hi`; floats must also be finite."""

    lo: float
    hi: float
    open_lo: bool = False
    open_hi: bool = False
    also: tuple[float, ...] = ()  # values allowed outside the range (data.image_size 0: the stored size)

    def holds(self, v: float) -> bool:
        above = v > self.lo if self.open_lo else v >= self.lo
        below = v < self.hi if self.open_hi else v <= self.hi
        return (above and below) or v in self.also

    def __str__(self) -> str:
        interval = f"{'(' if self.open_lo else '['}{_num(self.lo)}, {_num(self.hi)}{')' if self.open_hi else ']'}"
        return " or ".join([*(_num(v) for v in self.also), interval])


def _num(v: float) -> str:
    return f"{int(v):_}".replace("_", " ") if float(v).is_integer() and abs(v) < 1e15 else f"{v:g}"


# The ranges most fields share:
MAX_SEED = 2**31 - 1
Seed = Annotated[int, In(0, MAX_SEED)]
Rate = Annotated[float, In(0, 1)]  # a probability, a fraction, an IoU
Dropout = Annotated[float, In(0, 1, open_hi=True)]
Weight = Annotated[float, In(0, 1e6)]  # a loss weight, a multiplier that may be 0
Positive = Annotated[float, In(0, 1e6, open_lo=True)]  # a scale, a std, a multiplier that may not be 0
Count = Annotated[int, In(0, 10**9)]  # a number of items, 0 allowed
Units = Annotated[int, In(1, 65536)]  # the width of a layer
Pixels = Annotated[int, In(0, 1024)]  # a padding, a gap, an offset
Side = Annotated[int, In(8, 4096)]  # an image side
WidthMult = Annotated[float, In(0, 8, open_lo=True)]  # a multiplier on a network's channel counts


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
    image_size: Annotated[int, In(8, 4096, also=(0,))] = 64  # side of the square images fed to the network
    num_images: Count = 0  # cap on training images (0 = the whole split)
    num_test: Count = 0  # cap on test images (0 = the whole split)
    batch_size: Annotated[int, In(1, 65536)] = 64  # global batch size (split evenly across DDP ranks)
    workers: Annotated[int, In(0, 256)] = 0  # DataLoader worker processes
    # how a training image becomes image_size x image_size: "center" (shorter side resized, centre square);
    # "random_resized" (RandomResizedCrop: 8-100 % of the area, ratio 3/4-4/3; RotNet's RandomSizedCrop(224));
    # "random" (shorter side resized to load_size, a random square: Context Encoders' 350 -> 128); "random_area"
    # (rescaled, aspect kept, to a total pixel count uniform in load_area, then a random square: Context
    # Prediction's 150K-450K). Test splits and evaluation always take the centre; the draw is a function of
    # (seed, epoch, item), so a resume repeats it.
    train_crop: Literal["center", "random_resized", "random", "random_area"] = "center"
    load_size: Annotated[int, In(0, 4096)] = 0  # train_crop = "random": the shorter side before the crop
    load_area: tuple[Annotated[int, In(0, 16_777_216)], Annotated[int, In(0, 16_777_216)]] = (0, 0)  # "random_area"
    synth_seed: Seed = 0  # seed of the embedded generator (fixes the images, not the training)
    # where a training image's JPEG is decoded: "loader" (PIL, in the loader workers) or "device" (the file's bytes
    # to the main process, one batched torchvision.io.decode_jpeg where the batch is built: nvJPEG on a GPU with
    # engine.batch_on = "device"; the imagenet layout; other pixels than PIL's, so part of the identity)
    decode: Literal["loader", "device"] = "loader"

    def __post_init__(self) -> None:
        lo, hi = self.load_area
        if self.train_crop == "random_area" and not 0 < lo <= hi:
            raise UserError(f"data.train_crop = \"random_area\" needs data.load_area = [min, max] pixels with "
                            f"0 < min <= max, found {list(self.load_area)}; e.g. load_area = [150000, 450000]")


@dataclass(frozen=True)
class OptimConfig:
    name: Literal["sgd", "adam", "adamw"] = "sgd"  # optimizer family
    lr: Annotated[float, In(0, 1000, open_lo=True)] = 0.01  # base learning rate at the global batch size
    momentum: Dropout = 0.9  # SGD momentum
    nesterov: bool = False  # Nesterov momentum (RotNet's code uses it)
    weight_decay: Rate = 5e-4  # L2 penalty
    betas: tuple[Dropout, Dropout] = (0.9, 0.999)  # Adam betas (Context Encoders: beta1 0.5)
    grad_clip: Weight = 0.0  # max gradient norm, 0 = off (VOC07 cls protocol: 10)
    fused: bool = False  # torch's fused SGD / Adam / AdamW step (one kernel over all parameters; CPU and CUDA)


@dataclass(frozen=True)
class ScheduleConfig:
    epochs: Annotated[int, In(1, 100_000)] = 1  # passes over the training split
    kind: Literal["constant", "step", "multistep", "cosine"] = "multistep"  # learning-rate shape
    milestones: tuple[Annotated[int, In(0, 100_000)], ...] = ()  # epochs where multistep multiplies the rate by gamma
    # optimizer steps where multistep multiplies the rate by gamma (instead of epochs): a schedule fixed in
    # iterations, as Caffe solvers are, stays put whatever the size of the training set (voc-seg with SBD)
    milestone_steps: tuple[Annotated[int, In(0, 100_000_000)], ...] = ()
    step_size: Annotated[int, In(1, 100_000)] = 10  # epochs between drops for kind = "step"
    gamma: Annotated[float, In(0, 10, open_lo=True)] = 0.1  # multiplier at each drop
    # multistep: the rate's multiplier after each milestone, instead of gamma, gamma^2, ... (Colorization's Caffe
    # stages 3e-5 -> 1e-5 -> 3e-6 -> 1e-6 are 1/3, 1/10, 1/30 of the base rate)
    lr_factors: tuple[Annotated[float, In(0, 10, open_lo=True)], ...] = ()
    warmup_epochs: Annotated[float, In(0, 100_000)] = 0.0  # linear warm-up length
    max_steps: Count = 0  # stop after this many optimizer steps (0 = run all epochs)

    def __post_init__(self) -> None:
        if self.milestones and self.milestone_steps:
            raise UserError(f"schedule: milestones (epochs) {list(self.milestones)} and milestone_steps "
                            f"{list(self.milestone_steps)} both set; keep one")
        marks = list(self.milestones or self.milestone_steps)
        if marks != sorted(marks):
            raise UserError(f"schedule: milestones {marks} are not in increasing order; sort them")
        if self.lr_factors and (len(self.lr_factors) != len(marks) or self.kind != "multistep"):
            raise UserError(f"schedule: lr_factors {list(self.lr_factors)} needs kind = \"multistep\" (found "
                            f"{self.kind!r}) and one multiplier per milestone ({len(marks)} given)")


@dataclass(frozen=True)
class EngineConfig:
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"  # auto = bf16 autocast on CUDA, off on CPU
    checkpoint_every: Annotated[int, In(1, 10**9)] = 200  # optimizer steps between atomic checkpoints
    log_every: Annotated[int, In(1, 10**9)] = 10  # optimizer steps between metrics.jsonl / TensorBoard points
    sync_bn: bool = True  # BatchNorm over the global batch under DDP (SyncBatchNorm on CUDA, GlobalBatchNorm on gloo)
    channels_last: bool = False  # NHWC memory format (faster convs on some CPUs/GPUs)
    # build the next step's batch (loading + the task's make_batch) in a background thread while this step trains;
    # every batch is a pure function of its step, so the results are the same bits (off by default)
    prefetch: bool = False
    # torch.compile of the model the loss calls (off by default); the first step, which holds the compilation, is
    # logged apart as compile_s
    compile: bool = False
    # where the task's make_batch runs: "loader" on the CPU in the training process, the batch then moved to the
    # device (the default); "device" moves the uint8 images and targets to the training device (pinned,
    # non-blocking) and builds the batch there, its draws from a generator on that device. On the CPU the two are
    # the same bits; on a GPU the draws are the GPU generator's, so the batches differ (in the recipe's identity)
    batch_on: Literal["loader", "device"] = "loader"
    threads: Annotated[int, In(0, 1024)] = 0  # torch CPU threads (0 = torch's default)


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
    """raw TOML table -> frozen dataclass `cls`; unknown keys and wrong types raise UserError. A class whose
    fields' types depend on another field (a multi-task recipe's sub-task configs: their type is the named task's)
    defines `validated(where) -> instance`, called last, so that its errors name the file and key too."""
    if not isinstance(raw, dict):
        raise UserError(f"{where}: expected a table, found {type(raw).__name__}")
    hints = typing.get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise UserError(
            f"{where}: unknown key {unknown[0]!r}; valid keys: {', '.join(sorted(fields))}"
        )
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}") for k, v in raw.items()}
    obj = cls(**kwargs)
    validated = getattr(obj, "validated", None)
    return validated(where) if callable(validated) else obj


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Annotated:
        out = _coerce(args[0], value, where)
        for bound in (a for a in args[1:] if isinstance(a, In)):
            if not bound.holds(out):
                raise UserError(f"{where}: expected a value in {bound}, found {value!r}")
        return out
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
        if not math.isfinite(value):
            raise UserError(f"{where}: expected a finite number, found {value!r}")
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
    entry = registry_of(kind).entry(name)
    if unknown:
        own = {f.name for f in dataclasses.fields(entry.config)} if entry.config else set()
        hint = f" ({unknown[0]!r} is a [{section}] key: write {section}.{unknown[0]}...)" if unknown[0] in own else ""
        raise UserError(f"{where}: unknown key {unknown[0]!r}{hint}; valid keys: {', '.join(sorted(allowed))}")
    component_raw = dict(raw.get(section, {}))
    component_raw.pop("name", None)
    component = Named(name, build(entry.config, component_raw, f"{where} [{section}]"))
    bb_raw = dict(raw.get("backbone", {}))
    bb_name = bb_raw.pop("name", None)
    if not isinstance(bb_name, str):
        raise UserError(f"{where} [backbone]: missing 'name'; valid: {', '.join(BACKBONES.names())}")
    backbone = Named(bb_name, build(BACKBONES.entry(bb_name).config, bb_raw, f"{where} [backbone]"))
    data = build(DataConfig, raw.get("data", {}), f"{where} [data]")
    if data.image_size == 0 and not getattr(entry.obj, "stored_image_size", False):
        raise UserError(f"{where} [data].image_size: 0 (the images' stored sizes) is for the protocols that "
                        f"rescale each image themselves (voc-det); {name} needs a fixed side: set it to 8 or more")
    return Recipe(
        kind=kind,
        name=name,
        source=source,
        scale=scale,
        seed=_coerce(Seed, seed if seed is not None else raw.get("seed", 0),
                     "--seed" if seed is not None else f"{where}.seed"),
        component=component,
        backbone=backbone,
        data=data,
        optim=build(OptimConfig, raw.get("optim", {}), f"{where} [optim]"),
        schedule=build(ScheduleConfig, raw.get("schedule", {}), f"{where} [schedule]"),
        engine=build(EngineConfig, raw.get("engine", {}), f"{where} [engine]"),
        overrides=tuple(overrides),
    )


# What two recipes may differ in and still be the same experiment, by purpose (dotted keys of Recipe.to_dict):
# where the recipe came from; loader processes; prefetching the next batch (the same bits either way)
IDENTITY_FREE = ("source", "overrides", "data.workers", "engine.prefetch")
RESUME_FREE = (*IDENTITY_FREE, "data.root")  # a resumed run may read its data from where it lives now
# a table's plan names recipes: the seed, the machine's threads and the logging cadence do not change which one
PLAN_FREE = (*RESUME_FREE, "seed", "engine.threads", "engine.checkpoint_every", "engine.log_every")


def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'optim': {'lr': 0.1}} -> {'optim.lr': 0.1}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# Fields added to the schema after results were stored, with the default that reproduces what those results ran:
# at that default a field is left out of a recipe's identity, so stored recipes (which lack it) stay the same
# experiment as today's and their keys stay valid; any other value is a difference as usual.
LATE_DEFAULTS = (("backbone", "pool_pad", 0), ("data", "load_area", [0, 0]), ("schedule", "lr_factors", []),
                 # the eval-side lasso (linear, nyu-depth, voc-det), off
                 ("protocol", "lasso", {"enabled": False, "stage": "res4", "l1": 1e-3, "lr_scale": 1.0}),
                 # speed switches, off (2026-12-03; fused and compile move the floats, so they stay in the identity)
                 ("optim", "fused", False), ("engine", "compile", False), ("engine", "prefetch", False),
                 ("engine", "batch_on", "loader"), ("data", "decode", "loader"))


def _without_late_defaults(d: dict[str, Any]) -> dict[str, Any]:
    d = {k: dict(v) if isinstance(v, dict) else v for k, v in d.items()}
    for section, key, default in LATE_DEFAULTS:
        part = d.get(section)
        if isinstance(part, dict) and key in part and json.loads(json.dumps(part[key])) == default:
            del part[key]
    return d


def _as_dict(recipe: Recipe | str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(recipe, Recipe):
        return _without_late_defaults(recipe.to_dict())
    return _without_late_defaults(json.loads(recipe) if isinstance(recipe, str) else recipe)


def recipe_diff(a: Recipe | str | dict[str, Any], b: Recipe | str | dict[str, Any],
                free: tuple[str, ...] = IDENTITY_FREE) -> list[tuple[str, Any, Any]]:
    """(key, a's value, b's value) of every dotted key where two recipes differ, keys in `free` left out."""
    fa, fb = flat(_as_dict(a)), flat(_as_dict(b))
    keys = sorted(set(fa) | set(fb))
    return [(k, fa.get(k), fb.get(k)) for k in keys
            if fa.get(k) != fb.get(k) and not any(k == f or k.startswith(f + ".") for f in free)]


def describe_diff(diffs: list[tuple[str, Any, Any]], limit: int = 3, other: str = "not") -> str:
    """'optim.lr=0.5 (not 0.1), schedule.epochs=1 (not 30) +2 more': b's values, a's in brackets after `other`."""
    parts = [f"{k}={_short(vb)} ({other} {_short(va)})" for k, va, vb in diffs[:limit]]
    return ", ".join(parts) + (f" +{len(diffs) - limit} more" if len(diffs) > limit else "")


def _short(v: Any, most: int = 60) -> str:
    """A value as a difference names it: a list of named tables (multitask's sub-tasks) by its names, anything
    longer than `most` characters cut."""
    if v is None:
        return "unset"
    if isinstance(v, list) and v and all(isinstance(x, dict) and "name" in x for x in v):
        return "[" + ", ".join(str(x["name"]) for x in v) + "]"
    text = json.dumps(v) if isinstance(v, (list, str, dict)) else str(v)
    return text if len(text) <= most else text[:most - 3] + "..."


def recipe_key(recipe: Recipe | str) -> str:
    """Identity of what a run computes (everything but where the recipe came from): reuse is keyed by it.

    Accepts a Recipe or its JSON (as stored with every result)."""
    d = _as_dict(recipe)
    for dotted in IDENTITY_FREE:  # hashed as it always was: stored keys stay valid
        *section, key = dotted.split(".")
        (d.get(section[0], {}) if section else d).pop(key, None)
    return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def identity_key(recipe: Recipe | str | dict[str, Any], free: tuple[str, ...]) -> str:
    """A hash of the recipe without the keys in `free` (a table's plan: PLAN_FREE)."""
    d = {k: v for k, v in flat(_as_dict(recipe)).items()
         if not any(k == f or k.startswith(f + ".") for f in free)}
    return hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def recipe_from_json(text: str) -> Recipe:
    """Inverse of Recipe.to_json (used to rebuild a run's recipe from its checkpoint)."""
    raw = json.loads(text)
    kind, name = raw.pop("kind"), raw.pop("name")
    source, scale = raw.pop("source"), raw.pop("scale")
    raw.pop("overrides", None)
    raw[section_of(kind)].pop("name", None)
    return recipe_from_dict(kind, name, raw, source, scale)
