"""The pretraining loop: devices, AMP, DDP, atomic checkpoints, exact resume, logging, progress.

The loop knows only the PretextTask contract (make_batch, forward -> {'loss', ...}); it never
branches on a task's name. Exact resume on CPU: the data order is a function of (seed, epoch), batch
randomness of (seed, step, rank), the learning rate of the step, and the global RNG states (dropout)
are saved with every checkpoint.
"""

from __future__ import annotations

import json
import math
import shlex
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from sslbench.backbones.base import backbone_label, build_backbone
from sslbench.config import OptimConfig, Recipe, ScheduleConfig, recipe_key
from sslbench.data.build import build_dataset, collate_skip_corrupt, dataset_label
from sslbench.errors import UserError
from sslbench.progress import console, progress_bar
from sslbench.registry import TASKS
from sslbench.runtime import (
    Dist, atomic_torch_save, close_distributed, code_version, init_distributed, resolve_device, rng_state, seed_everything,
    set_rng_state, step_generator, write_json,
)

CHECKPOINT = "checkpoint.pt"


class NonFiniteLoss(UserError):
    pass


# ---------------------------------------------------------------- optimisation


def build_optimizer(params: Any, cfg: OptimConfig) -> torch.optim.Optimizer:
    if cfg.name == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    cls = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
    return cls(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)


def lr_at(step: int, steps_per_epoch: int, base: float, cfg: ScheduleConfig) -> float:
    """Learning rate of an optimizer step: a pure function of the step, so resume needs no scheduler state."""
    epoch = step / max(1, steps_per_epoch)
    if cfg.warmup_epochs and epoch < cfg.warmup_epochs:
        return base * (epoch + 1 / max(1, steps_per_epoch)) / cfg.warmup_epochs
    if cfg.kind == "constant":
        return base
    if cfg.kind == "step":
        return base * cfg.gamma ** int(epoch // cfg.step_size)
    if cfg.kind == "multistep":
        return base * cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, epoch / max(1, cfg.epochs))))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


# ---------------------------------------------------------------- data order


