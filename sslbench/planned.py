"""Which stored results are the runs a table's `[reproduce]` plan names, and how the others differ from them.

A table cell comes from the recipes its plan names: the protocol recipe of the column (its flavour and `set`)
evaluated on the pretraining recipe of the row's task (its flavour and `set`; a `like` baseline: the task's
default recipe), at the result's scale. Recipes are compared without PLAN_FREE (the seed, the machine's
threads, the logging cadence, the data's root): a result whose recipes differ in anything else, or whose
pretraining was unfinished, is labelled by what differs (`optim.lr=1e-06 (not 0.1)`) and becomes a row of its
own, never a value in the plan's row.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sslbench.config import PLAN_FREE, Kind, Recipe, describe_diff, recipe_diff
from sslbench.errors import UserError
from sslbench.recipes import load_recipe
from sslbench.registry import PROTOCOLS, TASKS
from sslbench.results import ResultRow
from sslbench.tables import Table


@dataclass
class _Planned:
    evals: dict[str, list[Recipe]] = field(default_factory=dict)  # protocol -> its planned recipes
    pretrains: dict[str, list[Recipe]] = field(default_factory=dict)  # task -> its planned pretraining recipes


class Plan:
    """A table's planned recipes, loaded per scale on first use."""

    def __init__(self, table: Table, pretrain_recipes: dict[str, str] | None = None) -> None:
        self.table = table
        self.pretrain_recipes = pretrain_recipes or {}  # pretraining run id -> its recipe (stores before 0.2)
        self._by_scale: dict[str, _Planned] = {}

    def _planned(self, scale: str) -> _Planned:
        if scale not in self._by_scale:
            planned = _Planned()
            for run in self.table.reproduce.runs:
                task = run.pretrained
                if task in TASKS:
                    flavour, overrides = ("", ()) if run.like else (run.flavour, run.set)
                    _add(planned.pretrains, "pretrain", task, scale, overrides, flavour)
                for ev in run.evals:
                    if ev.protocol in PROTOCOLS:
                        _add(planned.evals, "protocol", ev.protocol, scale, ev.set, ev.flavour)
            self._by_scale[scale] = planned
        return self._by_scale[scale]

    def differs(self, row: ResultRow) -> str:
        """'' when `row` comes from the plan's recipes; else what differs ('optim.lr=1e-06 (not 0.1)', 'pretraining
        schedule.epochs=1 (not 30)', 'unfinished pretraining (step 2 of 80)'), '; '-joined."""
        planned = self._planned(row.prov.scale)
        parts = []
        evals = planned.evals.get(row.protocol, [])
        if evals and _name_of(row.prov.recipe):  # a stored recipe that is none (hand-made rows) is not compared
            diff = _closest(evals, row.prov.recipe)
            if diff:
                parts.append(describe_diff(diff))
        pretrain = row.prov.pretrain_recipe or self.pretrain_recipes.get(_pretrain_run(row), "")
        if pretrain:
            task = _name_of(pretrain)
            if planned.pretrains.get(task):
                diff = _closest(planned.pretrains[task], pretrain)
                if diff:
                    parts.append("pretraining " + describe_diff(diff))
        if row.prov.unfinished:
            parts.append(f"unfinished pretraining ({row.prov.unfinished})")
        return "; ".join(parts)


def _add(into: dict[str, list[Recipe]], kind: Kind, name: str, scale: str, overrides: tuple[str, ...],
         flavour: str) -> None:
    try:
        recipe = load_recipe(kind, name, scale, overrides, flavour=flavour)
    except UserError:  # no recipe at this scale: nothing to compare with
        return
    into.setdefault(name, []).append(recipe)


def _closest(planned: list[Recipe], have: str) -> list[tuple[str, Any, Any]]:
    """The differences of `have` from the planned recipe it differs least from ([] if it is one of them)."""
    return min((recipe_diff(p, have, PLAN_FREE) for p in planned), key=len)


def _name_of(recipe_json: str) -> str:
    try:
        return str(json.loads(recipe_json).get("name", ""))
    except ValueError:
        return ""


def _pretrain_run(row: ResultRow) -> str:
    """The pretraining run a result read: its trunk's (a checkpoint), or its architecture's (random:CKPT)."""
    if row.prov.pretrain_run:
        return row.prov.pretrain_run
    if row.prov.checkpoint.startswith("random:"):
        return Path(row.prov.checkpoint.removeprefix("random:")).parent.name
    return ""
