"""Frozen-trunk probing shared by the linear and RotNet-block protocols.

One pass of the frozen trunk feeds every tap's head (the heads train together on the same batches,
each on its own loss), as the RotNet and split-brain evaluation code do. Per-tap pooling is data
from the recipe. At mini scale the pooled features are computed once and cached (no augmentation);
at paper scale every epoch re-runs the trunk on randomly cropped and flipped images. Under torchrun every
rank extracts its share of the features and trains on its slice of every global batch.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslbench.backbones.lasso import LassoCombination, LassoEval, lasso_groups, unit_taps, with_penalty
from sslbench.checkpoint import Trunk
from sslbench.config import In, Recipe
from sslbench.data.build import build_dataset
from sslbench.data.classes import VOC_CLASSES
from sslbench.data.datasets import collate_skip_corrupt
from sslbench.errors import UserError
from sslbench.metrics import topk_accuracy
from sslbench.progress import progress_bar
from sslbench.protocols.base import EvalContext
from sslbench.runtime import batch_device
from sslbench.training import EpochBatches, Fit, autocast, epoch_loader, gather_rows, shard_loader, steps_per_epoch
from sslbench.transforms import random_crop_flip


@dataclass(frozen=True)
class PoolSpec:
    # how a map shrinks: to `size` x `size` (adaptive max / average, bilinear resize), or "avg_window": a fixed
    # average-pooling window `kernel` / `stride` (Goyal et al.'s conv1_s4k19 ... blobs), whatever size that gives;
    # "pyramid": a spatial pyramid, the map max-pooled to each `levels` x `levels` grid, the grids concatenated
    kind: Literal["adaptive_max", "adaptive_avg", "bilinear", "avg_window", "pyramid", "none"] = "adaptive_max"
    size: Annotated[int, In(1, 1024)] = 6  # output side: 'size x size x channels' features
    kernel: Annotated[int, In(1, 1024)] = 1  # avg_window: the window's side
    stride: Annotated[int, In(1, 1024)] = 1  # avg_window: its step
    levels: tuple[Annotated[int, In(1, 64)], ...] = (1, 2, 4)  # pyramid: each grid's side (1 + 4 + 16 cells)

    def __post_init__(self) -> None:
        if self.kind == "pyramid" and not self.levels:
            raise UserError("pool kind \"pyramid\" needs levels, e.g. [1, 2, 4]; found none")


def pool_features(x: Tensor, spec: PoolSpec) -> Tensor:
    """[N,C,H,W] -> [N, C*size*size] (or [N,D] unchanged for fc taps); a pyramid gives [N, C*sum(level^2)],
    grid by grid, each grid channel-major."""
    if x.dim() == 2 or spec.kind == "none":
        return x.flatten(1)
    if spec.kind == "pyramid":
        return torch.cat([F.adaptive_max_pool2d(x, level).flatten(1) for level in spec.levels], 1)
    if spec.kind == "adaptive_max":
        x = F.adaptive_max_pool2d(x, spec.size)
    elif spec.kind == "adaptive_avg":
        x = F.adaptive_avg_pool2d(x, spec.size)
    elif spec.kind == "avg_window":
        x = F.avg_pool2d(x, spec.kernel, spec.stride)
    else:
        x = F.interpolate(x, size=(spec.size, spec.size), mode="bilinear", align_corners=False)
    return x.flatten(1)


HeadFactory = Callable[[int, int], nn.Module]  # (input dim, classes) -> head


@dataclass
class ProbeReport:
    top1: dict[str, float]
    top5: dict[str, float]


LINEAR_POOLS = ("adaptive_avg", "avg_window", "bilinear", "none")  # pool(sum_k a_k x_k) = sum_k a_k pool(x_k)


class FrozenFeatures:
    """Pooled features of the frozen trunk for a set of taps: [N, D] per tap; a tap in `units` (an eval-side lasso's
    stage) gives its units' pooled features stacked, [N, K, D], for the head's learned combination (exact for a
    linear pooling: the combination of the pooled units is the pooled combination)."""

    def __init__(self, trunk: Trunk, taps: tuple[str, ...], pools: dict[str, PoolSpec], device: torch.device,
                 units: dict[str, list[str]] | None = None) -> None:
        self.backbone = trunk.backbone.to(device).eval()
        self.prepare = trunk.prepare
        self.taps, self.pools, self.device = taps, pools, device
        self.units = units or {}
        order = list(self.backbone.feature_info).index
        self.reads = tuple(sorted({u for t in taps for u in self.units.get(t, [t])}, key=order))

    @torch.no_grad()
    def __call__(self, images: Tensor) -> dict[str, Tensor]:
        x = self.prepare(images).to(self.device)
        maps = self.backbone(x, taps=self.reads)
        pooled = lambda t, m: pool_features(m, self.pools.get(t, PoolSpec())).float()  # noqa: E731
        return {t: torch.stack([pooled(t, maps[u]) for u in self.units[t]], 1) if t in self.units
                else pooled(t, maps[t]) for t in self.taps}

    def dims(self, image_size: int) -> dict[str, int]:
        probe = self(torch.zeros(2, 3, image_size, image_size, dtype=torch.uint8))
        return {t: v.shape[-1] for t, v in probe.items()}


class LassoHead(nn.Module):
    """[N, K, D] units' features -> the lasso combination sum_k alpha_k x_k -> `head`; `penalty()` = sum |alpha|."""

    def __init__(self, units: int, head: nn.Module) -> None:
        super().__init__()
        self.lasso, self.head = LassoCombination(units), head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.lasso(list(x.unbind(1))))

    def penalty(self) -> Tensor:
        return self.lasso.penalty()


