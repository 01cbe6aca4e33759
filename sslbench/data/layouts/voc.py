"""PASCAL VOC (2007, 2012): <root>/VOCdevkit/VOC<year>/{JPEGImages,Annotations,SegmentationClass,ImageSets}.

The writer puts `num` images in each of train and val (the even / odd samples of the embedded "trainval"
split: trainval = both, ids 000001..) and, for 2007, `num` test images from the embedded "test" split (ids
after trainval's); the segmentation sets list every image. The readers are torchvision's VOCDetection /
VOCSegmentation file lists with sslbench's item contract: data sets `voc2007` and `voc2012`, and (image, mask)
pairs for the segmentation protocol.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torchvision
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from sslbench.data.classes import CLASS_INDEX, VOC_CLASSES
from sslbench.data.datasets import detection_target, warn_corrupt
from sslbench.data.layouts import Layout, register_layout
from sslbench.data.layouts._common import (
    JPEG,
    UNREADABLE,
    SegmentationPairs,
    SplitMissing,
    check_counts,
    check_image_size,
    check_split,
    need_root,
    open_rgb,
    square,
    synth_hint,
    to_tensor,
)
from sslbench.data.synthetic import Obj, Sample, render_sample
from sslbench.errors import UserError
from sslbench.runtime import atomic

VOC_SPLITS = {"2007": ("train", "val", "trainval", "test"), "2012": ("train", "val", "trainval")}
FORMAT = {"2007": "voc", "2012": "voc2012"}  # the --format name a hint tells the user to write
# Images per split of the releases (`--dry-run` counts with them): VOC2007's Main lists; VOC2012's Segmentation
# lists (sslbench reads VOC2012 for segmentation: 1464 train, 1449 val).
VOC_SIZES = {"2007": {"train": 2501, "val": 2510, "trainval": 5011, "test": 4952},
             "2012": {"train": 1464, "val": 1449, "trainval": 2913}}


# ================================================================ writing

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
        ET.SubElement(obj, "name").text = VOC_CLASSES[o.cls]
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
    if year not in VOC_SPLITS:
        raise UserError(f"VOC year must be 2007 or 2012 (got {year!r})")
    check_counts(num=num)
    check_image_size(image_size)
    out = Path(out)
    target = out / "VOCdevkit" / f"VOC{year}"
    sets: dict[str, list[tuple[str, list[Obj]]]] = {"train": [], "val": []}
    if year == "2007":
        sets["test"] = []
    palette = voc_colormap().reshape(-1).tolist()
    with atomic(target) as d:
        for sub in ("JPEGImages", "Annotations", "SegmentationClass", "ImageSets/Main", "ImageSets/Segmentation"):
            (d / sub).mkdir(parents=True)
        for n, (base, index, name) in enumerate(_jobs(year, num)):
            image_id = f"{n + 1:06d}"
            s = render_sample(seed, base, index, image_size, full=True)
            Image.fromarray(s.image).save(d / "JPEGImages" / f"{image_id}.jpg", **JPEG)
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
            for c, cls in enumerate(VOC_CLASSES):
                lines = []
                for image_id, objects in items:
                    here = [o.difficult for o in objects if o.cls == c]
                    flag = -1 if not here else (0 if all(here) else 1)  # 0: only difficult objects
                    lines.append(f"{image_id} {flag:2d}\n")
                (d / "ImageSets" / "Main" / f"{cls}_{name}.txt").write_text("".join(lines))
    return target




def _jobs(year: str, num: int) -> list[tuple[str, int, str]]:
    """(generator split, index, VOC split) of every image written, in id order."""
    jobs = [("trainval", i, "train" if i % 2 == 0 else "val") for i in range(2 * num)]
    return jobs + ([("test", j, "test") for j in range(num)] if year == "2007" else [])


def voc_sources(year: str, split: str, num: int) -> list[tuple[str, int]]:
    """The embedded sample behind each item of `split` (file order = id order), for a writer call with `num`."""
    return [(base, index) for base, index, name in _jobs(year, num)
            if split == name or (split == "trainval" and name in ("train", "val"))]

# ================================================================ reading

def _voc_layout(year: str, need: Sequence[str]) -> str:
    return f"<root>/VOCdevkit/VOC{year}/{{{','.join(need)}}}"


def _voc_dirs(name: str, root: str | None, year: str, need: Sequence[str]) -> tuple[Path, Path]:
    """(torchvision root = the folder holding VOCdevkit, VOC<year> folder), after checking `need` exists.
    `root` may be the folder holding VOCdevkit, VOCdevkit itself, or VOCdevkit/VOC<year>."""
    layout = _voc_layout(year, need)
    p = need_root(name, root, layout, FORMAT[year])
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
                        f"{synth_hint(FORMAT[year])}")
    voc = tv_root / "VOCdevkit" / vy
    missing = [d for d in need if not (voc / d).is_dir()]
    if missing:
        raise UserError(f"{name}: expected {layout}; missing {', '.join(missing)} (in {voc}); "
                        f"{synth_hint(FORMAT[year])}")
    return tv_root, voc


def voc_folder(name: str, root: str | None, year: str, need: Sequence[str]) -> Path:
    """The VOC<year> folder under `root` (the folder holding VOCdevkit, VOCdevkit itself or VOC<year>), checked to
    hold `need`: what detectron2's register_pascal_voc reads."""
    return _voc_dirs(name, root, year, need)[1]


