"""Evaluation metrics of the transfer protocols, as pure functions (numpy; torch where batched or on device).

Each function reproduces the reference code the papers' numbers come from, quirks included:
- `voc_ap`, `voc_eval`: py-faster-rcnn `lib/datasets/voc_eval.py` (a port of the VOC devkit's
  `VOCevaldet.m` / `VOCap.m`), used for Fast R-CNN detection transfer.
- `multilabel_map`: the devkit's `VOCevalcls.m`, used for VOC07 classification and the linear SVMs.
- `confusion_matrix`, `mean_iou`: FCN's `score.py` (`fast_hist`), used for VOC2012 segmentation.
- `average_precision`: scikit-learn's `average_precision_score` (no interpolation), batched over columns:
  the score `cross_val_score(..., scoring="average_precision")` gives, used to pick the SVMs' C.

Classes without any positive (detection, classification) or absent from both ground truth and
prediction (segmentation) get NaN and are left out of the mean, instead of silently counting as 0: the VOC
devkit divides by the number of positives, so it defines no AP for such a class (VOC never has one), and a
made-up 0 would pull the mean down for a class that was never measured (FCN's score.py: nanmean).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from sslbench.errors import UserError

ArrayLike = np.ndarray | Sequence[float]
# One image's detections: boxes [k, 4] (x1, y1, x2, y2), scores [k], labels [k].
Detections = tuple[np.ndarray, np.ndarray, np.ndarray]
# One image's ground truth: boxes [m, 4], labels [m], difficult [m] (bool).
Annotations = tuple[np.ndarray, np.ndarray, np.ndarray]

# py-faster-rcnn builds the 11 recall thresholds with np.arange, so 0.3, 0.6 and 0.7 sit one ulp
# above their decimal value; kept as is so APs match that code bit for bit.
_VOC07_RECALL_THRESHOLDS = np.arange(0.0, 1.1, 0.1)


def voc_ap(recall: ArrayLike, precision: ArrayLike, use_07_metric: bool = True) -> float:
    """AP from a precision/recall curve ordered by decreasing score.

    use_07_metric: VOC2007 11-point interpolation, mean over t in {0, 0.1, .., 1} of the max
    precision at recall >= t (0 when no point reaches t). Otherwise VOC2010+: area under the
    monotone (right-to-left running max) precision envelope.
    """
    rec, prec = np.asarray(recall, np.float64), np.asarray(precision, np.float64)
    if use_07_metric:
        ap = 0.0
        for t in _VOC07_RECALL_THRESHOLDS:
            reached = rec >= t
            ap += (prec[reached].max() if reached.any() else 0.0) / 11.0
        return float(ap)
    mrec = np.concatenate(([0.0], rec, [1.0]))
    mpre = np.concatenate(([0.0], prec, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    step = np.flatnonzero(mrec[1:] != mrec[:-1])  # recall changes: one rectangle each
    return float(np.sum((mrec[step + 1] - mrec[step]) * mpre[step + 1]))


def _ranked_ap(is_tp: np.ndarray, is_fp: np.ndarray, npos: int, use_07_metric: bool) -> float:
    """AP of a ranked list of tp/fp flags (entries that are neither still occupy a rank)."""
    if npos == 0:
        return float("nan")
    tp, fp = np.cumsum(is_tp, dtype=np.float64), np.cumsum(is_fp, dtype=np.float64)
    # eps: a list that opens with "don't care" entries has precision 0 there, not 0/0.
    prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return voc_ap(tp / npos, prec, use_07_metric)


def box_iou(box: np.ndarray, boxes: np.ndarray, pixel_plus_one: bool = True) -> np.ndarray:
    """IoU of one box [4] against boxes [m, 4]; +1 counts both end pixels of VOC's integer boxes."""
    one = 1.0 if pixel_plus_one else 0.0
    iw = np.maximum(np.minimum(boxes[:, 2], box[2]) - np.maximum(boxes[:, 0], box[0]) + one, 0.0)
    ih = np.maximum(np.minimum(boxes[:, 3], box[3]) - np.maximum(boxes[:, 1], box[1]) + one, 0.0)
    inter = iw * ih
    area = (box[2] - box[0] + one) * (box[3] - box[1] + one)
    areas = (boxes[:, 2] - boxes[:, 0] + one) * (boxes[:, 3] - boxes[:, 1] + one)
    return inter / (area + areas - inter)