def lasso_units(trunk: Trunk, taps: tuple[str, ...], pools: dict[str, PoolSpec], lasso: LassoEval | None,
                who: str) -> dict[str, list[str]]:
    """{the lasso's stage: its unit taps} for an eval-side lasso (else {}); the stage must be probed, pooled
    linearly."""
    if lasso is None:
        return {}
    check_lasso_probe(taps, pools, lasso, who)
    return {lasso.stage: unit_taps(trunk.backbone, lasso.stage, who)}


def check_lasso_probe(taps: tuple[str, ...], pools: dict[str, PoolSpec], lasso: LassoEval, who: str) -> None:
    """What an eval-side lasso needs of a probe recipe (no trunk, no data): its stage probed, pooled linearly."""
    if lasso.stage not in taps:
        raise UserError(f"{who}: protocol.lasso.stage {lasso.stage!r} is not among the probed taps "
                        f"({', '.join(taps)}); add it to protocol.taps or set protocol.lasso.stage")
    kind = pools.get(lasso.stage, PoolSpec()).kind
    if kind not in LINEAR_POOLS:
        raise UserError(f"{who}: the lasso combines pooled units, which is the pooled combination only for a linear "
                        f"pooling; pool.{lasso.stage} is {kind!r}: use one of {', '.join(LINEAR_POOLS)}")


