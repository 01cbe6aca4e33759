"""Pretraining on the fit loop: the task's set-up, atomic checkpoints, exact resume, the results store.

The engine knows only the PretextTask contract (setup, make_batch, param_groups, forward -> {'loss', ...});
it never branches on a task's name. Exact resume on CPU: the data order is a function of (seed, epoch), batch
randomness of (seed, step, rank), the learning rate of the step, the task's set-up state is read back from the
checkpoint, and the global RNG states (dropout) are saved with every checkpoint. How a run ends is in its
status (sslbench.runs): finished and stored; interrupted (a checkpoint at the step it stopped) or failed, both
resumable; diverged (a non-finite loss), not resumable; a run that ends before its first checkpoint is removed.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Dataset

from sslbench.backbones.base import backbone_label, build_backbone, upgrade_fc_layout
from sslbench.checkpoint import insane_weights, pretrain_state
from sslbench.config import Recipe, recipe_key
from sslbench.data.build import build_dataset, check_real_data, dataset_label
from sslbench.data.datasets import collate_skip_corrupt
from sslbench.errors import Interrupted, UserError
from sslbench.progress import console
from sslbench.registry import TASKS
from sslbench.results import PretrainRow, check_store, default_store, now_iso
from sslbench.runlog import MetricLogger
from sslbench.runs import (
    CHECKPOINT,
    STATUS,
    Run,
    check_runs_writable,
    open_run,
    pick_resumable,
    read_status,
    record_resume,
    record_run,
)
from sslbench.runtime import (
    Dist,
    atomic_torch_save,
    close_distributed,
    code_version,
    init_distributed,
    load_weights_only,
    resolve_device,
    rng_state,
    seed_everything,
    set_rng_state,
    stop_if_interrupted,
    write_json,
)
from sslbench.tasks.base import PretextTask
from sslbench.training import (
    Context,
    Fit,
    NonFiniteLoss,
    describe_unreadable,
    epoch_loader,
    everyone,
    steps_per_epoch,
)

SETUP_SEED = 104729  # offset of the set-up generator from the recipe's seed: its draws never meet a batch's


@dataclass
class PretrainOutcome:
    run_dir: Path
    checkpoint: Path
    steps: int
    metrics: dict[str, float]
    wall_time: float  # seconds of work over every leg of the run (each leg up to its last checkpoint, then this one)
    skipped_images: int
    unreadable: str = ""  # '3 of 4000 train images unreadable (skipped)'


class Trainer:
    """One pretraining run: the task on its backbone, its data set, and the fit loop."""

    def __init__(self, recipe: Recipe, ctx: Context, dataset: Dataset) -> None:
        self.recipe, self.ctx, self.dataset = recipe, ctx, dataset
        self.run_dir = Path(".")  # set by `pretrain` once the data and the recipe passed their checks
        seed_everything(recipe.seed)  # the same modules on every rank; the fit loop gives each rank its own stream
        backbone = build_backbone(recipe.backbone.name, recipe.backbone.cfg)
        self.task: PretextTask = TASKS.get(recipe.name)(recipe.component.cfg, backbone).to(ctx.device)
        if recipe.engine.channels_last:
            self.task = self.task.to(memory_format=torch.channels_last)
        self.setup: dict[str, torch.Tensor] = {}
        per_epoch = steps_per_epoch(len(dataset), recipe.data.batch_size, "data")  # type: ignore[arg-type]
        self.fit = Fit(f"pretrain {recipe.name}", self.task, self.task.param_groups(), recipe, per_epoch, ctx,
                       stop_hint="")  # `_diverged` says what to do
        self.earlier = 0.0  # seconds of work of the run's earlier legs (read from the checkpoint on resume)
        self.started = time.time()

    def run_setup(self) -> None:
        """The task's data-dependent set-up, once per run (a resumed run reads it from the checkpoint)."""
        generator = torch.Generator().manual_seed(self.recipe.seed + SETUP_SEED)
        self.setup = self.task.setup(self.dataset, generator)
        self.task.restore(self.setup)

    @property
    def wall_time(self) -> float:
        return self.earlier + time.time() - self.started

    # -- checkpoints

    def state(self, rng: list[dict[str, Any]]) -> dict[str, Any]:
        return pretrain_state(self.recipe, self.task, finished=self.fit.step >= self.fit.total, total=self.fit.total,
                              wall_time=self.wall_time, setup=self.setup, fit=self.fit.state_dict(), rng=rng,
                              unreadable=self.ctx.unreadable.state_dict())

    def save(self) -> Path:
        path = self.run_dir / CHECKPOINT
        rng = everyone(rng_state(), self.ctx.ddp)
        if self.ctx.ddp.is_main:
            atomic_torch_save(self.state(rng), path)
            # "finished" only once the result is stored (_store_finished): a run whose store write failed stays
            # resumable, and resuming it stores it
            write_json(self.run_dir / STATUS, {"state": "running", "step": self.fit.step, "total": self.fit.total})
        return path

    def load(self, path: Path) -> None:
        state = load_weights_only(path)
        if not isinstance(state, dict) or "model" not in state:
            raise UserError(f"{path}: not an sslbench pretraining checkpoint; this run cannot be resumed")
        ddp = self.ctx.ddp
        self.setup = state.get("setup", {})
        self.task.restore(self.setup)
        self.task.load_state_dict(upgrade_fc_layout(state["model"]))
        # format 1 kept the loop's state at the top level, and one RNG state (rank 0's)
        self.fit.load_state_dict(state.get("fit") or {k: state[k] for k in ("step", "optimizer", "scaler")})
        rng = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]
        if len(rng) == ddp.world:
            set_rng_state(rng[ddp.rank])
        else:  # another number of processes than the run had: each rank a fresh stream of (seed, step, rank)
            torch.manual_seed((self.recipe.seed * 1009 + ddp.rank) * 1_000_003 + self.fit.step)
            if ddp.is_main:
                console.print(f"resuming on {ddp.world} processes a run of {len(rng)}: dropout streams restart")
        self.ctx.unreadable.load_state_dict(state.get("unreadable", {}))
        self.earlier = float(state.get("wall_time", 0.0))

    # -- the loop

    def train(self) -> PretrainOutcome:
        r, ddp = self.recipe, self.ctx.ddp
        self.task.train()

        def batches(epoch: int, first: int) -> Iterable[Any]:
            return epoch_loader(self.dataset, r.data.batch_size, r.seed, epoch, ddp, collate_skip_corrupt,
                                r.data.workers, first, self.ctx.unreadable, decode_on=self.fit.batch_device)

        fit = self.fit

        def prepare(batch: Any, step: int) -> dict[str, torch.Tensor] | None:
            indices, (images, targets) = batch
            if images.shape[0] == 0:  # every file of this batch was unreadable
                return None
            # uint8 to where the batch is built (engine.batch_on: the loader's CPU or the training device)
            targets = {k: fit.on_batch_device(v) if isinstance(v, torch.Tensor) else v
                       for k, v in {**targets, "index": indices}.items()}
            made = self.task.make_batch(fit.on_batch_device(images), targets, fit.generator(step))
            return {k: v.to(self.ctx.device, non_blocking=True) for k, v in made.items()}

        def checkpoint(step: int) -> None:
            if step % r.engine.checkpoint_every == 0 or step == self.fit.total:
                self.save()

        last = self.fit.run(batches, prepare, lambda model, batch, step: model(batch), checkpoint,
                            on_interrupt=lambda step: self.save())
        counts = self.ctx.unreadable.counts(ddp)
        skipped = sum(n for n, _ in counts.values())
        return PretrainOutcome(self.run_dir, self.run_dir / CHECKPOINT, self.fit.step, last, self.wall_time, skipped,
                               describe_unreadable(counts))


