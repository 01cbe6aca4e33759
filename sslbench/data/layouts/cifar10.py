"""CIFAR-10, python version: <root>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta} (Python 2 pickles).

The writer's train images come from the embedded "trainval" split, its test images from "test", 32x32, chosen
as `pick_ten_class_samples` says; the reader is torchvision's CIFAR10 without the md5 check.
"""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torchvision
from torch.utils.data import Dataset

from sslbench.data.classes import CIFAR10_CLASSES
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
from sslbench.data.synthetic import Sample
from sslbench.errors import UserError
from sslbench.runtime import atomic

SIZE = 32  # the format fixes the side


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Pickles bytes and str as Python 2 `str` (SHORT_BINSTRING / BINSTRING), as Python 2's cPickle wrote
    the official CIFAR-10 batches: loading with encoding="latin1" (torchvision) gives str keys, loading with
    encoding="bytes" (the CIFAR web page's recipe) gives b"data", b"labels", ..., exactly as for the real files.
    numpy's array reconstructor is named by its numpy 1 path, which numpy 1 and 2 both load."""

    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def save_py2_str(self, obj: bytes | str) -> None:
        raw = obj if isinstance(obj, bytes) else obj.encode("latin1")
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str

    def save_global(self, obj: Any, name: str | None = None) -> None:
        if getattr(obj, "__name__", None) == "_reconstruct" and "numpy" in (getattr(obj, "__module__", "") or ""):
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
            return
        super().save_global(obj, name)


def _dump_py2(obj: Any, path: Path) -> None:
    with open(path, "wb") as f:
        _Py2Pickler(f, protocol=2).dump(obj)


def write_cifar10(out: Path, num_train: int, num_test: int, seed: int) -> Path:
    """Write `out`/cifar-10-batches-py (the official python version's files) and return that folder.

    Train images come from the embedded "trainval" split, test images from "test", 32x32, selected and
    labelled as `pick_ten_class_samples` says; train is spread over data_batch_1..5 as evenly as possible.
    """
    check_counts(num_train=num_train, num_test=num_test)
    target = Path(out) / "cifar-10-batches-py"

    def batch(samples: list[tuple[int, int, Sample]], label: str) -> dict[str, Any]:
        data = np.stack([s.image.transpose(2, 0, 1).reshape(-1) for _, _, s in samples]) if samples \
            else np.zeros((0, 3072), np.uint8)
        return {
            "batch_label": label,
            "labels": [int(k) for _, k, _ in samples],
            "data": np.ascontiguousarray(data, dtype=np.uint8),  # [N, 3072]: R plane, G plane, B plane, row-major
            "filenames": [f"{CIFAR10_CLASSES[k]}_s_{i:06d}.png" for i, k, _ in samples],
        }

    train = pick_ten_class_samples(seed, "trainval", num_train, SIZE, CIFAR10_CLASSES)
    test = pick_ten_class_samples(seed, "test", num_test, SIZE, CIFAR10_CLASSES)
    with atomic(target) as d:
        d.mkdir()
        bounds = np.linspace(0, len(train), 6).round().astype(int)
        for b in range(5):
            _dump_py2(batch(train[bounds[b]:bounds[b + 1]], f"training batch {b + 1} of 5"), d / f"data_batch_{b + 1}")
        _dump_py2(batch(test, "testing batch 1 of 1"), d / "test_batch")
        per_batch = max(1, int(bounds[1] - bounds[0]), len(test))
        _dump_py2({"num_cases_per_batch": per_batch, "label_names": list(CIFAR10_CLASSES), "num_vis": 3072},
                  d / "batches.meta")
        (d / "readme.html").write_text("<p>Embedded sslbench scenes in the CIFAR-10 python layout "
                                       "(written by <code>sslbench data synth --format cifar10</code>).</p>\n")
    return target


_CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
_CIFAR_LAYOUT = "<root>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}"


class CIFAR10Files(torchvision.datasets.CIFAR10):
    """torchvision's CIFAR10 with the md5 integrity check replaced by an existence check.

    torchvision compares every batch with the md5 sum of the official release, which rejects any other
    content in the same format (the files `sslbench data synth --format cifar10` writes, a re-packed copy);
    a file that is not a CIFAR batch still fails when unpickled, and the loader reports that as a UserError.
    Only the files of the requested split (and batches.meta) are required.
    """

    def __init__(self, root: str | Path, folder: str, train: bool) -> None:
        self.base_folder = folder
        super().__init__(str(root), train=train)

    def _needed(self) -> list[str]:
        return (_CIFAR_TRAIN if self.train else ["test_batch"]) + ["batches.meta"]

    def _check_integrity(self) -> bool:
        return all(os.path.isfile(os.path.join(self.root, self.base_folder, f)) for f in self._needed())

    def _load_meta(self) -> None:  # as torchvision's, without the md5 comparison
        with open(os.path.join(self.root, self.base_folder, self.meta["filename"]), "rb") as f:
            self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}


