"""`--dry-run`: what a run would be, without touching its data.

For a pretraining, an evaluation or every run a table's `[reproduce]` plan needs: the resolved recipe's network
is built (random weights), and the report gives its parameters, each tap's shape and feature dimension, the
steps rule applied to the real data set's size (the layout's `sizes`, or the recipe's cap), the images seen, the
FLOPs of one training step counted by `torch.utils.flop_counter` on two synthetic images and scaled to the batch
(pretraining: the task's forward and backward; an evaluation: the trunk's forward to the protocol's taps, the
part every protocol shares), and the data sets the run will ask for. Nothing is read from or written to disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.utils.flop_counter import FlopCounterMode

from sslbench.backbones.base import Backbone, backbone_label, build_backbone
from sslbench.checkpoint import TrunkSpec, at_protocol_size, load_trunk
from sslbench.config import Named, Recipe
from sslbench.data.build import embedded_split_size
from sslbench.errors import UserError
from sslbench.plugins import load_all
from sslbench.registry import LAYOUTS, PROTOCOLS, TASKS
from sslbench.tables import resolve
from sslbench.training import total_steps

PROBE_IMAGES = 2  # synthetic images the FLOPs are counted on; per-step FLOPs scale them to the batch


@dataclass
class DryRun:
    what: str  # "pretrain rotation [alexnet] (paper)"
    parameters: int
    trainable: int
    backbone: str  # its table label
    taps: list[tuple[str, tuple[int, ...], int]]  # (tap, shape without the batch, feature dimension)
    data: list[str]  # the data sets and splits the run reads, with their sizes
    per_epoch: int
    epochs: int
    steps: int
    batch: int
    flops_per_step: float
    flops_of: str  # what the FLOPs count
    notes: list[str] = field(default_factory=list)

    @property
    def images_seen(self) -> int:
        return self.steps * self.batch

    def lines(self) -> list[str]:
        taps = ", ".join(f"{t} {'x'.join(map(str, s))} ({d:,})" for t, s, d in self.taps)
        out = [
            self.what,
            f"  network     {self.backbone}: {self.parameters:,} parameters"
            + (f" ({self.trainable:,} trained)" if self.trainable >= 0 else " (the trunk)"),
            f"  taps        {taps}",
            f"  schedule    {self.epochs} epochs x {self.per_epoch:,} steps of {self.batch} = {self.steps:,} steps, "
            f"{self.images_seen:,} images seen",
            f"  compute     {_flops(self.flops_per_step)} per step ({self.flops_of}), "
            f"{_flops(self.flops_per_step * self.steps)} in all",
            f"  data        {'; '.join(self.data)}",
        ]
        return out + [f"  note        {n}" for n in self.notes]


def _flops(n: float) -> str:
    for unit, size in (("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9), ("MFLOP", 1e6)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n:.3g} FLOP"


def split_size(recipe: Recipe, split: str, cap: int) -> tuple[int, str]:
    """(images the run reads from `split`, where the figure comes from)."""
    d = recipe.data
    layout = LAYOUTS.get(d.dataset) if d.dataset in LAYOUTS else None
    if layout is not None and not d.root and recipe.scale != "paper":  # the embedded sample in that layout
        n = embedded_split_size(d, split)
        return (min(cap, n), "the recipe's cap") if cap else (n, f"the embedded {d.dataset} {split}")
    real = layout.sizes.get(split, 0) if layout is not None else 0
    if cap and (not real or cap < real):
        return cap, "the recipe's cap"
    if real:
        return real, f"{d.dataset} {split}"
    raise UserError(f"--dry-run: the size of {d.dataset} split {split!r} is not known and the recipe sets no cap "
                    "(data.num_images / data.num_test); set one to count the steps")


def _data_line(recipe: Recipe, split: str, cap: int) -> str:
    n, source = split_size(recipe, split, cap)
    d = recipe.data
    if d.root:
        where = d.root
    elif d.dataset == "embedded" or recipe.scale != "paper":
        where = "the embedded data"
    else:
        where = f"needs --data {d.dataset}=PATH"
    return f"{d.dataset} {split}: {n:,} images ({source}; {where})"


def _schedule(recipe: Recipe, n: int) -> tuple[int, int]:
    per_epoch = n // recipe.data.batch_size
    if per_epoch < 1:
        raise UserError(f"--dry-run: {n} training items is less than one batch of {recipe.data.batch_size}")
    return per_epoch, total_steps(per_epoch, recipe.schedule)


def _taps(backbone: Backbone, taps: tuple[str, ...]) -> list[tuple[str, tuple[int, ...], int]]:
    out = []
    for t in taps:
        info = backbone.feature_info[t]
        shape = (info.channels, info.size, info.size) if info.stride else (info.channels,)
        out.append((t, shape, int(torch.tensor(shape).prod())))
    return out


def _images(recipe: Recipe, side: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (PROBE_IMAGES, 3, side, side), generator=g, dtype=torch.uint8)


def dry_pretrain(recipe: Recipe, what: str = "") -> DryRun:
    torch.manual_seed(recipe.seed)
    backbone = build_backbone(recipe.backbone.name, recipe.backbone.cfg)
    task = TASKS.get(recipe.name)(recipe.component.cfg, backbone)
    task.train()
    n, _ = split_size(recipe, recipe.data.train_split, recipe.data.num_images)
    per_epoch, steps = _schedule(recipe, n)
    side = recipe.data.image_size or backbone.image_size
    targets = {"index": torch.arange(PROBE_IMAGES), "label": torch.zeros(PROBE_IMAGES, dtype=torch.int64)}
    if recipe.data.dataset == "motion":  # the layout's frames come with their motion masks (motion-seg reads them)
        targets["motion"] = torch.zeros(PROBE_IMAGES, side, side, dtype=torch.uint8)
    batch = task.make_batch(_images(recipe, side), targets, torch.Generator().manual_seed(0))
    with FlopCounterMode(display=False) as counter:
        task(batch)["loss"].backward()
    params = sum(p.numel() for p in task.parameters())
    trained = sum(p.numel() for group in task.param_groups() for p in group["params"] if p.requires_grad)
    return DryRun(
        what=what or f"pretrain {recipe.name}{_flavour(recipe)} ({recipe.scale})", parameters=params,
        trainable=trained, backbone=backbone_label(recipe.backbone.name, recipe.backbone.cfg),
        taps=_taps(backbone, tuple(backbone.feature_info)), data=[_data_line(recipe, recipe.data.train_split,
                                                                             recipe.data.num_images)],
        per_epoch=per_epoch, epochs=recipe.schedule.epochs, steps=steps, batch=recipe.data.batch_size,
        flops_per_step=counter.get_total_flops() / PROBE_IMAGES * recipe.data.batch_size,
        flops_of=f"the task's forward + backward, {recipe.data.batch_size} images at {side} px",
    )


def dry_eval(recipe: Recipe, trunk: Named | TrunkSpec | None = None, what: str = "") -> DryRun:
    """`trunk`: a pretraining recipe's backbone (as it will transfer), a `--checkpoint` to read, or None for the
    protocol recipe's own backbone (`--checkpoint random`)."""
    torch.manual_seed(recipe.seed)
    if isinstance(trunk, TrunkSpec):
        backbone = load_trunk(trunk, recipe.backbone, allow_unfinished=True).backbone
    else:
        target = at_protocol_size(trunk, recipe.backbone) if trunk is not None else recipe.backbone
        backbone = build_backbone(target.name, target.cfg)
    protocol = PROTOCOLS.get(recipe.name)(recipe.component.cfg)
    taps = protocol.taps(backbone)
    d = recipe.data
    n, _ = split_size(recipe, d.train_split, d.num_images)
    data = [_data_line(recipe, d.train_split, d.num_images), _data_line(recipe, d.test_split, d.num_test)]
    sbd = getattr(recipe.component.cfg, "sbd", "")
    if sbd:  # voc-seg trains on train_aug: VOC train + SBD - VOC val
        n = LAYOUTS.get("sbd").sizes["train_aug"] if sbd != "embedded" else n
        n = min(n, d.num_images) if d.num_images else n
        data.append(f"sbd train_aug: {n:,} images (the training set; "
                    + ("needs --data sbd=PATH)" if sbd == "required" else f"{sbd})"))
    if protocol.trains_by_sgd:
        per_epoch, steps, epochs, batch = (*_schedule(recipe, n), recipe.schedule.epochs, d.batch_size)
    else:  # features of every train and test image in one pass, then a solver: the "steps" are that pass
        n_test, _ = split_size(recipe, d.test_split, d.num_test)
        per_epoch, steps, epochs, batch = n + n_test, n + n_test, 1, 1
    side = backbone.image_size
    backbone.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        maps = backbone(torch.zeros(PROBE_IMAGES, backbone.in_channels, side, side), taps=taps)
    notes = [] if protocol.trains_by_sgd else ["no SGD schedule: one pass of features over train and test "
                                               "(a step = an image), then the protocol's solver"]
    if not d.image_size:
        notes.append("the images keep their stored sizes (the protocol rescales each): the FLOPs are at the "
                     f"trunk's {side} px")
    pools = getattr(recipe.component.cfg, "pool", None)
    if pools:
        from sslbench.protocols._probing import PoolSpec, pool_features

        dims = {t: pool_features(m, pools.get(t, PoolSpec())).shape[1] for t, m in maps.items()}  # the counted pass
        notes.append("probe dims after pooling: " + ", ".join(f"{t} {v:,}" for t, v in dims.items()))
    params = sum(p.numel() for p in backbone.parameters())
    return DryRun(
        what=what or f"eval {recipe.name}{_flavour(recipe)} ({recipe.scale})", parameters=params, trainable=-1,
        backbone=backbone_label(backbone.name, backbone.cfg), taps=_taps(backbone, taps), data=data,
        per_epoch=per_epoch, epochs=epochs, steps=steps, batch=batch,
        flops_per_step=counter.get_total_flops() / PROBE_IMAGES * batch,
        flops_of=f"the trunk's forward to {taps[-1]}, {batch} image{'s' * (batch > 1)} at {side} px; heads and "
                 "solvers not counted",
        notes=notes,
    )


