"""NYU Depth v2, the labelled set (Silberman et al., ECCV 2012): <root>/nyu_depth_v2_labeled.mat and
<root>/splits.mat, as the release's two files.

nyu_depth_v2_labeled.mat is a MATLAB v7.3 file, that is HDF5 (read with h5py): `images` 480x640x3x1449 uint8 and
`depths` 480x640x1449 (metres, in-painted, the "labelled" depths) in MATLAB's column-major order, which h5py shows
reversed: images [1449, 3, 640, 480], depths [1449, 640, 480]. splits.mat (MATLAB v5, scipy) holds the official
split: trainNdxs (795) and testNdxs (654), 1-based indices into the 1449.

The writer renders embedded scenes into the same two files: `num` train scenes (embedded "trainval") and `num` test
scenes ("test"), interleaved in the .mat (train at odd positions, 1-based), with their depth maps (the generator's
depths, 3-12 "metres"); the images are square (the real ones 640 x 480). Items keep the aspect ratio: `image_size`
is the height, the width follows.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from sslbench.data.layouts import Layout, register_layout
from sslbench.data.layouts._common import check_counts, check_image_size, check_split, need_root, synth_hint
from sslbench.data.synthetic import render_sample
from sslbench.errors import UserError
from sslbench.runtime import atomic

FOLDER = "nyu_depth_v2"
MAT = "nyu_depth_v2_labeled.mat"
SPLITS_MAT = "splits.mat"
SPLIT_KEYS = {"train": "trainNdxs", "test": "testNdxs"}
_LAYOUT = f"<root>/{{{MAT},{SPLITS_MAT}}}"
MATLAB_HEADER = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: sslbench. HDF5 schema 1.00 ."


def write_nyu(out: Path, num: int, image_size: int, seed: int) -> Path:
    """Write `out`/nyu_depth_v2/{nyu_depth_v2_labeled.mat, splits.mat} (module docstring); returns the folder."""
    import h5py
    from scipy.io import savemat

    check_counts(num=num)
    check_image_size(image_size)
    target = Path(out) / FOLDER
    order = [(base, i) for i in range(num) for base in ("trainval", "test")]  # train at odd 1-based positions
    with atomic(target) as d:
        d.mkdir()
        with h5py.File(d / MAT, "w", userblock_size=512) as f:
            images = f.create_dataset("images", (len(order), 3, image_size, image_size), np.uint8)
            depths = f.create_dataset("depths", (len(order), image_size, image_size), np.float32)
            for k, (base, i) in enumerate(order):
                s = render_sample(seed, base, i, image_size, full=True)
                images[k] = s.image.transpose(2, 1, 0)  # H, W, C -> C, W, H (MATLAB's order, reversed)
                depths[k] = s.depth.T
        with open(d / MAT, "r+b") as f:  # the MATLAB v7.3 header in the HDF5 user block
            f.write(MATLAB_HEADER.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02IM")
        train = np.arange(1, 2 * num + 1, 2, dtype=np.float64).reshape(-1, 1)
        test = np.arange(2, 2 * num + 1, 2, dtype=np.float64).reshape(-1, 1)
        savemat(d / SPLITS_MAT, {"trainNdxs": train, "testNdxs": test})
    return target


def _folder(root: str | None) -> Path:
    p = need_root("nyu", root, _LAYOUT, "nyu")
    for cand in (p, p / FOLDER):
        if (cand / MAT).is_file():
            return cand
    raise UserError(f"nyu: expected {_LAYOUT}; {p} has no {MAT}; {synth_hint('nyu')}")


def read_split_indices(folder: Path, split: str) -> np.ndarray:
    """0-based indices of `split` from splits.mat (trainNdxs / testNdxs, 1-based in the file)."""
    from scipy.io import loadmat

    path = folder / SPLITS_MAT
    if not path.is_file():
        raise UserError(f"nyu: {path} not found; the official split comes with the labelled set (splits.mat, "
                        "trainNdxs / testNdxs); put it next to the .mat")
    try:
        raw = loadmat(path)[SPLIT_KEYS[split]]
    except (KeyError, ValueError, OSError) as exc:
        raise UserError(f"nyu: {path} does not hold {SPLIT_KEYS[split]} ({exc}); expected the release's splits.mat") \
            from exc
    return np.asarray(raw, np.int64).reshape(-1) - 1


class NyuDepth(Dataset):
    """(uint8 image [3,H,W], {'depth': float32 [H,W] metres, 'label': -1}) of one split; H = image_size."""

    def __init__(self, folder: Path, split: str, image_size: int, num: int) -> None:
        import h5py

        self.path, self.size, self.classes = folder / MAT, image_size, []
        try:
            with h5py.File(self.path, "r") as f:
                shapes = {k: f[k].shape for k in ("images", "depths") if k in f}
        except OSError as exc:
            raise UserError(f"nyu: {self.path} is not a readable MATLAB v7.3 (HDF5) file ({exc})") from exc
        if set(shapes) != {"images", "depths"}:
            raise UserError(f"nyu: {self.path} lacks {', '.join({'images', 'depths'} - set(shapes))}; expected the "
                            "labelled set's images and depths")
        n, c, w, h = shapes["images"]
        if c != 3 or shapes["depths"] != (n, w, h):
            raise UserError(f"nyu: {self.path} holds images {shapes['images']} and depths {shapes['depths']}; "
                            "expected [N, 3, W, H] and [N, W, H] (MATLAB's 480x640x3xN, 480x640xN)")
        index = read_split_indices(folder, split)
        if len(index) and (index.min() < 0 or index.max() >= n):
            raise UserError(f"nyu: {SPLIT_KEYS[split]} in splits.mat indexes image {int(index.max()) + 1}, "
                            f"the .mat holds {n}")
        self.index = index if num <= 0 else index[:num]
        self._file: tuple[int, object] | None = None  # (pid, h5py.File): opened per process (DataLoader workers)

    def __len__(self) -> int:
        return len(self.index)

    def _h5(self):  # noqa: ANN202
        import h5py

        if self._file is None or self._file[0] != os.getpid():
            self._file = (os.getpid(), h5py.File(self.path, "r"))
        return self._file[1]

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_file": None}

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Tensor]]:
        f = self._h5()
        k = int(self.index[i])
        image = np.asarray(f["images"][k]).transpose(2, 1, 0)  # [H, W, 3]
        depth = np.asarray(f["depths"][k], np.float32).T  # [H, W]
        if self.size > 0 and image.shape[0] != self.size:
            h, w = image.shape[:2]
            size = (max(1, round(w * self.size / h)), self.size)
            image = np.array(Image.fromarray(np.ascontiguousarray(image)).resize(size, Image.Resampling.BILINEAR))
            depth = np.array(Image.fromarray(depth).resize(size, Image.Resampling.NEAREST))
        img = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).contiguous()
        return img, {"depth": torch.from_numpy(np.ascontiguousarray(depth)), "label": torch.tensor(-1)}


def nyu(root: str | None, split: str, image_size: int, num: int, synth_seed: int) -> Dataset:
    """NYU Depth v2, labelled set (nyu_depth_v2_labeled.mat + splits.mat); splits train (795), test (654)."""
    check_split("nyu", split, tuple(SPLIT_KEYS))
    return NyuDepth(_folder(root), split, image_size, num)


def nyu_sources(split: str, num: int) -> list[tuple[str, int]]:
    return [("trainval" if split == "train" else "test", i) for i in range(num)]


register_layout(Layout(
    name="nyu", folder=FOLDER, tree=_LAYOUT, write=write_nyu,
    sources=lambda split, num, size, seed: nyu_sources(split, num), check_splits=tuple(SPLIT_KEYS),
    sizes={"train": 795, "test": 654},  # the official split of the 1449 labelled images
), nyu)
