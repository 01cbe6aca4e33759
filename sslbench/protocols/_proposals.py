"""Region proposals for Fast R-CNN: selective search computed once per image and cached, or a file.

Selective search runs in OpenCV's "fast" mode (opencv-contrib `cv2.ximgproc`, Uijlings et al.'s fast
setting, as R-CNN and Fast R-CNN used it) on every image as the data set yields it. The boxes of one data
set / split / image size are written once, atomically, to an .npz in the sslbench cache directory, keyed by
the image list, and read back on every later run.

Proposals file format (the cache, and what `proposals = "<path>"` in a voc-det recipe must hold): one .npz
archive with one array per image id (VOC: the file stem, e.g. "000005"), each of shape [K, 4] (any float or
integer dtype): boxes x0, y0, x1, y1 in 0-based inclusive pixel coordinates of the image the data set
yields (original pixels when data.image_size = 0, the paper recipe), best-ranked first. K may differ per image
and be 0. R-CNN's released `selective_search_data/*.mat` boxes are 1-based (y0, x0, y1, x1): reorder them and
subtract 1 to write such a file.
"""

from __future__ import annotations

import functools
import hashlib
import os
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from sslbench.errors import UserError
from sslbench.progress import progress_bar
from sslbench.runtime import atomic, cache_dir

# Selective search's "fast" mode: HSV and Lab images, graph segmentations at several k (sigma 0.8), and two
# grouping strategies (colour + texture + size + fill; texture + size + fill). "opencv-fast" is OpenCV's
# switchToSelectiveSearchFast(): k = 150, 300, 450 with its graph segmentation's minimum region of 100 px.
# "rcnn-fast" is R-CNN's (rbgirshick/rcnn selective_search/selective_search_boxes.m): k = 50, 100 with a minimum
# region of k px. The mode keys the cache (opencv-fast's key is the one it always had).
SEARCH_VERSION = "opencv-selective-search-fast-k150-150-s0.8-v1"
SEARCH_MODES = {"opencv-fast": SEARCH_VERSION, "rcnn-fast": "rcnn-selective-search-fast-k50-100-min-k-s0.8-v1"}


def selective_search(image: Tensor, mode: str = "opencv-fast") -> np.ndarray:
    """uint8 image [3,H,W] -> proposals [K,4] (x0, y0, x1, y1 inclusive pixels), OpenCV's rank order."""
    import cv2

    seg = cv2.ximgproc.segmentation
    bgr = np.ascontiguousarray(image.permute(1, 2, 0).numpy()[:, :, ::-1])
    search = seg.createSelectiveSearchSegmentation()
    search.setBaseImage(bgr)
    if mode == "opencv-fast":
        search.switchToSelectiveSearchFast()
    else:  # R-CNN's fast mode, built from the same parts
        search.clear()
        search.addImage(cv2.cvtColor(bgr, cv2.COLOR_BGR2HSV))
        search.addImage(cv2.cvtColor(bgr, cv2.COLOR_BGR2Lab))
        for k in (50, 100):
            search.addGraphSegmentation(seg.createGraphSegmentation(0.8, float(k), k))
        strategy = "createSelectiveSearchSegmentationStrategy"
        color, fill, texture, size = (getattr(seg, strategy + part) for part in ("Color", "Fill", "Texture", "Size"))
        search.addStrategy(seg.createSelectiveSearchSegmentationStrategyMultiple(color(), fill(), texture(), size()))
        search.addStrategy(seg.createSelectiveSearchSegmentationStrategyMultiple(fill(), texture(), size()))
    xywh = search.process().astype(np.float32).reshape(-1, 4)  # [K, 4] x, y, width, height
    return np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:] - 1.0], axis=1)


def clean_proposals(boxes: np.ndarray, width: int, height: int, min_size: int, max_count: int) -> np.ndarray:
    """Clip to the image, drop boxes under `min_size` px a side and duplicates (first kept), keep the
    first `max_count` (py-faster-rcnn's `unique_boxes` + `filter_small_boxes`) -> float32 [K',4]."""
    b = np.asarray(boxes, np.float32).reshape(-1, 4).copy()
    b[:, 0::2] = b[:, 0::2].clip(0, width - 1)
    b[:, 1::2] = b[:, 1::2].clip(0, height - 1)
    big = (b[:, 2] - b[:, 0] + 1 >= min_size) & (b[:, 3] - b[:, 1] + 1 >= min_size)
    b = b[big]
    _, first = np.unique(b, axis=0, return_index=True)
    return b[np.sort(first)][:max_count]


def image_files(ds: Dataset) -> list[str] | None:
    """The image file of each item (VOC loaders keep them in `images`), None for generated data."""
    paths = getattr(ds, "images", None)
    if isinstance(paths, list) and len(paths) == len(ds) and all(isinstance(p, (str, os.PathLike)) for p in paths):  # type: ignore[arg-type]
        return [str(Path(p).resolve()) for p in paths]
    return None


