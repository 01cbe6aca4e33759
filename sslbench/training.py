"""The one training loop: pretraining and every protocol train through `Fit`.

`Fit` owns what every training run shares: the optimizer over the caller's parameter groups, the learning
rate of every step (a pure function of the step, so resume needs no scheduler state), the steps rule,
autocast on CUDA, DDP under torchrun (each rank its slice of every global batch; BatchNorm statistics of the
global batch, `GlobalBatchNorm` where torch's SyncBatchNorm cannot run), the non-finite stop, gradient
clipping, the logging cadence and the progress bar. What differs between callers comes in as three functions:
`batches(epoch, start)`, this rank's batches of an epoch from batch `start` on; `prepare(batch, step)`, the data
work of a step without the model (None: nothing to learn from this batch; under DDP every rank then skips the
step); and `loss(model, prepared, step)`, the loss dict of the model on it.

The seeded loaders live here too: the data order of an epoch is a pure function of (seed, epoch)
(`EpochBatches`), evaluation reads this rank's strided shard (`shard_loader`) and `gather` puts every rank's
results back in data set order, so one process and W processes compute the same metrics.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import DataLoader, Dataset, Sampler

from sslbench.config import OptimConfig, Recipe, ScheduleConfig
from sslbench.data.datasets import decode_deferred
from sslbench.errors import Interrupted, UserError
from sslbench.progress import progress_bar
from sslbench.runlog import MetricLogger
from sslbench.runtime import (
    Dist,
    batch_device,
    deferred_interrupts,
    epoch_seed,
    item_seed,
    pending_interrupt,
    step_generator,
    to_device,
)


class NonFiniteLoss(UserError):
    pass


class Unreadable:
    """The items a run's loaders could not read (a truncated JPEG, a damaged mask), distinct per split, counted
    in the main process from what each batch asked for and what it got back (so loader workers count too)."""

    def __init__(self) -> None:
        self.missed: dict[str, set[int]] = {}
        self.asked: dict[str, set[int]] = {}

    def add(self, what: str, asked: Sequence[int], got: Sequence[int]) -> None:
        self.asked.setdefault(what, set()).update(asked)
        self.missed.setdefault(what, set()).update(set(asked) - set(got))

    def state_dict(self) -> dict[str, Any]:
        """What was missed and what was asked for (as int64 tensors: an ImageNet epoch is 1.28M indices)."""
        return {"missed": {k: sorted(v) for k, v in self.missed.items()},
                "asked": {k: torch.tensor(sorted(v), dtype=torch.int64) for k, v in self.asked.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if "missed" not in state:  # the first format: {split: missed indices}
            state = {"missed": state, "asked": state}
        for k, v in state["missed"].items():
            self.missed.setdefault(k, set()).update(v)
        for k, v in state.get("asked", {}).items():
            self.asked.setdefault(k, set()).update(v.tolist() if isinstance(v, torch.Tensor) else v)

    def counts(self, ddp: Dist) -> dict[str, tuple[int, int]]:
        """{split: (unreadable, items asked for)} over every rank."""
        parts = everyone((self.missed, self.asked), ddp)
        out: dict[str, tuple[int, int]] = {}
        for what in sorted({w for missed, _ in parts for w in missed}):
            missed = set().union(*(m.get(what, set()) for m, _ in parts))
            asked = set().union(*(a.get(what, set()) for _, a in parts))
            out[what] = (len(missed), len(asked))
        return out


def describe_unreadable(counts: dict[str, tuple[int, int]]) -> str:
    """'1 of 60 test images unreadable (skipped)', '' if none."""
    parts = [f"{n} of {m} {what} images" for what, (n, m) in counts.items() if n]
    return f"{', '.join(parts)} unreadable (skipped)" if parts else ""


@dataclass
class Context:
    """Where a training run runs: device, process group, metrics log, progress bars (main rank only), and the
    tally of unreadable items its loaders met."""

    device: torch.device
    ddp: Dist
    log: MetricLogger
    progress: bool
    unreadable: Unreadable = field(default_factory=Unreadable)

    @property
    def show(self) -> bool:
        return self.progress and self.ddp.is_main


# ---------------------------------------------------------------- optimisation


ParamGroups = list[dict[str, Any]]  # [{"params": [...], "lr_scale": x (default 1)}, ...]


def trainable(module: nn.Module) -> ParamGroups:
    """One parameter group of every parameter of `module` that requires a gradient."""
    return [{"params": [p for p in module.parameters() if p.requires_grad]}]


def build_optimizer(groups: ParamGroups, cfg: OptimConfig) -> torch.optim.Optimizer:
    fused = {"fused": True} if cfg.fused else {}
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay, **fused)
    cls = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
    return cls(groups, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, **fused)


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
        passed = sum(step >= m for m in cfg.milestone_steps) if cfg.milestone_steps else \
            sum(epoch >= m for m in cfg.milestones)
        if cfg.lr_factors:
            return base * (cfg.lr_factors[passed - 1] if passed else 1.0)
        return base * cfg.gamma**passed
    return base * 0.5 * (1 + math.cos(math.pi * min(1.0, epoch / max(1, cfg.epochs))))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def steps_per_epoch(n: int, batch: int, what: str) -> int:
    """The one steps rule: an epoch is the full global batches of its data, the last partial batch dropped,
    so that every step sees `batch` items and DDP ranks split every batch evenly. Fewer items than one batch
    is an error, before any work."""
    if n < batch:
        raise UserError(f"{what}: {n} training items is less than one batch of {batch}; "
                        "lower data.batch_size or raise data.num_images")
    return n // batch


def total_steps(per_epoch: int, cfg: ScheduleConfig) -> int:
    total = cfg.epochs * per_epoch
    return min(total, cfg.max_steps) if cfg.max_steps else total


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
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch)))
        per_rank = self.batch // self.ddp.world
        for b in range(self.start, self.n // self.batch):
            first = b * self.batch + self.ddp.rank * per_rank
            yield order[first : first + per_rank].tolist()


class _Indexed(Dataset):
    """(index, item) pairs: every batch knows which items it holds. In a training epoch (`draw` = (seed, epoch)) a
    data set with random train-time crops (a `draw(i, generator)` method) draws item i from its own generator."""

    def __init__(self, ds: Dataset, draw: tuple[int, int] | None = None) -> None:
        self.ds, self.draw = ds, draw if callable(getattr(ds, "draw", None)) else None

    def __len__(self) -> int:
        return len(self.ds)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[int, Any]:
        if self.draw is None:
            return i, self.ds[i]
        return i, self.ds.draw(i, torch.Generator().manual_seed(item_seed(*self.draw, i)))  # type: ignore[attr-defined]


class _IndexedCollate:
    """Collates (index, item) pairs into (indices [B], collate(items)); unreadable items (None) are dropped
    with their indices, so indices and items stay aligned."""

    def __init__(self, collate: Callable[[list[Any]], Any]) -> None:
        self.collate = collate

    def __call__(self, pairs: list[tuple[int, Any]]) -> tuple[Tensor, Any]:
        kept = [(i, item) for i, item in pairs if item is not None]
        return torch.tensor([i for i, _ in kept], dtype=torch.int64), self.collate([item for _, item in kept])


class Counted:
    """A loader's (indices, batch) pairs, each batch's unreadable items added to `unreadable` under `what`; a pass
    in which no item at all could be read is an error (a data set of damaged files is not a result)."""

    def __init__(self, loader: DataLoader, batches: Sequence[list[int]], unreadable: Unreadable | None,
                 what: str, decode_on: torch.device | None = None) -> None:
        self.loader, self.batches, self.unreadable, self.what = loader, batches, unreadable, what
        self.decode_on = decode_on or torch.device("cpu")  # where a batch of files' bytes is decoded

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[Tensor, Any]]:
        asked = got = 0
        first_missing: int | None = None
        for wanted, (indices, batch) in zip(self.batches, self.loader):
            indices, batch = decode_deferred(indices, batch, self.decode_on)  # data.decode = "device"
            kept = indices.tolist()
            asked, got = asked + len(wanted), got + len(kept)
            if first_missing is None and len(kept) < len(wanted):
                first_missing = min(set(wanted) - set(kept))
            if self.unreadable is not None:
                self.unreadable.add(self.what, wanted, kept)
            yield indices, batch
        if asked and not got:
            raise UserError(f"{self.what} data: none of the {asked} items read could be decoded (item "
                            f"{first_missing} first); check the files with `sslbench data check NAME=PATH`")


def epoch_loader(ds: Dataset, global_batch: int, seed: int, epoch: int, ddp: Dist, collate: Callable[[list[Any]], Any],
                 workers: int = 0, start: int = 0, unreadable: Unreadable | None = None,
                 what: str = "train", decode_on: torch.device | None = None) -> Counted:
    """The seeded training loader: this rank's (indices, batch) of every global batch of epoch `epoch`."""
    sampler = EpochBatches(len(ds), global_batch, seed, epoch, ddp, start)  # type: ignore[arg-type]
    # Its own generator: a DataLoader otherwise draws its worker seed from the global RNG, which would shift the
    # dropout stream after a resume in the middle of an epoch.
    loader = DataLoader(_Indexed(ds, (seed, epoch)), batch_sampler=sampler, num_workers=workers,
                        collate_fn=_IndexedCollate(collate),
                        generator=torch.Generator().manual_seed(epoch_seed(seed, epoch)))
    return Counted(loader, list(sampler), unreadable, what, decode_on)


