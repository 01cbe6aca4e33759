"""The real data sets' on-disk layouts: writers of the embedded data to them, and loaders that read them.

Writers (`synth` dispatches on a format name) render the embedded procedural scenes
(sslbench.data.synthetic) into the exact layouts of the official releases, so every loader here runs
on the same code path for a synthetic sample as for the real download:

  voc / voc2012  <out>/VOCdevkit/VOC<year>/{JPEGImages,Annotations,SegmentationClass,ImageSets/{Main,Segmentation}}
  cifar10        <out>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}   (Python 2 pickles)
  stl10          <out>/stl10_binary/{train,test}_{X,y}.bin, unlabeled_X.bin, class_names.txt, fold_indices.txt
  imagenet       <out>/imagenet/{train,val}/<class>/<class>_<index>.JPEG                (ImageFolder)
  sbd            <out>/benchmark_RELEASE/dataset/{img/<id>.jpg,cls/<id>.mat,train.txt,val.txt}   (MATLAB GTcls)

Each writer renders into a temporary folder next to its target and renames it into place, so a failed
or interrupted write leaves nothing half-written.

CIFAR-10 and STL-10 have 10 classes; the embedded data has VOC's 20. Their images are the embedded
scenes whose main object is one of TEN_CLASSES, taken in generator order with an equal quota per class
(deterministic), labels renumbered 0..9 in CIFAR's class order (STL: in STL's order, stored 1..10). Each
embedded class stands for the CIFAR/STL class of the same position; there is no frog, deer or monkey in
the embedded data, so cow stands for deer and sheep for frog (CIFAR) / monkey (STL). The files record
the embedded names (label_names, class_names.txt), not the real ones. STL-10's unlabeled images are the
embedded "unlabeled" split unfiltered (as in the real set, they include other classes).

Loaders are registered data sets (`sslbench.registry.DATASETS`): cifar10, stl10, imagenet, voc2007,
voc2012, each a factory (root, split, image_size, num, synth_seed) -> Dataset of items per the contract
in sslbench.data.datasets; `voc_segmentation` gives (image, mask) pairs for the FCN protocol, and
`sbd_segmentation` the same pairs from SBD's .mat files, and
`check` summarises a data set on disk (`sslbench data check NAME=PATH`).
"""

from __future__ import annotations

import math
import os
import pickle
import secrets
import shutil
import struct
import warnings
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import torchvision
import torchvision.transforms.functional as TF
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from sslbench.data.datasets import EMBEDDED_SPLITS, detection_target, warn_corrupt
from sslbench.data.synthetic import CLASSES, Obj, Sample, render_sample
from sslbench.errors import UserError
from sslbench.registry import DATASETS, register_dataset

__all__ = [
    "CIFAR10_CLASSES", "STL10_CLASSES", "SYNTH_FORMATS", "TEN_CLASSES", "check", "pick_ten_class_samples",
    "sbd_segmentation", "synth", "voc_colormap", "voc_segmentation", "write_sbd", "write_cifar10", "write_imagenet", "write_stl10", "write_voc",
]

# Embedded classes standing for CIFAR-10's airplane, automobile, bird, cat, deer, dog, frog, horse, ship, truck.
CIFAR10_CLASSES = ("aeroplane", "car", "bird", "cat", "cow", "dog", "sheep", "horse", "boat", "bus")
# The same ten standing for STL-10's airplane, bird, car, cat, deer, dog, horse, monkey, ship, truck.
STL10_CLASSES = ("aeroplane", "bird", "car", "cat", "cow", "dog", "horse", "sheep", "boat", "bus")
TEN_CLASSES = frozenset(CIFAR10_CLASSES)

SYNTH_FORMATS = ("voc", "voc2007", "voc2012", "cifar10", "stl10", "imagenet", "sbd")
_CLASS_INDEX = {c: i for i, c in enumerate(CLASSES)}
# Quality 95 without chroma subsampling: the scenes' pixel noise makes 4:2:0 JPEGs ~8 grey levels off on
# average, 4:4:4 ~3, so a model sees nearly the generator's pixels through the JPEG round trip.
_JPEG = {"format": "JPEG", "quality": 95, "subsampling": 0}
_UNREADABLE = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


# ================================================================ writing

@contextmanager
def _atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary folder next to `target`; on success it replaces `target`, on failure it is removed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    tmp.mkdir()  # not mkdtemp: the folder keeps the umask's permissions, not 0700
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if target.exists():
        old = target.with_name(f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}.old")
        os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


def _check_counts(**counts: int) -> None:
    for what, n in counts.items():
        if n < 0:
            raise UserError(f"{what} must be >= 0 (got {n})")


def voc_colormap(n: int = 256) -> np.ndarray:
    """PASCAL VOC's label colour map [n, 3] uint8 (the devkit's bit-interleaving; 255 = (224, 224, 192))."""
    cmap = np.zeros((n, 3), np.uint8)
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        cmap[i] = (r, g, b)
    return cmap


