"""Benchmark (b): RotNet pretraining throughput on CPU for RotNet's CIFAR NIN (4 blocks) at 32 px, in images/s
(each image enters the batch in four rotations), with the mini width and the paper width, against a naive
baseline that builds each rotated sample one at a time (PIL transpose per image) instead of one batched
torch.rot90 over the whole batch.    Run:  python benchmarks/bench_pretrain.py
"""

from __future__ import annotations

import time

import numpy as np
import torch
from PIL import Image

from sslbench.backbones.base import build_backbone
from sslbench.data.synthetic import embedded_images
from sslbench.recipes import load_recipe
from sslbench.registry import TASKS
from sslbench.transforms import normalize
from timing import pretrain_rate

PIL_ROT = [None, Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270]


def naive_batch(images: torch.Tensor) -> dict[str, torch.Tensor]:
    out, labels = [], []
    for img in images:
        pil = Image.fromarray(img.permute(1, 2, 0).numpy())
        for k in range(4):
            r = pil if k == 0 else pil.transpose(PIL_ROT[k])
            out.append(torch.from_numpy(np.array(r)).permute(2, 0, 1))
            labels.append(k)
    return {"inputs": normalize(torch.stack(out)), "labels": torch.tensor(labels)}


def throughput(width: float, steps: int, batch: int, naive: bool) -> float:
    r = load_recipe("pretrain", "rotation", "mini", [f"backbone.width={width}", f"data.batch_size={batch}"])
    task = TASKS.get("rotation")(r.component.cfg, build_backbone(r.backbone.name, r.backbone.cfg))
    images = embedded_images("unlabeled", 32, batch, 0)
    return pretrain_rate(task, r.optim, images, steps, make_batch=naive_batch if naive else None)


def batch_construction(batch: int, reps: int = 20) -> tuple[float, float]:
    r = load_recipe("pretrain", "rotation", "mini", ["task.crop_pad=0", "task.flip=false"])
    task = TASKS.get("rotation")(r.component.cfg, build_backbone(r.backbone.name, r.backbone.cfg))
    images = embedded_images("unlabeled", 32, batch, 0)
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    for _ in range(reps):
        task.make_batch(images, {}, gen)
    t1 = time.perf_counter()
    for _ in range(reps):
        naive_batch(images)
    t2 = time.perf_counter()
    return reps * batch / (t1 - t0), reps * batch / (t2 - t1)


def main() -> None:
    torch.set_num_threads(2)
    fast, slow = batch_construction(256)
    print(f"batch construction: batched rot90 {fast:8.0f} img/s | per-image PIL {slow:7.0f} img/s | {fast / slow:4.1f}x")
    for width, steps in ((0.25, 8), (1.0, 3)):
        ours = throughput(width, steps, 64, naive=False)
        base = throughput(width, steps, 64, naive=True)
        print(f"NIN-4blocks width {width:4.2f} @32px: {ours:6.1f} img/s ({4 * ours:6.1f} rotated/s) "
              f"| naive per-image batches {base:6.1f} img/s | {ours / base:4.2f}x")


if __name__ == "__main__":
    main()