class EpochBatches(Sampler[list[int]]):
    """This rank's share of each global batch of a seeded (seed, epoch) permutation, from batch `start` on.

    Rank r of W takes rows [r*B/W, (r+1)*B/W) of every global batch of size B, so W processes see
    exactly the global batches one process would.
    """

    def __init__(self, n: int, global_batch: int, seed: int, epoch: int, ddp: Dist, start: int = 0) -> None:
        if global_batch % ddp.world:
            raise UserError(f"data.batch_size {global_batch} must be divisible by the {ddp.world} DDP processes")
        self.n, self.batch, self.seed, self.epoch, self.ddp, self.start = n, global_batch, seed, epoch, ddp, start

    def __len__(self) -> int:
        return self.n // self.batch - self.start

    def __iter__(self) -> Iterator[list[int]]:
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 7919 + self.epoch))
        per_rank = self.batch // self.ddp.world
        for b in range(self.start, self.n // self.batch):
            first = b * self.batch + self.ddp.rank * per_rank
            yield order[first : first + per_rank].tolist()


# ---------------------------------------------------------------- run directory


def new_run_dir(runs: Path, name: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        path = runs / (f"{name}-{stamp}" + (f"-{i}" if i else ""))
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a run directory under {runs}")


def latest_unfinished(runs: Path, name: str) -> Path:
    candidates = sorted(p for p in runs.glob(f"{name}-*") if (p / CHECKPOINT).exists())
    for path in reversed(candidates):
        status = json.loads((path / "status.json").read_text()).get("state") if (path / "status.json").exists() else ""
        if status != "finished":
            return path
    raise UserError(
        f"--resume: no unfinished {name} run with a checkpoint under {runs}; start one without --resume"
    )


def record_run(run_dir: Path, recipe: Recipe, argv: list[str] | None) -> None:
    (run_dir / "recipe.json").write_text(recipe.to_json() + "\n")
    write_json(run_dir / "meta.json", {
        "version": code_version(), "seed": recipe.seed, "scale": recipe.scale,
        "command": shlex.join(argv if argv is not None else sys.argv), "torch": torch.__version__,
    })


# ---------------------------------------------------------------- the loop


@dataclass
class PretrainOutcome:
    run_dir: Path
    checkpoint: Path
    steps: int
    metrics: dict[str, float]
    wall_time: float
    skipped_images: int


class Trainer:
    def __init__(self, recipe: Recipe, run_dir: Path, device: torch.device, ddp: Dist, progress: bool,
                 dataset: Dataset) -> None:
        self.recipe, self.run_dir, self.device, self.ddp = recipe, run_dir, device, ddp
        self.show = progress and ddp.is_main
        seed_everything(recipe.seed + ddp.rank)
        self.dataset = dataset
        backbone = build_backbone(recipe.backbone.name, recipe.backbone.cfg)
        self.task = TASKS.get(recipe.name)(recipe.method.cfg, backbone).to(device)
        if recipe.engine.channels_last:
            self.task = self.task.to(memory_format=torch.channels_last)
        self.model: nn.Module = self.task
        if ddp.enabled:
            if device.type == "cuda" and recipe.engine.sync_bn:
                self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            self.model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None
            )
        self.optimizer = build_optimizer(self.task.parameters(), recipe.optim)
        self.steps_per_epoch = len(self.dataset) // recipe.data.batch_size
        if self.steps_per_epoch == 0:
            raise UserError(
                f"data: {len(self.dataset)} images is less than one batch of {recipe.data.batch_size}; "
                "lower data.batch_size or add images"
            )
        total = recipe.schedule.epochs * self.steps_per_epoch
        self.total_steps = min(total, recipe.schedule.max_steps) if recipe.schedule.max_steps else total
        self.step = 0
        self.amp_dtype = self._amp_dtype()
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.skipped = 0
        self.last: dict[str, float] = {}

    def _amp_dtype(self) -> torch.dtype | None:
        amp = self.recipe.engine.amp
        if self.device.type != "cuda" or amp == "off":
            return None
        return torch.float16 if amp == "fp16" else torch.bfloat16

    # -- checkpoints

    def state(self) -> dict[str, Any]:
        r = self.recipe
        return {
            "format": "sslbench-pretrain-1",
            "task": r.name,
            "variant": TASKS.get(r.name).variant(r.method.cfg),
            "backbone": {"name": r.backbone.name, "label": backbone_label(r.backbone.name, r.backbone.cfg)},
            "recipe": r.to_json(),
            "version": code_version(),
            "step": self.step,
            "finished": self.step >= self.total_steps,
            "model": self.task.state_dict(),
            "backbone_state": self.task.backbone.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "skipped": self.skipped,
        }

    def save(self) -> Path:
        path = self.run_dir / CHECKPOINT
        if self.ddp.is_main:
            atomic_torch_save(self.state(), path)
            write_json(self.run_dir / "status.json", {"state": "finished" if self.step >= self.total_steps else "running", "step": self.step})
        return path

    def load(self, path: Path) -> None:
        state = torch.load(path, map_location="cpu", weights_only=False)
        self.task.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.step, self.skipped = state["step"], state["skipped"]

    # -- loop

    def fit(self, stop_at: int | None = None) -> PretrainOutcome:
        """Train to the end of the schedule; `stop_at` ends early without a checkpoint (simulates a crash)."""
        from sslbench.runlog import MetricLogger

        r = self.recipe
        start = time.time()
        log = MetricLogger(self.run_dir, enabled=self.ddp.is_main, purge_step=self.step)
        self.model.train()
        per_rank = r.data.batch_size // self.ddp.world
        with progress_bar(f"pretrain {r.name}", self.total_steps, self.show) as advance:
            advance(self.step)
            while self.step < self.total_steps:
                epoch, batch_in_epoch = divmod(self.step, self.steps_per_epoch)
                sampler = EpochBatches(len(self.dataset), r.data.batch_size, r.seed, epoch, self.ddp, batch_in_epoch)
                # Its own generator: a DataLoader otherwise draws its worker seed from the global RNG, which
                # would shift the dropout stream after a resume in the middle of an epoch.
                loader = DataLoader(self.dataset, batch_sampler=sampler, num_workers=r.data.workers,
                                    collate_fn=collate_skip_corrupt,
                                    generator=torch.Generator().manual_seed(r.seed * 7919 + epoch))
                for images, _ in loader:
                    self.skipped += per_rank - images.shape[0]
                    if images.shape[0] == 0:  # every file of this batch was unreadable
                        self.step += 1
                        advance(1)
                        continue
                    if stop_at is not None and self.step >= stop_at:
                        log.close()
                        return self._outcome(start)
                    t0 = time.time()
                    out = self.train_step(images)
                    self.step += 1
                    rate = images.shape[0] * self.ddp.world / max(1e-9, time.time() - t0)
                    self.last = {k: float(v) for k, v in out.items()}
                    if self.step % r.engine.log_every == 0 or self.step == self.total_steps:
                        log.write(self.step, {**self.last, "lr": self.optimizer.param_groups[0]["lr"], "images_per_s": rate})
                    if self.step % r.engine.checkpoint_every == 0 or self.step == self.total_steps:
                        self.save()
                    advance(1, " ".join(f"{k} {v:.3f}" for k, v in self.last.items()))
                    if self.step >= self.total_steps:
                        break
        log.close()
        return self._outcome(start)

    def train_step(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        r = self.recipe
        batch = self.task.make_batch(images, step_generator(r.seed, self.step, self.ddp.rank))
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        set_lr(self.optimizer, lr_at(self.step, self.steps_per_epoch, r.optim.lr, r.schedule))
        autocast = torch.autocast("cuda", dtype=self.amp_dtype) if self.amp_dtype else nullcontext()
        with autocast:
            out = self.model(batch)
        loss = out["loss"]
        if not torch.isfinite(loss.detach()):
            raise NonFiniteLoss(
                f"loss became {loss.item()} at step {self.step + 1}; stopped. The last good checkpoint is "
                f"{self.run_dir / CHECKPOINT} (resume with --resume); try a lower optim.lr or optim.grad_clip"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if r.optim.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.task.parameters(), r.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        out = {k: v.detach() for k, v in out.items()}
        if self.ddp.enabled:  # log the global mean, not rank 0's share
            for v in out.values():
                dist.all_reduce(v)
                v /= self.ddp.world
        return out

    def _outcome(self, start: float) -> PretrainOutcome:
        return PretrainOutcome(self.run_dir, self.run_dir / CHECKPOINT, self.step, self.last,
                               time.time() - start, self.skipped)


def pretrain(
    recipe: Recipe,
    runs: Path,
    device: str = "auto",
    resume: bool = False,
    progress: bool = True,
    argv: list[str] | None = None,
    stop_at: int | None = None,
) -> PretrainOutcome:
    """Pretrain `recipe` into runs/<task>-<timestamp>/ (or continue the latest unfinished run)."""
    dev_type = "cuda" if device != "cpu" and torch.cuda.is_available() else "cpu"
    ddp = init_distributed(dev_type)
    try:
        return _pretrain(recipe, runs, device, resume, progress, argv, stop_at, ddp)
    finally:
        close_distributed(ddp)


def _pretrain(recipe: Recipe, runs: Path, device: str, resume: bool, progress: bool, argv: list[str] | None,
              stop_at: int | None, ddp: Dist) -> PretrainOutcome:
    dev = resolve_device(device, ddp)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if recipe.engine.threads:
        torch.set_num_threads(recipe.engine.threads)
    dataset = build_dataset(recipe.data, recipe.data.train_split, recipe.data.num_images)  # bad data: fail before any files
    run_dir = _run_dir(runs, recipe.name, resume, ddp)
    trainer = Trainer(recipe, run_dir, dev, ddp, progress, dataset)
    if resume:
        trainer.load(run_dir / CHECKPOINT)
        if ddp.is_main and progress:
            console.print(f"resuming {run_dir} at step {trainer.step}/{trainer.total_steps}")
    elif ddp.is_main:
        record_run(run_dir, recipe, argv)
    outcome = trainer.fit(stop_at=stop_at)
    if ddp.enabled:
        dist.barrier()
    if ddp.is_main and trainer.step >= trainer.total_steps:
        _store_pretrain_run(recipe, outcome, runs)
    return outcome


def _store_pretrain_run(recipe: Recipe, outcome: PretrainOutcome, runs: Path) -> None:
    from sslbench.results import PretrainRow, default_store, now_iso

    default_store(runs).add_pretrain_run(PretrainRow(
        run_id=outcome.run_dir.name, method=recipe.name, variant=TASKS.get(recipe.name).variant(recipe.method.cfg),
        backbone=backbone_label(recipe.backbone.name, recipe.backbone.cfg), dataset=dataset_label(recipe.data),
        scale=recipe.scale, seed=recipe.seed, version=code_version(), wall_time=outcome.wall_time,
        checkpoint=str(outcome.checkpoint), recipe_key=recipe_key(recipe), recipe=recipe.to_json(),
        metrics=outcome.metrics, created_at=now_iso(),
    ))


def _run_dir(runs: Path, name: str, resume: bool, ddp: Dist) -> Path:
    """Rank 0 picks (or creates) the directory; other ranks receive its name."""
    path = [None]
    if ddp.is_main:
        path[0] = str(latest_unfinished(runs, name) if resume else new_run_dir(runs, name))  # type: ignore[call-overload]
    if ddp.enabled:
        dist.broadcast_object_list(path, src=0)
    return Path(path[0])  # type: ignore[arg-type]
