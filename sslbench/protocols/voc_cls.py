"""VOC07 classification by fine-tuning (Krähenbühl et al. 2016; the protocol of Zhang et al. 2016,
Noroozi & Favaro 2016, Gidaris et al. 2018).

The trunk up to fc7 gets a new fc8 with 20 sigmoid outputs, trained with binary cross-entropy on
VOC2007 trainval; a class present only as difficult objects is left out of the loss. Training images
are rescaled by a random factor, randomly cropped to the trunk's input size and mirrored; each test
image scores the average of 10 such random crops (the released code runs the training transform at
test too). `layers` picks what trains: fc8 only, fc6..fc8 (from pool5 up) or every layer; the rest is
frozen (no gradients, BatchNorm and dropout in eval mode) and checked unchanged afterwards. Reports
per-class AP and mAP (%) on VOC2007 test as 'voc-cls/<layers>/AP/<class>' and 'voc-cls/<layers>/mAP'.
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from sslbench.backbones.base import Backbone
from sslbench.checkpoint import Trunk
from sslbench.config import Dropout, In, Recipe
from sslbench.data.build import build_dataset
from sslbench.data.classes import VOC_CLASSES
from sslbench.data.datasets import collate_skip_corrupt
from sslbench.errors import UserError
from sslbench.metrics import average_precision, multilabel_map
from sslbench.progress import progress_bar
from sslbench.protocols._probing import sanity_check
from sslbench.protocols.base import EvalContext, Protocol
from sslbench.registry import register_protocol
from sslbench.runtime import batch_device, step_generator, to_device
from sslbench.training import Fit, autocast, epoch_loader, gather_rows, shard_loader, steps_per_epoch
from sslbench.transforms import MEAN_PIXEL


@dataclass(frozen=True)
class VocClsConfig:
    layers: Literal["fc8", "fc6-8", "all"] = "all"  # what trains: fc8; fc6..fc8 from pool5 up; every layer
    # smallest random rescale of the loaded image (Krähenbühl et al.: 0.5)
    min_scale: Annotated[float, In(0, 100, open_lo=True)] = 0.5
    max_scale: Annotated[float, In(0, 100, open_lo=True)] = 2.0  # largest random rescale (Krähenbühl et al.: 2.0)
    mirror: bool = True  # random horizontal flip, at training and in the test crops
    # random crops whose scores are averaged per test image (the papers' 10)
    test_crops: Annotated[int, In(1, 1000)] = 10
    # learning-rate multiplier of fc6, fc7 and fc8 over the conv layers (train_cls.py: none, every trained layer
    # learns at the base rate, setLR(t, 1, 2))
    fc_lr_mult: Annotated[float, In(0, 1e6)] = 1.0
    # learning-rate multiplier of every trained bias (Caffe's lr_mult 2 of train_cls.py setLR(t, 1, 2)); their weight
    # decay stays 1x (setDecay(t, 1, 1))
    bias_lr_mult: Annotated[float, In(0, 1e6)] = 2.0
    # drop6 / drop7 while fc6 / fc7 fine-tune (Krähenbühl et al.'s CaffeNet: 0.5, whatever the trunk's recipe; RotNet's
    # and the Context net's trunks have none of their own)
    fc_dropout: Dropout = 0.5
    # dropout before fc8 when fc7's own drop7 does not train (layers = fc8: the frozen trunk is in eval mode), or
    # the trunk has no fully connected stage (ResNet); a trained fc7 ends in its drop7 already
    head_dropout: Dropout = 0.5
    # fc8 weights ~ N(0, std), bias 0.1 (train_cls.py --random-from drop7)
    head_init_std: Annotated[float, In(0, 10, open_lo=True)] = 0.01
    head_init_bias: Annotated[float, In(-10, 10)] = 0.1
    # "sklearn": train_cls.py's average_precision_score (uninterpolated) with its -1e-5 * label tie-break;
    # "voc07": the devkit's 11-point AP (VOCevalcls); "voc": the VOC2010+ area under the precision envelope
    ap: Literal["sklearn", "voc07", "voc"] = "sklearn"


# ---------------------------------------------------------------- pure functions


def masked_bce(logits: Tensor, labels: Tensor, ignore: Tensor) -> Tensor:
    """Sigmoid cross-entropy summed over classes and averaged over images, ignored entries left out.

    logits, labels, ignore: [N, C]; ignore > 0 marks a class present only as difficult objects (the
    released code's ignore_label 255). Caffe's SigmoidCrossEntropyLoss normalises by the batch size.
    """
    per_entry = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), reduction="none")  # [N, C]
    keep = (ignore <= 0).to(per_entry.dtype)
    return (per_entry * keep).sum() / logits.shape[0]


def rescale_crop_flip(
    images: Tensor, crop: int, min_scale: float, max_scale: float, mirror: bool, generator: torch.Generator
) -> Tensor:
    """uint8 [N,3,S,S] -> uint8 [N,3,crop,crop]: rescale by s ~ U[min, max], random crop, random mirror.

    A rescaled image smaller than the crop is placed at a random offset on a mean-colour canvas (what
    zero padding after Caffe's mean subtraction amounts to).
    """
    n, _, side, _ = images.shape
    on = generator.device  # the draws on the generator's device, the images' pixels on theirs
    scales = (min_scale + (max_scale - min_scale) * torch.rand(n, generator=generator, device=on)).tolist()
    offsets = torch.rand(n, 2, generator=generator, device=on).cpu()  # where the crop sits: a fraction of the room
    flips = ((torch.rand(n, generator=generator, device=on) < 0.5) & mirror).tolist()
    out = MEAN_PIXEL.to(images.device).view(1, 3, 1, 1).repeat(n, 1, crop, crop)
    for i in range(n):
        size = max(1, round(side * scales[i]))
        img = images[i : i + 1].float()
        if size != side:
            img = F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        img = img.round().clamp(0, 255).to(torch.uint8)[0]  # [3, size, size]
        room = abs(size - crop)
        y, x = (offsets[i] * (room + 1)).long().clamp(max=room).tolist()
        if size >= crop:
            out[i] = img[:, y : y + crop, x : x + crop]
        else:
            out[i, :, y : y + size, x : x + size] = img
        if flips[i]:
            out[i] = out[i].flip(-1)
    return out


def classification_ap(scores: np.ndarray, labels: np.ndarray, difficult: np.ndarray,
                      kind: str) -> tuple[float, np.ndarray]:
    """(mAP, per-class AP [C]) of VOC07 classification scores [N, C], difficult entries left out. kind "sklearn":
    train_cls.py's metric, average_precision_score(gt, score - 1e-5 * gt) per class (a positive tied with a
    negative ranks below it); "voc07" / "voc": the devkit's 11-point / envelope AP."""
    if kind != "sklearn":
        return multilabel_map(scores, labels, difficult, use_07_metric=kind == "voc07")
    positive = torch.as_tensor(np.asarray(labels) > 0)
    s = torch.as_tensor(np.asarray(scores, np.float64)) - 1e-5 * positive.double()
    ap = average_precision(s, positive, ~torch.as_tensor(np.asarray(difficult, bool))).numpy()
    return (float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan")), ap


# ---------------------------------------------------------------- the network


class FineTuneNet(nn.Module):
    """Trunk stages up to its classifier tap (AlexNet / VGG: fc7), split at the first trained stage, plus a new
    fc8 (dropout + Linear). `layers`: fc8 alone, the trunk's fully connected stages and fc8 ("fc6-8", from
    pool5 up; the released code's --train-from), or every layer."""

    def __init__(self, backbone: Backbone, layers: str, num_classes: int, cfg: VocClsConfig) -> None:
        super().__init__()
        stages = _stages_to_head(backbone)
        names = [name for name, _ in stages]
        first_fc = names.index(backbone.fc_stages[0]) if backbone.fc_stages else 0
        cut = {"fc8": len(stages), "fc6-8": first_fc, "all": 0}[layers]
        self.fc_names = backbone.fc_stages
        self.frozen = nn.Sequential(OrderedDict(stages[:cut]))
        self.trained = nn.Sequential(OrderedDict(stages[cut:]))
        dim = backbone.feature_info[backbone.head_tap].channels
        own_drop7 = bool(backbone.fc_stages) and layers != "fc8"
        self.fc8 = nn.Sequential(nn.Dropout(0.0 if own_drop7 else cfg.head_dropout), nn.Linear(dim, num_classes))
        nn.init.normal_(self.fc8[1].weight, 0.0, cfg.head_init_std)
        nn.init.constant_(self.fc8[1].bias, cfg.head_init_bias)
        self.frozen.requires_grad_(False)

    def train(self, mode: bool = True) -> FineTuneNet:
        super().train(mode)
        self.frozen.eval()  # frozen BatchNorm keeps its statistics, frozen dropout stays off
        return self

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            x = self.frozen(x)
        return self.fc8(self.trained(x))  # [N, 20]

    def param_groups(self, fc_lr_mult: float, bias_lr_mult: float) -> list[dict]:
        """Groups by (fully connected?, bias?): lr_scale fc_lr_mult on fc6..fc8, times bias_lr_mult on biases (the
        BatchNorm shifts count as biases, as Caffe's Scale layer bias); weight decay the same on all."""
        fc = {id(p) for name, m in self.trained.named_children() if name in self.fc_names for p in m.parameters()}
        fc |= {id(p) for p in self.fc8.parameters()}
        groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
        for name, p in [*self.trained.named_parameters(), *(("fc8." + n, p) for n, p in self.fc8.named_parameters())]:
            groups.setdefault((id(p) in fc, name.endswith("bias")), []).append(p)
        return [{"params": ps, "lr_scale": (fc_lr_mult if is_fc else 1.0) * (bias_lr_mult if is_bias else 1.0)}
                for (is_fc, is_bias), ps in groups.items()]


def _stages_to_head(backbone: Backbone) -> list[tuple[str, nn.Module]]:
    stages = backbone.stages()
    names = [name for name, _ in stages]
    return stages[: names.index(backbone.head_tap) + 1]


# ---------------------------------------------------------------- the protocol


@register_protocol("voc-cls", config=VocClsConfig)
class VocCls(Protocol):
    """VOC07 multi-label classification by fine-tuning fc8, fc6..fc8 or all layers (Krähenbühl et al.)."""

    name = "voc-cls"
    metric_keys = r"(fc8|fc6-8|all)/(mAP|AP/\w+)"

    def taps(self, backbone: Backbone) -> tuple[str, ...]:
        if backbone.feature_info[backbone.head_tap].stride:
            raise UserError(f"voc-cls puts fc8 on a vector; {backbone.name}'s classifier tap {backbone.head_tap!r} is "
                            "a feature map; use alexnet, vgg16 or resnet")
        if self.cfg.layers == "fc6-8" and not backbone.fc_stages:
            raise UserError(f"voc-cls layers=fc6-8 trains the trunk's fully connected layers; {backbone.name} has "
                            "none; use layers=fc8 or layers=all")
        return (backbone.head_tap,)

    def run(self, trunk: Trunk, recipe: Recipe, ctx: EvalContext) -> dict[str, float]:
        cfg, d = self.cfg, recipe.data
        if not 0 < cfg.min_scale <= cfg.max_scale:
            raise UserError(f"voc-cls: expected 0 < min_scale <= max_scale, found {cfg.min_scale}, {cfg.max_scale}")
        if cfg.test_crops < 1:
            raise UserError(f"voc-cls: test_crops must be >= 1, found {cfg.test_crops}")
        train_ds = build_dataset(d, d.train_split, d.num_images)
        test_ds = build_dataset(d, d.test_split, d.num_test)
        per_epoch = steps_per_epoch(len(train_ds), d.batch_size, "voc-cls")
        if trunk.backbone.fc_stages:
            trunk.backbone.set_fc_dropout(cfg.fc_dropout)
        net = FineTuneNet(trunk.backbone, cfg.layers, len(VOC_CLASSES), cfg)
        net = net.to(ctx.device)
        before = copy.deepcopy(net.frozen.state_dict())
        crop = trunk.backbone.image_size  # the fc layers are sized for this input
        steps = _fine_tune(net, train_ds, recipe, crop, trunk, ctx, per_epoch)
        sanity_check(net.frozen, before)
        scores, labels, difficult = _test_scores(net, test_ds, recipe, cfg, crop, trunk, ctx)
        mean_ap, per_class = classification_ap(scores, labels, difficult, cfg.ap)
        if math.isnan(mean_ap):
            raise UserError(f"voc-cls: the {d.test_split} split has no positive label for any class; "
                            "raise data.num_test or check the annotations")
        ctx.log.write(steps, {"mAP": 100.0 * mean_ap}, prefix="test")
        metrics = {self.key(cfg.layers, "mAP"): 100.0 * mean_ap}
        # A class with no positive test image has no AP (NaN): it gets no entry rather than a made-up 0.
        metrics.update({self.key(cfg.layers, "AP", name): 100.0 * float(ap)
                        for name, ap in zip(VOC_CLASSES, per_class) if np.isfinite(ap)})
        return metrics


def _fine_tune(net: FineTuneNet, ds: Dataset, recipe: Recipe, crop: int, trunk: Trunk, ctx: EvalContext,
               per_epoch: int) -> int:
    """Fine-tune the trained part of `net` on the fit loop; returns the number of optimizer steps."""
    cfg, d = recipe.component.cfg, recipe.data
    groups = net.param_groups(cfg.fc_lr_mult, cfg.bias_lr_mult)
    fit = Fit(f"voc-cls fine-tune ({cfg.layers})", net, groups, recipe, per_epoch, ctx)

    def prepare(batch: Any, step: int) -> tuple[Tensor, Tensor, Tensor] | None:
        _, (images, target) = batch
        if images.shape[0] * ctx.ddp.world < 2:  # corrupt files left less of a batch than BatchNorm can train on
            return None
        views = rescale_crop_flip(fit.on_batch_device(images), crop, cfg.min_scale, cfg.max_scale, cfg.mirror,
                                  fit.generator(step))
        return (trunk.prepare(views).to(ctx.device), target["labels"].to(ctx.device),
                target["difficult"].to(ctx.device))

    def loss(model: nn.Module, batch: tuple[Tensor, Tensor, Tensor], step: int) -> dict[str, Tensor]:
        x, labels, difficult = batch
        return {"loss": masked_bce(model(x), labels, difficult)}

    net.train()
    fit.run(lambda epoch, start: epoch_loader(ds, d.batch_size, recipe.seed, epoch, ctx.ddp, collate_skip_corrupt,
                                              d.workers, start, ctx.unreadable), prepare, loss)
    return fit.step


@torch.no_grad()
def _test_scores(net: FineTuneNet, ds: Dataset, recipe: Recipe, cfg: VocClsConfig, crop: int, trunk: Trunk,
                 ctx: EvalContext) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(scores [N,20] = mean fc8 output over the random test crops, labels [N,20], difficult [N,20]), in data set
    order; each rank scores its shard. Crop k of test image i is drawn from (seed, i, k) alone, so the scores
    do not depend on the batch size or the number of processes."""
    net.eval()
    on = batch_device(recipe.engine.batch_on, ctx.device)  # the crops' pixels there; their draws on the CPU, per image
    scores, labels, difficult, indices = [], [], [], []
    loader = shard_loader(ds, recipe.data.batch_size, ctx.ddp, collate_skip_corrupt, recipe.data.workers,
                          ctx.unreadable)
    with progress_bar(f"voc-cls test ({cfg.test_crops} crops)", len(loader), ctx.show) as advance:
        for index, (images, target) in loader:
            if images.shape[0] == 0:
                continue
            total, images = torch.zeros(images.shape[0], len(VOC_CLASSES)), to_device(images, on)
            for k in range(cfg.test_crops):
                views = torch.cat([rescale_crop_flip(images[j : j + 1], crop, cfg.min_scale, cfg.max_scale, cfg.mirror,
                                                     step_generator(recipe.seed + 1, int(i), k))
                                   for j, i in enumerate(index)])
                with autocast(ctx.device, recipe.engine.amp):
                    total += net(trunk.prepare(views).to(ctx.device)).float().cpu()
            scores.append(total / cfg.test_crops)
            labels.append(target["labels"])
            difficult.append(target["difficult"])
            indices.append(index)
            advance()
    rows = [gather_rows(indices, part, ctx.ddp).numpy() for part in (scores, labels, difficult)]
    if not len(rows[0]):
        raise UserError(f"voc-cls: no readable image in the {recipe.data.test_split} split; check the data set")
    return rows[0], rows[1], rows[2] > 0