def _voc_split_file(name: str, voc: Path, sets_dir: str, split: str, year: str) -> None:
    split_dir = voc / "ImageSets" / sets_dir
    if not (split_dir / f"{split}.txt").is_file():
        found = sorted(f.stem for f in split_dir.glob("*.txt") if "_" not in f.stem)
        note = ("; VOC2007's test set is a separate download (VOCtest_06-Nov-2007.tar)"
                if year == "2007" and split == "test" else "")
        raise SplitMissing(f"{name}: no {split}.txt in {split_dir} (found: {', '.join(found) or 'none'}){note}")


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
    size = _image_size(ann.get("size"))
    boxes, classes, difficult = [], [], []
    for k, obj in enumerate(objects):
        if not isinstance(obj, dict):
            raise UserError(f"malformed VOC annotation {path}: <object> {k + 1} is empty")
        cls = str(obj.get("name", "")).strip()
        if cls not in CLASS_INDEX:
            raise UserError(f"malformed VOC annotation {path}: object {k + 1} has class {cls!r}, not one of VOC's 20")
        box = obj.get("bndbox")
        try:
            xyxy = [float(box[t]) - 1.0 for t in ("xmin", "ymin", "xmax", "ymax")]  # type: ignore[index]
            hard = bool(int(float(obj.get("difficult", 0) or 0)))
        except (TypeError, KeyError, ValueError) as exc:
            raise UserError(f"malformed VOC annotation {path}: object {k + 1} ({cls}) needs a <bndbox> with numeric "
                            f"xmin, ymin, xmax, ymax ({type(exc).__name__}: {exc})") from exc
        problem = _box_problem(xyxy, size)
        if problem:
            raise UserError(f"bad box in VOC annotation {path}: object {k + 1} ({cls}) {problem}; fix or remove it "
                            "(VOC boxes are 1-based pixel indices inside the image)")
        boxes.append(xyxy)
        classes.append(CLASS_INDEX[cls])
        difficult.append(hard)
    return np.array(boxes, np.float32).reshape(-1, 4), np.array(classes, np.int64), np.array(difficult, bool)


def _image_size(size: object) -> tuple[float, float] | None:
    """(width, height) of an annotation's <size>, None if it has none (the box check then skips the bounds)."""
    try:
        w, h = float(size["width"]), float(size["height"])  # type: ignore[index]
    except (TypeError, KeyError, ValueError):
        return None
    return (w, h) if w > 0 and h > 0 else None


