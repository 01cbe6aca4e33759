"""VOC2012 semantic segmentation with FCN-32s on a fine-tuned trunk (Long et al. 2015; the protocol of Zhang
et al. 2016, Pathak et al. 2016, Noroozi & Favaro 2016, Gidaris et al. 2018).

The trunk continues with its fully convolutional head (Backbone.fcn_head): for AlexNet and VGG-16, fc6
becomes a convolution whose kernel is the pool5 grid (its weights are fc6's Linear weights reshaped), fc7 a
1x1 convolution from fc7's Linear, and a BatchNorm1d of an fc layer a BatchNorm2d with the same affine and
running statistics (in eval mode both apply the same per-channel affine, so the conv layers compute what the
Linear layers computed on every pool5 window); a ResNet's res5 is its own head. A zero-initialised 1x1 score
layer gives 21 class maps, upsampled by the trunk's total stride with a transposed convolution initialised
as bilinear interpolation (kept fixed, as in the released FCN and colorization code: lr_mult 0), then cropped
to the input. The input is zero-padded (after mean subtraction: the mean colour) so that the coarse score map
covers the image: FCN's conv1 pad 100.

Every layer is fine-tuned with pixel-wise cross-entropy averaged over the labelled pixels (label 255,
VOC's object outlines, is ignored; Zhang et al.'s `normalize: true`). By default every BatchNorm keeps
its pretrained running statistics while its affine trains (`bn_train = false`): the same function class
as the BN-folded Caffe models the papers fine-tuned, and statistics not diluted by the padding.
Caffe's doubled learning rate for biases is not reproduced (BN trunks have no conv biases).
Training reads VOC2012 train, plus SBD's images when `sbd` is set (`--data sbd=PATH`): the union minus
VOC2012 val, "train_aug", as the papers trained.
Reports mIoU (%) over the 21 classes on the val split as 'voc-seg/mIoU' and per-class IoU (%) as
'voc-seg/IoU/<class>' (a class absent from both ground truth and predictions has no IoU and no key).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Annotated, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils.data import ConcatDataset, Dataset, Subset

from sslbench.backbones.base import Backbone, Geometry, conv_out, layer_geometry
from sslbench.checkpoint import Trunk
from sslbench.config import DataConfig, Dropout, In, Pixels, Recipe
from sslbench.data.build import embedded_root
from sslbench.data.classes import VOC_SEG_CLASSES
from sslbench.errors import UserError
from sslbench.metrics import confusion_matrix, mean_iou
from sslbench.progress import progress_bar
from sslbench.protocols.base import EvalContext, Protocol
from sslbench.registry import LAYOUTS, register_protocol
from sslbench.training import Fit, all_sum, autocast, epoch_loader, shard_loader, steps_per_epoch

SEG_CLASSES = VOC_SEG_CLASSES  # VOC's label order: 0 background, 1..20 the classes
IGNORE = 255  # VOC's label for object outlines and unlabelled pixels


@dataclass(frozen=True)
class VocSegConfig:
    pad: Pixels = 98  # zero padding around the input: + conv1's own 2 = FCN's conv1 pad 100, so scores cover the image
    bn_train: bool = False  # false: BatchNorm keeps pretrained statistics (BN folded, as the papers' Caffe models)
    learn_upsampling: bool = False  # FCN-32s and Zhang et al. keep the bilinear deconvolution fixed (lr_mult 0)
    fc_dropout: Dropout = 0.5  # the rate of drop6 / drop7 after the fc6 / fc7 convolutions (FCN's rate)
    # a dropout before the score layer beyond the trunk's own: 0 for AlexNet / VGG (their fc7 ends in drop7, which is
    # FCN's drop7); for a trunk without fc stages (ResNet's res5 head)
    score_dropout: Dropout = 0.0
    # the score layer's bias learns at this multiple of the rate, without weight decay (FCN's voc-fcn-alexnet/net.py:
    # score_fr param lr_mult 2, decay_mult 0; its other layers keep Caffe's 1 / 1)
    score_bias_lr_mult: Annotated[float, In(0, 1e6)] = 2.0
    # SBD (Hariharan et al. 2011) added to the training images, as in the papers: "" = VOC train alone, a path
    # (SBD's benchmark_RELEASE/dataset; `--data sbd=PATH` sets it), "embedded" (the embedded data in SBD layout),
    # or "required" (the paper recipe: train_aug, and a run without `--data sbd=PATH` is refused)
    sbd: str = ""
    # score at each val image's stored size, one image at a time (FCN / Zhang et al.: batch 1, native resolution);
    # false: the val images and masks squared to data.image_size (nearest for masks) like the training images
    native_test: bool = False


# ---------------------------------------------------------------- pure functions


def score_grid(layers: Sequence[Geometry]) -> tuple[int, float]:
    """(total stride S, centre of output cell 0 in input pixels): output cell j is centred on input pixel
    first + S * j (Caffe's coord_map composition; a pixel index is the coordinate of its centre)."""
    stride, first = 1, 0.0
    for k, s, p in layers:
        first += stride * ((k - 1) / 2 - p)
        stride *= s
    return stride, first


def output_size(layers: Sequence[Geometry], size: int) -> int:
    """Spatial side after `layers` (PyTorch's floor rounding)."""
    for k, s, p in layers:
        size = conv_out(size, k, s, p)
    return size


def bilinear_kernel(factor: int) -> Tensor:
    """[2f-1, 2f-1] bilinear interpolation weights for upsampling by f (FCN's upsample_filt; kernel 63 for
    f = 32): output pixel f-1 of each input's footprint sits exactly on that input, so crops are integers."""
    centre = factor - 1
    taps = 1.0 - (torch.arange(2 * factor - 1, dtype=torch.float64) - centre).abs() / factor  # [2f-1]
    return (taps[:, None] * taps[None, :]).float()


def bilinear_upsampler(channels: int, factor: int, learn: bool) -> nn.ConvTranspose2d:
    """Per-channel transposed convolution with stride f initialised as bilinear interpolation."""
    up = nn.ConvTranspose2d(channels, channels, 2 * factor - 1, stride=factor, groups=channels, bias=False)
    with torch.no_grad():
        up.weight.copy_(bilinear_kernel(factor).expand(channels, 1, -1, -1))  # [C, 1, 2f-1, 2f-1]
    up.weight.requires_grad_(learn)
    return up


def fcn_placement(layers: Sequence[Geometry], image_size: int, pad: int) -> tuple[int, int]:
    """(crop offset, extra padding at the far side) for an image padded by `pad` on every side.

    Cell j of the scores is centred on image pixel first - pad + S*j; the upsampler puts it at output
    S*j + S-1, so image pixel x lands at x + S-1 - (first - pad) (floored when the grid is half a pixel
    off). The offset depends on the near-side padding only; the far side gets the few extra pixels that
    put a score cell on or past the last image pixel, so no pixel is extrapolated towards the zeros
    beyond the last cell (FCN's 100 px and Caffe's ceil-mode pooling do this for VOC's images).
    """
    stride, first = score_grid(layers)
    offset = math.floor(stride - 1 - first + pad)
    if offset < 0:
        raise UserError(
            f"voc-seg: with pad {pad} the score map starts inside the image (crop offset {offset}); "
            f"set --set protocol.pad={math.ceil(first - stride + 1)} or more"
        )
    for extra in range(image_size + 4 * stride):
        cells = output_size(layers, image_size + 2 * pad + extra)
        if cells > 0 and first - pad + stride * (cells - 1) >= image_size - 1:  # implies the crop fits
            return offset, extra
    raise UserError(f"voc-seg: no padding makes the score map of a {image_size} px image cover it")


def pixel_loss(logits: Tensor, target: Tensor, ignore_index: int = IGNORE) -> Tensor:
    """Cross-entropy averaged over the labelled pixels; [N,K,H,W] logits, [N,H,W] labels. A batch with
    no labelled pixel gives 0 (not NaN): it carries no gradient instead of poisoning the weights."""
    per_pixel = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none")  # [N, H, W]
    labelled = (target != ignore_index).sum()
    return per_pixel.sum() / labelled.clamp(min=1)


# ---------------------------------------------------------------- the network


class FCN32s(nn.Module):
    """The trunk up to its FCN tap, its fully convolutional head, 1x1 scores, fixed bilinear x stride, crop."""

    def __init__(self, backbone: Backbone, cfg: VocSegConfig, image_size: int,
                 num_classes: int = len(SEG_CLASSES)) -> None:
        super().__init__()
        head = backbone.fcn_head(cfg.fc_dropout)
        self.trunk, self.pad, self.tap = backbone, cfg.pad, head.tap
        self.head = head.head
        backbone.freeze_after(head.tap)  # AlexNet's fc6 / fc7: their weights now live in the conv copies
        self.score = nn.Sequential(nn.Dropout(cfg.score_dropout), nn.Conv2d(head.dim, num_classes, 1))
        nn.init.zeros_(self.score[1].weight)  # FCN: zero-initialised class scores, no worse than random
        nn.init.zeros_(self.score[1].bias)
        self.layers = self.geometry()
        self.stride = score_grid(self.layers)[0]
        self.upsample = bilinear_upsampler(num_classes, self.stride, cfg.learn_upsampling)
        fcn_placement(self.layers, image_size, cfg.pad)  # a pad too small for the data fails before training
        self.bn_train = cfg.bn_train

    def geometry(self) -> list[Geometry]:
        return self.trunk.tap_geometry(self.tap) + layer_geometry(self.head) + layer_geometry(self.score)

    def forward(self, x: Tensor) -> Tensor:
        """Normalised images [N,C,H,W] -> class scores [N,K,H,W]."""
        h, w = x.shape[-2:]
        top, extra_h = fcn_placement(self.layers, h, self.pad)
        left, extra_w = fcn_placement(self.layers, w, self.pad)
        x = F.pad(x, (self.pad, self.pad + extra_w, self.pad, self.pad + extra_h))  # zeros = the mean colour
        maps = self.trunk(x, taps=(self.tap,))[self.tap]
        scores = self.upsample(self.score(self.head(maps)))  # [N, K, ~(H+2pad), ~(W+2pad)]
        return scores[..., top : top + h, left : left + w]

    def train(self, mode: bool = True) -> FCN32s:
        super().train(mode)
        if mode and not self.bn_train:
            for m in self.modules():
                if isinstance(m, _BatchNorm):
                    m.eval()
        return self


# ---------------------------------------------------------------- data, training, test


def segmentation_layouts() -> list[str]:
    """The data layouts with segmentation masks (sslbench.data.layouts)."""
    return [n for n in LAYOUTS.names() if LAYOUTS.get(n).segmentation is not None]


SBD_URL = "http://home.bharathh.info/pubs/codes/SBD/download.html"


def sbd_required() -> str:
    return (f"voc-seg: the paper setting trains on VOC2012 train + SBD (train_aug, 10582 images); pass --data "
            f"sbd=PATH (SBD's benchmark_RELEASE/dataset, from {SBD_URL}), or --set protocol.sbd='' for VOC2012 train "
            "alone (1464 images; the rows are then another recipe)")


def segmentation_data(d: DataConfig, sbd: str = "", native_test: bool = False) -> tuple[Dataset, Dataset]:
    """(train, val) segmentation sets: data.root, or the embedded data written in the data set's layout; with
    `sbd` (a path or "embedded") the training set is train_aug (see `train_aug`); `native_test`: val at the
    images' stored sizes."""
    if sbd == "required":
        raise UserError(sbd_required())
    if d.dataset not in segmentation_layouts() or d.dataset == "sbd":
        raise UserError(
            f"voc-seg trains and tests on VOC segmentation masks; data.dataset is {d.dataset!r}; "
            f"use one of {', '.join(n for n in segmentation_layouts() if n != 'sbd')} "
            "(e.g. --data voc2012=/path/to/VOCdevkit; SBD joins with --data sbd=PATH)"
        )
    if sbd == "embedded" and d.root:
        raise UserError(f"voc-seg: protocol.sbd=embedded pairs with the embedded VOC data, not {d.root}; "
                        "give the real SBD with --data sbd=PATH (its benchmark_RELEASE/dataset folder)")
    # embedded_root sizes a VOC layout for trainval = 2 x num_images; segmentation reads train alone.
    sized = replace(d, num_test=max(d.num_test, d.num_images))
    root = d.root or str(embedded_root(sized))
    pairs = LAYOUTS.get(d.dataset).segmentation
    train = pairs(root, d.train_split, d.image_size, 0 if sbd else d.num_images)
    val = pairs(root, d.test_split, 0 if native_test else d.image_size, d.num_test)
    for split, ds in ((d.train_split, train), (d.test_split, val)):
        if len(ds) == 0:
            raise UserError(f"voc-seg: the {d.dataset} {split} split under {root} lists no images")
    if sbd:
        sbd_root = str(embedded_root(sized, "sbd")) if sbd == "embedded" else sbd
        held_out = pairs(root, d.test_split, 0).ids  # every val id, not just the num_test read
        train = train_aug(train, sbd_root, held_out, d.image_size, d.num_images)
    return train, val


def train_aug(voc_train: Dataset, sbd_root: str, held_out: Sequence[str], image_size: int, num: int = 0) -> Dataset:
    """VOC train + SBD's train and val images, minus the VOC images tested on (`held_out`) and those VOC
    train already labels: the 10,582-image "train_aug" set of VOC2012 train + SBD (Long et al. 2015 train
    on SBD; Zhang et al. 2016 and the papers after them on VOC2012 train + SBD, testing on VOC2012 val).
    VOC's own mask wins where both exist (it marks object outlines 255). `num` > 0 caps the union."""
    skip = set(held_out) | set(getattr(voc_train, "ids", ()))
    parts = [voc_train]
    for split in ("train", "val"):
        extra = LAYOUTS.get("sbd").segmentation(sbd_root, split, image_size, exclude=skip)
        skip |= set(extra.ids)
        parts.append(extra)
    union = ConcatDataset(parts)
    return Subset(union, range(min(num, len(union)))) if num > 0 else union


def collate_pairs(batch: list[Any]) -> tuple[Tensor, Tensor]:
    """Stack (image, mask) pairs; None items (unreadable files, already warned about) are dropped."""
    items = [b for b in batch if b is not None]
    if not items:
        return torch.zeros(0, dtype=torch.uint8), torch.zeros(0, dtype=torch.int64)
    return torch.stack([i for i, _ in items]), torch.stack([m for _, m in items])


def check_masks(masks: Tensor, num_classes: int, split: str) -> None:
    bad = (masks != IGNORE) & ((masks < 0) | (masks >= num_classes))
    if bad.any():
        raise UserError(
            f"voc-seg: mask values must be 0..{num_classes - 1} or {IGNORE} (ignore); found "
            f"{int(masks[bad][0])} in the {split} split; SegmentationClass PNGs must hold class indices "
            "(palette or grey PNGs), not RGB colours"
        )


def train_fcn(model: FCN32s, trunk: Trunk, ds: Dataset, recipe: Recipe, ctx: EvalContext) -> None:
    d, num_classes = recipe.data, model.upsample.out_channels
    per_epoch = steps_per_epoch(len(ds), d.batch_size, "voc-seg")  # type: ignore[arg-type]
    cfg = recipe.component.cfg
    bias = model.score[1].bias  # score_fr's bias: lr_mult 2, decay_mult 0 (voc-fcn-alexnet/net.py)
    rest = [p for p in model.parameters() if p.requires_grad and p is not bias]
    groups = [{"params": rest}, {"params": [bias], "lr_scale": cfg.score_bias_lr_mult, "weight_decay": 0.0}]
    fit = Fit("fcn-32s fine-tune", model, groups, recipe, per_epoch, ctx)

    def prepare(batch: Any, step: int) -> tuple[Tensor, Tensor] | None:
        _, (images, masks) = batch
        if images.numel() == 0:
            return None
        check_masks(masks, num_classes, d.train_split)
        return trunk.prepare(fit.on_batch_device(images)).to(ctx.device), masks.to(ctx.device)

    def loss(net: nn.Module, batch: tuple[Tensor, Tensor], step: int) -> dict[str, Tensor]:
        x, y = batch
        return {"loss": pixel_loss(net(x).float(), y)}  # logits [N, K, H, W]

    model.train()
    fit.run(lambda epoch, start: epoch_loader(ds, d.batch_size, recipe.seed, epoch, ctx.ddp, collate_pairs, d.workers,
                                              start, ctx.unreadable), prepare, loss)


@torch.no_grad()
def test_confusion(model: FCN32s, trunk: Trunk, ds: Dataset, recipe: Recipe, ctx: EvalContext) -> np.ndarray:
    """[K, K] pixel counts over the split, rows = ground truth, columns = prediction."""
    model.eval()
    k = model.upsample.out_channels
    total = np.zeros((k, k), np.int64)
    native = recipe.component.cfg.native_test  # images of their own sizes: one at a time
    batch = 1 if native else recipe.data.batch_size
    loader = shard_loader(ds, batch, ctx.ddp, collate_pairs, recipe.data.workers, ctx.unreadable)
    with progress_bar("fcn-32s test", len(loader), ctx.show) as advance:
        for _, (images, masks) in loader:
            if images.numel():
                check_masks(masks, k, recipe.data.test_split)
                with autocast(ctx.device, recipe.engine.amp):
                    pred = model(trunk.prepare(images).to(ctx.device)).argmax(1)  # [N, H, W]
                total += confusion_matrix(pred.cpu(), masks, k, IGNORE)
            advance()
    return all_sum(torch.from_numpy(total), ctx.ddp, ctx.device).numpy()


@register_protocol("voc-seg", config=VocSegConfig)
class VocSeg(Protocol):
    """FCN-32s fine-tuning on VOC segmentation; mIoU over background + 20 classes."""

    name = "voc-seg"
    metric_keys = r"mIoU|IoU/\w+"

    def taps(self, backbone: Backbone) -> tuple[str, ...]:
        return (backbone.role("fcn_tap", "voc-seg"),)

    def preflight(self, recipe: Recipe) -> None:
        if self.cfg.sbd == "required":
            raise UserError(sbd_required())

    def run(self, trunk: Trunk, recipe: Recipe, ctx: EvalContext) -> dict[str, float]:
        train, val = segmentation_data(recipe.data, self.cfg.sbd, self.cfg.native_test)
        ctx.log.write(0, {"train_images": float(len(train)), "test_images": float(len(val))}, prefix="data")
        model = FCN32s(trunk.backbone, self.cfg, recipe.data.image_size).to(ctx.device)
        train_fcn(model, trunk, train, recipe, ctx)
        miou, iou = mean_iou(test_confusion(model, trunk, val, recipe, ctx))
        metrics = {self.key("mIoU"): 100.0 * miou}
        metrics.update({self.key("IoU", c): 100.0 * float(v) for c, v in zip(SEG_CLASSES, iou) if np.isfinite(v)})
        return metrics
