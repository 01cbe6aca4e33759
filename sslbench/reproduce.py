"""`sslbench reproduce TABLE`: every pretraining and evaluation a table's sslbench rows need, then the table.

A table file's [reproduce] section lists runs (sslbench.tables.RunSpec): a pretext task (with its recipe
flavour) or "random", and the protocols evaluated on it; `random` with `like = "TASK"` is random init of that
task's trunk as it is transferred (`--checkpoint random:CKPT`), the like-for-like baseline of a trunk whose
shape differs from the protocol recipe's backbone (a Context patch net at conv1 stride 1, a gray
Damaged-Jigsaw tower). Finished work is reused from the results store unless --force: a pretraining by the
key of its resolved recipe, an evaluation by its recipe key and the pretraining it read. A task or protocol
that does not exist yet is reported and skipped, its columns stay "—".
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sslbench.checkpoint import TrunkSpec
from sslbench.config import RESUME_FREE, Kind, Recipe, recipe_diff, recipe_key
from sslbench.data.build import check_real_data
from sslbench.engine import pretrain
from sslbench.errors import Interrupted, UserError
from sslbench.launch import Cluster, Job, LocalLauncher, SubmititLauncher, cancel, collect, launcher
from sslbench.plugins import load_all
from sslbench.protocols.base import evaluate, init_label, preflight
from sslbench.recipes import load_recipe, planned_data
from sslbench.registry import PROTOCOLS, TASKS
from sslbench.results import ResultStore, check_store, default_store
from sslbench.runs import RunLock, check_runs_writable, read_status, resumable_runs, run_recipe
from sslbench.tables import EvalSpec, RunSpec, load_table, resolve
from sslbench.transforms import TRANSFER_EXTENDS, TRANSFER_INPUTS


@dataclass
class Options:
    scale: str = "mini"
    runs: Path = Path("runs")
    device: str = "auto"
    seed: int | None = None
    force: bool = False
    data: dict[str, str] | None = None  # --data: each run takes the entries of its own data set (planned_data)
    progress: bool = True
    argv: list[str] | None = None
    seeds: tuple[int, ...] = ()  # run the whole plan once per seed (overrides `seed`); tables print mean ± sd
    echo: Callable[[str], None] | None = None  # told one line per run as it finishes ("ran ...", "reused ...")
    cluster: Cluster = field(default_factory=Cluster)  # --launcher and its job settings (sslbench.launch)


@dataclass
class Summary:
    ran: list[str] = field(default_factory=list)
    reused: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    seconds: float = 0.0
    echo: Callable[[str], None] | None = None

    def add(self, kind: str, line: str) -> None:
        """Record a run ("ran", "reused" or "missing") and tell `echo` at once: one line per run."""
        getattr(self, kind).append(line)
        if self.echo is not None:
            self.echo(f"{kind:<7} {line}")

    def line(self) -> str:
        return (f"reproduce: {len(self.ran)} ran, {len(self.reused)} reused, {len(self.missing)} not available yet, "
                f"{self.seconds / 60:.1f} min")


def plan(names: list[str]) -> list[RunSpec]:
    """The union of the [reproduce] runs of the tables, in order, runs of the same setting merged."""
    merged: dict[RunSpec, list[EvalSpec]] = {}
    for name in names:
        for run in load_table(name).reproduce.runs:
            evals = merged.setdefault(dataclasses.replace(run, protocols=()), [])
            evals += [e for e in run.evals if e not in evals]
    return [dataclasses.replace(run, protocols=tuple(evals)) for run, evals in merged.items()]


def reproduce(name: str, opts: Options) -> tuple[list[str], Summary]:
    load_all()
    names = resolve(name)
    summary, fresh = Summary(echo=opts.echo), {}
    start = time.time()
    specs = plan(names)
    check_plan(specs, opts)  # bad --data, recipes, a paper run without its data: here, before any run
    check_runs_writable(opts.runs)  # where everything goes, before any work
    check_store(opts.runs)
    store = default_store(opts.runs)
    jobs = launcher(opts.cluster, opts.runs)
    submitted: list[tuple[str, Job]] = []
    try:
        for seed in opts.seeds or (opts.seed,):
            _run_plan(specs, dataclasses.replace(opts, seed=seed), store, summary, fresh, jobs, submitted)
        folder = getattr(jobs, "folder", None)
        for i, (what, job) in enumerate(submitted):  # a cluster's jobs: each result as it comes, in submission order
            try:
                done = collect(job, what, folder)
            except UserError:
                cancel([j for _, j in submitted[i + 1:]])  # the rest would wait on it (afterok) or be wasted
                raise
            summary.add("ran", done if isinstance(done, str) else done[0])  # a pretraining's: (line, checkpoint)
    except Interrupted as exc:
        done = f"{len(summary.ran)} ran, {len(summary.reused)} reused before it"
        raise exc.with_message(f"reproduce {name} in {exc.message or 'a run'} ({done}); `sslbench reproduce {name}` "
                               "again reuses what finished and continues an interrupted pretraining") from None
    summary.seconds = time.time() - start
    return names, summary


def plan_recipe(kind: Kind, name: str, opts: Options, overrides: tuple[str, ...] = (), flavour: str = "",
                seed: int | None = None) -> Recipe:
    """One run of the plan's recipe, with the `--data` entries of its own data set (sslbench.recipes.planned_data)."""
    data = planned_data(kind, name, opts.scale, overrides, opts.data, flavour)
    return load_recipe(kind, name, opts.scale, overrides, data, seed, flavour=flavour)


