"""Pretraining on the fit loop: the task's set-up, atomic checkpoints, exact resume, the results store.

The engine knows only the PretextTask contract (setup, make_batch, param_groups, forward -> {'loss', ...});
it never branches on a task's name. Exact resume on CPU: the data order is a function of (seed, epoch), batch
randomness of (seed, step, rank), the learning rate of the step, the task's set-up state is read back from the
checkpoint, and the global RNG states (dropout) are saved with every checkpoint.
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

from sslbench.backbones.base import backbone_label, build_backbone
from sslbench.checkpoint import FORMAT
from sslbench.config import Recipe, recipe_key
from sslbench.data.build import build_dataset, dataset_label
from sslbench.data.datasets import collate_skip_corrupt
from sslbench.progress import console
from sslbench.registry import TASKS
from sslbench.results import PretrainRow, default_store, now_iso
from sslbench.runlog import MetricLogger
from sslbench.runs import CHECKPOINT, record_run, shared_run_dir
from sslbench.runtime import (
    Dist,
    atomic_torch_save,
    close_distributed,
    code_version,
    init_distributed,
    resolve_device,
    rng_state,
    seed_everything,
    set_rng_state,
    step_generator,
    write_json,
)
from sslbench.tasks.base import PretextTask
from sslbench.training import Context, Fit, epoch_loader, everyone, steps_per_epoch

SETUP_SEED = 104729  # offset of the set-up generator from the recipe's seed: its draws never meet a batch's


@dataclass
class PretrainOutcome:
    run_dir: Path
    checkpoint: Path
    steps: int
    metrics: dict[str, float]
    wall_time: float
    skipped_images: int


class Trainer:
    """One pretraining run: the task on its backbone, its data set, and the fit loop."""

    def __init__(self, recipe: Recipe, run_dir: Path, ctx: Context, dataset: Dataset) -> None:
        self.recipe, self.run_dir, self.ctx, self.dataset = recipe, run_dir, ctx, dataset
        seed_everything(recipe.seed)  # the same modules on every rank; the fit loop gives each rank its own stream
        backbone = build_backbone(recipe.backbone.name, recipe.backbone.cfg)
        self.task: PretextTask = TASKS.get(recipe.name)(recipe.component.cfg, backbone).to(ctx.device)
        if recipe.engine.channels_last:
            self.task = self.task.to(memory_format=torch.channels_last)
        self.setup: dict[str, torch.Tensor] = {}
        per_epoch = steps_per_epoch(len(dataset), recipe.data.batch_size, "data")  # type: ignore[arg-type]
        self.fit = Fit(f"pretrain {recipe.name}", self.task, self.task.param_groups(), recipe, per_epoch, ctx,
                       stop_hint=f"The last good checkpoint is {run_dir / CHECKPOINT} (resume with --resume); "
                                 "try a lower optim.lr or optim.grad_clip")
        self.skipped = 0

    def run_setup(self) -> None:
        """The task's data-dependent set-up, once per run (a resumed run reads it from the checkpoint)."""
        generator = torch.Generator().manual_seed(self.recipe.seed + SETUP_SEED)
        self.setup = self.task.setup(self.dataset, generator)
        self.task.restore(self.setup)

    # -- checkpoints

    def state(self, rng: list[dict[str, Any]]) -> dict[str, Any]:
        r = self.recipe
        return {
            "format": FORMAT,
            "task": r.name,
            "variant": self.task.variant(),
            "transfer_input": self.task.transfer_input(),
            "backbone": {"name": r.backbone.name, "label": backbone_label(r.backbone.name, r.backbone.cfg)},
            "recipe": r.to_json(),
            "version": code_version(),
            "finished": self.fit.step >= self.fit.total,
            "model": self.task.state_dict(),
            "backbone_state": self.task.backbone.state_dict(),
            "setup": self.setup,
            "fit": self.fit.state_dict(),
            "rng": rng,  # every rank's RNG state: its dropout stream continues exactly on resume
            "skipped": self.skipped,
        }

    def save(self) -> Path:
        path = self.run_dir / CHECKPOINT
        rng = everyone(rng_state(), self.ctx.ddp)
        if self.ctx.ddp.is_main:
            atomic_torch_save(self.state(rng), path)
            done = self.fit.step >= self.fit.total
            status = {"state": "finished" if done else "running", "step": self.fit.step}
            write_json(self.run_dir / "status.json", status)
        return path

    def load(self, path: Path) -> None:
        state = torch.load(path, map_location="cpu", weights_only=False)
        ddp = self.ctx.ddp
        self.setup = state.get("setup", {})
        self.task.restore(self.setup)
        self.task.load_state_dict(state["model"])
        # format 1 kept the loop's state at the top level, and one RNG state (rank 0's)
        self.fit.load_state_dict(state.get("fit") or {k: state[k] for k in ("step", "optimizer", "scaler")})
        rng = state["rng"] if isinstance(state["rng"], list) else [state["rng"]]
        if len(rng) == ddp.world:
            set_rng_state(rng[ddp.rank])
        else:  # another number of processes than the run had: each rank a fresh stream of (seed, step, rank)
            torch.manual_seed((self.recipe.seed * 1009 + ddp.rank) * 1_000_003 + self.fit.step)
            if ddp.is_main:
                console.print(f"resuming on {ddp.world} processes a run of {len(rng)}: dropout streams restart")
        self.skipped = state["skipped"]

    # -- the loop

    def train(self) -> PretrainOutcome:
        r, ddp = self.recipe, self.ctx.ddp
        start = time.time()
        per_rank = r.data.batch_size // ddp.world
        self.task.train()

        def batches(epoch: int, first: int) -> Iterable[Any]:
            return epoch_loader(self.dataset, r.data.batch_size, r.seed, epoch, ddp, collate_skip_corrupt,
                                r.data.workers, first)

        def prepare(batch: Any, step: int) -> dict[str, torch.Tensor] | None:
            indices, (images, targets) = batch
            self.skipped += per_rank - images.shape[0]
            if images.shape[0] == 0:  # every file of this batch was unreadable
                return None
            made = self.task.make_batch(images, {**targets, "index": indices}, step_generator(r.seed, step, ddp.rank))
            return {k: v.to(self.ctx.device, non_blocking=True) for k, v in made.items()}

        def checkpoint(step: int) -> None:
            if step % r.engine.checkpoint_every == 0 or step == self.fit.total:
                self.save()

        last = self.fit.run(batches, prepare, lambda model, batch, step: model(batch), checkpoint)
        return PretrainOutcome(self.run_dir, self.run_dir / CHECKPOINT, self.fit.step, last, time.time() - start,
                               self.skipped)


