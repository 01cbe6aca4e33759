"""`sslbench reproduce TABLE`: every pretraining and evaluation a table's sslbench rows need, then the table.

A table file's [reproduce] section lists runs: a pretext task (with its recipe flavour) or "random", and
the protocols evaluated on it; `random` with `like = "TASK"` is random init of that task's trunk as it is
transferred (`--checkpoint random:CKPT`), the like-for-like baseline of a trunk whose shape differs from
the protocol recipe's backbone (a Context patch net at conv1 stride 1, a gray Damaged-Jigsaw tower). Finished work is reused from the results store unless --force: a
pretraining by the key of its resolved recipe, an evaluation by its recipe key and the pretraining it
read. A task or protocol that does not exist yet is reported and skipped, its columns stay "—".
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sslbench.config import load_recipe, recipe_key
from sslbench.errors import UserError
from sslbench.progress import console
from sslbench.registry import PROTOCOLS, TASKS, load_all
from sslbench.report import load_table, resolve
from sslbench.results import default_store


@dataclass
class Options:
    scale: str = "mini"
    runs: Path = Path("runs")
    device: str = "auto"
    seed: int | None = None
    force: bool = False
    data: dict[str, str] | None = None  # --data for the pretraining runs
    progress: bool = True
    argv: list[str] | None = None
    seeds: tuple[int, ...] = ()  # run the whole plan once per seed (overrides `seed`); tables print mean ± sd


@dataclass
class Summary:
    ran: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def line(self) -> str:
        return (f"reproduce: {len(self.ran)} ran, {len(self.reused)} reused, {len(self.missing)} not available yet, "
                f"{self.seconds / 60:.1f} min")


@dataclass(frozen=True)
class EvalSpec:
    protocol: str
    flavour: str = ""
    overrides: tuple[str, ...] = ()

    @classmethod
    def parse(cls, raw: Any) -> EvalSpec:
        if isinstance(raw, str):
            return cls(raw)
        return cls(raw["protocol"], raw.get("flavour", ""), tuple(raw.get("set", ())))

    def describe(self) -> str:
        return self.protocol + (f"[{self.flavour}]" if self.flavour else "") + (f" {' '.join(self.overrides)}" if self.overrides else "")


@dataclass(frozen=True)
class RunSpec:
    task: str  # a pretext task, or "random" for the random-init baselines
    flavour: str
    overrides: tuple[str, ...]
    init: str  # "default" or "rescale" (Kraehenbuehl et al.), applied before every protocol
    evals: tuple[EvalSpec, ...]
    like: str = ""  # random only: initialise this pretext task's trunk (its default recipe) instead


def plan(names: list[str]) -> list[RunSpec]:
    """The union of the [reproduce] runs of the tables, in order, duplicates merged."""
    merged: dict[tuple[str, str, tuple[str, ...], str, str], list[EvalSpec]] = {}
    for name in names:
        for raw in load_table(name).reproduce.get("runs", []):
            if raw.get("like") and (raw["task"] != "random" or raw.get("flavour") or raw.get("set")):
                raise UserError(f"tables/{name}.toml [reproduce]: like = {raw['like']!r} belongs to a task = \"random\" "
                                "run without flavour or set (it initialises that task's default recipe trunk)")
            key = (raw["task"], raw.get("flavour", ""), tuple(raw.get("set", ())), raw.get("init", "default"),
                   raw.get("like", ""))
            evals = merged.setdefault(key, [])
            for e in raw.get("protocols", []):
                spec = EvalSpec.parse(e)
                if spec not in evals:
                    evals.append(spec)
    return [RunSpec(t, f, o, i, tuple(e), like) for (t, f, o, i, like), e in merged.items()]


def reproduce(name: str, opts: Options) -> tuple[list[str], Summary]:
    load_all()
    names = resolve(name)
    summary, fresh = Summary(), {}
    start = time.time()
    specs = plan(names)
    for spec in specs:  # bad --data / recipes fail here, before any run
        if spec.task in TASKS:
            load_recipe("pretrain", spec.task, opts.scale, list(spec.overrides), opts.data, opts.seed, flavour=spec.flavour)
    store = default_store(opts.runs)
    for seed in opts.seeds or (opts.seed,):
        _run_plan(specs, dataclasses.replace(opts, seed=seed), store, summary, fresh)
    summary.seconds = time.time() - start
    return names, summary


def _run_plan(specs: list[RunSpec], opts: Options, store: Any, summary: Summary, fresh: dict[str, str]) -> None:
    from sslbench.checkpoint import RANDOM_LIKE
    from sslbench.protocols.base import evaluate

    seed = "" if opts.seed is None else f" [seed {opts.seed}]"
    for spec in specs:
        checkpoint = "random"
        if spec.task != "random" or spec.like:
            task, flavour, overrides = (spec.like, "", ()) if spec.task == "random" else (spec.task, spec.flavour, spec.overrides)
            if task not in TASKS:
                summary.missing.append(f"task {task!r} (not built yet)")
                continue
            checkpoint = _pretrained(task, flavour, overrides, opts, store, summary, fresh)
            if spec.task == "random":
                checkpoint = RANDOM_LIKE + checkpoint
        subject = f"random ({spec.like} trunk)" if spec.like else spec.task
        for ev in spec.evals:
            if ev.protocol not in PROTOCOLS:
                summary.missing.append(f"{ev.describe()} on {subject} (protocol {ev.protocol!r} not built yet)")
                continue
            recipe = load_recipe("protocol", ev.protocol, opts.scale, ev.overrides, None, opts.seed, flavour=ev.flavour)
            what = f"{ev.describe()} on {subject}" + (" (rescaled)" if spec.init == "rescale" else "") + seed
            if not opts.force and _evaluated(store, ev.protocol, recipe_key(recipe), checkpoint, spec.init):
                summary.reused.append(what)
                continue
            outcome = evaluate(recipe, checkpoint, opts.runs, opts.device, opts.progress, opts.argv, init=spec.init)
            summary.ran.append(f"{what} ({outcome.run_dir.name}, {outcome.wall_time:.0f} s)")


def _pretrained(
    task: str, flavour: str, overrides: tuple[str, ...], opts: Options, store: Any, summary: Summary, fresh: dict[str, str]
) -> str:
    """The checkpoint of this pretraining: one this call already made (`fresh`, by recipe key), else the store's
    latest with the same resolved recipe, else a new run."""
    from sslbench.engine import pretrain

    recipe = load_recipe("pretrain", task, opts.scale, list(overrides), opts.data, opts.seed, flavour=flavour)
    key = recipe_key(recipe)
    done = [r for r in store.pretrain_runs(key) if Path(r.checkpoint).is_file()]
    if key in fresh:
        summary.reused.append(f"pretrain {task} ({Path(fresh[key]).parent.name})")
        return fresh[key]
    if done and not opts.force:
        summary.reused.append(f"pretrain {task} ({done[-1].run_id})")
        return done[-1].checkpoint
    outcome = pretrain(recipe, opts.runs, opts.device, progress=opts.progress, argv=opts.argv)
    summary.ran.append(f"pretrain {task} ({outcome.run_dir.name}, {outcome.wall_time:.0f} s)")
    fresh[key] = str(outcome.checkpoint)
    return fresh[key]


def _evaluated(store: Any, protocol: str, key: str, checkpoint: str, init: str) -> bool:
    rescaled = init == "rescale"
    for row in store.results(protocol + "/"):
        if (row.protocol == protocol and row.prov.checkpoint == checkpoint and row.prov.init.endswith("+rescale") == rescaled
                and recipe_key(row.prov.recipe) == key):
            return True
    return False
