"""STL-10, binary version: <root>/stl10_binary/{train,test}_{X,y}.bin, unlabeled_X.bin, class_names.txt,
fold_indices.txt.

The writer's train / test images are embedded "trainval" / "test" scenes chosen as `pick_ten_class_samples`
says (labels stored 1..10 in STL's class order), its unlabeled images the embedded "unlabeled" split,
unfiltered (as in the real set, they include other classes); 96x96. The reader is torchvision's STL10 without
the md5 check.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torchvision
from torch.utils.data import Dataset

from sslbench.data.classes import STL10_CLASSES
from sslbench.data.layouts import Layout, register_layout
from sslbench.data.layouts._common import (
    ArrayItems,
    SplitMissing,
    check_counts,
    check_labels,
    check_split,
    find_folder,
    need_root,
    pick_ten_class_samples,
    synth_hint,
)
from sslbench.data.synthetic import render_sample
from sslbench.errors import UserError
from sslbench.runtime import atomic

SIZE = 96  # the format fixes the side


def _stl_bytes(images: Iterable[np.ndarray]) -> bytes:
    # STL-10 stores each image as 3 x 96 x 96 in column-major order: channel, then column, then row.
    return b"".join(np.ascontiguousarray(img.transpose(2, 1, 0)).tobytes() for img in images)


def write_stl10(out: Path, num_train: int, num_test: int, num_unlabeled: int, seed: int) -> Path:
    """Write `out`/stl10_binary (the official binary version's files, 96x96) and return that folder.

    train / test: embedded "trainval" / "test" scenes selected as `pick_ten_class_samples` says (labels
    stored 1..10 in STL's class order); unlabeled: the embedded "unlabeled" split, unfiltered.
    fold_indices.txt holds 10 folds of num_train // 5 train indices each (0-based, as the real file).
    """
    check_counts(num_train=num_train, num_test=num_test, num_unlabeled=num_unlabeled)
    target = Path(out) / "stl10_binary"
    train = pick_ten_class_samples(seed, "trainval", num_train, SIZE, STL10_CLASSES)
    test = pick_ten_class_samples(seed, "test", num_test, SIZE, STL10_CLASSES)
    with atomic(target) as d:
        d.mkdir()
        for name, samples in (("train", train), ("test", test)):
            (d / f"{name}_X.bin").write_bytes(_stl_bytes(s.image for _, _, s in samples))
            (d / f"{name}_y.bin").write_bytes(np.array([k + 1 for _, k, _ in samples], np.uint8).tobytes())
        with open(d / "unlabeled_X.bin", "wb") as f:
            for i in range(num_unlabeled):
                f.write(_stl_bytes([render_sample(seed, "unlabeled", i, SIZE).image]))
        (d / "class_names.txt").write_text("".join(f"{c}\n" for c in STL10_CLASSES))
        rng = np.random.default_rng([seed, 10])
        fold = num_train // 5
        folds = [np.sort(rng.choice(num_train, fold, replace=False)) for _ in range(10)]
        (d / "fold_indices.txt").write_text("".join(" ".join(map(str, f)) + " \n" for f in folds))
    return target



def read_stl10_folds(root: Path) -> list[np.ndarray]:
    """STL-10's 10 predefined training folds: stl10_binary/fold_indices.txt under `root`, 0-based train indices
    (the file the writer above writes and the real release ships)."""
    found = find_folder(Path(root), "stl10_binary", ["fold_indices.txt"])
    path = found[0] / found[1] / "fold_indices.txt" if found else None
    if path is None or not path.is_file():
        raise UserError(f"stl10: fold_indices.txt not found under {root}; it comes with the binary release "
                        "(stl10_binary/fold_indices.txt)")
    folds = [np.array([int(v) for v in line.split()], np.int64) for line in path.read_text().splitlines()
             if line.strip()]
    if len(folds) != 10:
        raise UserError(f"stl10: {path} holds {len(folds)} folds; STL-10 defines 10")
    return folds


_STL_FILES = {
    "train": ["train_X.bin", "train_y.bin"], "test": ["test_X.bin", "test_y.bin"], "unlabeled": ["unlabeled_X.bin"],
}
_STL_LAYOUT = "<root>/stl10_binary/{train_X.bin,train_y.bin,test_X.bin,test_y.bin,unlabeled_X.bin}"


class STL10Files(torchvision.datasets.STL10):
    """torchvision's STL10 with the md5 integrity check replaced by an existence check of the split's files.

    torchvision compares the files with the md5 sums of the official release, which rejects any other
    content in the same format (e.g. `sslbench data synth --format stl10`); it also demands unlabeled_X.bin
    (2.6 GB) to read train. A file of the wrong size still fails when reshaped (reported as a UserError).
    """

    def __init__(self, root: str | Path, folder: str, split: str) -> None:
        self.base_folder = folder
        super().__init__(str(root), split=split)

    def _check_integrity(self) -> bool:
        needed = sum((_STL_FILES[s] for s in self.split.split("+")), [])
        return all(os.path.isfile(os.path.join(self.root, self.base_folder, f)) for f in needed)


def stl10(root: str | None, split: str, image_size: int, num: int, synth_seed: int) -> Dataset:
    """STL-10 (binary version) from disk; splits train, test (labels 0..9), unlabeled (label -1)."""
    check_split("stl10", split, ("train", "test", "unlabeled"))
    p = need_root("stl10", root, _STL_LAYOUT, "stl10")
    found = find_folder(p, "stl10_binary", sum(_STL_FILES.values(), []))
    if found is None:
        raise UserError(f"stl10: expected {_STL_LAYOUT}; {p} has no stl10_binary folder; {synth_hint('stl10')}")
    parent, folder = found
    missing = [f for f in _STL_FILES[split] if not (parent / folder / f).is_file()]
    if missing:
        raise SplitMissing(f"stl10: expected {_STL_LAYOUT}; missing {', '.join(missing)} in {parent / folder}; "
                            f"{synth_hint('stl10')}")
    try:
        ds = STL10Files(parent, folder, split)
    except ValueError as exc:
        raise UserError(f"stl10: {parent / folder} does not hold STL-10 binaries ({exc}); "
                        f"expected {_STL_LAYOUT}") from exc
    if ds.labels is not None and len(ds.labels) != len(ds.data):
        raise UserError(f"stl10: {split}_X.bin holds {len(ds.data)} images but {split}_y.bin {len(ds.labels)} labels")
    classes = getattr(ds, "classes", None) or list(STL10_CLASSES)
    labels = np.asarray(ds.labels, np.int64) if split != "unlabeled" else np.full(len(ds.data), -1, np.int64)
    if split != "unlabeled":  # stored 1..10, torchvision subtracts 1
        check_labels("stl10", labels, len(STL10_CLASSES), lambda i: str(parent / folder / f"{split}_y.bin"))
    return ArrayItems(ds.data, labels, True, image_size, num, classes)


def stl10_sources(split: str, num: int, seed: int) -> list[tuple[str, int]]:
    """The embedded sample behind each item of `split`, for a writer call with `num` images per split."""
    if split == "unlabeled":
        return [("unlabeled", i) for i in range(num)]
    base = "test" if split == "test" else "trainval"
    return [(base, index) for index, _, _ in pick_ten_class_samples(seed, base, num, SIZE, STL10_CLASSES)]


register_layout(Layout(
    name="stl10", folder="stl10_binary", tree=_STL_LAYOUT,
    write=lambda out, num, size, seed: write_stl10(out, num, num, num, seed),
    sources=lambda split, num, size, seed: stl10_sources(split, num, seed),
    check_splits=("train", "test", "unlabeled"), fixed_size=SIZE,
    sizes={"train": 5000, "test": 8000, "unlabeled": 100_000},  # the STL-10 release
), stl10)