def _class_ap(
    detections: Sequence[Detections],
    annotations: Sequence[Annotations],
    cls: int,
    iou_threshold: float,
    use_07_metric: bool,
    pixel_plus_one: bool,
) -> float:
    """py-faster-rcnn `voc_eval` for one class."""
    gts = [(np.asarray(b, np.float64).reshape(-1, 4)[np.asarray(c) == cls], np.asarray(d, bool)[np.asarray(c) == cls])
           for b, c, d in annotations]
    npos = sum(int((~difficult).sum()) for _, difficult in gts)
    image, score, box = [np.zeros(0, np.int64)], [np.zeros(0)], [np.zeros((0, 4))]
    for i, (boxes, scores, labels) in enumerate(detections):
        keep = np.asarray(labels) == cls
        image.append(np.full(int(keep.sum()), i, np.int64))
        score.append(np.asarray(scores, np.float64)[keep])
        box.append(np.asarray(boxes, np.float64).reshape(-1, 4)[keep])
    image, score, box = np.concatenate(image), np.concatenate(score), np.concatenate(box)
    # Stable sort: equal scores keep image order, as MATLAB's sort in the devkit does.
    order = np.argsort(-score, kind="stable")
    matched = [np.zeros(len(d), bool) for _, d in gts]
    is_tp, is_fp = np.zeros(len(order), bool), np.zeros(len(order), bool)
    for rank, d in enumerate(order):
        gt_boxes, difficult = gts[image[d]]
        if len(gt_boxes) == 0:
            is_fp[rank] = True
            continue
        iou = box_iou(box[d], gt_boxes, pixel_plus_one)
        j = int(np.argmax(iou))  # the best gt only, even if taken: a duplicate is a false positive
        if iou[j] <= iou_threshold:  # py-faster-rcnn: `ovmax > ovthresh` (the devkit uses >=)
            is_fp[rank] = True
        elif difficult[j]:
            continue  # a hit on a difficult object is neither rewarded nor punished
        elif matched[image[d]][j]:
            is_fp[rank] = True
        else:
            is_tp[rank] = matched[image[d]][j] = True
    return _ranked_ap(is_tp, is_fp, npos, use_07_metric)


def voc_eval(
    detections: Sequence[Detections],
    annotations: Sequence[Annotations],
    iou_threshold: float = 0.5,
    use_07_metric: bool = True,
    num_classes: int = 20,
    pixel_plus_one: bool = True,
) -> dict[int, float]:
    """Per-class detection AP, py-faster-rcnn `voc_eval` semantics (VOC devkit `VOCevaldet`).

    detections[i] = (boxes [k, 4], scores [k], labels [k]) and annotations[i] = (boxes [m, 4],
    labels [m], difficult [m]) for the same image i. Per class: detections ranked by score over
    all images; each is matched to its highest-IoU ground-truth box of that class in its image;
    IoU > iou_threshold on an unmatched non-difficult box is a TP, on a difficult box nothing,
    otherwise (no overlap, or the box was already matched) a FP. Recall is over non-difficult
    boxes. A class with no non-difficult box has AP NaN. pixel_plus_one: VOC's inclusive
    integer-pixel box convention; False for continuous coordinates.
    """
    if len(detections) != len(annotations):
        raise UserError(
            f"voc_eval: expected one detections entry per annotated image, found "
            f"{len(detections)} detections for {len(annotations)} images; pass an empty "
            "(boxes [0, 4], scores [0], labels [0]) tuple for images with no detection."
        )
    return {
        c: _class_ap(detections, annotations, c, iou_threshold, use_07_metric, pixel_plus_one)
        for c in range(num_classes)
    }


