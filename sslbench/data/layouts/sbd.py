"""SBD, the Semantic Boundaries Dataset (Hariharan et al. 2011): <root>/benchmark_RELEASE/dataset/{img/<id>.jpg,
cls/<id>.mat,train.txt,val.txt}, the MATLAB GTcls structs of SBD's benchmark.tgz.

The writer's images are the 2*`num` images the VOC2012 writer writes for the same `num` (same ids, same pixels:
SBD annotated VOC2011's images) plus `num` more; the reader gives the registered data set `sbd` and the (image,
mask) pairs the segmentation protocol adds to VOC2012 train (train_aug).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from sslbench.data.classes import VOC_CLASSES
from sslbench.data.layouts import Layout, register_layout
from sslbench.data.layouts._common import (
    JPEG,
    SegmentationPairs,
    SplitMissing,
    check_counts,
    check_image_size,
    check_split,
    need_root,
    synth_hint,
)
from sslbench.data.synthetic import label_edges, render_sample
from sslbench.errors import UserError
from sslbench.runtime import atomic


def sbd_boundaries(classes: np.ndarray) -> list[np.ndarray]:
    """SBD's per-class boundary maps of a class map (0 background, 1..20): [H, W] bool for classes 1..20, true
    on the pixels of that class with a 4-neighbour of another label."""
    edge = label_edges(classes)
    return [edge & (classes == c) for c in range(1, len(VOC_CLASSES) + 1)]


def _sbd_mat(classes: np.ndarray) -> dict[str, Any]:
    """The GTcls struct of one SBD cls/<id>.mat: Segmentation (uint8 class map), Boundaries (a 20x1 cell of
    sparse maps), CategoriesPresent (the 1-based classes present, a column)."""
    from scipy import sparse

    bounds = np.empty((len(VOC_CLASSES), 1), dtype=object)
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

    check_counts(num=num)
    check_image_size(image_size)
    target = Path(out) / "benchmark_RELEASE" / "dataset"
    with atomic(target) as d:
        for sub in ("img", "cls"):
            (d / sub).mkdir(parents=True)
        splits: dict[str, list[str]] = {"train": [], "val": []}
        for n, (base, index) in enumerate(_jobs(num)):
            image_id = f"{n + 1:06d}"
            s = render_sample(seed, base, index, image_size, full=True)
            Image.fromarray(s.image).save(d / "img" / f"{image_id}.jpg", **JPEG)
            savemat(d / "cls" / f"{image_id}.mat", _sbd_mat(s.classes), do_compression=True)
            splits["val" if n % 4 == 3 else "train"].append(image_id)
        for name, ids in splits.items():
            (d / f"{name}.txt").write_text("".join(f"{i}\n" for i in ids))
    return target




def _jobs(num: int) -> list[tuple[str, int]]:
    """(generator split, index) of every image written, in id order; every 4th is in val."""
    return [("trainval", i) for i in range(2 * num)] + [("test", j) for j in range(num)]


def sbd_sources(split: str, num: int) -> list[tuple[str, int]]:
    """The embedded sample behind each item of SBD's `split` (file order), for a writer call with `num`."""
    return [job for n, job in enumerate(_jobs(num)) if (split == "val") == (n % 4 == 3)]


_SBD_LAYOUT = "<root>/{img/<id>.jpg,cls/<id>.mat,train.txt,val.txt} (benchmark_RELEASE/dataset of SBD's benchmark.tgz)"
SBD_SPLITS = ("train", "val", "train_noval")


def _sbd_dir(root: str | None) -> Path:
    """SBD's dataset folder: `root` may be it, benchmark_RELEASE, or the folder holding benchmark_RELEASE."""
    p = need_root("sbd", root, _SBD_LAYOUT, "sbd")
    for cand in (p, p / "dataset", p / "benchmark_RELEASE" / "dataset"):
        if (cand / "img").is_dir() or (cand / "cls").is_dir():
            p = cand
            break
    missing = [d for d in ("img", "cls") if not (p / d).is_dir()]
    if missing:
        raise UserError(f"sbd: expected {_SBD_LAYOUT}; missing {', '.join(missing)} in {p}; {synth_hint('sbd')}")
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
        check_split("sbd", split, SBD_SPLITS)
        d = _sbd_dir(root)
        if not (d / f"{split}.txt").is_file():
            found = sorted(f.stem for f in d.glob("*.txt"))
            raise SplitMissing(f"sbd: no {split}.txt in {d} (found: {', '.join(found) or 'none'})")
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
        self.seg, self.classes = seg, list(VOC_CLASSES)

    def __len__(self) -> int:
        return len(self.seg)

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Tensor]] | None:
        item = self.seg[i]
        if item is None:
            return None
        img, mask = item
        counts = torch.bincount(mask.flatten(), minlength=len(VOC_CLASSES) + 1)[1:len(VOC_CLASSES) + 1]
        labels = (counts > 0).float()
        label = int(counts.argmax()) if counts.any() else -1
        target = {"label": torch.tensor(label), "labels": labels, "difficult": torch.zeros_like(labels), "mask": mask}
        return img, target


def sbd(root: str | None, split: str, image_size: int, num: int, synth_seed: int) -> Dataset:
    """SBD (Hariharan et al. 2011) from disk (benchmark_RELEASE/dataset); splits train, val, train_noval
    (unlabeled = train). voc-seg adds it to VOC2012 train: --data sbd=PATH."""
    check_split("sbd", split, (*SBD_SPLITS, "unlabeled"))
    return SBDItems(sbd_segmentation(root, "train" if split == "unlabeled" else split, image_size, num))



register_layout(Layout(
    name="sbd", folder="benchmark_RELEASE/dataset", tree=_SBD_LAYOUT,
    write=write_sbd, sources=lambda split, num, size, seed: sbd_sources(split, num),
    check_splits=("train", "val"), paired_trainval=True, segmentation=sbd_segmentation,
    sizes={"train": 8498, "val": 2857, "train_aug": 10_582},  # SBD; train_aug = VOC2012 train + SBD - VOC2012 val
), sbd)
