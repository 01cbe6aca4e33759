"""The protocol contract and the one function that runs any protocol on any trunk.

A Protocol names the taps it reads (from its config or from the trunk's roles) and turns a frozen or
fine-tuned trunk into metric values keyed by the table column they fill ('linear/conv3'); it trains on the
fit loop (sslbench.training). `evaluate` does the rest the same way for every protocol, under torchrun too:
load the trunk (checkpoint or random), make the run directory, time it, and write the results store (rank 0).
"""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.distributed as dist

from sslbench.backbones.base import Backbone
from sslbench.backbones.lasso import LassoEval, unit_taps
from sslbench.checkpoint import Trunk, TrunkSpec, load_trunk, require_taps, with_transfer_input
from sslbench.config import Recipe
from sslbench.data.build import build_dataset, check_real_data, dataset_label
from sslbench.data.datasets import collate_skip_corrupt
from sslbench.errors import Interrupted, UserError
from sslbench.progress import console
from sslbench.registry import PROTOCOLS
from sslbench.rescale import rescale
from sslbench.results import Provenance, check_store, default_store
from sslbench.runlog import MetricLogger
from sslbench.runs import Run, check_runs_writable, open_run, record_run
from sslbench.runtime import (
    close_distributed,
    code_version,
    init_distributed,
    resolve_device,
    seed_everything,
    stop_if_interrupted,
    write_json,
)
from sslbench.training import Context, describe_unreadable


@dataclass
class EvalContext(Context):
    seed: int = 0
    run_dir: Path = Path(".")


class Protocol:
    name: ClassVar[str] = ""  # the registered name: every metric key starts with it
    metric_keys: ClassVar[str] = ""  # regex of the keys after '<name>/' run() returns (table files are checked by it)
    stored_image_size: ClassVar[bool] = False  # takes data.image_size = 0: every image at its stored size
    trains_by_sgd: ClassVar[bool] = True  # its schedule is SGD steps (voc07-svm: features once, then a solver)
    count_keys: ClassVar[str] = ""  # regex of the keys that are counts, not percentages (exemplar-svm's #features)
    requires: ClassVar[str] = ""  # the optional package it runs on, by import name (voc-det-d2: detectron2)

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    def taps(self, backbone: Backbone) -> tuple[str, ...]:
        """Taps this protocol reads from `backbone`; a trunk lacking one is refused before any work."""
        raise NotImplementedError

    def run(self, trunk: Trunk, recipe: Recipe, ctx: EvalContext) -> dict[str, float]:
        raise NotImplementedError

    def lasso(self) -> LassoEval | None:
        """The eval-side lasso of this run (its config's `lasso`, where it has one and it is enabled), else None:
        the head then reads a learned combination of the stage's units, and the row's variant says 'eval-lasso'."""
        spec = getattr(self.cfg, "lasso", None)
        return spec if isinstance(spec, LassoEval) and spec.enabled else None

    def preflight(self, recipe: Recipe) -> None:
        """What this protocol can refuse in `recipe` without reading data (a data set it requires and was not
        given), checked before any work: by `evaluate`, and by `reproduce` for every run of its plan."""

    def key(self, *parts: str) -> str:
        """'<protocol>/<part>/...': the metric key of a table column."""
        return "/".join((self.name, *parts))

    @classmethod
    def fills(cls, key: str) -> bool:
        """Whether `key` is one this protocol can report."""
        return cls._matches(cls.metric_keys, key)

    @classmethod
    def is_count(cls, key: str) -> bool:
        """Whether `key` reports a count (>= 0) rather than a percentage."""
        return bool(cls.count_keys) and cls._matches(cls.count_keys, key)

    @classmethod
    def _matches(cls, pattern: str, key: str) -> bool:
        """Whether `key` is '<name>/' followed by a match of `pattern`."""
        return re.fullmatch(f"{re.escape(cls.name)}/(?:{pattern})", key) is not None


