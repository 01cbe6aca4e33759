"""What the real layouts' modules share: finding and checking the files, reading images, the item classes."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from sslbench.data.classes import CLASS_INDEX, VOC_CLASSES
from sslbench.data.datasets import warn_corrupt
from sslbench.data.synthetic import Sample, render_sample
from sslbench.errors import UserError

# Quality 95 without chroma subsampling: the scenes' pixel noise makes 4:2:0 JPEGs ~8 grey levels off on
# average, 4:4:4 ~3, so a model sees nearly the generator's pixels through the JPEG round trip.
JPEG = {"format": "JPEG", "quality": 95, "subsampling": 0}
UNREADABLE = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def check_counts(**counts: int) -> None:
    for what, n in counts.items():
        if n < 0:
            raise UserError(f"{what} must be >= 0 (got {n})")


def check_image_size(image_size: int) -> None:
    if image_size < 8:
        raise UserError(f"image size must be >= 8 pixels (got {image_size})")


def check_labels(name: str, labels: np.ndarray, n_classes: int, where: Callable[[int], str]) -> None:
    """Every label in 0..n_classes-1 (a damaged label file would otherwise crash a protocol's loss);
    `where(i)` names the file holding item i."""
    bad = np.flatnonzero((labels < 0) | (labels >= n_classes))
    if len(bad):
        i = int(bad[0])
        raise UserError(f"{name}: {where(i)} holds label {int(labels[i])} (item {i}; {len(bad)} such), outside "
                        f"0..{n_classes - 1}: the file is damaged; replace it from the release")


class SplitMissing(UserError):
    """The data set is there but this split's files are not (`data check` reports the split as absent)."""


def synth_hint(fmt: str) -> str:
    return f"make a small sample with `sslbench data synth --format {fmt} --out DIR`"


def need_root(name: str, root: str | None, layout: str, fmt: str) -> Path:
    if not root:
        raise UserError(f"{name} reads files: give its path ({name}=PATH, the folder holding {layout}); "
                        f"{synth_hint(fmt)}")
    p = Path(root).expanduser()
    if not p.is_dir():
        raise UserError(f"{name}: {root} is not a directory; expected {layout}; {synth_hint(fmt)}")
    return p


def check_split(name: str, split: str, valid: Sequence[str]) -> None:
    if split not in valid:
        raise UserError(f"{name} has no split {split!r}; valid: {', '.join(valid)}")


def to_tensor(img: Image.Image | np.ndarray) -> Tensor:
    """PIL image or HWC uint8 array -> uint8 [3, H, W]."""
    arr = np.array(img.convert("RGB") if isinstance(img, Image.Image) else img, dtype=np.uint8)
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def square(img: Image.Image, size: int, resample: int = Image.Resampling.BILINEAR) -> Image.Image:
    return img if size <= 0 or img.size == (size, size) else img.resize((size, size), resample)


def open_rgb(path: str | Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")  # forces the decode: a truncated or corrupt file raises here


def label_target(label: int) -> dict[str, Tensor]:
    return {"label": torch.tensor(int(label), dtype=torch.int64)}


def find_folder(p: Path, folder: str, marker_files: Sequence[str]) -> tuple[Path, str] | None:
    """(parent, folder name) of the data folder: `p`/`folder`, or `p` itself when it holds the files."""
    if (p / folder).is_dir():
        return p, folder
    if any((p / f).is_file() for f in marker_files):
        return p.parent, p.name
    return None


class ArrayItems(Dataset):
    """Items of an in-memory uint8 image array with integer labels (CIFAR, STL)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, chw: bool, image_size: int, num: int,
                 classes: Sequence[str]) -> None:
        n = len(images) if num <= 0 else min(num, len(images))
        self.images, self.labels, self.chw, self.size = images[:n], np.asarray(labels[:n], np.int64), chw, image_size
        self.classes = list(classes)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Tensor]]:
        arr = self.images[i]
        hwc = arr.transpose(1, 2, 0) if self.chw else arr
        if self.size > 0 and hwc.shape[:2] != (self.size, self.size):
            img = to_tensor(square(Image.fromarray(np.ascontiguousarray(hwc)), self.size))
        else:
            img = torch.from_numpy(np.ascontiguousarray(hwc)).permute(2, 0, 1).contiguous()
        return img, label_target(int(self.labels[i]))


class SegmentationPairs(Dataset):
    """(uint8 image [3,S,S], int64 mask [S,S]) pairs from image and mask files; mask values 0 background,
    1..20 classes, 255 ignore. Subclasses read their mask format (`_mask`); S = 0 keeps the stored size."""

    def __init__(self, name: str, split: str, images: list[str], masks: list[str], image_size: int) -> None:
        self.images, self.masks, self.size = images, masks, image_size
        self.ids, self.classes = [Path(i).stem for i in images], list(VOC_CLASSES)
        missing = [p for p in (*images, *masks) if not os.path.isfile(p)]
        if missing:
            raise UserError(f"{name}: {len(missing)} file(s) of {split}.txt missing, e.g. {missing[0]}")

    def _mask(self, i: int) -> Image.Image | None:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor] | None:
        try:
            img = open_rgb(self.images[i])
        except UNREADABLE as exc:
            warn_corrupt(self.images[i], exc)
            return None
        mask = self._mask(i)
        if mask is None:
            return None
        if mask.size != img.size:
            raise UserError(f"mask {self.masks[i]} is {mask.size[0]}x{mask.size[1]}, its image "
                            f"{img.size[0]}x{img.size[1]}")
        if self.size > 0:
            img, mask = square(img, self.size), square(mask, self.size, Image.Resampling.NEAREST)
        return to_tensor(img), torch.from_numpy(np.array(mask, np.int64))


def class_interleaved(labels: list[int]) -> list[int]:
    """Positions of items with these labels, interleaved across classes: each class's first, then each class's
    second, ... (within a rank, by label): the first `num` items then cover the classes evenly."""
    rank: dict[int, int] = {}
    keyed = []
    for i, label in enumerate(labels):
        keyed.append((rank.get(label, 0), label, i))
        rank[label] = rank.get(label, 0) + 1
    return [i for _, _, i in sorted(keyed)]


def pick_ten_class_samples(seed: int, split: str, num: int, size: int,
                           classes: Sequence[str]) -> list[tuple[int, int, Sample]]:
    """(generator index, label 0..9, sample) of the first `num` scenes of embedded `split` whose main object
    is one of `classes`, with at most ceil(num / 10) per class (balanced, as CIFAR and STL are).

    CIFAR-10 and STL-10 have 10 classes, the embedded data VOC's 20: their images are the embedded scenes whose
    main object is one of ten classes (sslbench.data.classes), taken in generator order with an equal quota per
    class, labels renumbered 0..9 in the format's class order. Each embedded class stands for the CIFAR/STL
    class of the same position; there is no frog, deer or monkey in the embedded data, so cow stands for deer
    and sheep for frog (CIFAR) / monkey (STL). The files record the embedded names, not the real ones."""
    wanted = {CLASS_INDEX[c]: k for k, c in enumerate(classes)}
    quota = math.ceil(num / len(classes)) if num else 0
    counts = [0] * len(classes)
    picked: list[tuple[int, int, Sample]] = []
    index = 0
    while len(picked) < num:
        if index > 200 * num + 1000:  # the generator draws every class: this cannot be reached
            raise RuntimeError(f"found only {len(picked)} of {num} ten-class scenes in {index} renders")
        s = render_sample(seed, split, index, size)
        k = wanted.get(s.label)
        if k is not None and counts[k] < quota:
            counts[k] += 1
            picked.append((index, k, s))
        index += 1
    return picked