def pretrain(
    recipe: Recipe,
    runs: Path,
    device: str = "auto",
    resume: bool | Path = False,
    progress: bool = True,
    argv: list[str] | None = None,
) -> PretrainOutcome:
    """Pretrain `recipe` into runs/<task>-<timestamp>/. `resume`: True continues the newest resumable run of this
    recipe (sslbench.runs.pick_resumable), a path continues that run (its recipe must be `recipe`)."""
    dev_type = "cuda" if device != "cpu" and torch.cuda.is_available() else "cpu"
    ddp = init_distributed(dev_type)
    try:
        return _pretrain(recipe, runs, device, resume, progress, argv, ddp)
    finally:
        close_distributed(ddp)


def _pretrain(recipe: Recipe, runs: Path, device: str, resume: bool | Path, progress: bool, argv: list[str] | None,
              ddp: Dist) -> PretrainOutcome:
    dev = resolve_device(device, ddp)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if recipe.engine.threads:
        torch.set_num_threads(recipe.engine.threads)
    stop_if_interrupted()
    check_real_data(recipe.data, recipe.scale)
    # Everything that can be refused is checked before any file is written: where the run and its results go,
    # which run a resume continues, the data, the steps rule (in Trainer).
    if ddp.is_main:
        check_runs_writable(runs)
        check_store(runs)
    target: Path | None = None
    if resume and ddp.is_main:  # rank 0 picks the run; open_run tells the others
        if isinstance(resume, bool):
            target = pick_resumable(runs, recipe.name, lambda _: recipe)[0]
        else:
            target = pick_resumable(Path(resume).parent, Path(resume).name, lambda _: recipe, exact=True)[0]
    dataset = build_dataset(recipe.data, recipe.data.train_split, recipe.data.num_images)
    ctx = Context(dev, ddp, MetricLogger(Path("."), enabled=False), progress)
    trainer = Trainer(recipe, ctx, dataset)
    run = open_run(runs, recipe.name, ddp, target)
    trainer.run_dir = run.path
    try:
        outcome = _train(trainer, run, recipe, bool(resume), argv, progress)
        if ddp.is_main:
            _store_finished(recipe, trainer, outcome, runs, run)
        return outcome
    finally:
        run.release()