def _voc_xml(image_id: str, year: str, sample: Sample, size: int) -> ET.ElementTree:
    ann = ET.Element("annotation")
    ET.SubElement(ann, "folder").text = f"VOC{year}"
    ET.SubElement(ann, "filename").text = f"{image_id}.jpg"
    src = ET.SubElement(ann, "source")
    ET.SubElement(src, "database").text = "The sslbench embedded procedural database"
    ET.SubElement(src, "annotation").text = f"sslbench data synth (PASCAL VOC{year} layout)"
    ET.SubElement(src, "image").text = "procedural"
    sz = ET.SubElement(ann, "size")
    ET.SubElement(sz, "width").text = str(size)
    ET.SubElement(sz, "height").text = str(size)
    ET.SubElement(sz, "depth").text = "3"
    ET.SubElement(ann, "segmented").text = "1"
    for o in sample.objects:
        obj = ET.SubElement(ann, "object")
        ET.SubElement(obj, "name").text = CLASSES[o.cls]
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = "0"
        ET.SubElement(obj, "difficult").text = str(int(o.difficult))
        box = ET.SubElement(obj, "bndbox")
        # The generator's boxes are 0-based inclusive pixel indices; VOC's are 1-based inclusive.
        for tag, v in zip(("xmin", "ymin", "xmax", "ymax"), o.box):
            ET.SubElement(box, tag).text = str(min(size, max(1, int(round(v)) + 1)))
    tree = ET.ElementTree(ann)
    ET.indent(tree, space="\t")
    return tree


def write_voc(out: Path, num: int, image_size: int, seed: int, year: str = "2007") -> Path:
    """Write `out`/VOCdevkit/VOC<year> and return that folder; `out` is the root a voc loader takes.

    `num` images per split: train and val are the even / odd samples of the embedded "trainval" split
    (trainval = both, 2*num images, ids 000001..); for 2007 also `num` test images from the embedded
    "test" split (ids after trainval's). Segmentation sets list every image (2007: also test).
    """
    year = str(year)
    if year not in ("2007", "2012"):
        raise UserError(f"VOC year must be 2007 or 2012 (got {year!r})")
    _check_counts(num=num)
    if image_size < 8:
        raise UserError(f"image size must be >= 8 pixels (got {image_size})")
    out = Path(out)
    target = out / "VOCdevkit" / f"VOC{year}"
    sets: dict[str, list[tuple[str, list[Obj]]]] = {"train": [], "val": []}
    if year == "2007":
        sets["test"] = []
    palette = voc_colormap().reshape(-1).tolist()
    with _atomic_dir(target) as d:
        for sub in ("JPEGImages", "Annotations", "SegmentationClass", "ImageSets/Main", "ImageSets/Segmentation"):
            (d / sub).mkdir(parents=True)
        jobs = [("trainval", i, "train" if i % 2 == 0 else "val") for i in range(2 * num)]
        jobs += [("test", j, "test") for j in range(num)] if year == "2007" else []
        for n, (base, index, name) in enumerate(jobs):
            image_id = f"{n + 1:06d}"
            s = render_sample(seed, base, index, image_size, full=True)
            Image.fromarray(s.image).save(d / "JPEGImages" / f"{image_id}.jpg", **_JPEG)
            _voc_xml(image_id, year, s, image_size).write(d / "Annotations" / f"{image_id}.xml", encoding="unicode")
            mask = Image.fromarray(s.seg)
            mask.putpalette(palette)
            mask.save(d / "SegmentationClass" / f"{image_id}.png")
            sets[name].append((image_id, s.objects))
        sets["trainval"] = sorted(sets["train"] + sets["val"], key=lambda t: t[0])
        for name, items in sets.items():
            ids = "".join(f"{i}\n" for i, _ in items)
            (d / "ImageSets" / "Main" / f"{name}.txt").write_text(ids)
            (d / "ImageSets" / "Segmentation" / f"{name}.txt").write_text(ids)
            for c, cls in enumerate(CLASSES):
                lines = []
                for image_id, objects in items:
                    here = [o.difficult for o in objects if o.cls == c]
                    flag = -1 if not here else (0 if all(here) else 1)  # 0: only difficult objects
                    lines.append(f"{image_id} {flag:2d}\n")
                (d / "ImageSets" / "Main" / f"{cls}_{name}.txt").write_text("".join(lines))
    return target


def pick_ten_class_samples(seed: int, split: str, num: int, size: int,
                           classes: Sequence[str] = CIFAR10_CLASSES) -> list[tuple[int, int, Sample]]:
    """(generator index, label 0..9, sample) of the first `num` scenes of embedded `split` whose main object
    is one of `classes`, with at most ceil(num / 10) per class (balanced, as CIFAR and STL are)."""
    wanted = {_CLASS_INDEX[c]: k for k, c in enumerate(classes)}
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
    _check_counts(num_train=num_train, num_test=num_test)
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

    train = pick_ten_class_samples(seed, "trainval", num_train, 32, CIFAR10_CLASSES)
    test = pick_ten_class_samples(seed, "test", num_test, 32, CIFAR10_CLASSES)
    with _atomic_dir(target) as d:
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


def _stl_bytes(images: Iterable[np.ndarray]) -> bytes:
    # STL-10 stores each image as 3 x 96 x 96 in column-major order: channel, then column, then row.
    return b"".join(np.ascontiguousarray(img.transpose(2, 1, 0)).tobytes() for img in images)


