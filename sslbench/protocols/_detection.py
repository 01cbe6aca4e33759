"""What both VOC detectors (Fast R-CNN in voc_det.py, Faster R-CNN in _faster_rcnn.py) share: which parts of the
model train, and the sharded one-image-at-a-time test loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn
from torch.utils.data import Dataset

from sslbench.backbones.base import Backbone
from sslbench.errors import UserError
from sslbench.progress import progress_bar
from sslbench.protocols.base import EvalContext
from sslbench.training import autocast, gather, shard_loader


def set_trainable(model: nn.Module, trunk: Backbone, cfg: Any, bn_affine: bool = True) -> None:
    """Train mode, except the trunk's frozen stages (weights and BN statistics) and, with freeze_bn, every BN of
    `model` (its affine trains unless `bn_affine` is false: Faster R-CNN's frozen BN, Detectron's C4)."""
    model.train()
    stages = dict(trunk.stages())
    for name in cfg.freeze:
        if name not in stages:
            raise UserError(f"voc-det freeze: the trunk has no stage {name!r}; its stages are {', '.join(stages)}")
        stages[name].eval()
        for p in stages[name].parameters():
            p.requires_grad_(False)
    if cfg.freeze_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
                if not bn_affine:
                    m.requires_grad_(False)


def detect_shards(ds: Dataset, what: str, workers: int, ctx: EvalContext, amp: str,
                  detect_one: Callable[[int, Tensor], Any]) -> tuple[list[Any], list[Any]]:
    """`detect_one(index, uint8 image)` -> (boxes, scores, labels) over this rank's shard of `ds`, one image at a
    time under autocast (the model as it trained: engine.amp), gathered back in data set order with each image's
    ground truth (boxes, labels, difficult) -> (detections, annotations)."""
    found, indices = [], []
    loader = shard_loader(ds, 1, ctx.ddp, list, workers, ctx.unreadable)
    with progress_bar(what, len(loader), ctx.show) as advance:
        for index, items in loader:
            for i, (image, target) in zip(index.tolist(), items):
                with autocast(ctx.device, amp):
                    detections = detect_one(i, image)
                truth = (target["boxes"].numpy(), target["box_labels"].numpy(), target["box_difficult"].numpy())
                found.append((detections, truth))
                indices.append(i)
            advance()
    pairs = gather(indices, found, ctx.ddp)
    return [p[0] for p in pairs], [p[1] for p in pairs]
