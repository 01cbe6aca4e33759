"""`sslbench data check NAME=PATH`: read a data set from disk through its registered loader and summarise it."""

from __future__ import annotations

import warnings

import torch

from sslbench.data.layouts._common import SplitMissing
from sslbench.errors import UserError
from sslbench.registry import DATASETS, LAYOUTS


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
    layout = LAYOUTS.get(name) if name in LAYOUTS else None
    parts, absent, shapes = [], [], set()
    seen: set[int] = set()
    n_classes = 0
    read = corrupt = 0
    corrupt_files: list[str] = []
    for split in layout.check_splits if layout else ("train", "val", "test"):
        try:
            ds = factory(root, split, 0, 0, 0)
        except SplitMissing as exc:
            absent.append((split, str(exc)))
            continue
        except UserError as exc:
            if "has no split" in str(exc) and layout is None:
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
    if read and corrupt == read:
        first = corrupt_files[0].removeprefix("skipping unreadable image ") if corrupt_files else ""
        raise UserError(f"{name} at {root}: none of the {read} images read could be decoded"
                        + (f" (first: {first})" if first else "") + "; the files are damaged or not images")
    if layout and layout.segmentation:
        _check_masks(layout, root, limit)
    text = f"{name} at {root}: {', '.join(parts)} images"
    if absent:
        text += f" ({', '.join(s for s, _ in absent)} absent)"
    scope = "all items" if limit <= 0 else f"up to {limit} per split"
    text += f"; read {read} ({scope}): {_shape_text(shapes)} as stored"  # type: ignore[arg-type]
    text += f"; {n_classes or len(seen)} classes, {len(seen)} of them present in what was read"
    if layout and layout.summarise:
        text += f"; {layout.summarise(root)}"
    text += f"; {corrupt} unreadable file(s) skipped"
    if corrupt_files:
        text += f" (first: {corrupt_files[0].removeprefix('skipping unreadable image ')})"
    return text + "."


def _check_masks(layout: object, root: str, limit: int) -> None:
    """Read the segmentation pairs of each split: a mask of the wrong size is a UserError naming the file."""
    for split in layout.check_splits:  # type: ignore[attr-defined]
        try:
            pairs = layout.segmentation(root, split, 0, limit)  # type: ignore[attr-defined]
        except UserError:  # no masks for this split (the summary says which splits have them)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # unreadable files were counted above
            for i in range(len(pairs)):
                pairs[i]