def write_stl10(out: Path, num_train: int, num_test: int, num_unlabeled: int, seed: int) -> Path:
    """Write `out`/stl10_binary (the official binary version's files, 96x96) and return that folder.

    train / test: embedded "trainval" / "test" scenes selected as `pick_ten_class_samples` says (labels
    stored 1..10 in STL's class order); unlabeled: the embedded "unlabeled" split, unfiltered.
    fold_indices.txt holds 10 folds of num_train // 5 train indices each (0-based, as the real file).
    """
    _check_counts(num_train=num_train, num_test=num_test, num_unlabeled=num_unlabeled)
    target = Path(out) / "stl10_binary"
    train = pick_ten_class_samples(seed, "trainval", num_train, 96, STL10_CLASSES)
    test = pick_ten_class_samples(seed, "test", num_test, 96, STL10_CLASSES)
    with _atomic_dir(target) as d:
        for name, samples in (("train", train), ("test", test)):
            (d / f"{name}_X.bin").write_bytes(_stl_bytes(s.image for _, _, s in samples))
            (d / f"{name}_y.bin").write_bytes(np.array([k + 1 for _, k, _ in samples], np.uint8).tobytes())
        with open(d / "unlabeled_X.bin", "wb") as f:
            for i in range(num_unlabeled):
                f.write(_stl_bytes([render_sample(seed, "unlabeled", i, 96).image]))
        (d / "class_names.txt").write_text("".join(f"{c}\n" for c in STL10_CLASSES))
        rng = np.random.default_rng([seed, 10])
        fold = num_train // 5
        folds = [np.sort(rng.choice(num_train, fold, replace=False)) for _ in range(10)]
        (d / "fold_indices.txt").write_text("".join(" ".join(map(str, f)) + " \n" for f in folds))
    return target


def write_imagenet(out: Path, num_train: int, num_val: int, image_size: int, seed: int) -> Path:
    """Write `out`/imagenet/{train,val}/<class>/<class>_<index>.JPEG (the ImageFolder layout the usual
    ImageNet preparation scripts produce, class folders named by the embedded class instead of a WordNet id)
    from the embedded "trainval" / "test" splits, and return `out`/imagenet. All 20 class folders exist."""
    _check_counts(num_train=num_train, num_val=num_val)
    if image_size < 8:
        raise UserError(f"image size must be >= 8 pixels (got {image_size})")
    target = Path(out) / "imagenet"
    with _atomic_dir(target) as d:
        for split, base, n in (("train", "trainval", num_train), ("val", "test", num_val)):
            for cls in CLASSES:
                (d / split / cls).mkdir(parents=True)
            for i in range(n):
                s = render_sample(seed, base, i, image_size)
                cls = CLASSES[s.label]
                Image.fromarray(s.image).save(d / split / cls / f"{cls}_{i:06d}.JPEG", **_JPEG)
    return target


def sbd_boundaries(classes: np.ndarray) -> list[np.ndarray]:
    """SBD's per-class boundary maps of a class map (0 background, 1..20): [H, W] bool for classes 1..20, true
    on the pixels of that class with a 4-neighbour of another label."""
    edge = np.zeros(classes.shape, bool)
    for axis in (0, 1):
        d = np.diff(classes.astype(np.int16), axis=axis) != 0
        lo = [slice(None)] * 2
        hi = [slice(None)] * 2
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        edge[tuple(lo)] |= d
        edge[tuple(hi)] |= d
    return [edge & (classes == c) for c in range(1, len(CLASSES) + 1)]


def _sbd_mat(classes: np.ndarray) -> dict[str, Any]:
    """The GTcls struct of one SBD cls/<id>.mat: Segmentation (uint8 class map), Boundaries (a 20x1 cell of
    sparse maps), CategoriesPresent (the 1-based classes present, a column)."""
    from scipy import sparse

    bounds = np.empty((len(CLASSES), 1), dtype=object)
    for c, b in enumerate(sbd_boundaries(classes)):
        bounds[c, 0] = sparse.csc_matrix(b.astype(np.uint8))
    present = np.array([c for c in np.unique(classes) if c > 0], np.uint8).reshape(-1, 1)
    return {"GTcls": {"Segmentation": classes.astype(np.uint8), "Boundaries": bounds, "CategoriesPresent": present}}