def image_ids(ds: Dataset) -> list[str]:
    """The id a proposals file uses for each item: the image file's stem (VOC: "000005"), else the index."""
    files = image_files(ds)
    return [Path(p).stem for p in files] if files else [f"{i:06d}" for i in range(len(ds))]  # type: ignore[arg-type]


def cache_path(name: str, image_size: int, identity: list[str], mode: str = "opencv-fast") -> Path:
    """Where the selective-search boxes of a list of images live; `identity` (the image files, or what
    generates the images) and the search settings make the key, so another list never reads this file."""
    settings = SEARCH_MODES[mode]
    key = hashlib.sha1("\n".join([settings, str(image_size), *identity]).encode()).hexdigest()[:16]
    return cache_dir() / "proposals" / f"{name}-{image_size}px-{len(identity)}-{key}.npz"


def load_proposals(path: Path, ids: list[str]) -> dict[str, np.ndarray]:
    """Read a proposals .npz (format in the module docstring); UserError naming the file if it is malformed."""
    fix = ("expected an .npz with one [K,4] array (x0, y0, x1, y1 pixels) per image id; "
           "see sslbench/protocols/_proposals.py")
    if not path.is_file():
        raise UserError(f"proposals file not found: {path}; {fix}")
    try:
        with np.load(path, allow_pickle=False) as z:
            stored = set(z.files)
            missing = [i for i in ids if i not in stored]
            if missing:
                raise UserError(f"proposals file {path} has no boxes for {len(missing)} of {len(ids)} images "
                                f"(e.g. id {missing[0]!r}); {fix}")
            out = {i: z[i] for i in ids}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise UserError(f"proposals file {path} is not a readable .npz ({type(exc).__name__}: {exc}); {fix}") from None
    for i, boxes in out.items():
        if boxes.ndim != 2 or boxes.shape[1] != 4 or not np.issubdtype(boxes.dtype, np.number):
            raise UserError(f"proposals file {path}: image {i!r} has an array of shape {list(boxes.shape)} "
                            f"and dtype {boxes.dtype}; {fix}")
        if not np.isfinite(boxes).all():
            raise UserError(f"proposals file {path}: image {i!r} has non-finite coordinates; {fix}")
    return out


class _Searched(Dataset):
    """Runs selective search inside DataLoader workers (data.workers of them), one image per item."""

    def __init__(self, ds: Dataset, search: Callable[[Tensor], np.ndarray]) -> None:
        self.ds, self.search = ds, search

    def __len__(self) -> int:
        return len(self.ds)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None]:
        item = self.ds[i]
        return i, None if item is None else self.search(item[0])


def cached_selective_search(ds: Dataset, ids: list[str], path: Path, workers: int, show: bool,
                            mode: str = "opencv-fast") -> dict[str, np.ndarray]:
    """Selective-search boxes of every image of `ds`: read from `path`, or computed once and written there."""
    if path.is_file():
        try:
            return load_proposals(path, ids)
        except UserError:
            pass  # a damaged cache file is recomputed and replaced
    found: dict[str, np.ndarray] = {}
    # Its own generator: a DataLoader otherwise draws its worker seed from the global RNG, which shifted the
    # detector's initialisation and dropout whenever the cache was cold (voc-det mini: 36.6 vs 42.1 mAP, seed 0).
    search = functools.partial(selective_search, mode=mode)
    loader = DataLoader(_Searched(ds, search), batch_size=1, num_workers=workers, collate_fn=_first,
                        generator=torch.Generator())
    with progress_bar("selective search", len(ids), show) as advance:
        for i, boxes in loader:
            found[ids[i]] = np.zeros((0, 4), np.float32) if boxes is None else boxes  # unreadable image: none
            advance()
    with atomic(path) as tmp:  # readers see the old file or the whole new one, never half of it
        np.savez(tmp, **found)
    return found


def _first(batch: list[Any]) -> Any:
    return batch[0]


def proposals_for(ds: Dataset, file: str, name: str, image_size: int, generator: str, workers: int,
                  show: bool, mode: str = "opencv-fast") -> list[np.ndarray]:
    """Raw proposals per item of `ds` (in item order): from `file` if given, else cached selective search.

    name: data set and split, for the cache file's name; generator: what makes the images of a data set
    without files (the embedded generator's seed), for the cache key."""
    ids = image_ids(ds)
    if len(set(ids)) != len(ids):
        raise UserError(f"{name}: image ids are not unique, so proposals cannot be keyed by them")
    if file:
        found = load_proposals(Path(file).expanduser(), ids)
    else:
        identity = image_files(ds) or [f"{generator}:{i}" for i in ids]
        found = cached_selective_search(ds, ids, cache_path(name, image_size, identity, mode), workers, show, mode)
    return [found[i] for i in ids]


def as_tensor(boxes: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(boxes, np.float32)).reshape(-1, 4)