def check_plan(specs: list[RunSpec], opts: Options) -> None:
    """Every recipe of the plan loads, and every run has what it needs without reading data (a paper run its data
    set, voc-seg's paper setting SBD), before the first run starts."""
    for spec in specs:
        if spec.pretrained in TASKS:
            flavour, overrides = ("", ()) if spec.like else (spec.flavour, spec.set)
            check_real_data(plan_recipe("pretrain", spec.pretrained, opts, overrides, flavour, opts.seed).data,
                            opts.scale)
        for ev in spec.evals:
            if ev.protocol in PROTOCOLS:
                preflight(plan_recipe("protocol", ev.protocol, opts, ev.set, ev.flavour, opts.seed))
            if ev.input and ev.input not in TRANSFER_EXTENDS:
                TRANSFER_INPUTS.get(ev.input)  # an unknown name: the registry's one line
                raise UserError(f"{ev.describe()}: input {ev.input!r} extends no other transfer input; valid: "
                                f"{', '.join(TRANSFER_EXTENDS)}")


@dataclass(frozen=True)
class JobOptions:
    """What a run needs of the Options, picklable (a job's arguments travel to another process)."""

    runs: Path
    device: str
    progress: bool
    argv: list[str] | None

    @classmethod
    def of(cls, opts: Options) -> JobOptions:
        return cls(opts.runs, opts.device, opts.progress, opts.argv)


@dataclass(frozen=True)
class Pending:
    """A pretraining submitted as a job and not finished yet: its evaluations run after it and find its checkpoint
    in the store by the recipe's key (stored_checkpoint)."""

    key: str
    job: Job


def _run_plan(specs: list[RunSpec], opts: Options, store: ResultStore, summary: Summary,
              fresh: dict[str, str | Pending], jobs: LocalLauncher | SubmititLauncher,
              submitted: list[tuple[str, Job]]) -> None:
    seed = "" if opts.seed is None else f" [seed {opts.seed}]"
    for spec in specs:
        trunk: TrunkSpec | Pending = TrunkSpec("random")
        if spec.pretrained:
            if spec.pretrained not in TASKS:
                summary.add("missing", f"task {spec.pretrained!r} (not built yet)")
                continue
            flavour, overrides = ("", ()) if spec.like else (spec.flavour, spec.set)
            checkpoint = _pretrained(spec.pretrained, flavour, overrides, opts, store, summary, fresh, jobs, submitted)
            trunk = checkpoint if isinstance(checkpoint, Pending) else (
                TrunkSpec.like(checkpoint) if spec.like else TrunkSpec("file", checkpoint))
        subject = f"random ({spec.like} trunk)" if spec.like else spec.task + _flavoured(spec.flavour)
        for ev in spec.evals:
            if ev.protocol not in PROTOCOLS:
                summary.add("missing", f"{ev.describe()} on {subject} (protocol {ev.protocol!r} not built yet)")
                continue
            recipe = plan_recipe("protocol", ev.protocol, opts, ev.set, ev.flavour, opts.seed)
            what = f"{ev.describe()} on {subject}" + (" (rescaled)" if spec.init == "rescale" else "") + seed
            if isinstance(trunk, TrunkSpec):
                init = init_label(trunk.is_random, spec.init, ev.input)
                if not opts.force and _evaluated(store, ev.protocol, recipe_key(recipe), str(trunk), init):
                    summary.add("reused", what)
                    continue
            after = [trunk.job] if isinstance(trunk, Pending) else []
            args = (recipe, trunk if isinstance(trunk, TrunkSpec) else trunk.key, spec.like, what, JobOptions.of(opts),
                    spec.init, ev.input)
            job = jobs.submit(f"eval-{ev.protocol}", eval_job, args, after)
            if jobs.immediate:
                summary.add("ran", job.result())
            else:
                submitted.append((what, job))