def write_sbd(out: Path, num: int, image_size: int, seed: int) -> Path:
    """Write `out`/benchmark_RELEASE/dataset (SBD, Hariharan et al. 2011) and return that folder.

    Its images are the 2*`num` images write_voc(out, num, ..., "2012") writes (same ids, same pixels: SBD
    annotated VOC2011's images) plus `num` more (ids after them, from the embedded "test" split). Masks are
    class maps without VOC's 255 outlines, as SBD's are. SBD's own split (every 4th image is val) cuts
    across VOC2012's, as the real one does: some SBD train images are VOC2012 val images, which is why the
    segmentation protocol removes VOC2012 val from its SBD training images.
    """
    from scipy.io import savemat

    _check_counts(num=num)
    if image_size < 8:
        raise UserError(f"image size must be >= 8 pixels (got {image_size})")
    target = Path(out) / "benchmark_RELEASE" / "dataset"
    jobs = [("trainval", i) for i in range(2 * num)] + [("test", j) for j in range(num)]
    with _atomic_dir(target) as d:
        for sub in ("img", "cls"):
            (d / sub).mkdir()
        splits: dict[str, list[str]] = {"train": [], "val": []}
        for n, (base, index) in enumerate(jobs):
            image_id = f"{n + 1:06d}"
            s = render_sample(seed, base, index, image_size, full=True)
            Image.fromarray(s.image).save(d / "img" / f"{image_id}.jpg", **_JPEG)
            savemat(d / "cls" / f"{image_id}.mat", _sbd_mat(s.extras["classes"]), do_compression=True)
            splits["val" if n % 4 == 3 else "train"].append(image_id)
        for name, ids in splits.items():
            (d / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
    return target


def synth(fmt: str, out: Path, num: int, image_size: int, seed: int) -> Path:
    """Write `num` images per split of the embedded data in format `fmt` under `out`; returns the folder written.

    voc / voc2007: VOC2007 train, val, test (trainval = 2*num); voc2012: train, val; cifar10: train, test
    at 32 px; stl10: train, test, unlabeled at 96 px; imagenet: train, val; sbd: the voc2012 images of the
    same `num` plus `num` more, split train / val its own way (see write_sbd). CIFAR-10 and STL-10 ignore
    `image_size` (their formats fix it).
    """
    out = Path(out)
    if num < 1:
        raise UserError(f"--num must be >= 1 (got {num})")
    writers: dict[str, Callable[[], Path]] = {
        "voc": lambda: write_voc(out, num, image_size, seed, "2007"),
        "voc2007": lambda: write_voc(out, num, image_size, seed, "2007"),
        "voc2012": lambda: write_voc(out, num, image_size, seed, "2012"),
        "cifar10": lambda: write_cifar10(out, num, num, seed),
        "stl10": lambda: write_stl10(out, num, num, num, seed),
        "imagenet": lambda: write_imagenet(out, num, num, image_size, seed),
        "sbd": lambda: write_sbd(out, num, image_size, seed),
    }
    if fmt not in writers:
        raise UserError(f"unknown data format {fmt!r}; valid: {', '.join(SYNTH_FORMATS)}")
    try:
        return writers[fmt]()
    except OSError as exc:
        raise UserError(f"cannot write {fmt} under {out}: {exc.strerror or exc}") from exc


# ================================================================ reading

class _SplitMissing(UserError):
    """The data set is there but this split's files are not (check() reports the split as absent)."""


def _synth_hint(fmt: str) -> str:
    return f"make a small sample with `sslbench data synth --format {fmt} --out DIR`"


def _need_root(name: str, root: str | None, layout: str, fmt: str) -> Path:
    if not root:
        raise UserError(f"{name} reads files: give its path ({name}=PATH, the folder holding {layout}); "
                        f"{_synth_hint(fmt)}")
    p = Path(root).expanduser()
    if not p.is_dir():
        raise UserError(f"{name}: {root} is not a directory; expected {layout}; {_synth_hint(fmt)}")
    return p


def _check_split(name: str, split: str, valid: Sequence[str]) -> None:
    if split not in valid:
        raise UserError(f"{name} has no split {split!r}; valid: {', '.join(valid)}")


def _to_tensor(img: Image.Image | np.ndarray) -> Tensor:
    """PIL image or HWC uint8 array -> uint8 [3, H, W]."""
    arr = np.array(img.convert("RGB") if isinstance(img, Image.Image) else img, dtype=np.uint8)
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def _square(img: Image.Image, size: int, resample: int = Image.Resampling.BILINEAR) -> Image.Image:
    return img if size <= 0 or img.size == (size, size) else img.resize((size, size), resample)


def _open_rgb(path: str | Path) -> Image.Image:
    with Image.open(path) as im:
        return im.convert("RGB")  # forces the decode: a truncated or corrupt file raises here


def _label_target(label: int) -> dict[str, Tensor]:
    return {"label": torch.tensor(int(label), dtype=torch.int64)}


def _find_folder(p: Path, folder: str, marker_files: Sequence[str]) -> tuple[Path, str] | None:
    """(parent, folder name) of the data folder: `p`/`folder`, or `p` itself when it holds the files."""
    if (p / folder).is_dir():
        return p, folder
    if any((p / f).is_file() for f in marker_files):
        return p.parent, p.name
    return None


# ---------------------------------------------------------------- CIFAR-10

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


class _ArrayItems(Dataset):
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
            img = _to_tensor(_square(Image.fromarray(np.ascontiguousarray(hwc)), self.size))
        else:
            img = torch.from_numpy(np.ascontiguousarray(hwc)).permute(2, 0, 1).contiguous()
        return img, _label_target(int(self.labels[i]))


@register_dataset("cifar10")
def cifar10(root: str | None, split: str, image_size: int, num: int, synth_seed: int) -> Dataset:
    """CIFAR-10 (python version) from disk; splits train, test (unlabeled = train); labels 0..9."""
    _check_split("cifar10", split, ("train", "test", "unlabeled"))
    p = _need_root("cifar10", root, _CIFAR_LAYOUT, "cifar10")
    found = _find_folder(p, "cifar-10-batches-py", [*_CIFAR_TRAIN, "test_batch", "batches.meta"])
    if found is None:
        raise UserError(f"cifar10: expected {_CIFAR_LAYOUT}; {p} has no cifar-10-batches-py folder; "
                        f"{_synth_hint('cifar10')}")
    parent, folder = found
    train = split != "test"
    needed = (_CIFAR_TRAIN if train else ["test_batch"]) + ["batches.meta"]
    missing = [f for f in needed if not (parent / folder / f).is_file()]
    if missing:
        err = _SplitMissing if "batches.meta" not in missing else UserError
        raise err(f"cifar10: expected {_CIFAR_LAYOUT}; missing {', '.join(missing)} in {parent / folder}; "
                  f"{_synth_hint('cifar10')}")
    try:
        ds = CIFAR10Files(parent, folder, train)
    except (pickle.UnpicklingError, EOFError, ValueError, KeyError, TypeError, AttributeError, ImportError) as exc:
        raise UserError(f"cifar10: {parent / folder} does not hold CIFAR-10 python batches "
                        f"({type(exc).__name__}: {exc}); "
                        f"expected {_CIFAR_LAYOUT}") from exc
    return _ArrayItems(ds.data, np.asarray(ds.targets), False, image_size, num, ds.classes)


# ---------------------------------------------------------------- STL-10

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


@register_dataset("stl10")
def stl10(root: str | None, split: str, image_size: int, num: int, synth_seed: int) -> Dataset:
    """STL-10 (binary version) from disk; splits train, test (labels 0..9), unlabeled (label -1)."""
    _check_split("stl10", split, ("train", "test", "unlabeled"))
    p = _need_root("stl10", root, _STL_LAYOUT, "stl10")
    found = _find_folder(p, "stl10_binary", sum(_STL_FILES.values(), []))
    if found is None:
        raise UserError(f"stl10: expected {_STL_LAYOUT}; {p} has no stl10_binary folder; {_synth_hint('stl10')}")
    parent, folder = found
    missing = [f for f in _STL_FILES[split] if not (parent / folder / f).is_file()]
    if missing:
        raise _SplitMissing(f"stl10: expected {_STL_LAYOUT}; missing {', '.join(missing)} in {parent / folder}; "
                            f"{_synth_hint('stl10')}")
    try:
        ds = STL10Files(parent, folder, split)
    except ValueError as exc:
        raise UserError(f"stl10: {parent / folder} does not hold STL-10 binaries ({exc}); "
                        f"expected {_STL_LAYOUT}") from exc
    if ds.labels is not None and len(ds.labels) != len(ds.data):
        raise UserError(f"stl10: {split}_X.bin holds {len(ds.data)} images but {split}_y.bin {len(ds.labels)} labels")
    classes = getattr(ds, "classes", None) or list(STL10_CLASSES)
    labels = np.asarray(ds.labels, np.int64) if split != "unlabeled" else np.full(len(ds.data), -1, np.int64)
    return _ArrayItems(ds.data, labels, True, image_size, num, classes)


# ---------------------------------------------------------------- ImageNet (ImageFolder)

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
        rank: dict[int, int] = {}
        keyed = []
        for path, label in folder.samples:
            keyed.append((rank.get(label, 0), label, path))
            rank[label] = rank.get(label, 0) + 1
        keyed.sort()
        n = len(keyed) if num <= 0 else min(num, len(keyed))
        self.samples = [(path, label) for _, label, path in keyed[:n]]
        self.classes, self.size = list(folder.classes), image_size

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Tensor]] | None:
        path, label = self.samples[i]
        try:
            img = _open_rgb(path)
        except _UNREADABLE as exc:
            warn_corrupt(path, exc)
            return None
        if self.size > 0:
            img = TF.center_crop(TF.resize(img, self.size), [self.size, self.size])
        return _to_tensor(img), _label_target(label)


