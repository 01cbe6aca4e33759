"""VOC07 detection transfer: Fast R-CNN (Girshick 2015) on the trunk, the protocol the papers used (and, with
`detector = "faster-rcnn"`, Faster R-CNN on a ResNet trunk: _faster_rcnn.py).

Selective-search proposals (_proposals.py) are pooled from the trunk's region head (AlexNet / VGG: RoI max
pooling of conv5 to the trunk's own pool5 grid, 6x6 for a 224 px AlexNet, then the trunk's fc6 and fc7;
ResNet: RoIAlign of res4 to 14x14, then res5 and the global pool, Detectron's C4 head), then a 21-way classifier
(background + 20) and class-specific box regression (84 outputs). Training: `data.batch_size` images per
step, `rois_per_image` RoIs each (25% foreground at IoU >= 0.5, background at IoU in [0.1, 0.5)), the
ground-truth boxes added to the proposals, difficult objects left out, random horizontal flip, each image's
shorter side drawn from `train_scales`; loss = cross-entropy + smooth L1 on the foreground RoIs' boxes.
Test: one scale, softmax scores, per-class decoded boxes, score threshold, per-class NMS, at most
`max_per_image` detections. Metric: VOC07 11-point AP at IoU 0.5, difficult objects ignored
(sslbench.metrics.voc_eval), as 'voc-det/mAP' and 'voc-det/AP/<class>' in percent.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset
from torchvision.ops import batched_nms, box_iou, roi_align, roi_pool

from sslbench.backbones.base import Backbone
from sslbench.backbones.lasso import LassoEval, lasso_view
from sslbench.checkpoint import Trunk
from sslbench.config import Dropout, In, Positive, Rate, Recipe, Weight
from sslbench.data.build import build_dataset
from sslbench.data.classes import VOC_CLASSES
from sslbench.errors import UserError
from sslbench.metrics import mean_ap, voc_eval
from sslbench.protocols._detection import detect_shards, set_trainable
from sslbench.protocols._proposals import as_tensor, clean_proposals, proposals_for
from sslbench.protocols.base import EvalContext, Protocol
from sslbench.registry import register_protocol
from sslbench.runtime import step_generator
from sslbench.training import Fit, epoch_loader, steps_per_epoch

NUM_CLASSES = len(VOC_CLASSES)  # 20 VOC classes; the classifier adds background as class 0
_PLUS_ONE = (0.0, 0.0, 1.0, 1.0)  # inclusive pixel corners -> exclusive: VOC's "+1" widths in torchvision's ops
_MAX_LOG_SCALE = math.log(1000.0 / 16.0)  # Detectron's clamp on dw, dh before exp


@dataclass(frozen=True)
class VOCDetConfig:
    # "fast-rcnn": selective-search proposals on the trunk's region head (the AlexNet-era papers' protocol);
    # "faster-rcnn": torchvision's Faster R-CNN, RPN on res4 and a res5 box head (ResNet trunks: _faster_rcnn.py)
    detector: Literal["fast-rcnn", "faster-rcnn"] = "fast-rcnn"
    # faster-rcnn only: eval-side lasso, the detector's body is a learned combination of res4's units (the Task
    # Ensemble's "eval lasso" rows; sslbench.backbones.lasso)
    lasso: LassoEval = LassoEval()
    # shorter side, one drawn per training image
    train_scales: tuple[Annotated[int, In(8, 8192)], ...] = (480, 576, 688, 864, 1200)
    test_scale: Annotated[int, In(8, 8192)] = 600  # shorter side at test (single scale)
    # cap on the longer side in training (Fast R-CNN's multi-scale cap)
    max_size_train: Annotated[int, In(8, 16384)] = 2000
    max_size_test: Annotated[int, In(8, 16384)] = 1000  # cap on the longer side at test
    proposals: str = ""  # precomputed proposals .npz (format: _proposals.py); "" = cached selective search
    max_proposals: Annotated[int, In(1, 100_000)] = 2000  # proposals kept per image, best-ranked first
    # drop proposals with a side under this many pixels (py-faster-rcnn: 2)
    min_proposal_size: Annotated[int, In(0, 8192)] = 2
    # drop6 / drop7 of the region head while it fine-tunes (Fast R-CNN's CaffeNet: 0.5, whatever the trunk's recipe)
    fc_dropout: Dropout = 0.5
    # selective search's fast mode (_proposals.py): OpenCV's (k 150, 300, 450) or R-CNN's (k 50, 100, min region k)
    search: Literal["opencv-fast", "rcnn-fast"] = "opencv-fast"
    # RoIs sampled per training image (Fast R-CNN: R = 128 over N = 2 images)
    rois_per_image: Annotated[int, In(1, 100_000)] = 64
    fg_fraction: Rate = 0.25  # share of foreground RoIs in a sample
    fg_iou: Rate = 0.5  # IoU with a ground-truth box from which a RoI is foreground
    bg_iou: tuple[Rate, Rate] = (0.1, 0.5)  # [low, high) IoU range of background RoIs
    flip: bool = True  # random horizontal flip of training images
    # box-target normalisation (dx, dy, dw, dh)
    box_stds: tuple[Positive, Positive, Positive, Positive] = (0.1, 0.1, 0.2, 0.2)
    box_loss_weight: Weight = 1.0  # weight of the smooth-L1 box loss against the classification loss
    freeze: tuple[str, ...] = ("conv1",)  # trunk stages left untrained (Fast R-CNN fine-tunes conv2 and up)
    freeze_bn: bool = False  # keep every BatchNorm on its running statistics instead of batch statistics
    score_thresh: Rate = 0.05  # class score below which a box is not a detection
    nms_iou: Rate = 0.3  # per-class non-maximum suppression IoU
    max_per_image: Annotated[int, In(1, 100_000)] = 100  # detections kept per image over all classes
    # faster-rcnn only: the RPN's anchors (one feature map: every size x every ratio) and its proposals kept before /
    # after NMS while training (half of each at test)
    anchor_sizes: tuple[Annotated[int, In(1, 8192)], ...] = (32, 64, 128, 256, 512)
    aspect_ratios: tuple[Positive, ...] = (0.5, 1.0, 2.0)
    rpn_pre_nms: Annotated[int, In(2, 100_000)] = 6000
    rpn_post_nms: Annotated[int, In(2, 100_000)] = 2000


# ---------------------------------------------------------------- box math (pure)


def inclusive_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU [N,M] of boxes with inclusive pixel corners (VOC's +1 convention), through torchvision's box_iou."""
    one = a.new_tensor(_PLUS_ONE)
    return box_iou(a + one, b + one)