def preflight(recipe: Recipe) -> None:
    """An evaluation's checks that need no data: a paper run has its data set, the protocol has what it needs."""
    check_real_data(recipe.data, recipe.scale)
    PROTOCOLS.get(recipe.name)(recipe.component.cfg).preflight(recipe)


@dataclass
class EvalOutcome:
    run_dir: Path
    metrics: dict[str, float]
    wall_time: float
    provenance: Provenance
    unreadable: str = ""  # '1 of 60 test images unreadable (skipped)'
    reinitialised: tuple[str, ...] = ()  # the trunk's layers rebuilt at the protocol's size (fresh weights)


INITS = ("default", "rescale")


def evaluate(
    recipe: Recipe,
    checkpoint: str | TrunkSpec,
    runs: Path,
    device: str = "auto",
    progress: bool = True,
    argv: list[str] | None = None,
    store: bool = True,
    init: str = "default",
    allow_unfinished: bool = False,
    transfer_input: str = "",
) -> EvalOutcome:
    """Run `recipe`'s protocol on a checkpoint (or 'random'); `init='rescale'` first applies Kraehenbuehl
    et al.'s data-dependent rescaling (the tables' "-rescale" and "Random rescaled" rows). Under torchrun every
    rank evaluates its share and rank 0 writes the run directory and the store. An unfinished pretraining's
    checkpoint is refused unless `allow_unfinished` (its rows then say where it stopped). An evaluation that does
    not end with a result leaves nothing: its run directory is removed (a crash that is no UserError keeps it,
    marked failed, for the traceback's context). `transfer_input` feeds the trunk another input than its
    pretraining recorded (`with_transfer_input`: Colorization's "lab", the deck's colour rows)."""
    if init not in INITS:
        raise UserError(f"--init expects {' or '.join(INITS)}, found {init!r}")
    spec = checkpoint if isinstance(checkpoint, TrunkSpec) else TrunkSpec.parse(checkpoint)
    ddp = init_distributed("cuda" if device != "cpu" and torch.cuda.is_available() else "cpu")
    try:
        return _evaluate(recipe, spec, runs, device, progress, argv, store, init, allow_unfinished, ddp,
                         transfer_input)
    finally:
        close_distributed(ddp)


def _evaluate(recipe: Recipe, spec: TrunkSpec, runs: Path, device: str, progress: bool, argv: list[str] | None,
              store: bool, init: str, allow_unfinished: bool, ddp: Any, transfer_input: str = "") -> EvalOutcome:
    protocol: Protocol = PROTOCOLS.get(recipe.name)(recipe.component.cfg)
    dev = resolve_device(device, ddp)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)  # NCCL's collectives use the current device
    if recipe.engine.threads:
        torch.set_num_threads(recipe.engine.threads)
    stop_if_interrupted()
    preflight(recipe)
    if ddp.is_main:  # where the results go, before any work
        check_runs_writable(runs)
        if store:
            check_store(runs)
    seed_everything(recipe.seed)  # before the trunk: `random` init must be the same draw every time (and rank)
    trunk = load_trunk(spec, recipe.backbone, allow_unfinished)
    if transfer_input == trunk.transfer_input:
        transfer_input = ""  # the trunk's own input: the same evaluation as without --input
    if transfer_input:
        trunk = with_transfer_input(trunk, transfer_input)
    require_taps(trunk, protocol.taps(trunk.backbone))
    lasso = protocol.lasso()
    if lasso is not None:  # the stage's units exist, before any work; the row is the trunk's, with an eval lasso
        unit_taps(trunk.backbone, lasso.stage, f"{recipe.name}: protocol.lasso.stage")
        trunk = dataclasses.replace(trunk, variant="+".join(v for v in (trunk.variant, "eval-lasso") if v))
    if init == "rescale":
        rescaled(trunk, recipe)
    run = open_run(runs, f"eval-{recipe.name}", ddp, lock=False)
    if ddp.is_main:
        record_run(run.path, recipe, argv)
    log = MetricLogger(run.path, enabled=ddp.is_main)
    ctx = EvalContext(dev, ddp, log, progress, seed=recipe.seed, run_dir=run.path)
    start = time.time()
    try:  # the run and its record: a result is stored whole (result.json, the store, then the status) or not at all
        try:
            metrics = protocol.run(trunk, recipe, ctx)
        finally:
            log.close()
        wall = time.time() - start
        counts = ctx.unreadable.counts(ddp)
        prov = _provenance(run, trunk, recipe, spec, init, counts, transfer_input)
        if ddp.is_main:
            write_json(run.path / "result.json", {
                "metrics": metrics, "wall_time": wall, "provenance": prov.__dict__,
                "reinitialised": list(trunk.reinitialised),
                "unreadable": {what: {"skipped": n, "of": m} for what, (n, m) in counts.items()},
            })
            if store:
                default_store(runs).add_results(recipe.name, metrics, prov, wall)
            run.status("finished")
    except Interrupted as exc:
        run.discard()
        raise exc.with_message(f"eval {recipe.name} on {trunk.checkpoint} after {time.time() - start:.0f} s; "
                               "nothing was stored (an evaluation starts over: run the command again)") from None
    except UserError:
        run.discard()  # e.g. missing data: nothing was measured, leave nothing
        raise
    except BaseException as exc:
        run.status("failed", error=f"{type(exc).__name__}: {exc}")
        raise
    if ddp.is_main and progress and console.is_terminal:  # a log gets the command's one line per run
        reinit = ", ".join(trunk.reinitialised)
        note = f" (re-initialised at the protocol's size: {reinit})" if reinit else ""
        console.print(f"[dim]{run.path}{note}[/dim]")
    if ddp.enabled:
        dist.barrier()
    return EvalOutcome(run.path, metrics, wall, prov, describe_unreadable(counts), tuple(trunk.reinitialised))