@register_dataset("imagenet")
def imagenet(root: str | None, split: str, image_size: int, num: int, synth_seed: int) -> Dataset:
    """ImageNet in the ImageFolder layout (root/train, root/val, one folder per class); unlabeled = train."""
    _check_split("imagenet", split, ("train", "val", "unlabeled"))
    p = _need_root("imagenet", root, _IMAGENET_LAYOUT, "imagenet")
    if not (p / "train").is_dir() and not (p / "val").is_dir() and (p / "imagenet").is_dir():
        p = p / "imagenet"
    sub = "val" if split == "val" else "train"
    if not (p / sub).is_dir():
        err = _SplitMissing if (p / ("train" if sub == "val" else "val")).is_dir() else UserError
        raise err(f"imagenet: expected {_IMAGENET_LAYOUT}; missing {sub} in {p}; {_synth_hint('imagenet')}")
    ref = p / "train" if (p / "train").is_dir() else p / sub
    classes = sorted(e.name for e in os.scandir(ref) if e.is_dir())
    if not classes:
        raise UserError(f"imagenet: expected {_IMAGENET_LAYOUT}; {ref} has no class folders")
    folder = _SharedClassesFolder(str(p / sub), classes)
    if not folder.samples:
        raise _SplitMissing(f"imagenet: expected {_IMAGENET_LAYOUT}; no images under {p / sub}")
    return ImageFolderItems(folder, image_size, num)


# ---------------------------------------------------------------- PASCAL VOC

def _voc_layout(year: str, need: Sequence[str]) -> str:
    return f"<root>/VOCdevkit/VOC{year}/{{{','.join(need)}}}"


def _voc_dirs(name: str, root: str | None, year: str, need: Sequence[str]) -> tuple[Path, Path]:
    """(torchvision root = the folder holding VOCdevkit, VOC<year> folder), after checking `need` exists.
    `root` may be the folder holding VOCdevkit, VOCdevkit itself, or VOCdevkit/VOC<year>."""
    layout = _voc_layout(year, need)
    p = _need_root(name, root, layout, "voc" if year == "2007" else "voc2012")
    vy = f"VOC{year}"
    if (p / "VOCdevkit" / vy).is_dir():
        tv_root = p
    elif p.name == "VOCdevkit" and (p / vy).is_dir():
        tv_root = p.parent
    elif p.name == vy and p.parent.name == "VOCdevkit":
        tv_root = p.parent.parent
    else:
        what = "VOCdevkit" if not (p / "VOCdevkit").is_dir() else f"VOCdevkit/{vy}"
        raise UserError(f"{name}: expected {layout}; missing {what} in {p}; "
                        f"{_synth_hint('voc' if year == '2007' else 'voc2012')}")
    voc = tv_root / "VOCdevkit" / vy
    missing = [d for d in need if not (voc / d).is_dir()]
    if missing:
        raise UserError(f"{name}: expected {layout}; missing {', '.join(missing)} (in {voc}); "
                        f"{_synth_hint('voc' if year == '2007' else 'voc2012')}")
    return tv_root, voc


