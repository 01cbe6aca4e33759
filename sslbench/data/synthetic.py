"""The embedded data set: procedural natural-like scenes, deterministic from (seed, split, index).

Each scene is a textured background gradient with a randomised direction and palette (so no global
cue gives the rotation away), a few clutter shapes, and 1-3 objects from VOC's 20 classes. A class is
a silhouette of coloured parts with a canonical upright orientation (legs, wheels and bases at the
bottom, heads and masts at the top) and a palette shared with three other classes, so that colour alone
does not name the class. Objects vary in scale, pose (small tilt, mirror), aspect and occlude each other.

Every sample carries the image-level label (the main, largest object), multi-hot labels, boxes with a
"difficult" flag, a segmentation mask (VOC conventions: 0 background, 1..20 classes, 255 boundary),
a depth map and a second frame in which some objects moved (with the motion mask).
Only the images and labels are cached (npz keyed by generator version and parameters); the dense
targets are re-rendered on demand from the same seed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from sslbench.data.classes import VOC_CLASSES as CLASSES
from sslbench.runtime import atomic, cache_dir

if TYPE_CHECKING:
    import torch

GENERATOR_VERSION = 3  # bump when rendering changes: the cache key includes it

SPLITS = {"unlabeled": 0, "trainval": 1, "test": 2}  # train / val are the two halves of trainval

# Shape parts in the object frame: u to the right, v downwards, both in [-1, 1]; the last field is the
# part's colour slot (0 main, 1 second, 2 dark).
E, R, T, G = "ellipse", "rect", "triangle", "ring"
SHAPES: dict[str, list[tuple]] = {
    "aeroplane": [(E, 0, 0.1, 0.95, 0.2, 0), (T, -0.15, 0.0, 0.35, 0.0, -0.35, 0.75, 1), (T, 0.6, 0.05, 0.95, 0.05, 0.95, -0.6, 1)],
    "bicycle": [(G, -0.55, 0.45, 0.38, 0.38, 2), (G, 0.55, 0.45, 0.38, 0.38, 2), (T, -0.55, 0.45, 0.0, -0.2, 0.55, 0.45, 0), (R, -0.1, -0.45, 0.15, -0.2, 0)],
    "bird": [(E, 0.0, 0.1, 0.6, 0.35, 0), (E, 0.55, -0.35, 0.25, 0.25, 1), (T, 0.75, -0.4, 1.0, -0.3, 0.75, -0.25, 2), (R, -0.1, 0.4, -0.02, 0.9, 2), (R, 0.1, 0.4, 0.18, 0.9, 2)],
    "boat": [(T, -0.95, 0.4, 0.95, 0.4, 0.6, 0.85, 0), (R, -0.6, 0.4, 0.6, 0.85, 0), (R, -0.04, -0.9, 0.04, 0.4, 2), (T, 0.06, -0.85, 0.06, 0.3, 0.75, 0.3, 1)],
    "bottle": [(R, -0.35, -0.2, 0.35, 0.95, 0), (R, -0.14, -0.75, 0.14, -0.2, 0), (R, -0.17, -0.95, 0.17, -0.75, 2), (R, -0.35, 0.2, 0.35, 0.5, 1)],
    "bus": [(R, -0.95, -0.55, 0.95, 0.6, 0), (R, -0.85, -0.4, -0.35, -0.05, 2), (R, -0.25, -0.4, 0.25, -0.05, 2), (R, 0.35, -0.4, 0.85, -0.05, 2), (E, -0.55, 0.65, 0.2, 0.2, 2), (E, 0.55, 0.65, 0.2, 0.2, 2)],
    "car": [(R, -0.95, -0.05, 0.95, 0.5, 0), (T, -0.5, -0.05, -0.25, -0.5, -0.25, -0.05, 0), (R, -0.25, -0.5, 0.45, -0.05, 1), (E, -0.55, 0.55, 0.22, 0.22, 2), (E, 0.55, 0.55, 0.22, 0.22, 2)],
    "cat": [(E, 0.0, 0.45, 0.55, 0.45, 0), (E, 0.0, -0.35, 0.38, 0.33, 0), (T, -0.35, -0.5, -0.1, -0.6, -0.3, -0.95, 1), (T, 0.35, -0.5, 0.1, -0.6, 0.3, -0.95, 1), (R, 0.5, 0.3, 0.9, 0.42, 1)],
    "chair": [(R, -0.55, 0.0, 0.55, 0.15, 0), (R, -0.55, -0.95, -0.4, 0.15, 0), (R, -0.55, 0.15, -0.43, 0.95, 2), (R, 0.43, 0.15, 0.55, 0.95, 2), (R, -0.4, -0.8, 0.3, -0.65, 1)],
    "cow": [(R, -0.7, -0.3, 0.55, 0.3, 0), (R, -0.65, 0.3, -0.5, 0.9, 1), (R, -0.35, 0.3, -0.2, 0.9, 1), (R, 0.2, 0.3, 0.35, 0.9, 1), (R, 0.4, 0.3, 0.55, 0.9, 1), (E, 0.75, -0.35, 0.25, 0.2, 0), (T, 0.6, -0.5, 0.7, -0.5, 0.6, -0.8, 2)],
    "diningtable": [(R, -0.95, -0.35, 0.95, -0.15, 0), (R, -0.85, -0.15, -0.7, 0.8, 1), (R, 0.7, -0.15, 0.85, 0.8, 1), (R, -0.15, -0.15, 0.15, 0.0, 2)],
    "dog": [(E, -0.1, 0.05, 0.6, 0.3, 0), (E, 0.6, -0.4, 0.28, 0.24, 0), (E, 0.45, -0.25, 0.1, 0.22, 2), (R, -0.6, 0.2, -0.45, 0.85, 1), (R, 0.2, 0.2, 0.35, 0.85, 1), (T, -0.65, -0.05, -0.95, -0.6, -0.8, -0.05, 1)],
    "horse": [(E, -0.15, 0.0, 0.6, 0.28, 0), (T, 0.3, -0.1, 0.55, -0.75, 0.6, 0.0, 0), (E, 0.7, -0.7, 0.22, 0.13, 0), (R, -0.65, 0.15, -0.55, 0.95, 1), (R, -0.4, 0.15, -0.3, 0.95, 1), (R, 0.1, 0.15, 0.2, 0.95, 1), (R, 0.3, 0.15, 0.4, 0.95, 1), (T, -0.75, -0.1, -0.95, 0.5, -0.7, 0.2, 2)],
    "motorbike": [(E, -0.6, 0.5, 0.33, 0.33, 2), (E, 0.6, 0.5, 0.33, 0.33, 2), (T, -0.6, 0.3, 0.6, 0.3, 0.1, -0.3, 0), (R, 0.4, -0.7, 0.5, 0.3, 1), (R, 0.3, -0.75, 0.75, -0.65, 1)],
    "person": [(E, 0.0, -0.75, 0.2, 0.2, 1), (R, -0.3, -0.5, 0.3, 0.2, 0), (R, -0.28, 0.2, -0.05, 0.95, 2), (R, 0.05, 0.2, 0.28, 0.95, 2), (R, -0.45, -0.45, -0.32, 0.1, 0), (R, 0.32, -0.45, 0.45, 0.1, 0)],
    "pottedplant": [(T, -0.45, 0.3, 0.45, 0.3, 0.0, 1.6, 1), (R, -0.3, 0.3, 0.3, 0.95, 1), (E, 0.0, -0.3, 0.5, 0.45, 0), (E, -0.45, -0.1, 0.3, 0.2, 0), (E, 0.45, -0.15, 0.3, 0.2, 0), (R, -0.04, -0.05, 0.04, 0.3, 2)],
    "sheep": [(E, 0.0, -0.05, 0.75, 0.5, 0), (E, -0.35, -0.3, 0.3, 0.3, 0), (E, 0.35, -0.3, 0.3, 0.3, 0), (E, 0.8, -0.2, 0.2, 0.17, 2), (R, -0.45, 0.35, -0.33, 0.9, 2), (R, 0.3, 0.35, 0.42, 0.9, 2)],
    "sofa": [(R, -0.95, 0.0, 0.95, 0.6, 0), (R, -0.8, -0.6, 0.8, 0.05, 1), (R, -0.98, -0.25, -0.75, 0.6, 0), (R, 0.75, -0.25, 0.98, 0.6, 0), (R, -0.9, 0.6, -0.75, 0.8, 2), (R, 0.75, 0.6, 0.9, 0.8, 2)],
    "train": [(R, -0.95, -0.45, 0.55, 0.45, 0), (T, 0.55, -0.45, 0.95, 0.45, 0.55, 0.45, 0), (R, -0.8, -0.8, -0.6, -0.45, 2), (R, -0.2, -0.3, 0.3, 0.0, 1), (E, -0.6, 0.55, 0.15, 0.15, 2), (E, -0.2, 0.55, 0.15, 0.15, 2), (E, 0.2, 0.55, 0.15, 0.15, 2)],
    "tvmonitor": [(R, -0.9, -0.8, 0.9, 0.45, 1), (R, -0.75, -0.65, 0.75, 0.3, 2), (R, -0.1, 0.45, 0.1, 0.75, 1), (R, -0.45, 0.75, 0.45, 0.9, 1)],
}

# Five shared palettes (main colour, second colour); class c uses palette c % 5, so every palette is
# shared by four classes and colour alone cannot name the class.
PALETTES = np.array([
    [[200, 40, 40], [230, 200, 60], [240, 120, 40]],
    [[40, 70, 190], [210, 210, 220], [60, 160, 200]],
    [[60, 150, 60], [120, 80, 40], [170, 190, 70]],
    [[130, 130, 135], [40, 40, 45], [220, 220, 215]],
    [[150, 70, 160], [240, 170, 190], [110, 60, 40]],
], dtype=np.float32)
DARK = np.array([35, 32, 30], dtype=np.float32)


@dataclass
class Obj:
    cls: int  # 0..19 index into CLASSES
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels, inclusive, of the visible part
    difficult: bool  # small or mostly occluded, as VOC's annotators would flag it


@dataclass
class Sample:
    image: np.ndarray  # [H, W, 3] uint8
    label: int  # class of the main (largest) object
    objects: list[Obj]
    seg: np.ndarray | None = None  # [H, W] uint8: 0 background, 1..20 class, 255 boundary
    depth: np.ndarray | None = None  # [H, W] float32 metres-like, larger is farther
    frame2: np.ndarray | None = None  # [H, W, 3] uint8: the scene a moment later
    motion: np.ndarray | None = None  # [H, W] bool: pixels of objects that moved, in either frame
    moving: np.ndarray | None = None  # [H, W] bool: the pixels of this frame whose object moves (motion seg.)
    classes: np.ndarray | None = None  # [H, W] uint8: the class map without outlines (SBD's masks)


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLITS[split], index, GENERATOR_VERSION])


def part_mask(part: tuple, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    kind = part[0]
    if kind in (E, G):
        _, cx, cy, rx, ry, _ = part
        d = ((u - cx) / rx) ** 2 + ((v - cy) / ry) ** 2
        return (d <= 1.0) & (d >= 0.45) if kind == G else d <= 1.0
    if kind == R:
        _, x0, y0, x1, y1, _ = part
        return (u >= x0) & (u <= x1) & (v >= y0) & (v <= y1)
    _, ax, ay, bx, by, cx, cy, _ = part
    d1 = (u - bx) * (ay - by) - (ax - bx) * (v - by)
    d2 = (u - cx) * (by - cy) - (bx - cx) * (v - cy)
    d3 = (u - ax) * (cy - ay) - (cx - ax) * (v - ay)
    neg = (d1 < 0) | (d2 < 0) | (d3 < 0)
    pos = (d1 > 0) | (d2 > 0) | (d3 > 0)
    return ~(neg & pos)


@dataclass
class _Placed:
    cls: int
    cx: float
    cy: float
    scale: float  # half-size in pixels
    angle: float
    mirror: float
    aspect: float
    colours: np.ndarray  # [3, 3]
    depth: float
    motion: tuple[float, float]


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Two-colour gradient in a random direction with low-frequency texture: a weak, randomised cue."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / max(1, size - 1) - 0.5
    theta = rng.uniform(0, 2 * np.pi)
    t = np.clip(0.5 + xs * np.cos(theta) + ys * np.sin(theta) + rng.uniform(-0.2, 0.2), 0, 1)[..., None]
    a, b = rng.uniform(40, 220, 3), rng.uniform(40, 220, 3)
    img = a * (1 - t) + b * t
    coarse = rng.normal(0, 18, (4, 4, 3)).astype(np.float32)
    img += np.kron(coarse, np.ones((size // 4 + 1, size // 4 + 1, 1), np.float32))[:size, :size]
    return img.astype(np.float32)


def _clutter(rng: np.random.Generator, img: np.ndarray, size: int) -> None:
    """Random blobs and bars with no upright structure: distractors that random features also see."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    for _ in range(rng.integers(2, 6)):
        cx, cy = rng.uniform(0, size, 2)
        rx, ry = rng.uniform(0.04, 0.16, 2) * size
        colour = PALETTES[rng.integers(5), rng.integers(3)] + rng.normal(0, 15, 3)
        if rng.random() < 0.5:
            mask = ((xs - cx) / rx) ** 2 + ((ys - cy) / ry) ** 2 <= 1
        else:
            mask = (np.abs(xs - cx) <= rx) & (np.abs(ys - cy) <= ry * 0.4)
        img[mask] = colour