def dry_reproduce(name: str, scale: str, data: dict[str, str] | None = None) -> list[DryRun]:
    """Every run the tables of `name` need, in plan order (a pretraining once, however many tables use it)."""
    from sslbench.reproduce import Options, plan, plan_recipe

    load_all()
    opts = Options(scale=scale, data=data)
    out: list[DryRun] = []
    seen: set[tuple[str, str, tuple[str, ...]]] = set()
    for spec in plan(resolve(name)):
        trunk: Named | None = None
        if spec.pretrained:
            if spec.pretrained not in TASKS:
                continue
            flavour, overrides = ("", ()) if spec.like else (spec.flavour, spec.set)
            pre = plan_recipe("pretrain", spec.pretrained, opts, overrides, flavour)
            trunk = pre.backbone
            if (spec.pretrained, flavour, overrides) not in seen:
                seen.add((spec.pretrained, flavour, overrides))
                what = " ".join([f"pretrain {spec.pretrained}{_flavour(pre)}", *overrides, f"({scale})"])
                out.append(dry_pretrain(pre, what))
        subject = f"random ({spec.like} trunk)" if spec.like else spec.task
        for ev in spec.evals:
            if ev.protocol not in PROTOCOLS:
                continue
            recipe = plan_recipe("protocol", ev.protocol, opts, ev.set, ev.flavour)
            rescaled = " (rescaled)" if spec.init == "rescale" else ""
            out.append(dry_eval(recipe, trunk, what=f"eval {ev.describe()} on {subject}{rescaled} ({scale})"))
    return out


def _flavour(recipe: Recipe) -> str:
    stem = recipe.source.rsplit("/", 1)[-1].removesuffix(".toml")
    return f" [{stem.split('-', 1)[1]}]" if "-" in stem else ""


def report(runs: list[DryRun]) -> str:
    total = sum(r.flops_per_step * r.steps for r in runs)
    lines = [line for r in runs for line in r.lines()]
    if len(runs) > 1:
        lines.append(f"{len(runs)} runs, {_flops(total)} in all (counted parts)")
    return "\n".join(lines)

