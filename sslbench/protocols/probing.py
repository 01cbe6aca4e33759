"""Frozen-trunk probing shared by the linear and RotNet-block protocols.

One pass of the frozen trunk feeds every tap's head (the heads train together on the same batches,
each on its own loss), as the RotNet and split-brain evaluation code do. Per-tap pooling is data
from the recipe. At mini scale the pooled features are computed once and cached (no augmentation);
at paper scale every epoch re-runs the trunk on randomly cropped and flipped images.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Iterator, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from sslbench.checkpoint import Trunk
from sslbench.config import Recipe
from sslbench.data.build import build_dataset, collate_skip_corrupt
from sslbench.engine import build_optimizer, lr_at, set_lr
from sslbench.metrics import topk_accuracy
from sslbench.progress import progress_bar
from sslbench.runtime import step_generator
from sslbench.tasks.base import random_crop_flip


@dataclass(frozen=True)
class PoolSpec:
    kind: Literal["adaptive_max", "adaptive_avg", "bilinear", "none"] = "adaptive_max"  # how a map shrinks
    size: int = 6  # output side: 'size x size x channels' features


def pool_features(x: Tensor, spec: PoolSpec) -> Tensor:
    """[N,C,H,W] -> [N, C*size*size] (or [N,D] unchanged for fc taps)."""
    if x.dim() == 2 or spec.kind == "none":
        return x.flatten(1)
    if spec.kind == "adaptive_max":
        x = F.adaptive_max_pool2d(x, spec.size)
    elif spec.kind == "adaptive_avg":
        x = F.adaptive_avg_pool2d(x, spec.size)
    else:
        x = F.interpolate(x, size=(spec.size, spec.size), mode="bilinear", align_corners=False)
    return x.flatten(1)


HeadFactory = Callable[[int, int], nn.Module]  # (input dim, classes) -> head


@dataclass
class ProbeReport:
    top1: dict[str, float]
    top5: dict[str, float]


class FrozenFeatures:
    """Pooled features of the frozen trunk for a set of taps."""

    def __init__(self, trunk: Trunk, taps: tuple[str, ...], pools: dict[str, PoolSpec], device: torch.device) -> None:
        self.backbone = trunk.backbone.to(device).eval()
        self.prepare = trunk.prepare
        self.taps, self.pools, self.device = taps, pools, device

    @torch.no_grad()
    def __call__(self, images: Tensor) -> dict[str, Tensor]:
        x = self.prepare(images).to(self.device)
        maps = self.backbone(x, taps=self.taps)
        return {t: pool_features(maps[t], self.pools.get(t, PoolSpec())).float() for t in self.taps}

    def dims(self, image_size: int) -> dict[str, int]:
        probe = self(torch.zeros(2, 3, image_size, image_size, dtype=torch.uint8))
        return {t: v.shape[1] for t, v in probe.items()}


def _loader(ds: Dataset, batch: int, workers: int, shuffle_seed: int | None) -> DataLoader:
    gen = torch.Generator().manual_seed(shuffle_seed) if shuffle_seed is not None else None
    return DataLoader(ds, batch_size=batch, shuffle=gen is not None, generator=gen, num_workers=workers,
                      collate_fn=collate_skip_corrupt, drop_last=False)


def _cache(features: FrozenFeatures, ds: Dataset, recipe: Recipe, what: str, show: bool) -> tuple[dict[str, Tensor], Tensor]:
    chunks: dict[str, list[Tensor]] = {t: [] for t in features.taps}
    labels = []
    loader = _loader(ds, recipe.data.batch_size, recipe.data.workers, None)
    with progress_bar(f"features ({what})", len(loader), show) as advance:
        for images, target in loader:
            for t, v in features(images).items():
                chunks[t].append(v.cpu())
            labels.append(target["label"])
            advance()
    return {t: torch.cat(v) for t, v in chunks.items()}, torch.cat(labels)


def train_probes(
    trunk: Trunk, recipe: Recipe, taps: tuple[str, ...], pools: dict[str, PoolSpec], head: HeadFactory,
    num_classes: int, cache: bool, crop_pad: int, device: torch.device, show: bool,
    log: Callable[[int, dict[str, float]], None] = lambda step, values: None,
) -> ProbeReport:
    """Train one head per tap on the frozen trunk; report top-1/top-5 (%) per tap on the test split."""
    d = recipe.data
    train_ds = build_dataset(d, d.train_split, d.num_images)
    test_ds = build_dataset(d, d.test_split, d.num_test)
    features = FrozenFeatures(trunk, taps, pools, device)
    before = copy.deepcopy(trunk.backbone.state_dict())
    dims = features.dims(d.image_size)
    heads = nn.ModuleDict({t: head(dims[t], num_classes) for t in taps}).to(device)
    optimizer = build_optimizer(heads.parameters(), recipe.optim)
    steps_per_epoch = max(1, len(train_ds) // d.batch_size)
    total = steps_per_epoch * recipe.schedule.epochs
    if cache:
        train_x, train_y = _cache(features, train_ds, recipe, "train", show)
        batches = lambda epoch: _cached_batches(train_x, train_y, d.batch_size, recipe.seed + epoch)  # noqa: E731
    else:
        batches = lambda epoch: _streamed_batches(features, train_ds, recipe, epoch, crop_pad)  # noqa: E731
    step = 0
    heads.train()
    with progress_bar(f"probe {'/'.join(taps)}", total, show) as advance:
        for epoch in range(recipe.schedule.epochs):
            for feats, labels in batches(epoch):
                set_lr(optimizer, lr_at(step, steps_per_epoch, recipe.optim.lr, recipe.schedule))
                labels = labels.to(device)
                losses = {t: F.cross_entropy(heads[t](feats[t].to(device)), labels) for t in taps}
                optimizer.zero_grad(set_to_none=True)
                torch.stack(list(losses.values())).sum().backward()  # heads are independent: one backward
                optimizer.step()
                step += 1
                if step % recipe.engine.log_every == 0:
                    log(step, {f"loss_{t}": float(v.detach()) for t, v in losses.items()})
                advance()
    sanity_check(trunk.backbone, before)
    return _test(features, heads, test_ds, recipe, cache, show)


def _cached_batches(x: dict[str, Tensor], y: Tensor, batch: int, seed: int) -> Iterator[tuple[dict[str, Tensor], Tensor]]:
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    for i in range(0, len(y) - batch + 1 if len(y) >= batch else 1, batch):
        idx = order[i : i + batch]
        yield {t: v[idx] for t, v in x.items()}, y[idx]


def _streamed_batches(features: FrozenFeatures, ds: Dataset, recipe: Recipe, epoch: int, crop_pad: int) -> Iterator[tuple[dict[str, Tensor], Tensor]]:
    for i, (images, target) in enumerate(_loader(ds, recipe.data.batch_size, recipe.data.workers, recipe.seed + epoch)):
        images = random_crop_flip(images, crop_pad, True, step_generator(recipe.seed, epoch * 100_003 + i, 0))
        yield features(images), target["label"]


@torch.no_grad()
def _test(features: FrozenFeatures, heads: nn.ModuleDict, ds: Dataset, recipe: Recipe, cache: bool, show: bool) -> ProbeReport:
    heads.eval()
    logits: dict[str, list[Tensor]] = {t: [] for t in heads}
    labels = []
    loader = _loader(ds, recipe.data.batch_size, recipe.data.workers, None)
    with progress_bar("probe test", len(loader), show) as advance:
        for images, target in loader:
            for t, v in features(images).items():
                logits[t].append(heads[t](v).cpu())
            labels.append(target["label"])
            advance()
    y = torch.cat(labels)
    top1, top5 = {}, {}
    for t, chunks in logits.items():
        acc = topk_accuracy(torch.cat(chunks), y, ks=(1, 5))
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
