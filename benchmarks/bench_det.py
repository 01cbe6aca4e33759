"""Benchmark (c): Fast R-CNN (voc-det) throughput on the CPU at mini size, and selective search per image.

- train: images/s of full optimizer steps (2 images, 64 RoIs each, multi-scale, the mini recipe's head).
- test: images/s of single-scale detection (all proposals, softmax, box decoding, per-class NMS), against the
  naive baseline Fast R-CNN replaced: R-CNN's per-RoI pass, every proposal cropped, warped to the trunk's
  input size and run through the whole trunk to fc7 (same trunk, same proposals, same head).
- selective search (OpenCV fast mode): seconds per image at the mini size (128 px) and at a VOC-like size
  (the same scenes upscaled to 500 px; real photos have more texture, so expect more boxes and time).
Wall time and process CPU time are both printed: on a shared machine the CPU time is the steadier figure.
Run:  python benchmarks/bench_det.py [--threads 1]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sslbench.checkpoint import TrunkSpec, load_trunk
from sslbench.data.build import build_dataset
from sslbench.protocols import _proposals as rp
from sslbench.protocols import voc_det as vd
from sslbench.protocols.base import EvalContext
from sslbench.recipes import load_recipe
from sslbench.runlog import MetricLogger
from sslbench.runtime import Dist


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """(wall, cpu) seconds per call, after one warm-up call."""
    fn()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - wall) / repeat, (time.process_time() - cpu) / repeat


def report(label: str, per_call: tuple[float, float], images: int) -> None:
    wall, cpu = per_call
    print(f"{label:48s} {images / wall:8.1f} images/s wall | {images / cpu:8.1f} images/s cpu "
          f"({wall / images * 1e3:7.1f} ms wall, {cpu / images * 1e3:7.1f} ms cpu per image)")


def rcnn_scores(model: vd.FastRCNN, image: torch.Tensor, boxes: torch.Tensor, prepare, size: int) -> torch.Tensor:  # noqa: ANN001
    """R-CNN: each proposal cropped from the image, warped to size x size, through the whole trunk to fc7."""
    x = prepare(image[None])
    crops = []
    for x0, y0, x1, y1 in boxes.round().long().tolist():
        crop = x[:, :, y0 : y1 + 1, x0 : x1 + 1]
        crops.append(F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False))
    out = []
    for chunk in torch.cat(crops).split(128):
        fc7 = model.trunk(chunk, taps=("fc7",))["fc7"]
        out.append(F.softmax(model.cls_score(fc7), 1))
    return torch.cat(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--images", type=int, default=20, help="test images timed")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    recipe = load_recipe("protocol", "voc-det", "mini")
    cfg, d = recipe.component.cfg, recipe.data
    ds = build_dataset(d, d.test_split, args.images)
    images = [ds[i][0] for i in range(len(ds))]
    print(f"torch threads {args.threads}; mini recipe: {d.image_size} px images, max {cfg.max_proposals} proposals")

    per_image = [timed(lambda im=im: rp.selective_search(im), 1) for im in images[:10]]
    counts = [len(rp.selective_search(im)) for im in images[:10]]
    wall, cpu = np.mean(per_image, axis=0)
    print(f"selective search, {d.image_size} px: {wall:.3f} s wall / {cpu:.3f} s cpu per image, {np.mean(counts):.0f} boxes")
    big = [vd.resize_image(im, 500 / d.image_size) for im in images[:3]]
    wall, cpu = np.mean([timed(lambda im=im: rp.selective_search(im), 1) for im in big], axis=0)
    print(f"selective search, 500 px (upscaled scenes): {wall:.3f} s wall / {cpu:.3f} s cpu per image, "
          f"{np.mean([len(rp.selective_search(im)) for im in big]):.0f} boxes")

    trunk = load_trunk(TrunkSpec("random"), recipe.backbone)
    model = vd.FastRCNN(trunk.backbone)
    props = [np.asarray(rp.selective_search(im)) for im in images]
    train_ds = build_dataset(d, d.train_split, 2 * args.images)
    train_props = [rp.selective_search(train_ds[i][0]) for i in range(len(train_ds))]
    vd._set_trainable(model, cfg)
    optimizer = torch.optim.SGD([q for q in model.parameters() if q.requires_grad], lr=1e-3, momentum=0.9)
    batches = [[(i, train_ds[i]), (i + 1, train_ds[i + 1])] for i in range(0, len(train_ds) - 1, 2)]
    step = iter(range(10**9))

    def train_step() -> None:
        k = next(step)
        b = vd.training_batch(batches[k % len(batches)], train_props, cfg, trunk.prepare, torch.Generator().manual_seed(k))
        scores, deltas = model(b.images, b.rois)
        loss = vd.fast_rcnn_loss(scores, deltas, b.labels, b.targets, 1.0)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    report("fast r-cnn train step (2 images, 64 RoIs each)", timed(train_step, 20), 2)
    model.eval()
    with torch.no_grad():
        ctx = EvalContext(torch.device("cpu"), Dist(), MetricLogger(Path("."), enabled=False), progress=False)
        fast = timed(lambda: vd.detect(model, ds, props, cfg, 0, trunk.prepare, ctx), 1)
        report(f"fast r-cnn test ({len(ds)} images)", fast, len(ds))
        boxes = [vd.image_proposals(props[i], images[i], cfg) for i in range(len(images))]
        size = recipe.backbone.cfg.image_size
        few = min(5, len(images))
        naive = timed(lambda: [rcnn_scores(model, images[i], boxes[i], trunk.prepare, size) for i in range(few)], 1)
        report(f"naive R-CNN test, per-RoI trunk passes ({few} images)", naive, few)
    print(f"RoI pooling speed-up at test (wall): {(naive[0] / few) / (fast[0] / len(ds)):.1f}x")


if __name__ == "__main__":
    main()