def shard_loader(ds: Dataset, batch: int, ddp: Dist, collate: Callable[[list[Any]], Any], workers: int = 0,
                 unreadable: Unreadable | None = None, what: str = "test") -> Counted:
    """The evaluation loader: (indices, batch) of this rank's strided shard (items r, r+W, r+2W, ...), in order."""
    indices = list(range(ddp.rank, len(ds), ddp.world))  # type: ignore[arg-type]
    batches = [indices[i : i + batch] for i in range(0, len(indices), batch)]
    # Its own generator: without one a DataLoader draws its worker seed from the global RNG, so how many loaders
    # ran before would shift the model's initialisation and dropout.
    loader = DataLoader(_Indexed(ds), batch_sampler=batches, num_workers=workers, collate_fn=_IndexedCollate(collate),
                        generator=torch.Generator())
    return Counted(loader, batches, unreadable, what)


def gather(indices: Sequence[int] | Tensor, values: Sequence[Any], ddp: Dist) -> list[Any]:
    """Every rank's (index, value) pairs, on every rank, in index order: the results of a sharded evaluation
    in data set order, so that metrics are those one process computes."""
    pairs = list(zip([int(i) for i in indices], values))
    if ddp.enabled:
        parts: list[Any] = [None] * ddp.world
        dist.all_gather_object(parts, pairs)
        pairs = [p for part in parts for p in part]
    return [v for _, v in sorted(pairs, key=lambda p: p[0])]