def _voc_split_file(name: str, voc: Path, sets_dir: str, split: str, year: str) -> None:
    split_dir = voc / "ImageSets" / sets_dir
    if not (split_dir / f"{split}.txt").is_file():
        found = sorted(f.stem for f in split_dir.glob("*.txt") if "_" not in f.stem)
        note = ("; VOC2007's test set is a separate download (VOCtest_06-Nov-2007.tar)"
                if year == "2007" and split == "test" else "")
        raise _SplitMissing(f"{name}: no {split}.txt in {split_dir} (found: {', '.join(found) or 'none'}){note}")


def _voc_annotation(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(boxes [K,4] 0-based inclusive pixels, classes [K], difficult [K]) of one VOC XML file."""
    if not os.path.isfile(path):
        raise UserError(f"missing annotation {path} (listed in the split file)")
    try:
        tree = ET.parse(path)
    except ET.ParseError as exc:
        raise UserError(f"malformed VOC annotation {path}: {exc}") from exc
    ann = torchvision.datasets.VOCDetection.parse_voc_xml(tree.getroot()).get("annotation")
    if not isinstance(ann, dict):
        raise UserError(f"malformed VOC annotation {path}: the root element is not <annotation>")
    objects = ann.get("object", [])
    objects = objects if isinstance(objects, list) else [objects]
    boxes, classes, difficult = [], [], []
    for k, obj in enumerate(objects):
        if not isinstance(obj, dict):
            raise UserError(f"malformed VOC annotation {path}: <object> {k + 1} is empty")
        cls = str(obj.get("name", "")).strip()
        if cls not in _CLASS_INDEX:
            raise UserError(f"malformed VOC annotation {path}: object {k + 1} has class {cls!r}, not one of VOC's 20")
        box = obj.get("bndbox")
        try:
            xyxy = [float(box[t]) - 1.0 for t in ("xmin", "ymin", "xmax", "ymax")]  # type: ignore[index]
            hard = bool(int(float(obj.get("difficult", 0) or 0)))
        except (TypeError, KeyError, ValueError) as exc:
            raise UserError(f"malformed VOC annotation {path}: object {k + 1} ({cls}) needs a <bndbox> with numeric "
                            f"xmin, ymin, xmax, ymax ({type(exc).__name__}: {exc})") from exc
        boxes.append(xyxy)
        classes.append(_CLASS_INDEX[cls])
        difficult.append(hard)
    return np.array(boxes, np.float32).reshape(-1, 4), np.array(classes, np.int64), np.array(difficult, bool)


def _main_label(boxes: np.ndarray, classes: np.ndarray, difficult: np.ndarray) -> int:
    """Class of the largest non-difficult object (the largest of all if every one is difficult), -1 if none."""
    if len(classes) == 0:
        return -1
    area = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    area = np.where(difficult, -1.0, area) if not difficult.all() else area
    return int(classes[int(np.argmax(area))])


class VOCDetectionItems(Dataset):
    """VOC detection / classification items. File lists come from torchvision's VOCDetection; the split's
    annotations are parsed when the data set is built (a malformed file stops the run there, naming it)."""

    def __init__(self, name: str, root: str | None, year: str, split: str, image_size: int, num: int) -> None:
        tv_root, voc = _voc_dirs(name, root, year, ("JPEGImages", "Annotations", "ImageSets/Main"))
        _voc_split_file(name, voc, "Main", split, year)
        tv = torchvision.datasets.VOCDetection(str(tv_root), year=year, image_set=split)
        n = len(tv.images) if num <= 0 else min(num, len(tv.images))
        self.images = tv.images[:n]
        missing = [p for p in self.images if not os.path.isfile(p)]
        if missing:
            raise UserError(f"{name}: {len(missing)} image(s) of {split}.txt missing, e.g. {missing[0]}; "
                            f"expected {_voc_layout(year, ('JPEGImages',))}/<id>.jpg")
        self.records = [_voc_annotation(p) for p in tv.annotations[:n]]
        self.main_labels = [_main_label(*r) for r in self.records]
        self.classes, self.size = list(CLASSES), image_size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Tensor]] | None:
        try:
            img = _open_rgb(self.images[i])
        except _UNREADABLE as exc:
            warn_corrupt(self.images[i], exc)
            return None
        boxes, classes, difficult = self.records[i]
        if self.size > 0:
            w, h = img.size
            boxes = boxes * np.array([self.size / w, self.size / h] * 2, np.float32)
            img = _square(img, self.size)
        return _to_tensor(img), detection_target(self.main_labels[i], boxes, classes, difficult)


_VOC_SPLITS = {"2007": ("train", "val", "trainval", "test"), "2012": ("train", "val", "trainval")}


def _voc_factory(year: str) -> Callable[..., Dataset]:
    name = f"voc{year}"

    def build(root: str | None, split: str, image_size: int, num: int, synth_seed: int) -> Dataset:
        _check_split(name, split, (*_VOC_SPLITS[year], "unlabeled"))
        return VOCDetectionItems(name, root, year, "trainval" if split == "unlabeled" else split, image_size, num)

    build.__name__ = name
    build.__doc__ = (f"PASCAL VOC{year} from disk (VOCdevkit layout); splits {', '.join(_VOC_SPLITS[year])} "
                     "(unlabeled = trainval); label = the largest non-difficult object's class.")
    return build


voc2007 = register_dataset("voc2007")(_voc_factory("2007"))
voc2012 = register_dataset("voc2012")(_voc_factory("2012"))


class SegmentationPairs(Dataset):
    """(uint8 image [3,S,S], int64 mask [S,S]) pairs from image and mask files; mask values 0 background,
    1..20 classes, 255 ignore. Subclasses read their mask format (`_mask`); S = 0 keeps the stored size."""

    def __init__(self, name: str, split: str, images: list[str], masks: list[str], image_size: int) -> None:
        self.images, self.masks, self.size = images, masks, image_size
        self.ids, self.classes = [Path(i).stem for i in images], list(CLASSES)
        missing = [p for p in (*images, *masks) if not os.path.isfile(p)]
        if missing:
            raise UserError(f"{name}: {len(missing)} file(s) of {split}.txt missing, e.g. {missing[0]}")

    def _mask(self, i: int) -> Image.Image | None:
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor] | None:
        try:
            img = _open_rgb(self.images[i])
        except _UNREADABLE as exc:
            warn_corrupt(self.images[i], exc)
            return None
        mask = self._mask(i)
        if mask is None:
            return None
        if mask.size != img.size:
            raise UserError(f"mask {self.masks[i]} is {mask.size[0]}x{mask.size[1]}, its image "
                            f"{img.size[0]}x{img.size[1]}")
        if self.size > 0:
            img, mask = _square(img, self.size), _square(mask, self.size, Image.Resampling.NEAREST)
        return _to_tensor(img), torch.from_numpy(np.array(mask, np.int64))


class VOCSegmentationItems(SegmentationPairs):
    """VOC SegmentationClass pairs; file lists from torchvision's VOCSegmentation."""

    def __init__(self, root: str | None, year: str, split: str, image_size: int, num: int = 0) -> None:
        name = f"voc{year} segmentation"
        _check_split(name, split, _VOC_SPLITS[str(year)])
        tv_root, voc = _voc_dirs(name, root, year, ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"))
        _voc_split_file(name, voc, "Segmentation", split, year)
        tv = torchvision.datasets.VOCSegmentation(str(tv_root), year=year, image_set=split)
        n = len(tv.images) if num <= 0 else min(num, len(tv.images))
        super().__init__(name, split, tv.images[:n], tv.masks[:n], image_size)

    def _mask(self, i: int) -> Image.Image | None:
        try:
            with Image.open(self.masks[i]) as m:
                if m.mode not in ("P", "L"):
                    raise ValueError(f"mask mode {m.mode}, expected a palette (P) or grey (L) PNG of class indices")
                m.load()
                return m.copy()
        except _UNREADABLE as exc:
            warn_corrupt(self.masks[i], exc)
            return None


def voc_segmentation(root: str | None, year: str, split: str, image_size: int, num: int = 0) -> Dataset:
    """VOC<year> segmentation (SegmentationClass + ImageSets/Segmentation) for the FCN protocol: items
    (uint8 image [3,S,S], int64 mask [S,S]; nearest-resized), None for an unreadable file (warned)."""
    return VOCSegmentationItems(root, str(year), split, image_size, num)


_SBD_LAYOUT = "<root>/{img/<id>.jpg,cls/<id>.mat,train.txt,val.txt} (benchmark_RELEASE/dataset of SBD's benchmark.tgz)"
SBD_SPLITS = ("train", "val", "train_noval")


def _sbd_dir(root: str | None) -> Path:
    """SBD's dataset folder: `root` may be it, benchmark_RELEASE, or the folder holding benchmark_RELEASE."""
    p = _need_root("sbd", root, _SBD_LAYOUT, "sbd")
    for cand in (p, p / "dataset", p / "benchmark_RELEASE" / "dataset"):
        if (cand / "img").is_dir() or (cand / "cls").is_dir():
            p = cand
            break
    missing = [d for d in ("img", "cls") if not (p / d).is_dir()]
    if missing:
        raise UserError(f"sbd: expected {_SBD_LAYOUT}; missing {', '.join(missing)} in {p}; {_synth_hint('sbd')}")
    return p


def read_sbd_mask(path: str) -> np.ndarray:
    """The [H, W] uint8 class map (GTcls.Segmentation) of one SBD cls/<id>.mat; a malformed file is a UserError."""
    from scipy.io import loadmat

    try:
        mat = loadmat(path)
    except (OSError, ValueError, TypeError) as exc:
        raise UserError(f"malformed SBD mask {path}: not a readable MATLAB file ({exc})") from exc
    try:
        seg = np.asarray(mat["GTcls"][0]["Segmentation"][0])
    except (KeyError, IndexError, ValueError) as exc:
        raise UserError(f"malformed SBD mask {path}: expected a GTcls struct with a Segmentation field "
                        f"(found keys {', '.join(k for k in mat if not k.startswith('__')) or 'none'})") from exc
    if seg.ndim != 2 or not np.issubdtype(seg.dtype, np.integer):
        raise UserError(f"malformed SBD mask {path}: GTcls.Segmentation is {seg.dtype} {seg.shape}, "
                        "expected a 2-D integer class map")
    return seg.astype(np.uint8)


class SBDSegmentationItems(SegmentationPairs):
    """SBD pairs (cls/<id>.mat class maps); `exclude` drops ids (VOC2012 val, for the train_aug set). File
    lists come from torchvision's SBDataset."""

    def __init__(self, root: str | None, split: str, image_size: int, num: int = 0,
                 exclude: Iterable[str] = ()) -> None:
        _check_split("sbd", split, SBD_SPLITS)
        d = _sbd_dir(root)
        if not (d / f"{split}.txt").is_file():
            found = sorted(f.stem for f in d.glob("*.txt"))
            raise _SplitMissing(f"sbd: no {split}.txt in {d} (found: {', '.join(found) or 'none'})")
        tv = torchvision.datasets.SBDataset(str(d), image_set=split, mode="segmentation")
        drop = set(exclude)
        pairs = [(i, m) for i, m in zip(tv.images, tv.masks) if Path(i).stem not in drop]
        pairs = pairs if num <= 0 else pairs[:num]
        super().__init__("sbd", split, [i for i, _ in pairs], [m for _, m in pairs], image_size)

    def _mask(self, i: int) -> Image.Image:
        return Image.fromarray(read_sbd_mask(self.masks[i]))


def sbd_segmentation(root: str | None, split: str, image_size: int, num: int = 0,
                     exclude: Iterable[str] = ()) -> SBDSegmentationItems:
    """SBD (benchmark_RELEASE/dataset) segmentation pairs of `split` (train, val, train_noval), minus `exclude` ids."""
    return SBDSegmentationItems(root, split, image_size, num, exclude)


class SBDItems(Dataset):
    """SBD as a registered data set: items per sslbench.data.datasets, the label being the largest class by
    pixels and labels the classes present (SBD has no boxes); `mask` [S,S] the class map."""

    def __init__(self, seg: SBDSegmentationItems) -> None:
        self.seg, self.classes = seg, list(CLASSES)

    def __len__(self) -> int:
        return len(self.seg)

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Tensor]] | None:
        item = self.seg[i]
        if item is None:
            return None
        img, mask = item
        counts = torch.bincount(mask.flatten(), minlength=len(CLASSES) + 1)[1:len(CLASSES) + 1]
        labels = (counts > 0).float()
        label = int(counts.argmax()) if counts.any() else -1
        return img, {"label": torch.tensor(label), "labels": labels, "difficult": torch.zeros_like(labels), "mask": mask}