def mean_ap(per_class_ap: dict[int, float]) -> float:
    """mAP over classes; NaN entries (no positives) are left out."""
    return float(np.nanmean(list(per_class_ap.values())))


def confusion_matrix(
    pred: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor,
    num_classes: int,
    ignore_index: int = 255,
) -> np.ndarray:
    """[num_classes, num_classes] pixel counts, rows = ground truth, columns = prediction.

    Pixels whose target is ignore_index (VOC's object boundaries) or otherwise outside
    [0, num_classes) are not counted, as in FCN's `fast_hist`.
    """
    pred, target = np.asarray(pred).ravel().astype(np.int64), np.asarray(target).ravel().astype(np.int64)
    if pred.shape != target.shape:
        raise UserError(f"confusion_matrix: pred has {pred.size} pixels, target {target.size}; "
                        "pass maps of the same size.")
    valid = (target >= 0) & (target < num_classes) & (target != ignore_index)
    bad = valid & ((pred < 0) | (pred >= num_classes))
    if bad.any():
        raise UserError(
            f"confusion_matrix: predictions must lie in [0, {num_classes}), found {pred[bad][0]}; "
            "pass the argmax over the class scores."
        )
    counts = np.bincount(num_classes * target[valid] + pred[valid], minlength=num_classes**2)
    return counts.reshape(num_classes, num_classes)


def mean_iou(confusion: np.ndarray) -> tuple[float, np.ndarray]:
    """(mIoU, per-class IoU [K]) from a confusion matrix; IoU = TP / (TP + FP + FN).

    A class absent from both ground truth and prediction has IoU NaN and is left out of the mean.
    """
    confusion = np.asarray(confusion, np.float64)
    tp = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
    return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan"), iou


def ranking_ap(scores: np.ndarray, positive: np.ndarray, use_07_metric: bool = True) -> float:
    """AP of one binary ranking problem (scores [n], positive [n] bool); NaN without positives.

    Stable sort on -score: tied images keep their input order, as MATLAB's sort in `VOCevalcls`.
    """
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    positive = np.asarray(positive, bool)[order]
    return _ranked_ap(positive, ~positive, int(positive.sum()), use_07_metric)


