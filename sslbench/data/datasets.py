"""Data sets by name. Every item is (uint8 image [3,S,S], target dict), or None for an unreadable file.

Target keys (present where the data set has them):
  label      int64 []      the image's class (CIFAR/STL/ImageNet), or its main object's class (embedded, VOC)
  labels     float32 [20]  multi-hot image labels from the non-difficult objects (embedded, VOC)
  difficult  float32 [20]  1 where a class occurs only as difficult objects (VOC07 scoring ignores these)
  boxes      float32 [K,4] x0,y0,x1,y1 in pixels of the returned image; box_labels int64 [K]; box_difficult bool [K]
  mask       int64 [S,S]   a class map (SBD)
The training loaders (sslbench.training) also hand every batch's item indices to the consumer: a pretext
task's make_batch sees them as targets["index"].
`collate_skip_corrupt` drops None items (they are counted by the caller), stacks same-shape tensors and
keeps a list where shapes differ (boxes).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from sslbench.data.classes import VOC_CLASSES
from sslbench.data.decode import Encoded, EncodedBatch, decode_batch
from sslbench.data.synthetic import SPLITS, Sample, load_split, render_sample
from sslbench.errors import UserError
from sslbench.registry import register_dataset

NUM_CLASSES = len(VOC_CLASSES)
EMBEDDED_SPLITS = (*SPLITS, "train", "val")
PER_OBJECT = ("boxes", "box_labels", "box_difficult")  # one entry per object: always collated as lists


def image_labels(box_labels: np.ndarray, difficult: np.ndarray) -> tuple[Tensor, Tensor]:
    """Per-object classes and difficult flags -> (multi-hot labels, difficult-only mask), each [20]."""
    labels = torch.zeros(NUM_CLASSES)
    hard = torch.zeros(NUM_CLASSES)
    for c, d in zip(box_labels.tolist(), difficult.tolist()):
        if d:
            hard[c] = 1.0
        else:
            labels[c] = 1.0
    hard[labels > 0] = 0.0
    return labels, hard


def detection_target(label: int, boxes: np.ndarray, box_labels: np.ndarray, difficult: np.ndarray) -> dict[str, Tensor]:
    labels, hard = image_labels(box_labels, difficult)
    return {
        "label": torch.tensor(label, dtype=torch.int64), "labels": labels, "difficult": hard,
        "boxes": torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "box_labels": torch.as_tensor(box_labels, dtype=torch.int64),
        "box_difficult": torch.as_tensor(difficult, dtype=torch.bool),
    }


class Embedded(Dataset):
    """The procedural scenes of sslbench.data.synthetic, rendered once per (split, size, num, seed) and cached."""

    def __init__(self, split: str, image_size: int, num: int, seed: int) -> None:
        if split not in EMBEDDED_SPLITS:
            raise UserError(f"embedded data has no split {split!r}; valid: {', '.join(EMBEDDED_SPLITS)}")
        self.split, self.size, self.seed = split, image_size, seed
        self.arrays = load_split(split, image_size, num, seed)

    def __len__(self) -> int:
        return len(self.arrays.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Tensor]]:
        a = self.arrays
        objs = a.objects[i]
        target = detection_target(
            int(a.labels[i]), np.array([o.box for o in objs], np.float32), np.array([o.cls for o in objs], np.int64),
            np.array([o.difficult for o in objs], bool),
        )
        return torch.from_numpy(a.images[i]).permute(2, 0, 1).contiguous(), target

    def dense(self, i: int) -> Sample:
        """The full sample (segmentation, depth, second frame) of item i, re-rendered from its seed."""
        return render_sample(self.seed, self.arrays.base, int(self.arrays.indices[i]), self.size, full=True)


@register_dataset("embedded")
def embedded(root: str | None, split: str, image_size: int, num: int, synth_seed: int) -> Dataset:
    """The embedded procedural data set (no files needed); `num` images of `split`."""
    if root:
        raise UserError(f"the embedded data set is generated, it takes no path (got {root!r}); "
                        "to read files written by `sslbench data synth`, name their format "
                        "(voc2007=, cifar10=, stl10=)")
    return Embedded(split, image_size, num or 1000, synth_seed)


def collate_skip_corrupt(batch: list[Any]) -> tuple[Tensor | EncodedBatch, dict[str, Any]]:
    """Stack the readable items; None items (corrupt files, already warned about) are dropped. Items still to
    decode (data.decode = "device") are kept as an EncodedBatch, which the loader decodes (`decode_deferred`)."""
    items = [b for b in batch if b is not None]
    if not items:
        return torch.zeros(0, dtype=torch.uint8), {}
    images = (EncodedBatch(img for img, _ in items) if isinstance(items[0][0], Encoded)  # data.decode = "device"
              else torch.stack([img for img, _ in items]))
    target: dict[str, Any] = {}
    for key in items[0][1]:
        values = [t[key] for _, t in items]
        same = key not in PER_OBJECT and all(isinstance(v, Tensor) and v.shape == values[0].shape for v in values)
        target[key] = torch.stack(values) if same else values
    return images, target


def decode_deferred(indices: Tensor, batch: Any, device: torch.device) -> tuple[Tensor, Any]:
    """(indices, (images, target)) whose images are still files' bytes (data.decode = "device", sslbench.data.decode)
    decoded on `device`, the items no decoder could read dropped with their indices and targets; any other batch
    as it is."""
    if not (isinstance(batch, tuple) and len(batch) == 2 and isinstance(batch[0], EncodedBatch)):
        return indices, batch
    images, kept = decode_batch(batch[0], device)
    if len(kept) == len(batch[0]):
        return indices, (images, batch[1])
    return indices[kept], (images, keep_rows(batch[1], kept))


def keep_rows(target: dict[str, Any], kept: list[int]) -> dict[str, Any]:
    """A collated target dict with only the items at positions `kept` (stacked tensors and per-item lists)."""
    rows = torch.tensor(kept, dtype=torch.int64)
    return {k: v[rows] if isinstance(v, Tensor) else [v[i] for i in kept] for k, v in target.items()}


def warn_corrupt(path: Any, exc: Exception) -> None:
    warnings.warn(f"skipping unreadable image {path}: {type(exc).__name__}: {exc}", stacklevel=2)
