"""Faster R-CNN (Ren et al. 2015) on a ResNet trunk, the C4 layout of Detectron: the voc-det protocol's
`detector = "faster-rcnn"` (the Task Ensemble's PASCAL column, Doersch & Zisserman 2017).

Built on torchvision.models.detection: its RPN (one feature map, anchors of `anchor_sizes` x `aspect_ratios`), its
RoI heads (sampling, losses, post-processing) and its transform (multi-scale resize of the shorter side, drawn from
`train_scales` per image while training, `test_scale` at test). The trunk up to res4 is the body (stride 16); RoIs are
RoIAligned from res4 to 14 x 14, then res5 and the global pool are the box head (the trunk's own res5 where it has
one, else a res5 stage of the same kind, newly initialised: a trunk truncated after res4, as the Task Ensemble's),
then a 21-way classifier with class-specific boxes. The trunk's transfer input is applied before the transform, so
the transform only resizes (mean 0, std 1). Boxes: VOC's inclusive pixel corners become torchvision's continuous
ones (+1 on x1, y1) and back for sslbench.metrics.voc_eval (VOC07 11-point AP); difficult objects are left out of
training.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign

from sslbench.backbones.base import Backbone, build_backbone
from sslbench.backbones.lasso import lasso_groups, with_penalty
from sslbench.errors import UserError
from sslbench.protocols._detection import detect_shards, set_trainable
from sslbench.protocols.base import EvalContext
from sslbench.training import Fit, epoch_loader, steps_per_epoch

NUM_CLASSES = 20


class C4Body(nn.Module):
    """The trunk up to res4: uint8-prepared images -> {'0': res4} (what torchvision's RPN and RoI pool read)."""

    def __init__(self, trunk: Backbone) -> None:
        super().__init__()
        self.trunk = trunk
        self.out_channels = trunk.feature_info["res4"].channels

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"0": self.trunk(x, taps=("res4",))["res4"]}


class Res5Head(nn.Module):
    """RoI features [R, C, 14, 14] -> res5 (stride 2) -> [BN-ReLU for v2] -> global average -> [R, D]."""

    def __init__(self, res5: nn.Module, post: list[nn.Module], dim: int) -> None:
        super().__init__()
        self.res5, self.post = res5, nn.Sequential(*post)
        self.out_dim = dim

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.post(self.res5(x)), 1), 1)


def res5_head(trunk: Backbone) -> Res5Head:
    """The trunk's own res5 (and v2's postnorm), or a fresh res5 stage of its kind for a trunk ending at res4."""
    source = trunk
    if "res5" not in trunk.feature_info:
        cfg = getattr(trunk, "cfg", None)
        if cfg is None or not hasattr(cfg, "stages"):
            raise UserError(f"faster-rcnn: {trunk.name} has no res5 and no way to build one")
        source = build_backbone(trunk.name, dataclasses.replace(cfg, stages=4))
    post = [source.postnorm, nn.ReLU(inplace=True)] if getattr(source, "postnorm", None) is not None else []
    return Res5Head(source.layer4, post, source.feature_info["res5"].channels)


def build_faster_rcnn(trunk: Backbone, cfg: Any) -> FasterRCNN:
    if "res4" not in trunk.feature_info:
        raise UserError(f"voc-det detector = \"faster-rcnn\" reads a res4 map (ResNet's C4 layout); {trunk.name} has "
                        "none: use a resnet trunk, or detector = \"fast-rcnn\"")
    head = res5_head(trunk)
    channels = trunk.in_channels
    model = FasterRCNN(
        C4Body(trunk), num_classes=None,
        rpn_anchor_generator=AnchorGenerator((tuple(cfg.anchor_sizes),), (tuple(cfg.aspect_ratios),)),
        box_roi_pool=MultiScaleRoIAlign(["0"], 14, sampling_ratio=2), box_head=head,
        box_predictor=FastRCNNPredictor(head.out_dim, NUM_CLASSES + 1),
        min_size=tuple(cfg.train_scales), max_size=cfg.max_size_train, image_mean=[0.0] * channels,
        image_std=[1.0] * channels, rpn_pre_nms_top_n_train=cfg.rpn_pre_nms, rpn_post_nms_top_n_train=cfg.rpn_post_nms,
        rpn_pre_nms_top_n_test=cfg.rpn_pre_nms // 2, rpn_post_nms_top_n_test=cfg.rpn_post_nms // 2,
        box_batch_size_per_image=cfg.rois_per_image, box_positive_fraction=cfg.fg_fraction,
        box_score_thresh=cfg.score_thresh, box_nms_thresh=cfg.nms_iou, box_detections_per_img=cfg.max_per_image,
        box_fg_iou_thresh=cfg.fg_iou, box_bg_iou_thresh=cfg.bg_iou[1],
    )
    return model


