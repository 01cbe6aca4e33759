"""Recipe files -> validated Recipes: where recipes live, `--set` overrides, `--data` sets, loading.

A recipe is one TOML file, ``recipes/<task>/<scale>[-<flavour>].toml`` or
``recipes/protocols/<protocol>/<scale>.toml``. ``--set key=value`` overrides go into the raw TOML before
validation (sslbench.config), so they pass through the same checks.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from sslbench.config import SCALES, Kind, Recipe, recipe_from_dict, registry_of, section_of
from sslbench.errors import UserError
from sslbench.plugins import load_all
from sslbench.registry import DATASETS, unknown_name_message
from sslbench.runtime import bundled, user_folders


def recipes_dir() -> Path:
    """sslbench's own recipes (the installed package's copy, or the checkout's)."""
    return bundled("recipes")


def recipe_dirs() -> list[Path]:
    """Where recipes are looked up, first match wins: $SSLBENCH_RECIPES's folders, then sslbench's own."""
    return [*user_folders("recipes"), recipes_dir()]


def recipe_path(kind: str, name: str, scale: str, flavour: str = "") -> Path:
    """[protocols/]<name>/<scale>[-<flavour>].toml in the first recipe folder that has it (recipe_dirs); a flavour
    is a variant such as 'alexnet'."""
    if scale not in SCALES:
        raise UserError(f"unknown scale {scale!r}; valid: {', '.join(SCALES)}")
    relative = Path("protocols" if kind == "protocol" else "") / name
    stem = f"{scale}-{flavour}" if flavour else scale
    for root in recipe_dirs():
        if (root / relative / f"{stem}.toml").is_file():
            return root / relative / f"{stem}.toml"
    available = sorted({p.stem for root in recipe_dirs() for p in (root / relative).glob("*.toml")})
    raise UserError(
        f"no recipe {stem!r} for {kind} {name!r}: expected {relative / (stem + '.toml')} in "
        f"{', '.join(str(r) for r in recipe_dirs())}"
        + (f"; available recipes: {', '.join(available)}" if available else "")
    )


def list_recipes() -> list[str]:
    return sorted({str(p.relative_to(root).with_suffix("")) for root in recipe_dirs() for p in root.rglob("*.toml")})


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


TOP_LEVEL = ("seed",)  # the recipe's keys outside any section


def apply_overrides(raw: dict[str, Any], overrides: list[str] | tuple[str, ...], section: str) -> None:
    for text in overrides:
        keys, value = parse_override(text)
        if len(keys) == 1 and keys[0] not in TOP_LEVEL:  # bare key: the task's / protocol's option (layers=fc8)
            keys = [section, *keys]
        table = raw
        for k in keys[:-1]:
            table = table.setdefault(k, {})
            if not isinstance(table, dict):
                raise UserError(f"--set {text}: {k!r} is not a section")
        table[keys[-1]] = value


def apply_data(raw: dict[str, Any], data: dict[str, str], kind: Kind, name: str) -> None:
    """`--data NAME=PATH` into the raw recipe: one main data set per run ([data] dataset and root); a data set
    the task or protocol adds to its main one (voc-seg's sbd: a config field of that name) is its option."""
    section = section_of(kind)
    extra_sets = {f.name for f in dataclasses.fields(registry_of(kind).entry(name).config)}
    main = [dataset for dataset in data if dataset not in extra_sets]
    if len(main) > 1:
        options = sorted(extra_sets & set(DATASETS.names()))
        plus = f" (plus {', '.join(options)}, which {name} adds to it)" if options else ""
        raise UserError(f"--data takes one data set per run{plus}, found {', '.join(main)}; pass one of them")
    for dataset, root in data.items():
        if dataset in extra_sets:
            raw.setdefault(section, {})[dataset] = root
        else:
            raw.setdefault("data", {}).update(dataset=dataset, root=root)


def planned_data(kind: Kind, name: str, scale: str, overrides: list[str] | tuple[str, ...],
                 data: dict[str, str] | None, flavour: str = "") -> dict[str, str] | None:
    """The `--data` entries one run of a table's plan takes out of all those given to `reproduce`: its own data
    set's (the recipe's [data] dataset) and those its task or protocol adds (voc-seg's sbd)."""
    if not data:
        return None
    own = load_recipe(kind, name, scale, overrides, None, flavour=flavour).data.dataset
    extra = {f.name for f in dataclasses.fields(registry_of(kind).entry(name).config)}
    mine = {dataset: root for dataset, root in data.items() if dataset == own or dataset in extra}
    return mine or None


def load_recipe(
    kind: Kind,
    name: str,
    scale: str = "mini",
    overrides: list[str] | tuple[str, ...] = (),
    data: dict[str, str] | None = None,
    seed: int | None = None,
    path: Path | None = None,
    flavour: str = "",
) -> Recipe:
    load_all()
    registry = registry_of(kind)
    if name not in registry:
        raise UserError(unknown_name_message(registry.kind, name, registry.names()))
    path = path or recipe_path(kind, name, scale, flavour)
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: not valid TOML ({exc})") from None
    apply_overrides(raw, overrides, section_of(kind))
    apply_data(raw, data or {}, kind, name)
    return recipe_from_dict(kind, name, raw, str(path), scale, tuple(overrides), seed)


def resumed_recipe(run: Recipe, overrides: list[str] | tuple[str, ...] = (), data: dict[str, str] | None = None,
                   seed: int | None = None) -> Recipe:
    """The recipe a resumed run continues with: its own, with the command's explicit --set / --data / --seed
    applied (sslbench.runs.pick_resumable refuses any of them that changes the recipe beyond RESUME_FREE: a moved
    data set's root, the loader processes)."""
    raw = run.to_dict()
    for key in ("kind", "name", "source", "scale", "overrides"):
        raw.pop(key)
    raw[run.section].pop("name", None)
    apply_overrides(raw, overrides, run.section)
    apply_data(raw, data or {}, run.kind, run.name)
    return recipe_from_dict(run.kind, run.name, raw, run.source, run.scale, run.overrides, seed)