def _place(rng: np.random.Generator, size: int, n: int) -> list[_Placed]:
    objs = []
    for k in range(n):
        cls = int(rng.integers(len(CLASSES)))
        scale = size * (rng.uniform(0.26, 0.4) if k == 0 else rng.uniform(0.12, 0.26))
        centre = rng.uniform(0.3, 0.7, 2) if k == 0 else rng.uniform(0.1, 0.9, 2)
        pal = PALETTES[cls % 5]
        pick = rng.permutation(3)[:2]
        colours = np.stack([pal[pick[0]], pal[pick[1]], DARK]) + rng.normal(0, 14, (3, 3))
        objs.append(_Placed(
            cls, float(centre[0] * size), float(centre[1] * size), float(scale), float(rng.normal(0, 0.2)),
            float(rng.choice([-1.0, 1.0])), float(rng.uniform(0.8, 1.2)), colours.astype(np.float32),
            float(2.0 + 8.0 * (1 - scale / (0.4 * size)) + rng.uniform(0, 1)),
            (float(rng.normal(0, 0.06 * size)), float(rng.normal(0, 0.03 * size))) if rng.random() < 0.6 else (0.0, 0.0),
        ))
    # Paint far to near so that nearer objects occlude farther ones; the main object stays at index 0.
    return sorted(objs, key=lambda o: -o.depth)


