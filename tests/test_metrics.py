"""sslbench.metrics against independent, deliberately plain reference implementations (loops over
thresholds, detections, pixels), on random inputs with several seeds, plus hand-worked tiny cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from sslbench.errors import UserError
from sslbench.metrics import (
    average_precision,
    confusion_matrix,
    mean_ap,
    mean_iou,
    multilabel_map,
    topk_accuracy,
    voc_ap,
    voc_eval,
)

SEEDS = (0, 1, 2, 3)


# ---------------------------------------------------------------- references


def ref_ap_11point(rec: list[float], prec: list[float]) -> float:
    """VOC07: mean over the 11 thresholds (py-faster-rcnn's np.arange values) of the best precision at recall >= t."""
    total = 0.0
    for t in np.arange(0.0, 1.1, 0.1):
        best = 0.0
        for r, p in zip(rec, prec):
            if r >= t and p > best:
                best = p
        total += best / 11
    return total


def ref_ap_area(rec: list[float], prec: list[float]) -> float:
    """VOC2010+: for every rise of recall, the width of the rise times the best precision at or beyond it."""
    total, previous = 0.0, 0.0
    for i, r in enumerate(rec):
        if r > previous:
            total += (r - previous) * max(prec[i:])
            previous = r
    return total


def ref_iou(a: list[float], b: list[float]) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0]) + 1
    ih = min(a[3], b[3]) - max(a[1], b[1]) + 1
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / ((a[2] - a[0] + 1) * (a[3] - a[1] + 1) + (b[2] - b[0] + 1) * (b[3] - b[1] + 1) - inter)


def ref_voc_eval_class(detections, annotations, cls: int, thresh: float, use_07: bool) -> float:
    """py-faster-rcnn's voc_eval for one class, written out with lists and dicts."""
    gt = {}
    npos = 0
    for i, (boxes, labels, difficult) in enumerate(annotations):
        objs = [{"box": list(b), "difficult": bool(d), "taken": False} for b, c, d in zip(boxes, labels, difficult) if c == cls]
        npos += sum(not o["difficult"] for o in objs)
        gt[i] = objs
    dets = [(float(s), i, list(b)) for i, (boxes, scores, labels) in enumerate(detections)
            for b, s, c in zip(boxes, scores, labels) if c == cls]
    dets = sorted(dets, key=lambda d: -d[0])  # Python's sort is stable: ties keep image order
    tp, fp = [], []
    for _, i, box in dets:
        best, best_j = -1.0, -1
        for j, o in enumerate(gt[i]):
            ov = ref_iou(box, o["box"])
            if ov > best:
                best, best_j = ov, j
        if best > thresh:
            o = gt[i][best_j]
            if o["difficult"]:
                tp.append(0), fp.append(0)
            elif o["taken"]:
                tp.append(0), fp.append(1)
            else:
                o["taken"] = True
                tp.append(1), fp.append(0)
        else:
            tp.append(0), fp.append(1)
    if npos == 0:
        return float("nan")
    rec, prec, ctp, cfp = [], [], 0, 0
    for a, b in zip(tp, fp):
        ctp, cfp = ctp + a, cfp + b
        rec.append(ctp / npos)
        prec.append(ctp / max(ctp + cfp, np.finfo(np.float64).eps))
    return ref_ap_11point(rec, prec) if use_07 else ref_ap_area(rec, prec)