def _centres(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    w = boxes[:, 2] - boxes[:, 0] + 1.0
    h = boxes[:, 3] - boxes[:, 1] + 1.0
    return boxes[:, 0] + 0.5 * w, boxes[:, 1] + 0.5 * h, w, h


def encode_boxes(rois: Tensor, gt: Tensor, stds: tuple[float, ...]) -> Tensor:
    """Fast R-CNN's regression targets [N,4]: (dx, dy) = centre shift / RoI size, (dw, dh) = log size ratio,
    each divided by its std (the means are 0)."""
    cx, cy, w, h = _centres(rois)
    gx, gy, gw, gh = _centres(gt)
    deltas = torch.stack([(gx - cx) / w, (gy - cy) / h, torch.log(gw / w), torch.log(gh / h)], dim=1)
    return deltas / deltas.new_tensor(stds)


def decode_boxes(rois: Tensor, deltas: Tensor, stds: tuple[float, ...]) -> Tensor:
    """Inverse of encode_boxes: RoIs [N,4] moved by normalised deltas [N,4] -> boxes [N,4] (inclusive corners)."""
    d = deltas * deltas.new_tensor(stds)
    cx, cy, w, h = _centres(rois)
    px, py = cx + d[:, 0] * w, cy + d[:, 1] * h
    pw, ph = w * torch.exp(d[:, 2].clamp(max=_MAX_LOG_SCALE)), h * torch.exp(d[:, 3].clamp(max=_MAX_LOG_SCALE))
    # "- 1": the inclusive far corner (Detectron; py-faster-rcnn omits it, which shifts boxes by one pixel).
    return torch.stack([px - 0.5 * pw, py - 0.5 * ph, px + 0.5 * pw - 1.0, py + 0.5 * ph - 1.0], dim=1)


def flip_boxes(boxes: Tensor, width: int) -> Tensor:
    """Boxes [N,4] of an image `width` pixels wide, mirrored left-right."""
    return torch.stack([width - 1 - boxes[:, 2], boxes[:, 1], width - 1 - boxes[:, 0], boxes[:, 3]], dim=1)


def image_scale(height: int, width: int, shorter: int, max_size: int) -> float:
    """Factor that brings the shorter side to `shorter` px unless the longer one would pass `max_size`."""
    scale = shorter / min(height, width)
    if round(scale * max(height, width)) > max_size:
        scale = max_size / max(height, width)
    return scale


@dataclass
class RoiSample:
    rois: Tensor  # [R,4] the chosen proposals / ground-truth boxes, foreground first
    labels: Tensor  # [R] int64: 0 background, 1..20 = VOC class + 1
    gt: Tensor  # [R,4] the ground-truth box each RoI overlaps most (its regression target's box)


def sample_rois(
    proposals: Tensor, gt_boxes: Tensor, gt_classes: Tensor, num: int, fg_fraction: float, fg_iou: float,
    bg_iou: tuple[float, float], generator: torch.Generator,
) -> RoiSample:
    """Fast R-CNN's RoI sampling for one image: the ground truth joins the proposals; up to
    round(fg_fraction * num) foreground RoIs (IoU >= fg_iou), the rest background (IoU in [bg_iou)),
    each drawn without replacement; fewer when an image has too few candidates."""
    boxes = torch.cat([gt_boxes, proposals])
    if len(gt_boxes):
        overlap, assigned = inclusive_iou(boxes, gt_boxes).max(dim=1)
    else:
        overlap, assigned = boxes.new_zeros(len(boxes)), torch.zeros(len(boxes), dtype=torch.int64)
    fg = torch.nonzero(overlap >= fg_iou).flatten()
    bg = torch.nonzero((overlap >= bg_iou[0]) & (overlap < bg_iou[1])).flatten()
    n_fg = min(round(fg_fraction * num), len(fg))
    fg = fg[torch.randperm(len(fg), generator=generator)[:n_fg]]
    bg = bg[torch.randperm(len(bg), generator=generator)[: min(num - n_fg, len(bg))]]
    keep = torch.cat([fg, bg])
    labels = torch.zeros(len(keep), dtype=torch.int64)
    labels[:n_fg] = gt_classes[assigned[fg]] + 1
    gt = gt_boxes[assigned[keep]] if len(gt_boxes) else boxes.new_zeros(len(keep), 4)
    return RoiSample(boxes[keep], labels, gt)


def fast_rcnn_loss(scores: Tensor, deltas: Tensor, labels: Tensor, targets: Tensor,
                   box_weight: float) -> dict[str, Tensor]:
    """Softmax cross-entropy over all RoIs + smooth L1 (sigma 1) on the true class's box of the foreground
    RoIs, summed over coordinates and divided by the number of RoIs (Fast R-CNN's normalisation)."""
    cls = F.cross_entropy(scores, labels)
    fg = labels > 0
    pred = deltas.view(len(labels), -1, 4)[fg, labels[fg]]  # [F,4]
    box = F.smooth_l1_loss(pred, targets[fg], beta=1.0, reduction="sum") / max(1, len(labels))
    acc = (scores.detach().argmax(1) == labels).float().mean()
    return {"loss": cls + box_weight * box, "loss_cls": cls.detach(), "loss_box": box.detach(), "acc": acc,
            "fg": fg.float().mean()}


def postprocess(
    proposals: Tensor, probs: Tensor, deltas: Tensor, height: int, width: int, cfg: VOCDetConfig,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's proposals [P,4] with class probabilities [P,21] and deltas [P,84] -> detections
    (boxes [k,4], scores [k], labels [k] in 0..19): per-class boxes clipped to the image, scores above
    the threshold, per-class NMS, then the `max_per_image` best."""
    p = len(proposals)
    boxes = decode_boxes(proposals.repeat_interleave(NUM_CLASSES + 1, 0), deltas.reshape(-1, 4), cfg.box_stds)
    boxes = boxes.view(p, NUM_CLASSES + 1, 4)[:, 1:]  # [P,20,4] background's column dropped
    boxes[..., 0::2] = boxes[..., 0::2].clamp(0, width - 1)
    boxes[..., 1::2] = boxes[..., 1::2].clamp(0, height - 1)
    scores = probs[:, 1:]  # [P,20]
    idx, cls = torch.nonzero(scores > cfg.score_thresh, as_tuple=True)
    b, s = boxes[idx, cls], scores[idx, cls]
    keep = batched_nms(b + b.new_tensor(_PLUS_ONE), s, cls, cfg.nms_iou)[: cfg.max_per_image]  # sorted by score
    return b[keep].numpy(), s[keep].numpy(), cls[keep].numpy()


# ---------------------------------------------------------------- the network


class FastRCNN(nn.Module):
    """Trunk up to its region tap -> RoI pooling to the region grid -> the region head (AlexNet: trunk fc6, fc7)
    -> class scores, box deltas."""

    def __init__(self, trunk: Backbone) -> None:
        super().__init__()
        region = trunk.region_head()
        self.trunk, self.tap, self.grid, self.align = trunk, region.tap, region.grid, region.align
        self.head = region.head  # the trunk's own stages: fine-tuning them fine-tunes the trunk
        self.spatial_scale = 1.0 / region.stride
        dim = region.dim
        self.cls_score = nn.Linear(dim, NUM_CLASSES + 1)
        self.bbox_pred = nn.Linear(dim, 4 * (NUM_CLASSES + 1))
        nn.init.normal_(self.cls_score.weight, std=0.01)  # Fast R-CNN's initialisation of the new layers
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, images: Tensor, rois: Tensor) -> tuple[Tensor, Tensor]:
        """images [N,3,H,W], rois [R,5] (image index, x0, y0, x1, y1 in pixels of `images`) -> [R,21], [R,84]."""
        maps = self.trunk(images, taps=(self.tap,))[self.tap]
        pool = roi_align if self.align else roi_pool
        pooled = pool(maps, rois, self.grid, self.spatial_scale)  # [R, C, grid, grid]
        features = self.head(pooled)  # [R, D]
        return self.cls_score(features), self.bbox_pred(features)


def resize_image(image: Tensor, scale: float) -> Tensor:
    """uint8 [3,H,W] -> uint8 [3,round(H*scale),round(W*scale)], bilinear (cv2.INTER_LINEAR, as Fast R-CNN)."""
    h, w = image.shape[1:]
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    if size == (h, w):
        return image
    out = F.interpolate(image[None].float(), size=size, mode="bilinear", align_corners=False)[0]
    return out.round().clamp(0, 255).to(torch.uint8)


def image_blob(images: list[Tensor], prepare: Callable[[Tensor], Tensor]) -> Tensor:
    """Trunk inputs of differently sized images, zero-padded at the bottom / right into one [N,C,H,W]
    (zero = the mean pixel after normalisation, as Caffe's im_list_to_blob)."""
    prepared = [prepare(im[None])[0] for im in images]
    h, w = max(p.shape[1] for p in prepared), max(p.shape[2] for p in prepared)
    blob = prepared[0].new_zeros(len(prepared), prepared[0].shape[0], h, w)
    for i, p in enumerate(prepared):
        blob[i, :, : p.shape[1], : p.shape[2]] = p
    return blob


# ---------------------------------------------------------------- data


@dataclass
class TrainBatch:
    images: Tensor  # [N,3,H,W] trunk inputs
    rois: Tensor  # [R,5] image index, x0, y0, x1, y1 in pixels of `images`
    labels: Tensor  # [R] 0 background, 1..20
    targets: Tensor  # [R,4] normalised regression targets (zero rows for background)


def training_batch(items: list[tuple[int, Any]], proposals: list[np.ndarray], cfg: VOCDetConfig,
                   prepare: Callable[[Tensor], Tensor], generator: torch.Generator) -> TrainBatch:
    """A Fast R-CNN mini-batch of (data set index, item)s: per image a flip, a scale and a RoI sample, then one
    zero-padded blob."""
    images, rois, labels, targets = [], [], [], []
    for k, (i, (image, target)) in enumerate(items):
        easy = ~target["box_difficult"]  # py-faster-rcnn trains without the difficult objects (use_diff = False)
        gt, classes = target["boxes"][easy], target["box_labels"][easy]
        props = image_proposals(proposals[i], image, cfg)
        h, w = image.shape[1:]
        if cfg.flip and bool(torch.rand((), generator=generator) < 0.5):
            image, gt, props = image.flip(-1), flip_boxes(gt, w), flip_boxes(props, w)
        shorter = cfg.train_scales[int(torch.randint(len(cfg.train_scales), (), generator=generator))]
        scale = image_scale(h, w, shorter, cfg.max_size_train)
        s = sample_rois(props, gt, classes, cfg.rois_per_image, cfg.fg_fraction, cfg.fg_iou, cfg.bg_iou, generator)
        images.append(resize_image(image, scale))
        rois.append(torch.cat([torch.full((len(s.rois), 1), float(k)), s.rois * scale], dim=1))
        labels.append(s.labels)
        targets.append(encode_boxes(s.rois, s.gt, cfg.box_stds) * (s.labels > 0).unsqueeze(1))
    return TrainBatch(image_blob(images, prepare), torch.cat(rois), torch.cat(labels), torch.cat(targets))


def _proposals(ds: Dataset, cfg: VOCDetConfig, recipe: Recipe, split: str, ctx: EvalContext) -> list[np.ndarray]:
    """Every image's raw proposals; under torchrun rank 0 searches (and caches) first, the others read its cache."""
    d = recipe.data

    def find() -> list[np.ndarray]:
        return proposals_for(ds, cfg.proposals, f"{d.dataset}-{split}", d.image_size, f"synth_seed={d.synth_seed}",
                             d.workers, ctx.show, cfg.search)

    if not ctx.ddp.enabled:
        return find()
    found = find() if ctx.ddp.is_main else []
    torch.distributed.barrier()
    return found if ctx.ddp.is_main else find()


def image_proposals(raw: np.ndarray, image: Tensor, cfg: VOCDetConfig) -> Tensor:
    """One image's stored proposals, clipped, filtered and capped against the image at hand -> [K,4]."""
    h, w = image.shape[1:]
    return as_tensor(clean_proposals(raw, w, h, cfg.min_proposal_size, cfg.max_proposals))


# ---------------------------------------------------------------- train / test


def _as_list(items: list[Any]) -> list[Any]:
    return items  # Fast R-CNN batches are lists of differently sized images


def train(model: FastRCNN, ds: Dataset, proposals: list[np.ndarray], recipe: Recipe, cfg: VOCDetConfig,
          ctx: EvalContext, prepare: Callable[[Tensor], Tensor]) -> int:
    """Fine-tune on the training split on the fit loop; returns the number of optimizer steps."""
    d = recipe.data
    per_epoch = steps_per_epoch(len(ds), d.batch_size, "voc-det")  # type: ignore[arg-type]
    set_trainable(model, model.trunk, cfg)
    fit = Fit("fast r-cnn train", model, [{"params": [p for p in model.parameters() if p.requires_grad]}], recipe,
              per_epoch, ctx)

    def sample(batch: Any, step: int) -> TrainBatch | None:
        indices, items = batch
        gen = step_generator(recipe.seed, step, ctx.ddp.rank)
        b = training_batch(list(zip(indices.tolist(), items)), proposals, cfg, prepare, gen) if items else None
        if b is None or len(b.labels) < 2:  # BatchNorm1d in fc6/fc7 needs two RoIs
            return None
        return TrainBatch(*(t.to(ctx.device) for t in (b.images, b.rois, b.labels, b.targets)))

    def loss(net: nn.Module, b: TrainBatch, step: int) -> dict[str, Tensor]:
        scores, deltas = net(b.images, b.rois)
        return fast_rcnn_loss(scores, deltas, b.labels, b.targets, cfg.box_loss_weight)

    fit.run(lambda epoch, start: epoch_loader(ds, d.batch_size, recipe.seed, epoch, ctx.ddp, _as_list, d.workers,
                                              start, ctx.unreadable), sample, loss)
    return fit.step


@torch.no_grad()
def detect_image(model: FastRCNN, image: Tensor, raw_proposals: np.ndarray, cfg: VOCDetConfig,
                 prepare: Callable[[Tensor], Tensor],
                 device: torch.device) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One uint8 image [3,H,W] at the test scale, alone in its forward pass as in Fast R-CNN's test_net (no
    padding next to a larger image) -> (boxes [k,4], scores [k], labels [k]) in the image's own pixels."""
    props = image_proposals(raw_proposals, image, cfg)
    scale = image_scale(image.shape[1], image.shape[2], cfg.test_scale, cfg.max_size_test)
    rois = torch.cat([torch.zeros(len(props), 1), props * scale], dim=1)
    if len(props):
        scores, deltas = model(image_blob([resize_image(image, scale)], prepare).to(device), rois.to(device))
        probs, deltas = F.softmax(scores.float(), 1).cpu(), deltas.float().cpu()
    else:
        probs, deltas = torch.zeros(0, NUM_CLASSES + 1), torch.zeros(0, 4 * (NUM_CLASSES + 1))
    return postprocess(props, probs, deltas, image.shape[1], image.shape[2], cfg)


def detect(model: FastRCNN, ds: Dataset, proposals: list[np.ndarray], cfg: VOCDetConfig, workers: int,
           prepare: Callable[[Tensor], Tensor], ctx: EvalContext, amp: str = "off") -> tuple[list[Any], list[Any]]:
    """Detections and ground truth of every readable test image, in voc_eval's format and data set order (each
    rank detects its shard)."""
    model.eval()
    return detect_shards(ds, "fast r-cnn test", workers, ctx, amp,
                         lambda i, image: detect_image(model, image, proposals[i], cfg, prepare, ctx.device))


def detection_metrics(detections: list[Any], annotations: list[Any]) -> dict[str, float]:
    """'voc-det/mAP' and 'voc-det/AP/<class>' (percent); a class without a non-difficult test object has no
    AP and is left out (the results store holds numbers only), as it is left out of the mean."""
    aps = voc_eval(detections, annotations, iou_threshold=0.5, use_07_metric=True, num_classes=NUM_CLASSES,
                   pixel_plus_one=True)
    if not any(np.isfinite(v) for v in aps.values()):
        raise UserError("voc-det: the test split has no non-difficult object, so there is no AP to measure; "
                        "raise data.num_test or check the annotations")
    metrics = {"voc-det/mAP": 100.0 * mean_ap(aps)}
    metrics.update({f"voc-det/AP/{VOC_CLASSES[c]}": 100.0 * v for c, v in aps.items() if np.isfinite(v)})
    return metrics


def check_config(cfg: VOCDetConfig) -> None:
    """Refuse settings that would train on nothing or sample the wrong RoIs, naming the key."""
    lo, hi = cfg.bg_iou
    problems = [
        (not cfg.train_scales or min(cfg.train_scales) < 1, "train_scales", "a list of shorter-side lengths in pixels"),
        (cfg.test_scale < 1, "test_scale", "a shorter-side length in pixels"),
        (cfg.rois_per_image < 2, "rois_per_image", "at least 2"),
        (not 0.0 <= cfg.fg_fraction <= 1.0, "fg_fraction", "a fraction in [0, 1]"),
        (not 0.0 <= lo < hi <= cfg.fg_iou, "bg_iou", f"[low, high) with 0 <= low < high <= fg_iou ({cfg.fg_iou})"),
        (cfg.max_proposals < 1, "max_proposals", "at least 1"),
    ]
    for bad, key, expected in problems:
        if bad:
            raise UserError(f"voc-det: {key} = {getattr(cfg, key)!r}; expected {expected}")
    if cfg.lasso.enabled and (cfg.detector != "faster-rcnn" or cfg.lasso.stage != "res4"):
        raise UserError(f"voc-det: protocol.lasso combines the units of the detector's body, res4 of Faster R-CNN; "
                        f"found detector = {cfg.detector!r}, lasso.stage = {cfg.lasso.stage!r}: set detector = "
                        "\"faster-rcnn\" and lasso.stage = \"res4\", or lasso.enabled = false")


@register_protocol("voc-det", config=VOCDetConfig)
class VOCDetection(Protocol):
    """VOC07 detection with Fast R-CNN (selective search, RoI pooling, the trunk's region head)."""

    name = "voc-det"
    metric_keys = r"mAP|AP/\w+"
    stored_image_size = True  # data.image_size = 0: the photos at their stored sizes (the paper recipe)

    def taps(self, backbone: Backbone) -> tuple[str, ...]:
        if self.cfg.detector == "faster-rcnn":
            return ("res4",) if "res4" in backbone.feature_info else (backbone.role("region_tap", "voc-det"),)
        return (backbone.role("region_tap", "voc-det"),)

    def preflight(self, recipe: Recipe) -> None:
        check_config(self.cfg)

    def run(self, trunk: Trunk, recipe: Recipe, ctx: EvalContext) -> dict[str, float]:
        d, cfg = recipe.data, self.cfg
        check_config(cfg)
        if d.image_size == 0 and not d.root:
            raise UserError(f"voc-det at original image sizes (data.image_size = 0) reads {d.dataset} from disk: "
                            f"pass --data {d.dataset}=/path/holding/VOCdevkit, or use the mini recipe")
        train_ds = build_dataset(d, d.train_split, d.num_images)
        test_ds = build_dataset(d, d.test_split, d.num_test)
        if cfg.detector == "faster-rcnn":
            from sslbench.protocols._faster_rcnn import build_faster_rcnn, detect_faster, train_faster

            lasso = self.lasso()
            body = trunk.backbone if lasso is None else lasso_view(trunk.backbone, lasso, "voc-det: protocol.lasso")
            frcnn = build_faster_rcnn(body, cfg).to(ctx.device)  # type: ignore[arg-type]
            steps = train_faster(frcnn, train_ds, recipe, cfg, ctx, trunk.prepare)
            detections, annotations = detect_faster(frcnn, test_ds, cfg, d.workers, trunk.prepare, ctx,
                                                    recipe.engine.amp)
            metrics = detection_metrics(detections, annotations)
            ctx.log.write(steps, {"mAP": metrics["voc-det/mAP"], "test_images": len(detections)}, prefix="test")
            return metrics
        train_props = _proposals(train_ds, cfg, recipe, d.train_split, ctx)
        test_props = _proposals(test_ds, cfg, recipe, d.test_split, ctx)
        if trunk.backbone.fc_stages:
            trunk.backbone.set_fc_dropout(self.cfg.fc_dropout)
        model = FastRCNN(trunk.backbone).to(ctx.device)
        steps = train(model, train_ds, train_props, recipe, cfg, ctx, trunk.prepare)
        detections, annotations = detect(model, test_ds, test_props, cfg, d.workers, trunk.prepare, ctx,
                                         recipe.engine.amp)
        metrics = detection_metrics(detections, annotations)
        ctx.log.write(steps, {"mAP": metrics["voc-det/mAP"], "test_images": len(detections)}, prefix="test")
        return metrics