def _box_problem(xyxy: list[float], size: tuple[float, float] | None) -> str:
    """What is wrong with a 0-based inclusive box ('' if nothing): corners swapped, or outside the image (by more
    than the one pixel some annotation tools are off by)."""
    x1, y1, x2, y2 = xyxy
    if x2 < x1 or y2 < y1:
        return f"has xmax < xmin or ymax < ymin ({x1 + 1:g}, {y1 + 1:g}, {x2 + 1:g}, {y2 + 1:g})"
    if size is not None:
        w, h = size
        if x1 < -1 or y1 < -1 or x2 > w or y2 > h:
            return f"lies outside the {w:g}x{h:g} image ({x1 + 1:g}, {y1 + 1:g}, {x2 + 1:g}, {y2 + 1:g})"
    return ""


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
        self.classes, self.size = list(VOC_CLASSES), image_size

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Tensor]] | None:
        try:
            img = open_rgb(self.images[i])
        except UNREADABLE as exc:
            warn_corrupt(self.images[i], exc)
            return None
        boxes, classes, difficult = self.records[i]
        if self.size > 0:
            w, h = img.size
            boxes = boxes * np.array([self.size / w, self.size / h] * 2, np.float32)
            img = square(img, self.size)
        return to_tensor(img), detection_target(self.main_labels[i], boxes, classes, difficult)


def _voc_factory(year: str) -> Callable[..., Dataset]:
    name = f"voc{year}"

    def build(root: str | None, split: str, image_size: int, num: int, synth_seed: int) -> Dataset:
        check_split(name, split, (*VOC_SPLITS[year], "unlabeled"))
        return VOCDetectionItems(name, root, year, "trainval" if split == "unlabeled" else split, image_size, num)

    build.__doc__ = (f"PASCAL VOC{year} from disk (VOCdevkit layout); splits {', '.join(VOC_SPLITS[year])} "
                     "(unlabeled = trainval); label = the largest non-difficult object's class.")
    return build



class VOCSegmentationItems(SegmentationPairs):
    """VOC SegmentationClass pairs; file lists from torchvision's VOCSegmentation."""

    def __init__(self, root: str | None, year: str, split: str, image_size: int, num: int = 0) -> None:
        name = f"voc{year} segmentation"
        check_split(name, split, VOC_SPLITS[str(year)])
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
        except UNREADABLE as exc:
            warn_corrupt(self.masks[i], exc)
            return None


def voc_segmentation(root: str | None, year: str, split: str, image_size: int, num: int = 0) -> Dataset:
    """VOC<year> segmentation (SegmentationClass + ImageSets/Segmentation) for the FCN protocol: items
    (uint8 image [3,S,S], int64 mask [S,S]; nearest-resized), None for an unreadable file (warned)."""
    return VOCSegmentationItems(root, str(year), split, image_size, num)




def _segmentation_reader(year: str) -> Callable[..., Dataset]:
    def read(root: str | None, split: str, image_size: int, num: int = 0, exclude: Sequence[str] = ()) -> Dataset:
        if exclude:
            raise UserError("voc segmentation pairs take no exclude list (only SBD's, for train_aug)")
        return voc_segmentation(root, year, split, image_size, num)

    return read


def _summarise(year: str) -> Callable[[str], str]:
    def summary(root: str) -> str:
        counts = []
        for split in VOC_SPLITS[year]:
            try:
                counts.append(f"{split} {len(voc_segmentation(root, year, split, 0))}")
            except UserError:
                pass
        return f"segmentation masks: {', '.join(counts)}" if counts else "no segmentation masks"

    return summary


for _year in VOC_SPLITS:
    register_layout(Layout(
        name=f"voc{_year}", folder=f"VOCdevkit/VOC{_year}",
        tree=_voc_layout(_year, ("JPEGImages", "Annotations", "SegmentationClass", "ImageSets")),
        write=lambda out, num, size, seed, year=_year: write_voc(out, num, size, seed, year),
        sources=lambda split, num, size, seed, year=_year: voc_sources(year, split, num),
        check_splits=tuple(s for s in VOC_SPLITS[_year] if s != "trainval"),
        aliases=("voc",) if _year == "2007" else (), paired_trainval=True, summarise=_summarise(_year),
        segmentation=_segmentation_reader(_year), sizes=VOC_SIZES[_year],
    ), _voc_factory(_year))
