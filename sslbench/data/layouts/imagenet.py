"""ImageNet in the ImageFolder layout the usual preparation scripts produce: <root>/{train,val}/<class>/*.JPEG.

The writer's class folders are named by the embedded class (not a WordNet id); train images come from the
embedded "trainval" split, val images from "test". The reader is torchvision's ImageFolder, val numbered
with train's classes.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
import torchvision
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from sslbench.data.classes import VOC_CLASSES
from sslbench.data.datasets import warn_corrupt
from sslbench.data.decode import Encoded, Op, apply_ops, encoded, resized_size
from sslbench.data.layouts import Layout, register_layout
from sslbench.data.layouts._common import (
    JPEG,
    UNREADABLE,
    SplitMissing,
    check_counts,
    check_image_size,
    check_split,
    class_interleaved,
    label_target,
    need_root,
    open_rgb,
    synth_hint,
    to_tensor,
)
from sslbench.data.synthetic import render_sample
from sslbench.errors import UserError
from sslbench.runtime import atomic
from sslbench.transforms import random_area_size, random_resized_box


def write_imagenet(out: Path, num_train: int, num_val: int, image_size: int, seed: int) -> Path:
    """Write `out`/imagenet/{train,val}/<class>/<class>_<index>.JPEG (the ImageFolder layout the usual
    ImageNet preparation scripts produce, class folders named by the embedded class instead of a WordNet id)
    from the embedded "trainval" / "test" splits, and return `out`/imagenet. All 20 class folders exist."""
    check_counts(num_train=num_train, num_val=num_val)
    check_image_size(image_size)
    target = Path(out) / "imagenet"
    with atomic(target) as d:
        for split, base, n in (("train", "trainval", num_train), ("val", "test", num_val)):
            for cls in VOC_CLASSES:
                (d / split / cls).mkdir(parents=True)
            for i in range(n):
                s = render_sample(seed, base, i, image_size)
                cls = VOC_CLASSES[s.label]
                Image.fromarray(s.image).save(d / split / cls / f"{cls}_{i:06d}.JPEG", **JPEG)
    return target


_IMAGENET_LAYOUT = "<root>/{train,val}/<class>/*.JPEG"


class _SharedClassesFolder(torchvision.datasets.ImageFolder):
    """ImageFolder whose class list is given (train's), so that val uses the same label numbering."""

    def __init__(self, root: str, classes: list[str]) -> None:
        self._given = classes
        super().__init__(root, allow_empty=True)

    def find_classes(self, directory: str | Path) -> tuple[list[str], dict[str, int]]:
        return self._given, {c: i for i, c in enumerate(self._given)}


class ImageFolderItems(Dataset):
    """ImageFolder items: shorter side resized to image_size, then centre-cropped to a square.

    Items are interleaved across classes (each class's first image, then each class's second, ...), so the
    first `num` items cover the classes evenly instead of being all of the first class.
    """

    def __init__(self, folder: torchvision.datasets.ImageFolder, image_size: int, num: int) -> None:
        order = class_interleaved([label for _, label in folder.samples])
        n = len(order) if num <= 0 else min(num, len(order))
        self.samples = [folder.samples[i] for i in order[:n]]
        self.classes, self.size = list(folder.classes), image_size

    def __len__(self) -> int:
        return len(self.samples)

    crop = "center"  # train-time crops (random_crops): "random_resized", "random" or "random_area"
    load_size = 0

    load_area = (0, 0)

    def random_crops(self, kind: str, load_size: int, load_area: tuple[int, int] = (0, 0)) -> ImageFolderItems:
        """This split with random train-time crops: `draw(i, generator)` takes them (the training loader calls it
        with a generator of (seed, epoch, i)); `[i]` stays the centre crop."""
        if self.size <= 0:
            raise UserError(f"imagenet: data.train_crop = {kind!r} needs a fixed data.image_size, found 0")
        if kind == "random" and load_size and load_size < self.size:
            raise UserError(f"imagenet: data.load_size {load_size} is smaller than data.image_size {self.size}; "
                            "the random crop is taken inside the resized image")
        out = copy.copy(self)
        out.crop, out.load_size, out.load_area = kind, load_size or self.size, load_area
        return out

    decode = "loader"  # "device": the training loader's items are the files' bytes, decoded where the batch is built

    def decoded_on(self, where: str) -> ImageFolderItems:
        """This split with data.decode = `where`: "device" makes each item the training loader draws (`draw`) an
        `Encoded` (the file's bytes + its geometry, sslbench.data.decode); `[i]` still decodes here, for the
        callers that read items one by one (a task's set-up, figures, rescaling)."""
        if where != "loader" and self.size <= 0:
            raise UserError(f"imagenet: data.decode = {where!r} needs a fixed data.image_size (the decoded images "
                            "are stacked into one batch), found 0")
        out = copy.copy(self)
        out.decode = where
        return out

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Tensor]] | None:
        return self._item(i, None, defer=False)  # type: ignore[return-value]

    def draw(self, i: int, generator: torch.Generator) -> tuple[Tensor | Encoded, dict[str, Tensor]] | None:
        return self._item(i, None if self.crop == "center" else generator, defer=self.decode == "device")

    def _item(self, i: int, generator: torch.Generator | None,
              defer: bool) -> tuple[Tensor | Encoded, dict[str, Tensor]] | None:
        """Item i, its train-time crop drawn from `generator` (None: the centre crop); `defer`: an `Encoded`. The
        geometry is worked out from the image's size alone, so the PIL path and the deferred one draw the same crop."""
        path, label = self.samples[i]
        try:
            if defer:  # the header only: the size, not the pixels
                with Image.open(path) as im:
                    return encoded(path, self._ops(*im.size, generator)), label_target(label)
            img = open_rgb(path)
        except UNREADABLE as exc:
            warn_corrupt(path, exc)
            return None
        return to_tensor(apply_ops(img, self._ops(img.width, img.height, generator))), label_target(label)

    def _ops(self, width: int, height: int, generator: torch.Generator | None) -> list[Op]:
        """The torchvision.transforms.functional calls that make an image of `width` x `height` an item."""
        s = self.size
        if s <= 0:
            return []
        if generator is None:
            return [("resize", s), ("center_crop", [s, s])]
        if self.crop == "random_resized":
            return [("resized_crop", *random_resized_box(width, height, generator), [s, s])]
        # "random" / "random_area": resized (shorter side load_size / area in load_area), a random square
        if self.crop == "random":
            size: int | list[int] = self.load_size
        else:
            w, h = random_area_size(width, height, self.load_area, s, generator)
            size = [h, w]
        rw, rh = resized_size(width, height, size)
        top = int(torch.randint(0, rh - s + 1, (), generator=generator))
        left = int(torch.randint(0, rw - s + 1, (), generator=generator))
        return [("resize", size), ("crop", top, left, s, s)]