def eval_job(recipe: Recipe, trunk: TrunkSpec | str, like: str, what: str, opts: JobOptions, init: str,
             transfer_input: str) -> str:
    """One evaluation (in this process or as a job): `trunk`, or the checkpoint of the pretraining whose recipe
    key it is (a job that ran first); the line the summary prints."""
    if isinstance(trunk, str):
        checkpoint = stored_checkpoint(default_store(opts.runs), trunk)
        if checkpoint is None:
            raise UserError(f"{what}: no finished pretraining with recipe key {trunk} in {opts.runs}; did its job "
                            "fail? see its log under the runs folder's jobs/")
        trunk = TrunkSpec.like(checkpoint) if like else TrunkSpec("file", checkpoint)
    outcome = evaluate(recipe, trunk, opts.runs, opts.device, opts.progress, opts.argv, init=init,
                       transfer_input=transfer_input)
    took = f"{outcome.run_dir.name}, {outcome.wall_time:.0f} s"
    rebuilt = outcome.reinitialised
    note = f" (re-initialised at the protocol's size: {', '.join(rebuilt)})" if rebuilt else ""
    return f"{what} ({took}): {headline(outcome.metrics, recipe.name)}{note}"


def stored_checkpoint(store: ResultStore, key: str) -> str | None:
    """The checkpoint of the store's latest finished pretraining of this recipe key, if its file is there.

    Keyed by the stored recipe as the schema reads it today (a key stored with a since-changed identity rule still
    finds its run); the store holds few pretrainings."""
    done = [r for r in store.pretrain_runs() if recipe_key(r.recipe) == key and Path(r.checkpoint).is_file()]
    return done[-1].checkpoint if done else None


def _pretrained(task: str, flavour: str, overrides: tuple[str, ...], opts: Options, store: ResultStore,
                summary: Summary, fresh: dict[str, str | Pending], jobs: LocalLauncher | SubmititLauncher,
                submitted: list[tuple[str, Job]]) -> str | Pending:
    """The checkpoint of this pretraining: one this call already made or submitted (`fresh`, by recipe key), else
    the store's latest with the same resolved recipe, else a new run (a job, on a cluster)."""
    recipe = plan_recipe("pretrain", task, opts, overrides, flavour, opts.seed)
    key = recipe_key(recipe)
    what = f"pretrain {task}{_flavoured(flavour)}"
    if key in fresh:
        made = fresh[key]
        where = Path(made).parent.name if isinstance(made, str) else f"job {made.job.job_id}"
        summary.add("reused", f"{what} ({where})")
        return made
    done = stored_checkpoint(store, key)
    if done and not opts.force:
        summary.add("reused", f"{what} ({Path(done).parent.name})")
        return done
    unfinished = None if opts.force else _unfinished(opts.runs, recipe)
    job = jobs.submit(f"pretrain-{task}", pretrain_job, (recipe, what, unfinished, JobOptions.of(opts)))
    if not jobs.immediate:
        submitted.append((what, job))
        fresh[key] = Pending(key, job)
        return fresh[key]
    line, checkpoint = job.result()
    summary.add("ran", line)
    fresh[key] = checkpoint
    return checkpoint


def pretrain_job(recipe: Recipe, what: str, unfinished: Path | None, opts: JobOptions) -> tuple[str, str]:
    """One pretraining (resumed where an interrupted one of the same recipe stopped): (its summary line, its
    checkpoint)."""
    how = f"resumed at step {read_status(unfinished).get('step', '?')}, " if unfinished else ""
    outcome = pretrain(recipe, opts.runs, opts.device, resume=unfinished or False, progress=opts.progress,
                       argv=opts.argv)
    took = f"{outcome.run_dir.name}, {how}{outcome.wall_time:.0f} s"
    return f"{what} ({took}): {headline(outcome.metrics)}", str(outcome.checkpoint)


def _flavoured(flavour: str) -> str:
    return f" [{flavour}]" if flavour else ""


def headline(metrics: dict[str, float], protocol: str = "", most: int = 3) -> str:
    """A run's first few values, 'res4 16.60, top5-best 52.60' (the protocol's prefix dropped; per-class APs and
    spreads left out)."""
    keys = [k for k in metrics if "/AP/" not in k and not k.endswith("/sd")][:most]
    shown = [(k.removeprefix(protocol + "/") if protocol else k, metrics[k]) for k in keys]
    return ", ".join(f"{k} {v:.2f}" for k, v in shown) or "no values"


def _unfinished(runs: Path, recipe: Recipe) -> Path | None:
    """The newest resumable run of exactly this recipe (a reproduce interrupted during its pretraining), if any."""
    for path in resumable_runs(runs, recipe.name):
        try:
            same = not recipe_diff(run_recipe(path), recipe, RESUME_FREE)
        except UserError:
            continue
        if same:
            if RunLock.held(path):
                raise UserError(f"pretrain {recipe.name}: {path} is running in another sslbench process; wait for it "
                                "to end, then run reproduce again")
            return path
    return None


def _evaluated(store: ResultStore, protocol: str, key: str, checkpoint: str, init: str) -> bool:
    """A stored result of this protocol recipe on this trunk with this `init` label (init_label: rescaling, the
    transfer input)."""
    for row in store.results(protocol + "/"):
        same_run = row.protocol == protocol and row.prov.checkpoint == checkpoint
        if same_run and row.prov.init == init and recipe_key(row.prov.recipe) == key:
            return True
    return False