def pretrain(
    recipe: Recipe,
    runs: Path,
    device: str = "auto",
    resume: bool = False,
    progress: bool = True,
    argv: list[str] | None = None,
) -> PretrainOutcome:
    """Pretrain `recipe` into runs/<task>-<timestamp>/ (or continue the latest unfinished run)."""
    dev_type = "cuda" if device != "cpu" and torch.cuda.is_available() else "cpu"
    ddp = init_distributed(dev_type)
    try:
        return _pretrain(recipe, runs, device, resume, progress, argv, ddp)
    finally:
        close_distributed(ddp)


def _pretrain(recipe: Recipe, runs: Path, device: str, resume: bool, progress: bool, argv: list[str] | None,
              ddp: Dist) -> PretrainOutcome:
    dev = resolve_device(device, ddp)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if recipe.engine.threads:
        torch.set_num_threads(recipe.engine.threads)
    # bad data: fail before any files
    dataset = build_dataset(recipe.data, recipe.data.train_split, recipe.data.num_images)
    run_dir = shared_run_dir(runs, recipe.name, ddp, resume)
    ctx = Context(dev, ddp, MetricLogger(run_dir, enabled=False), progress)
    trainer = Trainer(recipe, run_dir, ctx, dataset)
    if resume:
        trainer.load(run_dir / CHECKPOINT)
        if ddp.is_main and progress:
            console.print(f"resuming {run_dir} at step {trainer.fit.step}/{trainer.fit.total}")
    else:
        trainer.run_setup()
        if ddp.is_main:
            record_run(run_dir, recipe, argv)
    ctx.log = MetricLogger(run_dir, enabled=ddp.is_main, purge_step=trainer.fit.step if resume else None)
    try:
        outcome = trainer.train()
    finally:
        ctx.log.close()
    if ddp.enabled:
        dist.barrier()
    if ddp.is_main and trainer.fit.step >= trainer.fit.total:
        _store_pretrain_run(recipe, trainer, outcome, runs)
    return outcome


def _store_pretrain_run(recipe: Recipe, trainer: Trainer, outcome: PretrainOutcome, runs: Path) -> None:
    default_store(runs).add_pretrain_run(PretrainRow(
        run_id=outcome.run_dir.name, method=recipe.name, variant=trainer.task.variant(),
        backbone=backbone_label(recipe.backbone.name, recipe.backbone.cfg), dataset=dataset_label(recipe.data),
        scale=recipe.scale, seed=recipe.seed, version=code_version(), wall_time=outcome.wall_time,
        checkpoint=str(outcome.checkpoint), recipe_key=recipe_key(recipe), recipe=recipe.to_json(),
        metrics=outcome.metrics, created_at=now_iso(),
    ))