def everyone(obj: Any, ddp: Dist) -> list[Any]:
    """[rank 0's obj, rank 1's, ...] on every rank ([obj] in one process)."""
    if not ddp.enabled:
        return [obj]
    parts: list[Any] = [None] * ddp.world
    dist.all_gather_object(parts, obj)
    return parts


def gather_rows(indices: Sequence[Tensor], chunks: Sequence[Tensor], ddp: Dist) -> Tensor:
    """`gather` for tensor rows: this rank's per-batch chunks [n_b, ...] with their data set indices [n_b] ->
    every rank's rows in index order, one tensor (a rank with no rows, an empty shard, adds none; no rows at
    all: an empty tensor)."""
    parts: list[Any] = [([i.cpu() for i in indices], [c.cpu() for c in chunks])]
    if ddp.enabled:
        parts = [None] * ddp.world
        dist.all_gather_object(parts, ([i.cpu() for i in indices], [c.cpu() for c in chunks]))
    index = [i for part in parts for i in part[0]]
    rows = [c for part in parts for c in part[1]]
    if not rows:
        return torch.zeros(0)
    return torch.cat(rows)[torch.argsort(torch.cat(index))]


def all_sum(t: Tensor, ddp: Dist, device: torch.device) -> Tensor:
    """The sum of `t` over the ranks (a confusion matrix, counts), on every rank; reduced on `device` (NCCL
    reduces CUDA tensors only), returned where `t` was."""
    if not ddp.enabled:
        return t
    total = t.to(device)
    dist.all_reduce(total)
    return total.to(t.device)