def cifar10(root: str | None, split: str, image_size: int, num: int, synth_seed: int) -> Dataset:
    """CIFAR-10 (python version) from disk; splits train, test (unlabeled = train); labels 0..9."""
    check_split("cifar10", split, ("train", "test", "unlabeled"))
    p = need_root("cifar10", root, _CIFAR_LAYOUT, "cifar10")
    found = find_folder(p, "cifar-10-batches-py", [*_CIFAR_TRAIN, "test_batch", "batches.meta"])
    if found is None:
        raise UserError(f"cifar10: expected {_CIFAR_LAYOUT}; {p} has no cifar-10-batches-py folder; "
                        f"{synth_hint('cifar10')}")
    parent, folder = found
    train = split != "test"
    needed = (_CIFAR_TRAIN if train else ["test_batch"]) + ["batches.meta"]
    missing = [f for f in needed if not (parent / folder / f).is_file()]
    if missing:
        err = SplitMissing if "batches.meta" not in missing else UserError
        raise err(f"cifar10: expected {_CIFAR_LAYOUT}; missing {', '.join(missing)} in {parent / folder}; "
                  f"{synth_hint('cifar10')}")
    try:
        ds = CIFAR10Files(parent, folder, train)
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError, TypeError, AttributeError, ImportError) as exc:
        raise UserError(f"cifar10: {parent / folder} does not hold CIFAR-10 python batches "
                        f"({type(exc).__name__}: {exc}); "
                        f"expected {_CIFAR_LAYOUT}") from exc
    labels = np.asarray(ds.targets, np.int64)
    files, data_dir = (_CIFAR_TRAIN if train else ["test_batch"]), parent / folder
    check_labels("cifar10", labels, len(ds.classes), lambda i: str(data_dir / _batch_of(data_dir, files, i)))
    return ArrayItems(ds.data, labels, False, image_size, num, ds.classes)


def _batch_of(folder: Path, files: list[str], item: int) -> str:
    """The batch file holding item `item` of the batches `files`, read in order (an error's rare path)."""
    seen = 0
    for name in files:
        with open(folder / name, "rb") as f:
            seen += len(pickle.load(f, encoding="latin1")["labels"])
        if item < seen:
            return name
    return files[-1]


def cifar10_sources(split: str, num: int, seed: int) -> list[tuple[str, int]]:
    """The embedded sample behind each item of `split` (train: data_batch_1..5 in order), for `num` per split."""
    base = "test" if split == "test" else "trainval"
    return [(base, index) for index, _, _ in pick_ten_class_samples(seed, base, num, SIZE, CIFAR10_CLASSES)]


register_layout(Layout(
    name="cifar10", folder="cifar-10-batches-py", tree=_CIFAR_LAYOUT,
    write=lambda out, num, size, seed: write_cifar10(out, num, num, seed),
    sources=lambda split, num, size, seed: cifar10_sources(split, num, seed), check_splits=("train", "test"),
    fixed_size=SIZE, sizes={"train": 50_000, "test": 10_000},  # the CIFAR-10 release
), cifar10)