def to_torchvision(target: dict[str, Tensor], flip_width: int = 0) -> dict[str, Tensor]:
    """A VOC target (inclusive pixel boxes, labels 0..19, difficult flags) -> torchvision's training target
    (continuous boxes, labels 1..20), difficult objects left out; `flip_width` > 0 mirrors the boxes."""
    keep = ~target["box_difficult"]
    boxes = target["boxes"][keep].clone()
    if flip_width:
        boxes[:, [0, 2]] = flip_width - 1 - boxes[:, [2, 0]]
    boxes[:, 2:] += 1.0
    return {"boxes": boxes, "labels": target["box_labels"][keep] + 1}


def train_faster(model: FasterRCNN, ds: Dataset, recipe: Any, cfg: Any, ctx: EvalContext,
                 prepare: Callable[[Tensor], Tensor]) -> int:
    d = recipe.data
    per_epoch = steps_per_epoch(len(ds), d.batch_size, "voc-det")  # type: ignore[arg-type]
    set_trainable(model, model.backbone.trunk, cfg, bn_affine=False)
    lasso = getattr(model.backbone.trunk, "lasso", None)  # an eval-side lasso's combination (sslbench.backbones.lasso)
    groups = lasso_groups([p for p in model.parameters() if p.requires_grad],
                          [lasso.alpha] if lasso is not None else [], cfg.lasso.lr_scale)
    fit = Fit("faster r-cnn train", model, groups, recipe, per_epoch, ctx)

    def sample(batch: Any, step: int) -> tuple[list[Tensor], list[dict[str, Tensor]]] | None:
        _, items = batch
        g = torch.Generator().manual_seed(recipe.seed * 100_003 + step * 101 + ctx.ddp.rank)
        images, targets = [], []
        for image, target in items:
            flip = cfg.flip and bool(torch.rand((), generator=g) < 0.5)
            t = to_torchvision(target, image.shape[-1] if flip else 0)
            if not len(t["boxes"]):
                continue
            x = prepare((image.flip(-1) if flip else image)[None])[0]
            images.append(x.to(ctx.device))
            targets.append({k: v.to(ctx.device) for k, v in t.items()})
        return (images, targets) if images else None

    def loss(net: nn.Module, b: tuple[list[Tensor], list[dict[str, Tensor]]], step: int) -> dict[str, Tensor]:
        parts = net(*b)
        out = {"loss": sum(parts.values()), **{k.removeprefix("loss_"): v.detach() for k, v in parts.items()}}
        return out if lasso is None else with_penalty(out, lasso.penalty(), cfg.lasso.l1)

    fit.run(lambda epoch, start: epoch_loader(ds, d.batch_size, recipe.seed, epoch, ctx.ddp, list, d.workers,
                                              start, ctx.unreadable), sample, loss)
    return fit.step


@torch.no_grad()
def detect_faster(model: FasterRCNN, ds: Dataset, cfg: Any, workers: int, prepare: Callable[[Tensor], Tensor],
                  ctx: EvalContext, amp: str = "off") -> tuple[list[Any], list[Any]]:
    """(detections, annotations) of every readable test image in voc_eval's format (inclusive pixel boxes, labels
    0..19), data set order; each rank detects its shard."""
    model.eval()
    model.transform.min_size = (cfg.test_scale,)
    model.transform.max_size = cfg.max_size_test

    def detect_one(i: int, image: Tensor) -> tuple[Any, Any, Any]:
        out = model([prepare(image[None])[0].to(ctx.device)])[0]
        boxes = out["boxes"].float().cpu()
        boxes[:, 2:] -= 1.0  # continuous corners -> VOC's inclusive pixels
        return boxes.numpy(), out["scores"].float().cpu().numpy(), (out["labels"].cpu() - 1).numpy()

    return detect_shards(ds, "faster r-cnn test", workers, ctx, amp, detect_one)