def extract(features: FrozenFeatures, ds: Any, recipe: Recipe, ctx: EvalContext, what: str,
            target: str = "label") -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Pooled features of every readable item of `ds` and the target keys `target` (comma-separated), in data
    set order on every rank (each rank extracts its shard; `gather_rows` joins them)."""
    keys = target.split(",")
    chunks: dict[str, list[Tensor]] = {t: [] for t in features.taps}
    targets: dict[str, list[Tensor]] = {k: [] for k in keys}
    indices: list[Tensor] = []
    loader = shard_loader(ds, recipe.data.batch_size, ctx.ddp, collate_skip_corrupt, recipe.data.workers,
                          ctx.unreadable, what)
    with progress_bar(f"features ({what})", len(loader), ctx.show) as advance:
        for index, (images, target_batch) in loader:
            if images.numel():
                for t, v in features(images).items():
                    chunks[t].append(v.cpu())
                for k in keys:
                    targets[k].append(target_batch[k])
                indices.append(index)
            advance()
    out = {t: gather_rows(indices, v, ctx.ddp) for t, v in chunks.items()}
    return out, {k: gather_rows(indices, v, ctx.ddp) for k, v in targets.items()}


class Probes(nn.Module):
    """One head per tap, trained together: {tap: features} -> {tap: logits}."""

    def __init__(self, heads: dict[str, nn.Module]) -> None:
        super().__init__()
        self.heads = nn.ModuleDict(heads)

    def forward(self, features: dict[str, Tensor]) -> dict[str, Tensor]:
        return {t: head(features[t]) for t, head in self.heads.items()}


def train_probes(trunk: Trunk, recipe: Recipe, taps: tuple[str, ...], pools: dict[str, PoolSpec], head: HeadFactory,
                 num_classes: int, cache: bool, crop_pad: int, ctx: EvalContext,
                 lasso: LassoEval | None = None) -> ProbeReport:
    """Train one head per tap on the frozen trunk; report top-1/top-5 (%) per tap on the test split. With `lasso`,
    the head of its stage reads a learned combination of the stage's units, `lasso.l1` x sum |alpha| added to the
    loss."""
    d = recipe.data
    train_ds = build_dataset(d, d.train_split, d.num_images)
    test_ds = build_dataset(d, d.test_split, d.num_test)
    for ds in (train_ds, test_ds):
        classes = getattr(ds, "classes", None) or (VOC_CLASSES if d.dataset == "embedded" else ())
        if len(classes) > num_classes:
            raise UserError(f"{recipe.name}: {d.dataset} has {len(classes)} classes but protocol.num_classes is "
                            f"{num_classes}; set --set num_classes={len(classes)}")
    units = lasso_units(trunk, taps, pools, lasso, recipe.name)
    features = FrozenFeatures(trunk, taps, pools, ctx.device, units)
    before = copy.deepcopy(trunk.backbone.state_dict())
    dims = features.dims(d.image_size)
    probes = Probes({t: LassoHead(len(units[t]), head(dims[t], num_classes)) if t in units
                     else head(dims[t], num_classes) for t in taps}).to(ctx.device)
    if cache:  # the readable items' features, once; an epoch is their full batches
        train_x, train_y = extract(features, train_ds, recipe, ctx, "train")
        per_epoch = steps_per_epoch(len(train_y["label"]), d.batch_size, "probe")
        batches = lambda epoch, start: _cached(train_x, train_y["label"], d.batch_size, recipe.seed, epoch, ctx, start)  # noqa: E731
    else:
        per_epoch = steps_per_epoch(len(train_ds), d.batch_size, "probe")
        batches = lambda epoch, start: _streamed(features, train_ds, recipe, epoch, crop_pad, ctx, start)  # noqa: E731
    alphas = [h.lasso.alpha for h in probes.heads.values() if isinstance(h, LassoHead)]
    groups = lasso_groups(list(probes.parameters()), alphas, lasso.lr_scale if lasso is not None else 1.0)
    fit = Fit(f"probe {'/'.join(taps)}", probes, groups, recipe, per_epoch, ctx)

    def prepare(batch: tuple[dict[str, Tensor], Tensor], step: int) -> tuple[dict[str, Tensor], Tensor]:
        feats, labels = batch
        if not cache:  # augmentation drawn per step: random crops and flips, then the frozen trunk
            images = random_crop_flip(fit.on_batch_device(feats["images"]), crop_pad, True, fit.generator(step))
            feats = features(images)
        return {t: v.to(ctx.device) for t, v in feats.items()}, labels.to(ctx.device)

    def loss(model: nn.Module, batch: tuple[dict[str, Tensor], Tensor], step: int) -> dict[str, Tensor]:
        feats, labels = batch
        losses = {f"loss_{t}": F.cross_entropy(v, labels) for t, v in model(feats).items()}
        out = {"loss": torch.stack(list(losses.values())).sum(), **losses}  # heads are independent: one backward
        if lasso is None:
            return out
        l1 = torch.stack([h.penalty() for h in probes.heads.values() if isinstance(h, LassoHead)]).sum()
        return with_penalty(out, l1, lasso.l1)

    probes.train()
    fit.run(batches, prepare, loss)
    sanity_check(trunk.backbone, before)
    return _test(features, probes, test_ds, recipe, ctx)


def _cached(x: dict[str, Tensor], y: Tensor, batch: int, seed: int, epoch: int, ctx: EvalContext,
            start: int) -> Iterator[tuple[dict[str, Tensor], Tensor]]:
    for idx in EpochBatches(len(y), batch, seed, epoch, ctx.ddp, start):
        yield {t: v[idx] for t, v in x.items()}, y[idx]


def _streamed(features: FrozenFeatures, ds: Any, recipe: Recipe, epoch: int, crop_pad: int, ctx: EvalContext,
              start: int) -> Iterator[tuple[dict[str, Tensor], Tensor]]:
    loader = epoch_loader(ds, recipe.data.batch_size, recipe.seed, epoch, ctx.ddp, collate_skip_corrupt,
                          recipe.data.workers, start, ctx.unreadable,
                          decode_on=batch_device(recipe.engine.batch_on, ctx.device))
    for _, (images, target) in loader:
        yield {"images": images}, target["label"]


@torch.no_grad()
def _test(features: FrozenFeatures, probes: Probes, ds: Any, recipe: Recipe, ctx: EvalContext) -> ProbeReport:
    """Top-1 / top-5 (%) of every head on the test split; each rank scores its shard, the logits are gathered."""
    probes.eval()
    logits: dict[str, list[Tensor]] = {t: [] for t in probes.heads}
    labels, indices = [], []
    loader = shard_loader(ds, recipe.data.batch_size, ctx.ddp, collate_skip_corrupt, recipe.data.workers,
                          ctx.unreadable)
    with progress_bar("probe test", len(loader), ctx.show) as advance:
        for index, (images, target) in loader:
            if images.numel():
                with autocast(ctx.device, recipe.engine.amp):  # the heads as they trained
                    logits_of = probes(features(images))
                for t, v in logits_of.items():
                    logits[t].append(v.float().cpu())
                labels.append(target["label"])
                indices.append(index)
            advance()
    y = gather_rows(indices, labels, ctx.ddp)
    if not len(y):
        raise UserError(f"probe: no readable image in the {recipe.data.test_split} split; check the data set")
    top1, top5 = {}, {}
    for t, chunks in logits.items():
        acc = topk_accuracy(gather_rows(indices, chunks, ctx.ddp), y, ks=(1, 5))
        top1[t], top5[t] = 100.0 * float(acc[1]), 100.0 * float(acc[5])
    return ProbeReport(top1, top5)


def sanity_check(backbone: nn.Module, before: dict[str, Tensor]) -> None:
    """Probing must not change a frozen weight (MoCo's sanity_check): fail loudly if it did."""
    for key, value in backbone.state_dict().items():
        if not torch.equal(value.cpu(), before[key].cpu()):
            raise RuntimeError(f"frozen trunk weight {key} changed during probing")


def linear_head(dim: int, classes: int) -> nn.Module:
    """BatchNorm without affine + Linear: the split-brain / RotNet linear probe."""
    return nn.Sequential(nn.BatchNorm1d(dim, affine=False), nn.Linear(dim, classes))


def mlp_head(hidden: int) -> HeadFactory:
    """RotNet's CIFAR non-linear classifier: 3 FC layers, the two hidden ones with BN + ReLU."""

    def make(dim: int, classes: int) -> nn.Module:
        return nn.Sequential(
            nn.Linear(dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, classes),
        )

    return make