# ---------------------------------------------------------------- devices, AMP, DDP


def amp_dtype(device: torch.device, amp: str) -> torch.dtype | None:
    """bf16 (or fp16) autocast on CUDA unless amp = "off"; none on the CPU."""
    if device.type != "cuda" or amp == "off":
        return None
    return torch.float16 if amp == "fp16" else torch.bfloat16


def autocast(device: torch.device, amp: str | torch.dtype | None) -> AbstractContextManager[Any]:
    dtype = amp if isinstance(amp, torch.dtype) or amp is None else amp_dtype(device, amp)
    return torch.autocast("cuda", dtype=dtype) if dtype is not None and device.type == "cuda" else nullcontext()


class _GatherRows(torch.autograd.Function):
    """[D] on every rank -> [W, D] (rank r's in row r), differentiable: a row's gradient is the sum over ranks."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:  # type: ignore[override]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.stack(parts)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[dist.get_rank()]


class GlobalBatchNorm(_BatchNorm):
    """BatchNorm whose training-mode statistics are those of the global batch over all DDP ranks, on any device
    (torch's SyncBatchNorm runs on CUDA only). Each rank's count, mean and centred sum of squares are
    all-gathered (differentiably) and combined (Chan et al.'s parallel variance), so the gradients are those of
    BatchNorm over the concatenated batch. Eval mode, or no process group: plain BatchNorm."""

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input, got {x.dim()}-D")

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        dims = [0, *range(2, x.dim())]
        var, mean = torch.var_mean(x, dims, correction=0)
        count = x.new_full((1,), x.numel() // x.shape[1])
        c = x.shape[1]
        stats = _GatherRows.apply(torch.cat([count, mean, var * count]))  # [W, 1 + 2C]: every rank's
        counts, means, m2 = stats[:, :1], stats[:, 1 : c + 1], stats[:, c + 1 :]
        total = counts.sum()
        g_mean = (counts * means).sum(0) / total
        g_var = (m2 + counts * (means - g_mean) ** 2).sum(0) / total
        if self.track_running_stats and self.running_mean is not None and self.running_var is not None:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)  # type: ignore[union-attr, operator]
                factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = g_var * total / (total - 1).clamp_min(1)
                self.running_mean.mul_(1 - factor).add_(factor * g_mean)
                self.running_var.mul_(1 - factor).add_(factor * unbiased)
        shape = (1, c) + (1,) * (x.dim() - 2)
        y = (x - g_mean.view(shape)) * torch.rsqrt(g_var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def global_batchnorm(module: nn.Module) -> nn.Module:
    """`module` with every BatchNorm replaced by a GlobalBatchNorm sharing its parameters and buffers."""
    out = module
    if isinstance(module, _BatchNorm) and not isinstance(module, GlobalBatchNorm):
        out = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        if module.affine:
            out.weight, out.bias = module.weight, module.bias
        out.running_mean, out.running_var = module.running_mean, module.running_var
        out.num_batches_tracked = module.num_batches_tracked
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, global_batchnorm(child))
    return out


def distributed(module: nn.Module, device: torch.device, ddp: Dist, sync_bn: bool) -> nn.Module:
    """`module` as it trains under torchrun: BatchNorm over the global batch (sync_bn) and DistributedDataParallel;
    unchanged in a single process."""
    if not ddp.enabled:
        return module
    if sync_bn:
        module = nn.SyncBatchNorm.convert_sync_batchnorm(module) if device.type == "cuda" else global_batchnorm(module)
    return nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


# ---------------------------------------------------------------- the loop

Prepare = Callable[[Any, int], Any]  # (a loader batch, step) -> what the loss takes, or None: nothing to learn from
Loss = Callable[[nn.Module, Any, int], "dict[str, Tensor]"]  # (model, prepared batch, step) -> {"loss", logged...}


def agree(ok: bool, ddp: Dist) -> bool:
    """Whether `ok` holds on every rank (one all-reduce under DDP): ranks skip a step or stop together."""
    if not ddp.enabled:
        return ok
    flag = torch.tensor([1.0 if ok else 0.0])
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


class Fit:
    """One training run on the fit loop; `run` trains to the end of the schedule (or continues from `step`)."""

    def __init__(self, name: str, module: nn.Module, groups: ParamGroups, recipe: Recipe, per_epoch: int,
                 ctx: Context, stop_hint: str | None = None) -> None:
        self.name, self.recipe, self.ctx, self.stop_hint = name, recipe, ctx, stop_hint
        self.module = module
        self.model = distributed(module, ctx.device, ctx.ddp, recipe.engine.sync_bn)  # what the loss calls
        if recipe.engine.compile:  # the parameters stay the module's: checkpoints and optimizer see no wrapper
            self.model = torch.compile(self.model)
        self.optimizer = build_optimizer(groups, recipe.optim)
        self.params = [p for group in self.optimizer.param_groups for p in group["params"]]
        self.per_epoch = per_epoch
        self.total = total_steps(per_epoch, recipe.schedule)
        self.amp = amp_dtype(ctx.device, recipe.engine.amp)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp == torch.float16)
        self.step = 0
        self.trained = 0  # steps that had a batch to learn from (none at all: nothing was trained, an error)
        self.lr = recipe.optim.lr  # the schedule's rate of the last step (groups scale it by their lr_scale)
        self.last: dict[str, float] = {}
        if ctx.ddp.enabled:  # every rank built the same modules from the recipe's seed; from here its own stream
            torch.manual_seed(recipe.seed * 1009 + ctx.ddp.rank)

    @property
    def batch_device(self) -> torch.device:
        return batch_device(self.recipe.engine.batch_on, self.ctx.device)

    def on_batch_device(self, tensor: Tensor) -> Tensor:
        """A loader's tensor where this fit builds its batches (pinned, non-blocking to a GPU)."""
        return to_device(tensor, self.batch_device)

    def generator(self, step: int) -> torch.Generator:
        """Step `step`'s batch randomness, on the batch device: a pure function of (seed, step, rank)."""
        return step_generator(self.recipe.seed, step, self.ctx.ddp.rank, self.batch_device)

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "trained": self.trained, "last": dict(self.last),
                "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = state["step"]
        self.trained = state.get("trained", self.step)
        self.last = dict(state.get("last") or {})
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])

    def run(self, batches: Callable[[int, int], Iterable[Any]], prepare: Prepare, loss: Loss,
            on_step: Callable[[int], None] | None = None,
            on_interrupt: Callable[[int], None] | None = None) -> dict[str, float]:
        """Train until the schedule's last step. Per step: `prepare` builds the batch (data work, no model;
        None skips the step, on every rank alike), `loss` runs the model under autocast, then backward, clip,
        optimizer step; `on_step(step)` after every step (checkpoints). A SIGINT / SIGTERM during a step (with
        the CLI's handlers) lets the step finish, calls `on_interrupt(step)` (a checkpoint) and raises
        Interrupted. Returns the last step's logged values (global means under DDP)."""
        every = self.recipe.engine.log_every
        # Deferred for the whole loop, the loader's next batch included: a signal while a batch loads also
        # waits for the end of the step. One during the last step lets the run finish (the caller stores it);
        # the signal stays pending for whatever comes next.
        first_compiled = self.recipe.engine.compile
        with progress_bar(self.name, self.total, self.ctx.show) as advance, deferred_interrupts():
            advance(self.step)
            while self.step < self.total:
                epoch, start = divmod(self.step, self.per_epoch)
                before = self.step
                for ready in self._prepared(batches(epoch, start), prepare):
                    tick = time.time()
                    out = self._compiling_step(ready, loss) if self.recipe.engine.compile else self._step(ready, loss)
                    if first_compiled and out is not None:  # this process's first trained step compiled the model
                        self.ctx.log.write(self.step + 1, {"compile_s": time.time() - tick})
                        first_compiled = False
                    self.step += 1
                    if out is not None:
                        self.trained += 1
                        self.last = out
                        if self.step % every == 0 or self.step == self.total:
                            rate = self.recipe.data.batch_size / max(1e-9, time.time() - tick)
                            self.ctx.log.write(self.step, {**out, "lr": self.lr, "images_per_s": rate})
                    if on_step is not None:
                        on_step(self.step)
                    advance(1, " ".join(f"{k} {v:.3f}" for k, v in self.last.items()))
                    if self.step >= self.total:
                        break
                    self._stop_if_asked(on_interrupt)
                if self.step < self.total and self.step != (epoch + 1) * self.per_epoch:
                    raise RuntimeError(f"{self.name}: epoch {epoch} gave {self.step - before} of the "
                                       f"{self.per_epoch - start} batches left in it")
        if not self.trained:
            raise UserError(f"{self.name}: none of its {self.total} steps had a readable batch, so nothing was "
                            "trained; check the data with `sslbench data check NAME=PATH`")
        return self.last

    def _prepared(self, batches: Iterable[Any], prepare: Prepare) -> Iterator[Any]:
        """Each batch of the epoch prepared for its step. With engine.prefetch, batch s + 1 is loaded and prepared
        in a background thread while step s trains (torch's kernels release the GIL): the step numbers are the
        same, and a batch is a pure function of its step (its generator is step_generator's), so the bits are too.
        Leaving early (the schedule's last step, an interrupt) waits for the batch under way, then drops it."""
        if not self.recipe.engine.prefetch:
            for batch in batches:
                yield prepare(batch, self.step)  # lazily: self.step is the step this batch trains
            return
        source, step, end = iter(batches), self.step, object()

        def load(at: int) -> Any:
            batch = next(source, end)
            return end if batch is end else prepare(batch, at)

        with ThreadPoolExecutor(1, thread_name_prefix="sslbench-prefetch") as pool:
            pending = pool.submit(load, step)
            while True:
                ready = pending.result()  # an error in loading or make_batch is raised here, in the loop
                if ready is end:
                    return
                step += 1
                pending = pool.submit(load, step)
                yield ready

    def _stop_if_asked(self, on_interrupt: Callable[[int], None] | None) -> None:
        """After a step: a signal that arrived during it (on any rank) stops the run on every rank."""
        signum = pending_interrupt()
        if agree(signum is None, self.ctx.ddp):
            return
        if on_interrupt is not None:
            on_interrupt(self.step)
        raise Interrupted(signum or signal.SIGINT)

    def _compiling_step(self, batch: Any, loss: Loss) -> dict[str, float] | None:
        """A step under engine.compile (the first compiles, a new batch shape recompiles): a compiler that fails (no
        C++ compiler for inductor, no Triton for the GPU, an op dynamo cannot trace) is one line that names the way
        out, not a traceback."""
        from torch._dynamo.exc import TorchDynamoException

        try:
            return self._step(batch, loss)
        except TorchDynamoException as exc:
            cause = getattr(exc, "inner_exception", None) or exc  # BackendCompilerFailed wraps the compiler's error
            lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
            first = next((line for line in lines if not line.endswith("raised:")), "") or type(cause).__name__
            raise UserError(f"{self.name}: engine.compile: torch.compile failed at step {self.step + 1} "
                            f"({type(cause).__name__}: {first[:300]}); run without it (--set engine.compile=false) "
                            "or install what the compiler needs (a C++ compiler on the CPU, Triton on a GPU)") from exc

    def _step(self, batch: Any, loss: Loss) -> dict[str, float] | None:
        r, ddp = self.recipe, self.ctx.ddp
        if not agree(batch is not None, ddp):
            return None
        self.lr = lr_at(self.step, self.per_epoch, r.optim.lr, r.schedule)
        set_lr(self.optimizer, self.lr)
        with autocast(self.ctx.device, self.amp):
            out = loss(self.model, batch, self.step)
        value = out["loss"]
        if not agree(bool(torch.isfinite(value.detach())), ddp):
            hint = "Try a lower optim.lr or set optim.grad_clip" if self.stop_hint is None else self.stop_hint
            raise NonFiniteLoss(f"{self.name}: loss became {value.item()} at step {self.step + 1}"
                                f"{f' on rank {ddp.rank} or another' if ddp.enabled else ''}; stopped"
                                + (f". {hint}" if hint else ""))
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(value).backward()
        if r.optim.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.params, r.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        logged = torch.stack([v.detach().float() for v in out.values()])
        if ddp.enabled:  # log the global mean, not this rank's share
            dist.all_reduce(logged)
            logged /= ddp.world
        return dict(zip(out, logged.tolist()))