def multilabel_map(
    scores: np.ndarray,
    labels: np.ndarray,
    difficult: np.ndarray | None = None,
    use_07_metric: bool = True,
) -> tuple[float, np.ndarray]:
    """VOC07 classification (mAP, per-class AP [C]) from scores [N, C] and labels [N, C] (> 0 = present).

    difficult [N, C] bool marks images where the class appears only as difficult objects (label 0
    in the devkit's `<cls>_test.txt`); they are dropped for that class, which is what
    `VOCevalcls` does by counting them as neither TP nor FP. 11-point AP by default.
    """
    scores, positive = np.asarray(scores, np.float64), np.asarray(labels) > 0
    keep = np.ones_like(positive) if difficult is None else ~np.asarray(difficult, bool)
    if scores.ndim != 2 or positive.shape != scores.shape or keep.shape != scores.shape:
        raise UserError(
            f"multilabel_map: expected scores, labels and difficult of one shape [images, classes], found "
            f"{scores.shape}, {positive.shape} and {keep.shape}; pass one row per test image."
        )
    ap = np.array([ranking_ap(scores[keep[:, c], c], positive[keep[:, c], c], use_07_metric)
                   for c in range(scores.shape[1])])
    return (float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan")), ap


def topk_accuracy(
    logits: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray, ks: Sequence[int] = (1, 5)
) -> dict[int, float]:
    """Fraction of samples whose target is among the k highest logits [N, K], for each k in ks.

    Ties at the k-th logit are broken by torch.topk's order (the usual ImageNet evaluation).
    """
    logits = torch.as_tensor(logits)
    target = torch.as_tensor(target, device=logits.device)
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices  # [N, max k]; top-5 of 3 classes = all 3
    hit = top == target[:, None]
    return {k: hit[:, :k].any(1).double().mean().item() for k in ks}


def average_precision(scores: torch.Tensor, positive: torch.Tensor, valid: torch.Tensor | None = None) -> torch.Tensor:
    """scikit-learn's `average_precision_score` for every column of scores [N, P] (positive [N, P] bool).

    AP = sum over distinct score thresholds, descending, of (R_k - R_k-1) * P_k: no interpolation, tied
    scores form one threshold. Entries with valid [N, P] False are left out; NaN for a column without a
    valid positive (scikit-learn warns and returns 0 there; no positive means nothing was measured).
    """
    valid = torch.ones_like(positive, dtype=torch.bool) if valid is None else valid.bool()
    if scores.dim() != 2 or positive.shape != scores.shape or valid.shape != scores.shape:
        raise UserError(f"average_precision: expected scores, positive and valid of one shape [N, P], found "
                        f"{tuple(scores.shape)}, {tuple(positive.shape)} and {tuple(valid.shape)}")
    s = scores.double().masked_fill(~valid, float("-inf"))  # left-out entries sink below every real score
    order = s.argsort(dim=0, descending=True, stable=True)
    s = s.gather(0, order)
    pos = (positive.bool() & valid).gather(0, order).double()
    seen = valid.gather(0, order).double().cumsum(0)
    precision = pos.cumsum(0) / seen.clamp(min=1)  # [N, P] at each rank
    # Precision counts at the end of a group of tied scores: every member of the group shares it.
    rows = torch.arange(s.shape[0], device=s.device)[:, None].expand_as(s)
    last = torch.ones_like(s, dtype=torch.bool)
    last[:-1] = s[1:] != s[:-1]
    group_end = torch.where(last, rows, s.shape[0] - 1).flip(0).cummin(0).values.flip(0)
    return (pos * precision.gather(0, group_end)).sum(0) / pos.sum(0)  # 0/0 = NaN without positives


def depth_errors(pred: torch.Tensor, target: torch.Tensor,
                 valid: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Sums over the valid pixels (target > 0 and `valid`) of the usual depth-error terms (Eigen et al. 2014), so
    that splits and ranks add up: 'n' pixels, 'delta1' / 'delta2' / 'delta3' pixels with max(d/d*, d*/d) below
    1.25, 1.25^2, 1.25^3, 'sq' sum of (d - d*)^2, 'rel' sum of |d - d*| / d*, 'log10' sum of |log10 d - log10 d*|.
    `depth_metrics` turns them into percentages and means. Predictions are clamped to >= 1e-3."""
    ok = target > 0
    if valid is not None:
        ok &= valid
    d, t = pred[ok].double().clamp_min(1e-3), target[ok].double()
    ratio = torch.maximum(d / t, t / d)
    return {"n": torch.tensor(float(ok.sum()), dtype=torch.float64),
            "delta1": (ratio < 1.25).double().sum(), "delta2": (ratio < 1.25**2).double().sum(),
            "delta3": (ratio < 1.25**3).double().sum(), "sq": (d - t).square().sum(),
            "rel": ((d - t).abs() / t).sum(), "log10": (d.log10() - t.log10()).abs().sum()}


def depth_metrics(sums: dict[str, torch.Tensor]) -> dict[str, float]:
    """`depth_errors` sums -> 'pct-within-1.25' (and 1.25^2, 1.25^3) in percent, 'rmse', 'abs-rel', 'log10'."""
    n = float(sums["n"])
    if n == 0:
        raise ValueError("depth metrics: no valid pixel")
    pct = {f"pct-within-1.25{power}": 100.0 * float(sums[f"delta{i}"]) / n
           for i, power in ((1, ""), (2, "^2"), (3, "^3"))}
    return {**pct, "rmse": (float(sums["sq"]) / n) ** 0.5, "abs-rel": float(sums["rel"]) / n,
            "log10": float(sums["log10"]) / n}