@register_dataset("sbd")
def sbd(root: str | None, split: str, image_size: int, num: int, synth_seed: int) -> Dataset:
    """SBD (Hariharan et al. 2011) from disk (benchmark_RELEASE/dataset); splits train, val, train_noval
    (unlabeled = train). voc-seg adds it to VOC2012 train: --data sbd=PATH."""
    _check_split("sbd", split, (*SBD_SPLITS, "unlabeled"))
    return SBDItems(sbd_segmentation(root, "train" if split == "unlabeled" else split, image_size, num))


# ================================================================ check

CHECK_SPLITS = {
    "cifar10": ("train", "test"), "stl10": ("train", "test", "unlabeled"), "imagenet": ("train", "val"),
    "voc2007": ("train", "val", "test"), "voc2012": ("train", "val"), "embedded": EMBEDDED_SPLITS,
    "sbd": ("train", "val"),
}


def _shape_text(shapes: set[tuple[int, int]]) -> str:
    if not shapes:
        return "no readable images"
    if len(shapes) <= 3:
        return "images " + ", ".join(f"{w}x{h}" for h, w in sorted(shapes))
    hs, ws = [h for h, _ in shapes], [w for _, w in shapes]
    return f"images {min(ws)}..{max(ws)} wide, {min(hs)}..{max(hs)} high"