def _paint(img: np.ndarray, ids: np.ndarray, obj: _Placed, oid: int, shift: tuple[float, float] = (0.0, 0.0)) -> None:
    size = img.shape[0]
    cx, cy = obj.cx + shift[0], obj.cy + shift[1]
    r = obj.scale * 1.45
    x0, x1 = max(0, int(cx - r)), min(size, int(cx + r) + 1)
    y0, y1 = max(0, int(cy - r)), min(size, int(cy + r) + 1)
    if x0 >= x1 or y0 >= y1:
        return
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dx, dy = xs + 0.5 - cx, ys + 0.5 - cy
    c, s = np.cos(obj.angle), np.sin(obj.angle)
    u = (c * dx + s * dy) / obj.scale * obj.mirror
    v = (-s * dx + c * dy) / (obj.scale * obj.aspect)
    light = (1.08 - 0.16 * (v + 1) / 2)[..., None]  # lit from above, as outdoors
    for part in SHAPES[CLASSES[obj.cls]]:
        m = part_mask(part, u, v)
        if m.any():
            img[y0:y1, x0:x1][m] = (obj.colours[part[-1]] * light)[m]
            ids[y0:y1, x0:x1][m] = oid


def label_edges(ids: np.ndarray) -> np.ndarray:
    """[H, W] bool: pixels with a 4-neighbour of another value (object outlines, SBD's boundaries)."""
    edge = np.zeros(ids.shape, bool)
    edge[:-1] |= ids[:-1] != ids[1:]
    edge[1:] |= ids[:-1] != ids[1:]
    edge[:, :-1] |= ids[:, :-1] != ids[:, 1:]
    edge[:, 1:] |= ids[:, :-1] != ids[:, 1:]
    return edge