def imagenet(root: str | None, split: str, image_size: int, num: int, synth_seed: int) -> Dataset:
    """ImageNet in the ImageFolder layout (root/train, root/val, one folder per class); unlabeled = train."""
    check_split("imagenet", split, ("train", "val", "unlabeled"))
    p = need_root("imagenet", root, _IMAGENET_LAYOUT, "imagenet")
    if not (p / "train").is_dir() and not (p / "val").is_dir() and (p / "imagenet").is_dir():
        p = p / "imagenet"
    sub = "val" if split == "val" else "train"
    if not (p / sub).is_dir():
        err = SplitMissing if (p / ("train" if sub == "val" else "val")).is_dir() else UserError
        raise err(f"imagenet: expected {_IMAGENET_LAYOUT}; missing {sub} in {p}; {synth_hint('imagenet')}")
    ref = p / "train" if (p / "train").is_dir() else p / sub
    classes = sorted(e.name for e in os.scandir(ref) if e.is_dir())
    if not classes:
        raise UserError(f"imagenet: expected {_IMAGENET_LAYOUT}; {ref} has no class folders")
    folder = _SharedClassesFolder(str(p / sub), classes)
    if not folder.samples:
        raise SplitMissing(f"imagenet: expected {_IMAGENET_LAYOUT}; no images under {p / sub}")
    return ImageFolderItems(folder, image_size, num)


def imagenet_sources(split: str, num: int, image_size: int, seed: int) -> list[tuple[str, int]]:
    """The embedded sample behind each item of `split` in reading order, for a writer call with `num` per split."""
    base = "test" if split == "val" else "trainval"
    labels = [render_sample(seed, base, i, image_size).label for i in range(num)]
    return [(base, i) for i in class_interleaved(labels)]


register_layout(Layout(
    name="imagenet", folder="imagenet", tree=_IMAGENET_LAYOUT,
    write=lambda out, num, size, seed: write_imagenet(out, num, num, size, seed),
    sources=lambda split, num, size, seed: imagenet_sources(split, num, size, seed), check_splits=("train", "val"),
    sizes={"train": 1_281_167, "unlabeled": 1_281_167, "val": 50_000},  # ILSVRC2012
), imagenet)