def _train(trainer: Trainer, run: Run, recipe: Recipe, resumed: bool, argv: list[str] | None,
           progress: bool) -> PretrainOutcome:
    """The run's training, its checkpoints and how it ends (its status, or its removal)."""
    ctx, ddp = trainer.ctx, trainer.ctx.ddp
    saved = resumed  # whether the run has a checkpoint worth keeping
    try:
        if resumed:
            trainer.load(run.path / CHECKPOINT)
            if ddp.is_main:
                record_resume(run.path, recipe, argv)
                if progress:
                    console.print(f"resuming {run.path} at step {trainer.fit.step}/{trainer.fit.total}")
        else:
            trainer.run_setup()
            if ddp.is_main:
                record_run(run.path, recipe, argv)
                run.status("running", step=0, total=trainer.fit.total)
        ctx.log = MetricLogger(run.path, enabled=ddp.is_main, purge_step=trainer.fit.step if resumed else None)
        try:
            outcome = trainer.train()
        finally:
            ctx.log.close()
            saved = saved or (run.path / CHECKPOINT).is_file()
        if ddp.enabled:
            dist.barrier()
        return outcome
    except NonFiniteLoss as exc:
        raise _diverged(exc, run, saved) from None
    except Interrupted as exc:
        where = f"{recipe.name} at step {trainer.fit.step} of {trainer.fit.total}"
        if not saved:
            run.discard()
            raise exc.with_message(f"pretrain {where}, before its first checkpoint: nothing kept") from None
        run.status("interrupted", step=_checkpoint_step(run), total=trainer.fit.total)
        raise exc.with_message(f"pretrain {where}; its checkpoint is in {run.path}: `sslbench pretrain "
                               f"{recipe.name} --resume --runs {run.path.parent}` continues it") from None
    except BaseException as exc:
        if not saved:
            run.discard()
        else:
            run.status("failed", step=_checkpoint_step(run), total=trainer.fit.total,
                       error=f"{type(exc).__name__}: {exc}")
        raise


def _checkpoint_step(run: Run) -> int:
    """The step of the run's checkpoint, as its status recorded it when it was written."""
    return int(read_status(run.path).get("step", 0))


def _diverged(exc: NonFiniteLoss, run: Run, saved: bool) -> NonFiniteLoss:
    """A non-finite loss: the run is marked diverged (never resumed with the recipe that diverged), and the message
    names its checkpoint only if one exists whose weights are finite and sane."""
    step = _checkpoint_step(run) if saved else 0
    if saved and run.ddp.is_main:
        bad = insane_weights(load_weights_only(run.path / CHECKPOINT).get("backbone_state", {}))
        keep = (f"its checkpoint (step {step}) is in {run.path}, usable with `sslbench eval --allow-unfinished`"
                if not bad else f"its checkpoint (step {step}) is no good either ({bad})")
    else:
        keep = "no checkpoint was written before it"
    run.status("diverged", step=step, error=str(exc))
    return NonFiniteLoss(f"{exc}; the run is marked diverged and {keep}. Start a new run with a lower optim.lr "
                         "or with optim.grad_clip")


def _store_finished(recipe: Recipe, trainer: Trainer, outcome: PretrainOutcome, runs: Path, run: Run) -> None:
    """Store the trained run, then mark it finished. A store write that fails or is interrupted leaves the run
    resumable (`--resume` has no step left to train and stores it), never finished without its row."""
    total = trainer.fit.total
    try:
        _store_pretrain_run(recipe, trainer, outcome, runs)
    except Interrupted as exc:
        run.status("interrupted", step=total, total=total)
        resume = f"sslbench pretrain {recipe.name} --resume --runs {runs}"
        raise exc.with_message(f"pretrain {recipe.name} trained all {total} steps but was stopped while storing "
                               f"its result; `{resume}` stores it") from None
    except BaseException as exc:
        run.status("failed", step=total, total=total, error=f"storing the result: {type(exc).__name__}: {exc}")
        raise
    run.status("finished", step=total, total=total)


def _store_pretrain_run(recipe: Recipe, trainer: Trainer, outcome: PretrainOutcome, runs: Path) -> None:
    default_store(runs).add_pretrain_run(PretrainRow(
        run_id=outcome.run_dir.name, method=recipe.name, variant=trainer.task.variant(),
        backbone=backbone_label(recipe.backbone.name, recipe.backbone.cfg), dataset=dataset_label(recipe.data),
        scale=recipe.scale, seed=recipe.seed, version=code_version(), wall_time=outcome.wall_time,
        checkpoint=str(outcome.checkpoint), recipe_key=recipe_key(recipe), recipe=recipe.to_json(),
        metrics=outcome.metrics, created_at=now_iso(), threads=torch.get_num_threads(),
        skipped=outcome.skipped_images,
    ))