def render_sample(seed: int, split: str, index: int, size: int, full: bool = False) -> Sample:
    """One scene; deterministic in (seed, split, index, size). `full` adds seg, depth, frame2, motion."""
    rng = _rng(seed, split, index)
    background = _background(rng, size)
    _clutter(rng, background, size)
    placed = _place(rng, size, int(rng.choice([1, 2, 3], p=[0.4, 0.35, 0.25])))
    noise = rng.normal(0, 6, (size, size, 3)).astype(np.float32)
    img = background.copy()
    ids = np.full((size, size), -1, np.int16)
    for oid, obj in enumerate(placed):
        _paint(img, ids, obj, oid)
    objects = []
    for oid, obj in enumerate(placed):
        ys, xs = np.nonzero(ids == oid)
        if len(ys) == 0:
            continue
        full_area = _full_area(obj, size)
        visible = len(ys) / max(1.0, full_area)
        objects.append(Obj(obj.cls, (float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())),
                           bool(len(ys) < 0.02 * size * size or visible < 0.35)))
    main = max(range(len(placed)), key=lambda i: placed[i].scale)
    sample = Sample(_to_uint8(img + noise), placed[main].cls, objects)
    if full:
        _dense_targets(sample, placed, ids, background, noise, size)
    return sample


def _full_area(obj: _Placed, size: int) -> float:
    img = np.zeros((size, size, 3), np.float32)
    ids = np.full((size, size), -1, np.int16)
    _paint(img, ids, obj, 0)
    return float((ids == 0).sum())