def ref_ranking_ap(scores: list[float], positive: list[bool], use_07: bool) -> float:
    """Brute force over the ranked list; area AP = mean over positives of the best precision at or below them."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    npos = sum(positive)
    if npos == 0:
        return float("nan")
    prec, rec, tp = [], [], 0
    for k, i in enumerate(order, start=1):
        tp += positive[i]
        prec.append(tp / k)
        rec.append(tp / npos)
    if use_07:
        return ref_ap_11point(rec, prec)
    return sum(max(prec[k:]) for k, i in enumerate(order) if positive[i]) / npos


def random_detection_set(rng: np.random.Generator, images: int = 12, classes: int = 3):
    """Random objects (some difficult); per object 0-2 jittered detections (duplicates, near misses), mostly of
    its class; plus 0-2 random boxes. Scores rounded to one decimal: plenty of ties."""
    annotations, detections = [], []
    for _ in range(images):
        m = int(rng.integers(0, 4))
        corner = rng.integers(0, 60, (m, 2))
        boxes = np.concatenate([corner, corner + rng.integers(5, 40, (m, 2))], 1).astype(np.float64)
        labels, difficult = rng.integers(0, classes, m), rng.random(m) < 0.2
        annotations.append((boxes, labels, difficult))
        det_boxes, det_labels = [], []
        for box, label in zip(boxes, labels):
            for _ in range(int(rng.integers(0, 3))):
                det_boxes.append(box + rng.integers(-6, 7, 4))
                det_labels.append(label if rng.random() < 0.7 else rng.integers(0, classes))
        for _ in range(int(rng.integers(0, 3))):
            corner = rng.integers(0, 60, 2)
            det_boxes.append(np.concatenate([corner, corner + rng.integers(5, 40, 2)]))
            det_labels.append(rng.integers(0, classes))
        k = len(det_boxes)
        detections.append((np.array(det_boxes, np.float64).reshape(k, 4), np.round(rng.random(k), 1),
                           np.array(det_labels, np.int64)))
    return detections, annotations


# ---------------------------------------------------------------- voc_ap


@pytest.mark.parametrize("seed", SEEDS)
def test_voc_ap_matches_reference_on_random_curves(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 30))
    rec = np.sort(rng.random(n)).tolist()
    prec = rng.random(n).tolist()
    assert voc_ap(rec, prec, use_07_metric=True) == pytest.approx(ref_ap_11point(rec, prec), abs=1e-12)
    assert voc_ap(rec, prec, use_07_metric=False) == pytest.approx(ref_ap_area(rec, prec), abs=1e-12)


def test_voc_ap_11point_vs_area_on_a_worked_curve() -> None:
    # TP, FP (duplicate), TP over 2 objects: precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1.
    rec, prec = [0.5, 0.5, 1.0], [1.0, 0.5, 2 / 3]
    assert voc_ap(rec, prec, use_07_metric=True) == pytest.approx((6 * 1.0 + 5 * 2 / 3) / 11)  # t = 0..0.5 see 1
    assert voc_ap(rec, prec, use_07_metric=False) == pytest.approx(0.5 * 1.0 + 0.5 * 2 / 3)


def test_voc_ap_11point_keeps_the_arange_thresholds() -> None:
    # np.arange(0, 1.1, 0.1)[3] is 0.30000000000000004 > 3/10: a recall of exactly 3/10 does not reach t = 0.3,
    # as in py-faster-rcnn (4 thresholds reached, not 5).
    assert voc_ap([0.3], [1.0], use_07_metric=True) == pytest.approx(3 / 11)


def test_voc_ap_of_an_empty_curve_is_zero() -> None:
    assert voc_ap([], [], use_07_metric=True) == 0.0
    assert voc_ap([], [], use_07_metric=False) == 0.0


# ---------------------------------------------------------------- voc_eval


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("use_07", [True, False])
def test_voc_eval_matches_plain_py_faster_rcnn_loop(seed: int, use_07: bool) -> None:
    detections, annotations = random_detection_set(np.random.default_rng(seed))
    got = voc_eval(detections, annotations, 0.5, use_07, num_classes=3)
    for c in range(3):
        want = ref_voc_eval_class(detections, annotations, c, 0.5, use_07)
        assert (math.isnan(got[c]) and math.isnan(want)) or got[c] == pytest.approx(want, abs=1e-12), c


def _one_class(boxes, difficult=None):
    boxes = np.array(boxes, np.float64).reshape(-1, 4)
    return boxes, np.zeros(len(boxes), np.int64), np.array(difficult or [False] * len(boxes))


def _dets(boxes, scores):
    boxes = np.array(boxes, np.float64).reshape(-1, 4)
    return boxes, np.array(scores, np.float64), np.zeros(len(boxes), np.int64)


BOX = [10, 10, 29, 29]


def test_voc_eval_second_detection_of_one_object_is_a_false_positive() -> None:
    ann = [_one_class([BOX]), _one_class([BOX])]
    det = [_dets([BOX, BOX], [0.9, 0.8]), _dets([BOX], [0.7])]  # TP, duplicate FP, TP
    ap = voc_eval(det, ann, num_classes=1)[0]
    assert ap == pytest.approx((6 + 5 * 2 / 3) / 11)
    assert voc_eval(det, ann, use_07_metric=False, num_classes=1)[0] == pytest.approx(0.5 + 0.5 * 2 / 3)


def test_voc_eval_ignores_hits_on_difficult_objects_and_difficult_only_images() -> None:
    # Image 0 holds only a difficult object: the top-scored detection on it is neither TP nor FP.
    ann = [_one_class([BOX], [True]), _one_class([BOX])]
    det = [_dets([BOX], [0.95]), _dets([BOX], [0.5])]
    assert voc_eval(det, ann, num_classes=1)[0] == pytest.approx(1.0)
    # A miss on the difficult-only image (no overlap) is still a false positive: FP then TP, precision 1/2.
    det = [_dets([[40, 40, 50, 50]], [0.95]), _dets([BOX], [0.5])]
    assert voc_eval(det, ann, num_classes=1)[0] == pytest.approx(0.5)


def test_voc_eval_class_without_positives_is_nan_and_left_out_of_the_mean() -> None:
    ann = [(np.array([BOX, BOX], np.float64), np.array([0, 1]), np.array([False, True]))]  # class 1: difficult only
    det = [(np.array([BOX], np.float64), np.array([0.9]), np.array([0]))]
    aps = voc_eval(det, ann, num_classes=3)
    assert aps[0] == pytest.approx(1.0) and math.isnan(aps[1]) and math.isnan(aps[2])
    assert mean_ap(aps) == pytest.approx(1.0)


def test_voc_eval_ties_keep_image_order() -> None:
    # Equal scores: the devkit's stable sort keeps input order, so the FP on image 0 ranks first.
    ann = [_one_class([BOX]), _one_class([BOX])]
    miss = [[40, 40, 50, 50]]
    assert voc_eval([_dets(miss, [0.5]), _dets([BOX], [0.5])], [ann[0], ann[1]], num_classes=1)[0] == pytest.approx(
        ref_ap_11point([0.0, 0.5], [0.0, 0.5]))
    assert voc_eval([_dets([BOX], [0.5]), _dets(miss, [0.5])], [ann[0], ann[1]], num_classes=1)[0] == pytest.approx(
        ref_ap_11point([0.5, 0.5], [1.0, 0.5]))


def test_voc_eval_iou_must_exceed_the_threshold() -> None:
    # [0,0,9,9] vs [0,0,9,4] in VOC's inclusive pixels: 50 / 100 = IoU 0.5 exactly, not > 0.5: a miss.
    ann = [_one_class([[0, 0, 9, 9]])]
    assert voc_eval([_dets([[0, 0, 9, 4]], [0.9])], ann, num_classes=1)[0] == 0.0
    assert voc_eval([_dets([[0, 0, 9, 5]], [0.9])], ann, num_classes=1)[0] == pytest.approx(1.0)


def test_voc_eval_accepts_images_without_boxes_and_no_images() -> None:
    empty = (np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64))
    assert voc_eval([empty], [_one_class([BOX])], num_classes=1)[0] == 0.0
    assert math.isnan(voc_eval([], [], num_classes=1)[0])


def test_voc_eval_refuses_unpaired_inputs() -> None:
    with pytest.raises(UserError, match="one detections entry per annotated image"):
        voc_eval([], [_one_class([BOX])], num_classes=1)


# ---------------------------------------------------------------- multilabel_map


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("use_07", [True, False])
def test_multilabel_map_matches_brute_force(seed: int, use_07: bool) -> None:
    rng = np.random.default_rng(seed)
    n, c = 40, 5
    scores = rng.normal(size=(n, c))
    labels = (rng.random((n, c)) < 0.3).astype(np.float32)
    difficult = (rng.random((n, c)) < 0.15) & (labels == 0)
    labels[:, 4] = 0  # a class without positives
    got_mean, got = multilabel_map(scores, labels, difficult, use_07_metric=use_07)
    want = []
    for k in range(c):
        keep = ~difficult[:, k]
        want.append(ref_ranking_ap(scores[keep, k].tolist(), (labels[keep, k] > 0).tolist(), use_07))
    np.testing.assert_allclose(got[:4], want[:4], atol=1e-12)
    assert math.isnan(got[4]) and got_mean == pytest.approx(np.mean(want[:4]))


def test_multilabel_map_drops_difficult_images_per_class() -> None:
    scores = np.array([[0.9], [0.8], [0.1]])
    labels = np.array([[0], [1], [0]])
    # The top image holds the class only as difficult objects: dropped, so the positive ranks first.
    assert multilabel_map(scores, labels, np.array([[True], [False], [False]]))[0] == pytest.approx(1.0)
    assert multilabel_map(scores, labels)[0] == pytest.approx(0.5)


def test_multilabel_map_ties_keep_input_order() -> None:
    scores, labels = np.array([[0.5], [0.5]]), np.array([[0], [1]])
    assert multilabel_map(scores, labels, use_07_metric=False)[0] == pytest.approx(0.5)
    assert multilabel_map(scores[::-1], labels[::-1], use_07_metric=False)[0] == pytest.approx(1.0)


def test_multilabel_map_refuses_mismatched_shapes() -> None:
    with pytest.raises(UserError, match="one shape"):
        multilabel_map(np.zeros((4, 3)), np.zeros((4, 2)))


# ---------------------------------------------------------------- average_precision (scikit-learn's)


@pytest.mark.parametrize("seed", SEEDS)
def test_average_precision_matches_scikit_learn_with_ties_and_masks(seed: int) -> None:
    from sklearn.metrics import average_precision_score

    g = torch.Generator().manual_seed(seed)
    n, p = 50, 6
    scores = torch.round(torch.randn(n, p, generator=g) * 3) / 3  # coarse: many ties
    positive = torch.rand(n, p, generator=g) < 0.3
    valid = torch.rand(n, p, generator=g) < 0.8
    positive[:, 0] = False  # no positive at all
    got = average_precision(scores, positive, valid)
    assert torch.isnan(got[0])
    for k in range(1, p):
        v = valid[:, k]
        want = average_precision_score(positive[v, k].numpy(), scores[v, k].numpy())
        assert float(got[k]) == pytest.approx(want, abs=1e-12), k


def test_average_precision_refuses_mismatched_shapes() -> None:
    with pytest.raises(UserError, match="one shape"):
        average_precision(torch.zeros(3, 2), torch.zeros(3, 1, dtype=torch.bool))


# ---------------------------------------------------------------- confusion matrix, mIoU


def ref_confusion(pred: np.ndarray, target: np.ndarray, k: int, ignore: int) -> np.ndarray:
    cm = np.zeros((k, k), np.int64)
    for p, t in zip(pred.ravel().tolist(), target.ravel().tolist()):
        if t == ignore or not 0 <= t < k:
            continue
        cm[t, p] += 1
    return cm


def ref_mean_iou(cm: np.ndarray) -> tuple[float, list[float]]:
    ious = []
    for c in range(cm.shape[0]):
        tp = cm[c, c]
        fn = cm[c, :].sum() - tp
        fp = cm[:, c].sum() - tp
        ious.append(float("nan") if tp + fn + fp == 0 else tp / (tp + fn + fp))
    present = [v for v in ious if not math.isnan(v)]
    return sum(present) / len(present), ious


@pytest.mark.parametrize("seed", SEEDS)
def test_confusion_and_mean_iou_match_per_pixel_loops(seed: int) -> None:
    rng = np.random.default_rng(seed)
    k = 6
    target = rng.integers(0, k, (2, 9, 11))
    target[rng.random(target.shape) < 0.1] = 255
    target[target == 5] = 0  # class 5 absent from the ground truth ...
    pred = rng.integers(0, k - 1, target.shape)  # ... and from the predictions: IoU NaN, left out
    cm = confusion_matrix(torch.from_numpy(pred), torch.from_numpy(target), k)
    np.testing.assert_array_equal(cm, ref_confusion(pred, target, k, 255))
    miou, iou = mean_iou(cm)
    want_mean, want = ref_mean_iou(cm)
    np.testing.assert_allclose(iou, want, atol=1e-12)
    assert math.isnan(iou[5]) and miou == pytest.approx(want_mean)


def test_mean_iou_worked_example_with_absent_and_ignored_classes() -> None:
    target = np.array([[0, 0, 1, 255], [1, 1, 255, 255]])
    pred = np.array([[0, 1, 1, 2], [1, 2, 0, 0]])  # pixels under 255 are never counted
    cm = confusion_matrix(pred, target, 4)
    np.testing.assert_array_equal(cm, [[1, 1, 0, 0], [0, 2, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
    miou, iou = mean_iou(cm)
    # class 0: 1 / (2 + 1 - 1); class 1: 2 / (3 + 3 - 2); class 2: predicted, never true -> 0; class 3: NaN
    np.testing.assert_allclose(iou[:3], [0.5, 0.5, 0.0])
    assert math.isnan(iou[3]) and miou == pytest.approx(1.0 / 3)


def test_mean_iou_of_nothing_is_nan() -> None:
    assert math.isnan(mean_iou(np.zeros((3, 3)))[0])


def test_confusion_matrix_refuses_bad_predictions_and_shapes() -> None:
    with pytest.raises(UserError, match="predictions must lie"):
        confusion_matrix(np.array([3]), np.array([0]), 3)
    with pytest.raises(UserError, match="same size"):
        confusion_matrix(np.zeros(4, np.int64), np.zeros(5, np.int64), 3)


# ---------------------------------------------------------------- top-k


@pytest.mark.parametrize("seed", SEEDS)
def test_topk_accuracy_matches_a_sorting_loop(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    logits, target = torch.randn(30, 8, generator=g), torch.randint(0, 8, (30,), generator=g)
    got = topk_accuracy(logits, target, ks=(1, 3, 5))
    for k in (1, 3, 5):
        hits = sum(int(t) in sorted(range(8), key=lambda j: -float(row[j]))[:k] for row, t in zip(logits, target))
        assert got[k] == pytest.approx(hits / 30)


def test_topk_accuracy_with_fewer_classes_than_k() -> None:
    assert topk_accuracy(torch.tensor([[0.1, 0.9], [0.8, 0.2]]), torch.tensor([0, 0]), ks=(1, 5)) == {1: 0.5, 5: 1.0}
