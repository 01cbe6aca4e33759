"""NYU Depth v2 depth prediction from a pretrained trunk (the Task Ensemble's NYU column, Doersch & Zisserman 2017;
their metric: the percentage of pixels with max(d/d*, d*/d) < 1.25).

The trunk's dense tap (ResNet through res4: res4, stride 16) feeds a small head: a 3 x 3 convolution of `head_dim`
channels with BatchNorm and ReLU, then a 1 x 1 convolution to one channel, read as log depth; the prediction is
upsampled bilinearly to the image. The loss is the mean |log d - log d*| over the pixels with a depth (d* > 0),
scale-aware and relative, as the metric is. Every layer trains (`finetune`; false: the head alone, on a frozen
trunk), with random horizontal flips. Training reads the official train split (795 images), testing the test split
(654), both at `data.image_size` rows (the aspect ratio kept). The paper's head, loss and schedule could not be
confirmed in its text; these are sslbench's, stated here and in the recipes.

Reports 'nyu-depth/pct-within-1.25' (the table's column), '.../pct-within-1.25^2', '.../pct-within-1.25^3' (%),
'.../rmse' (metres), '.../abs-rel' and '.../log10' over every valid test pixel (sslbench.metrics.depth_metrics).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslbench.backbones.base import Backbone
from sslbench.backbones.lasso import LassoEval, lasso_groups, lasso_view, with_penalty
from sslbench.checkpoint import Trunk
from sslbench.config import In, Recipe
from sslbench.data.build import build_dataset
from sslbench.errors import UserError
from sslbench.metrics import depth_errors, depth_metrics
from sslbench.progress import progress_bar
from sslbench.protocols.base import EvalContext, Protocol
from sslbench.registry import register_protocol
from sslbench.training import Fit, all_sum, autocast, epoch_loader, shard_loader, steps_per_epoch
from sslbench.transforms import mirror, random_flips

METRICS = ("pct-within-1.25", "pct-within-1.25^2", "pct-within-1.25^3", "rmse", "abs-rel", "log10")


@dataclass(frozen=True)
class NyuDepthConfig:
    head_dim: Annotated[int, In(1, 4096)] = 128  # channels of the head's 3 x 3 convolution
    finetune: bool = True  # train the trunk too (false: the head on a frozen trunk)
    flip: bool = True  # random horizontal flips of image and depth while training
    # eval-side lasso: the head reads a learned combination of the dense tap's units (the Task Ensemble's "eval
    # lasso" rows; sslbench.backbones.lasso); lasso.stage must be the dense tap
    lasso: LassoEval = LassoEval()


class DepthHead(nn.Module):
    """trunk tap -> 3x3 conv, BN, ReLU -> 1x1 conv -> log depth, upsampled to the input's size -> depth."""

    def __init__(self, trunk: Backbone, tap: str, head_dim: int) -> None:
        super().__init__()
        self.trunk, self.tap = trunk, tap
        channels = trunk.feature_info[tap].channels
        self.head = nn.Sequential(nn.Conv2d(channels, head_dim, 3, padding=1, bias=False), nn.BatchNorm2d(head_dim),
                                  nn.ReLU(inplace=True), nn.Conv2d(head_dim, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        log_depth = self.head(self.trunk(x, taps=(self.tap,))[self.tap])
        return F.interpolate(log_depth, size=x.shape[-2:], mode="bilinear", align_corners=False).squeeze(1).exp()


def log_l1(pred: Tensor, target: Tensor) -> Tensor:
    """Mean |log d - log d*| over the pixels with a depth."""
    ok = target > 0
    if not ok.any():
        return pred.sum() * 0.0
    return (pred[ok].clamp_min(1e-3).log() - target[ok].log()).abs().mean()


def collate_depth(batch: list[Any]) -> tuple[Tensor, Tensor]:
    items = [b for b in batch if b is not None]
    if not items:
        return torch.zeros(0, dtype=torch.uint8), torch.zeros(0)
    return torch.stack([i for i, _ in items]), torch.stack([t["depth"] for _, t in items])


@register_protocol("nyu-depth", config=NyuDepthConfig)
class NyuDepthProtocol(Protocol):
    """Depth prediction on NYU Depth v2: a small head on the dense tap, log-L1 loss, delta < 1.25."""

    name = "nyu-depth"
    metric_keys = "|".join(m.replace("^", r"\^").replace(".", r"\.") for m in METRICS)

    def taps(self, backbone: Backbone) -> tuple[str, ...]:
        return (backbone.role("dense_tap", "nyu-depth (its head reads it)"),)

    def preflight(self, recipe: Recipe) -> None:
        if recipe.data.dataset != "nyu":
            raise UserError(f"nyu-depth trains and tests on NYU Depth v2; data.dataset is {recipe.data.dataset!r}: set "
                            "data.dataset = \"nyu\" (--data nyu=PATH, the folder of nyu_depth_v2_labeled.mat)")

    def run(self, trunk: Trunk, recipe: Recipe, ctx: EvalContext) -> dict[str, float]:
        cfg, d = self.cfg, recipe.data
        tap, lasso = self.taps(trunk.backbone)[0], self.lasso()
        if not cfg.finetune:
            trunk.backbone.requires_grad_(False)
        body: Backbone = trunk.backbone
        if lasso is not None:
            if lasso.stage != tap:
                raise UserError(f"nyu-depth: protocol.lasso.stage is {lasso.stage!r} but the head reads {tap!r}; set "
                                f"protocol.lasso.stage = \"{tap}\"")
            body = lasso_view(trunk.backbone, lasso, "nyu-depth: protocol.lasso.stage")  # type: ignore[assignment]
        model = DepthHead(body, tap, cfg.head_dim).to(ctx.device)
        train = build_dataset(d, d.train_split, d.num_images)
        test = build_dataset(d, d.test_split, d.num_test)
        ctx.log.write(0, {"train_images": float(len(train)), "test_images": float(len(test))},  # type: ignore[arg-type]
                      prefix="data")
        self._train(model, trunk, train, recipe, ctx)
        return {self.key(k): v for k, v in self._test(model, trunk, test, recipe, ctx).items()}

    def _train(self, model: DepthHead, trunk: Trunk, ds: Any, recipe: Recipe, ctx: EvalContext) -> None:
        d = recipe.data
        per_epoch = steps_per_epoch(len(ds), d.batch_size, "nyu-depth")
        lasso = self.lasso()
        alphas = [model.trunk.lasso.alpha] if lasso is not None else []
        groups = lasso_groups([p for p in model.parameters() if p.requires_grad], alphas,
                              lasso.lr_scale if lasso is not None else 1.0)
        fit = Fit("nyu-depth fine-tune", model, groups, recipe, per_epoch, ctx)
        flip = self.cfg.flip

        def prepare(batch: Any, step: int) -> tuple[Tensor, Tensor] | None:
            _, (images, depth) = batch
            if images.numel() == 0:
                return None
            images, depth = fit.on_batch_device(images), fit.on_batch_device(depth)
            if flip:
                # (seed, step) without the rank: under DDP every rank flips the same batch positions of its own
                # images; kept so, as changing the stream would change every stored nyu-depth result's bits
                g = torch.Generator(fit.batch_device).manual_seed(recipe.seed * 7919 + step)
                flips = random_flips(len(images), g, images.device)
                images = mirror(images, flips)
                depth = mirror(depth, flips)
            return trunk.prepare(images).to(ctx.device), depth.to(ctx.device)

        def loss(net: nn.Module, batch: tuple[Tensor, Tensor], step: int) -> dict[str, Tensor]:
            x, y = batch
            error = log_l1(net(x).float(), y)
            if lasso is None:
                return {"loss": error}
            return with_penalty({"loss": error, "log_l1": error.detach()}, model.trunk.lasso.penalty(), lasso.l1)

        model.train()
        fit.run(lambda epoch, start: epoch_loader(ds, d.batch_size, recipe.seed, epoch, ctx.ddp, collate_depth,
                                                  d.workers, start, ctx.unreadable), prepare, loss)

    @torch.no_grad()
    def _test(self, model: DepthHead, trunk: Trunk, ds: Any, recipe: Recipe, ctx: EvalContext) -> dict[str, float]:
        model.eval()
        sums: dict[str, Tensor] = {}
        loader = shard_loader(ds, recipe.data.batch_size, ctx.ddp, collate_depth, recipe.data.workers, ctx.unreadable)
        with progress_bar("nyu-depth test", len(loader), ctx.show) as advance:
            for _, (images, depth) in loader:
                if images.numel():
                    with autocast(ctx.device, recipe.engine.amp):
                        pred = model(trunk.prepare(images).to(ctx.device)).float().cpu()
                    for k, v in depth_errors(pred, depth).items():
                        sums[k] = sums.get(k, torch.zeros((), dtype=torch.float64)) + v
                advance()
        if not sums:
            raise UserError(f"nyu-depth: no readable image in the {recipe.data.test_split} split")
        keys = sorted(sums)
        total = all_sum(torch.stack([sums[k] for k in keys]), ctx.ddp, ctx.device)
        return depth_metrics(dict(zip(keys, total)))