def _dense_targets(sample: Sample, placed: list[_Placed], ids: np.ndarray, background: np.ndarray,
                   noise: np.ndarray, size: int) -> None:
    seg = np.zeros((size, size), np.uint8)
    depth = np.broadcast_to(np.linspace(12.0, 3.0, size, dtype=np.float32)[:, None], (size, size)).copy()
    for oid, obj in enumerate(placed):
        seg[ids == oid] = obj.cls + 1
        depth[ids == oid] = obj.depth
    sample.classes = seg.copy()
    seg[label_edges(ids) & (ids >= 0)] = 255  # VOC marks object outlines as 'ignore'
    img2 = background.copy()
    ids2 = np.full((size, size), -1, np.int16)
    for oid, obj in enumerate(placed):
        _paint(img2, ids2, obj, oid, obj.motion)
    moving = np.array([o.motion != (0.0, 0.0) for o in placed] + [False])
    sample.seg, sample.depth = seg, depth
    sample.frame2 = _to_uint8(img2 + noise)
    sample.motion = moving[ids2] | moving[ids]  # index -1 hits the trailing False
    sample.moving = moving[ids]


def _to_uint8(img: np.ndarray) -> np.ndarray:
    return np.clip(img, 0, 255).round().astype(np.uint8)


# ---------------------------------------------------------------- splits and the on-disk cache


@dataclass
class SplitArrays:
    images: np.ndarray  # [N, H, W, 3] uint8
    labels: np.ndarray  # [N] int64, the main object's class
    objects: list[list[Obj]]
    indices: np.ndarray  # [N] the generator index of each sample (dense targets re-render from it)
    base: str  # the generator split the indices belong to


def split_indices(split: str, num: int) -> tuple[str, np.ndarray]:
    """Public split -> (generator split, indices): train / val are the even / odd samples of trainval."""
    if split in ("train", "val"):
        start = 0 if split == "train" else 1
        return "trainval", np.arange(start, 2 * num, 2)
    if split not in SPLITS:
        raise KeyError(split)
    return split, np.arange(num)


def load_split(split: str, size: int, num: int, seed: int, cache: bool = True) -> SplitArrays:
    """Render (or read from the cache) `num` samples of `split` at `size` px."""
    base, idx = split_indices(split, num)
    key = hashlib.sha1(f"v{GENERATOR_VERSION}-{seed}-{split}-{size}-{num}".encode()).hexdigest()[:16]
    path = cache_dir() / f"embedded-{split}-{size}px-{num}-{key}.npz"
    if cache and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                objects = _unpack_objects(z["obj"], num)
                return SplitArrays(z["images"], z["labels"], objects, idx, base)
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache file is re-rendered and replaced
    samples = [render_sample(seed, base, int(i), size) for i in idx]
    arrays = SplitArrays(
        np.stack([s.image for s in samples]) if samples else np.zeros((0, size, size, 3), np.uint8),
        np.array([s.label for s in samples], np.int64), [s.objects for s in samples], idx, base,
    )
    if cache:
        _save_cache(path, arrays)
    return arrays


def embedded_images(split: str, size: int, num: int, seed: int = 0) -> torch.Tensor:
    """`num` images of `split` as one uint8 tensor [N, 3, size, size], the layout make_batch takes."""
    import torch

    return torch.from_numpy(load_split(split, size, num, seed).images).permute(0, 3, 1, 2).contiguous()


def _pack_objects(objects: list[list[Obj]]) -> np.ndarray:
    rows = [[i, o.cls, *o.box, float(o.difficult)] for i, objs in enumerate(objects) for o in objs]
    return np.array(rows, np.float32).reshape(-1, 7)


def _unpack_objects(packed: np.ndarray, num: int) -> list[list[Obj]]:
    out: list[list[Obj]] = [[] for _ in range(num)]
    for row in packed:
        out[int(row[0])].append(Obj(int(row[1]), tuple(float(x) for x in row[2:6]), bool(row[6])))  # type: ignore[arg-type]
    return out


def _save_cache(path: Path, arrays: SplitArrays) -> None:
    with atomic(path) as tmp:
        np.savez(tmp, images=arrays.images, labels=arrays.labels, obj=_pack_objects(arrays.objects))
