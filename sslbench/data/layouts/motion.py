"""Video frames with precomputed motion masks, for the motion-segmentation pretext task (Pathak et al. 2017's
setting, used by Doersch & Zisserman 2017's "MS"):

    <root>/motion_frames/{frames/<id>.jpg, next/<id>.jpg, masks/<id>.png, train.txt, val.txt}

frames/<id>.jpg is a video frame, next/<id>.jpg the frame after it (kept for whoever recomputes the masks; the
loader does not read it), masks/<id>.png an 8-bit mask of the same size: 1 where the frame's pixel belongs to
something that moves, 0 where it is static, 255 where the segmentation is unsure (ignored by the loss). The
masks are precomputed offline by an unsupervised motion segmentation (Pathak et al. used uNLC on YFCC100m
videos); {train,val}.txt list the ids. No such data set can be downloaded here: this is sslbench's own layout,
defined so that real masks dropped into it are read by the same loader as the embedded data written in it.

The writer's frames are embedded scenes (train: the "unlabeled" split, val: "test"), next/ their second frame,
masks/ their `moving` map (the pixels of this frame whose object moves) with 255 on the outlines of moving
objects, where a real motion segmentation is least sure.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from sslbench.data.datasets import warn_corrupt
from sslbench.data.layouts import Layout, register_layout
from sslbench.data.layouts._common import (
    JPEG,
    UNREADABLE,
    SplitMissing,
    check_counts,
    check_image_size,
    check_split,
    label_target,
    need_root,
    open_rgb,
    square,
    synth_hint,
    to_tensor,
)
from sslbench.data.synthetic import label_edges, render_sample
from sslbench.errors import UserError
from sslbench.runtime import atomic

FOLDER = "motion_frames"
SPLITS = {"train": "unlabeled", "val": "test"}  # split -> the embedded generator split the writer draws from
IGNORE = 255
_LAYOUT = f"<root>/{FOLDER}/{{frames/<id>.jpg,next/<id>.jpg,masks/<id>.png,train.txt,val.txt}}"


def motion_mask(moving: np.ndarray) -> np.ndarray:
    """A frame's `moving` map -> the stored mask: 1 moving, 0 static, 255 on the moving regions' outlines."""
    mask = moving.astype(np.uint8)
    mask[label_edges(moving.astype(np.int16)) & moving] = IGNORE
    return mask


def write_motion(out: Path, num: int, image_size: int, seed: int) -> Path:
    """Write `out`/motion_frames (module docstring) with `num` frames per split; returns that folder."""
    check_counts(num=num)
    check_image_size(image_size)
    target = Path(out) / FOLDER
    with atomic(target) as d:
        for sub in ("frames", "next", "masks"):
            (d / sub).mkdir(parents=True)
        n = 0
        for split, base in SPLITS.items():
            ids = []
            for index in range(num):
                n += 1
                frame_id = f"{n:06d}"
                s = render_sample(seed, base, index, image_size, full=True)
                Image.fromarray(s.image).save(d / "frames" / f"{frame_id}.jpg", **JPEG)
                Image.fromarray(s.frame2).save(d / "next" / f"{frame_id}.jpg", **JPEG)
                Image.fromarray(motion_mask(s.moving)).save(d / "masks" / f"{frame_id}.png")
                ids.append(frame_id)
            (d / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return target


class MotionFrames(Dataset):
    """Frames and their motion masks: uint8 image [3,S,S] and {'motion': int64 [S,S] (0, 1, 255), 'label': -1}."""

    def __init__(self, folder: Path, ids: list[str], image_size: int) -> None:
        self.folder, self.ids, self.size, self.classes = folder, ids, image_size, []
        missing = [p for i in ids for p in (folder / "frames" / f"{i}.jpg", folder / "masks" / f"{i}.png")
                   if not p.is_file()]
        if missing:
            raise UserError(f"motion: {len(missing)} file(s) listed in the split missing, e.g. {missing[0]}; "
                            f"expected {_LAYOUT}")

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Tensor]] | None:
        frame, mask_path = self.folder / "frames" / f"{self.ids[i]}.jpg", self.folder / "masks" / f"{self.ids[i]}.png"
        try:
            img = open_rgb(frame)
        except UNREADABLE as exc:
            warn_corrupt(frame, exc)
            return None
        try:
            with Image.open(mask_path) as m:
                mask = m.copy()
        except UNREADABLE as exc:
            warn_corrupt(mask_path, exc)
            return None
        if mask.mode not in ("L", "P", "1"):
            raise UserError(f"motion: {mask_path} is a {mask.mode} image; expected an 8-bit mask (0 static, "
                            "1 moving, 255 unsure)")
        if mask.size != img.size:
            raise UserError(f"motion: {mask_path} is {mask.size[0]}x{mask.size[1]}, its frame "
                            f"{img.size[0]}x{img.size[1]}; a mask has its frame's size")
        values = np.array(mask, np.int64)
        if self.size > 0:
            img = square(img, self.size)
            values = np.array(square(Image.fromarray(values.astype(np.uint8)), self.size, Image.Resampling.NEAREST),
                              np.int64)
        bad = (values != 0) & (values != 1) & (values != IGNORE)
        if bad.any():
            raise UserError(f"motion: {mask_path} holds the value {int(values[bad][0])}; masks hold 0 (static), "
                            "1 (moving) or 255 (unsure)")
        return to_tensor(img), {"motion": torch.from_numpy(values), **label_target(-1)}


def motion(root: str | None, split: str, image_size: int, num: int, synth_seed: int) -> Dataset:
    """Video frames with precomputed motion masks (sslbench's layout, motion_frames/); splits train, val
    (unlabeled = train)."""
    check_split("motion", split, (*SPLITS, "unlabeled"))
    split = "train" if split == "unlabeled" else split
    p = need_root("motion", root, _LAYOUT, "motion")
    folder = p / FOLDER if (p / FOLDER).is_dir() else p
    missing = [sub for sub in ("frames", "masks") if not (folder / sub).is_dir()]
    if missing:
        raise UserError(f"motion: expected {_LAYOUT}; missing {', '.join(missing)} in {folder}; {synth_hint('motion')}")
    listing = folder / f"{split}.txt"
    if not listing.is_file():
        raise SplitMissing(f"motion: no {split}.txt in {folder}; expected {_LAYOUT}")
    ids = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    if not ids:
        raise SplitMissing(f"motion: {listing} lists no frame")
    return MotionFrames(folder, ids if num <= 0 else ids[:num], image_size)


def motion_sources(split: str, num: int) -> list[tuple[str, int]]:
    return [(SPLITS[split], i) for i in range(num)]


register_layout(Layout(
    name="motion", folder=FOLDER, tree=_LAYOUT, write=write_motion,
    sources=lambda split, num, size, seed: motion_sources(split, num), check_splits=tuple(SPLITS),
), motion)  # no `sizes`: no release fixes them (a paper recipe sets data.num_images)
