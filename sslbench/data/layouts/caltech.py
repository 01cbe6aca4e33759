"""Caltech-101 and Caltech-256 in their release layouts, one folder of JPEGs per class:

    <root>/caltech101/101_ObjectCategories/<class>/image_0001.jpg ...  (and BACKGROUND_Google/)
    <root>/caltech256/256_ObjectCategories/001.<class>/001_0001.jpg ...  (the last class folder: 257.clutter)

torchvision's `Caltech101` / `Caltech256` read the folders (class list, files numbered 1..N per class, as the
releases number them); the loader here opens each file once to check it, drops the background / clutter folder
(not an object class: Exemplar-CNN's protocol and the usual Caltech protocols leave it out), resizes to
`image_size` x `image_size` and interleaves the classes so that the first `num` items cover them evenly. The data
sets have no predefined split: the only split is "all", and protocols draw their training and test images from it.

The embedded data written in these layouts has the embedded data's 20 classes (VOC's names), not 101 or 256:
`num` scenes of an embedded split (Caltech-101: "trainval", Caltech-256: "test", so that the two columns of a table
are not one measurement twice) with at most ceil(num / 20) per class (the first that appear, in generator order),
each filed under its main object's class folder, and num // 20 + 1 scenes of the "unlabeled" split in the
background / clutter folder. Class folders that would be empty are not written (the real releases
have none); Caltech-256's are numbered 001..020 with clutter 021, so that torchvision's file naming holds.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torchvision
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from sslbench.data.classes import VOC_CLASSES
from sslbench.data.datasets import warn_corrupt
from sslbench.data.layouts import Layout, register_layout
from sslbench.data.layouts._common import (
    JPEG,
    UNREADABLE,
    check_counts,
    check_image_size,
    check_split,
    class_interleaved,
    label_target,
    need_root,
    open_rgb,
    pick_ten_class_samples,
    square,
    synth_hint,
    to_tensor,
)
from sslbench.data.synthetic import render_sample
from sslbench.errors import UserError
from sslbench.runtime import atomic


@dataclass(frozen=True)
class Release:
    name: str  # the layout / data set name
    folder: str  # the folder under <root> torchvision reads ('caltech101')
    categories: str  # the class folders' parent inside it
    background: str  # the non-object folder, left out of the classes
    reader: type  # torchvision's class
    images: int  # images of the release without the background folder (what `--dry-run` counts)
    scenes: str  # the embedded split the writer draws its scenes from

    def tree(self) -> str:
        sample = "<class>/image_0001.jpg" if self.name == "caltech101" else "001.<class>/001_0001.jpg"
        return f"<root>/{self.folder}/{self.categories}/{sample}"

    def class_folder(self, k: int, name: str) -> str:
        return name if self.name == "caltech101" else f"{k + 1:03d}.{name}"

    def file_name(self, k: int, i: int) -> str:
        """The i-th (from 1) image of the k-th class folder (from 0, in sorted order), as torchvision names it."""
        return f"image_{i:04d}.jpg" if self.name == "caltech101" else f"{k + 1:03d}_{i:04d}.jpg"


RELEASES = {
    "caltech101": Release("caltech101", "caltech101", "101_ObjectCategories", "BACKGROUND_Google",
                          torchvision.datasets.Caltech101, 8677, "trainval"),  # 9,144 with the 467 background images
    "caltech256": Release("caltech256", "caltech256", "256_ObjectCategories", "257.clutter",
                          torchvision.datasets.Caltech256, 29_780, "test"),  # 30,607 with the 827 clutter images
}
SPLITS = ("all",)


def _embedded_classes(release: Release, num: int, size: int, seed: int) -> list[tuple[str, list[int]]]:
    """(class folder name, generator indices of its images in file order) of the embedded data, classes sorted as
    the reader sorts them (background / clutter last: its own folder name sorts after, see `write_caltech`)."""
    picked = pick_ten_class_samples(seed, release.scenes, num, size, VOC_CLASSES) if num else []
    per_class: dict[int, list[int]] = {}
    for index, label, _ in picked:
        per_class.setdefault(label, []).append(index)
    present = sorted(per_class)
    return [(release.class_folder(k, VOC_CLASSES[c]), per_class[c]) for k, c in enumerate(present)]


def write_caltech(out: Path, name: str, num: int, image_size: int, seed: int) -> Path:
    """Write the embedded data in the layout of `name` ('caltech101' / 'caltech256') under `out`; returns
    `out`/<folder> (module docstring: which scenes, which folders)."""
    release = RELEASES[name]
    check_counts(num=num)
    check_image_size(image_size)
    target = Path(out) / release.folder
    classes = _embedded_classes(release, num, image_size, seed)
    with atomic(target) as d:
        root = d / release.categories
        for k, (folder, indices) in enumerate(classes):
            (root / folder).mkdir(parents=True)
            for i, index in enumerate(indices, 1):
                img = render_sample(seed, release.scenes, index, image_size).image
                Image.fromarray(img).save(root / folder / release.file_name(k, i), **JPEG)
        k = len(classes)
        background = release.background if name == "caltech101" else f"{k + 1:03d}.clutter"
        (root / background).mkdir(parents=True)
        for i in range(num // len(VOC_CLASSES) + 1):
            img = render_sample(seed, "unlabeled", i, image_size).image
            Image.fromarray(img).save(root / background / release.file_name(k, i + 1), **JPEG)
    return target


def _is_background(release: Release, folder: str) -> bool:
    return folder == release.background or (release.name == "caltech256" and folder.endswith(".clutter"))


class CaltechItems(Dataset):
    """The images of a Caltech release's object classes: uint8 [3, S, S] and {'label'}; classes interleaved."""

    def __init__(self, paths: list[str], labels: list[int], classes: list[str], image_size: int, num: int) -> None:
        order = class_interleaved(labels)
        n = len(order) if num <= 0 else min(num, len(order))
        self.paths, self.labels = [paths[i] for i in order[:n]], [labels[i] for i in order[:n]]
        self.classes, self.size = classes, image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Tensor]] | None:
        try:
            img = open_rgb(self.paths[i])  # Caltech-101 holds grey-scale JPEGs: converted to RGB
        except UNREADABLE as exc:
            warn_corrupt(self.paths[i], exc)
            return None
        return to_tensor(square(img, self.size)), label_target(self.labels[i])