def _provenance(run: Run, trunk: Trunk, recipe: Recipe, spec: TrunkSpec, init: str,
                counts: dict[str, tuple[int, int]], transfer_input: str = "") -> Provenance:
    return Provenance(
        run_id=run.path.name, method=trunk.method, variant=trunk.variant, backbone=trunk.label,
        dataset=dataset_label(recipe.data), pretrain_dataset=trunk.pretrain_dataset, scale=recipe.scale,
        init=init_label(spec.is_random, init, transfer_input),
        seed=recipe.seed, version=code_version(), checkpoint=trunk.checkpoint, pretrain_run=trunk.pretrain_run,
        recipe=recipe.to_json(), pretrain_recipe=trunk.pretrain_recipe, unfinished=trunk.unfinished,
        skipped=sum(n for n, _ in counts.values()), threads=torch.get_num_threads(),
    )


def init_label(random: bool, init: str, transfer_input: str = "") -> str:
    """The store's `init` of an evaluation: 'random' / 'checkpoint', '+input:NAME' where the transfer input was
    overridden, '+rescale' last where Kraehenbuehl et al.'s rescaling ran."""
    return (("random" if random else "checkpoint") + (f"+input:{transfer_input}" if transfer_input else "")
            + ("+rescale" if init == "rescale" else ""))


RESCALE_IMAGES = 32  # images of the protocol's training split the rescaling statistics are measured on


def rescaled(trunk: Trunk, recipe: Recipe) -> None:
    """Data-dependent rescaling of the trunk, in place, on the protocol's own training images."""
    import torchvision.transforms.v2.functional as TF

    ds = build_dataset(recipe.data, recipe.data.train_split, RESCALE_IMAGES)
    images, _ = collate_skip_corrupt([ds[i] for i in range(min(len(ds), RESCALE_IMAGES))])
    # The trunk runs up to its last tap, whose input size is fixed by the backbone's side: the protocol's images
    # (VOC at their loaded size, 128 px at mini) are resized and centre-cropped to it, as the paper fed crops.
    side = trunk.backbone.image_size
    images = TF.center_crop(TF.resize(images, [side], antialias=True), [side, side])
    rescale(trunk.backbone, trunk.prepare(images), tuple(trunk.backbone.feature_info),
            pretrained=trunk.method != "random")