def check(name: str, root: str, limit: int = 200) -> str:
    """Load data set `name` from `root` for each of its splits, read the first `limit` items of each
    (0 = all), and return a one-paragraph summary; problems are UserErrors."""
    factory = DATASETS.get(name)
    parts, absent, shapes = [], [], set()
    seen: set[int] = set()
    n_classes = 0
    read = corrupt = 0
    corrupt_files: list[str] = []
    for split in CHECK_SPLITS.get(name, ("train", "val", "test")):
        try:
            ds = factory(root, split, 0, 0, 0)
        except _SplitMissing as exc:
            absent.append((split, str(exc)))
            continue
        except UserError as exc:
            if "has no split" in str(exc) and name not in CHECK_SPLITS:
                continue
            raise
        n_classes = max(n_classes, len(getattr(ds, "classes", ()) or ()))
        m = len(ds) if limit <= 0 else min(limit, len(ds))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for i in range(m):
                item = ds[i]
                if item is None:
                    corrupt += 1
                    continue
                img, target = item
                shapes.add(tuple(img.shape[1:]))
                if "labels" in target:
                    seen.update(int(c) for c in torch.nonzero(target["labels"]).flatten())
                elif int(target["label"]) >= 0:
                    seen.add(int(target["label"]))
        corrupt_files += [str(w.message) for w in caught if "unreadable" in str(w.message)]
        read += m
        parts.append(f"{split} {len(ds)}")
    if not parts:
        raise UserError(absent[0][1] if absent else f"{name}: no split could be read from {root}")
    text = f"{name} at {root}: {', '.join(parts)} images"
    if absent:
        text += f" ({', '.join(s for s, _ in absent)} absent)"
    scope = "all items" if limit <= 0 else f"up to {limit} per split"
    text += f"; read {read} ({scope}): {_shape_text(shapes)} as stored"  # type: ignore[arg-type]
    text += f"; {n_classes or len(seen)} classes, {len(seen)} of them present in what was read"
    if name in ("voc2007", "voc2012"):
        seg = []
        for split in _VOC_SPLITS[name[3:]]:
            try:
                seg.append(f"{split} {len(voc_segmentation(root, name[3:], split, 0))}")
            except UserError:
                pass
        text += f"; segmentation masks: {', '.join(seg)}" if seg else "; no segmentation masks"
    text += f"; {corrupt} unreadable file(s) skipped"
    if corrupt_files:
        text += f" (first: {corrupt_files[0].removeprefix('skipping unreadable image ')})"
    return text + "."