def read_caltech(name: str, root: str | None, split: str, image_size: int, num: int) -> CaltechItems:
    """Caltech-101 / 256 under `root` (the folder holding caltech101/ or caltech256/, or that folder itself)."""
    release = RELEASES[name]
    check_split(name, split, SPLITS)
    p = need_root(name, root, release.tree(), name)
    if not (p / release.folder / release.categories).is_dir() and (p / release.categories).is_dir():
        p = p.parent if p.name == release.folder else p  # given the release folder itself
    folder = p / release.folder / release.categories
    if not folder.is_dir():
        raise UserError(f"{name}: expected {release.tree()}; {folder} is not a directory; {synth_hint(name)}")
    # torchvision makes <root>/<folder> when missing; it exists here, so reading creates nothing
    tv = release.reader(str(p))
    counts: dict[int, int] = {}
    for y in tv.y:
        counts[y] = counts.get(y, 0) + 1
    keep = [k for k, c in enumerate(tv.categories) if not _is_background(release, c)]
    empty = [tv.categories[k] for k in keep if counts.get(k, 0) == 0]
    if empty:
        raise UserError(f"{name}: class folder {folder / empty[0]} holds no image ({len(empty)} such); every class "
                        "needs images: restore it from the release or remove the folder")
    label_of = {k: j for j, k in enumerate(keep)}
    paths, labels = [], []
    for y, i in zip(tv.y, tv.index):
        if y in label_of:
            paths.append(str(folder / tv.categories[y] / release.file_name(y, i)))
            labels.append(label_of[y])
    missing = [q for q in paths if not os.path.isfile(q)]
    if missing:
        raise UserError(f"{name}: {missing[0]} not found ({len(missing)} such): torchvision's reader expects each "
                        "class folder to hold its images numbered 1..N without gaps, as the release names them, "
                        "and nothing else")
    classes = [c.split(".", 1)[1] if name == "caltech256" else c for c in (tv.categories[k] for k in keep)]
    return CaltechItems(paths, labels, classes, image_size, num)


def caltech_sources(name: str, num: int, size: int, seed: int) -> list[tuple[str, int]]:
    """The embedded sample behind each item of the "all" split in reading order, for a writer call with `num`."""
    release = RELEASES[name]
    classes = _embedded_classes(release, num, size, seed)
    flat = [(k, index) for k, (_, indices) in enumerate(classes) for index in indices]
    return [(release.scenes, flat[i][1]) for i in class_interleaved([k for k, _ in flat])]


def _summary(name: str) -> Callable[[str], str]:
    def summary(root: str) -> str:
        ds = read_caltech(name, root, "all", 0, 0)
        per_class = [ds.labels.count(c) for c in range(len(ds.classes))]
        return (f"{len(ds.classes)} classes (background left out), {min(per_class)}-{max(per_class)} images per "
                "class; the protocols draw their train / test images from the one split")

    return summary


def caltech101(root: str | None, split: str, image_size: int, num: int, synth_seed: int) -> Dataset:
    """Caltech-101 from disk (101 object classes, BACKGROUND_Google left out); one split, "all"."""
    return read_caltech("caltech101", root, split, image_size, num)


def caltech256(root: str | None, split: str, image_size: int, num: int, synth_seed: int) -> Dataset:
    """Caltech-256 from disk (256 object classes, 257.clutter left out); one split, "all"."""
    return read_caltech("caltech256", root, split, image_size, num)


for _name, _reader in (("caltech101", caltech101), ("caltech256", caltech256)):
    _release = RELEASES[_name]
    register_layout(Layout(
        name=_name, folder=_release.folder, tree=_release.tree(),
        write=lambda out, num, size, seed, n=_name: write_caltech(out, n, num, size, seed),
        sources=lambda split, num, size, seed, n=_name: caltech_sources(n, num, size, seed),
        check_splits=SPLITS, summarise=_summary(_name), sizes={"all": _release.images},
    ), _reader)
