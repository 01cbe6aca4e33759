"""The real on-disk layouts: every registered layout round-trips the embedded data (one test over the registry),
then each layout's own details (annotations, pickles, folds, masks) and bad input."""

from __future__ import annotations

import math
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sslbench.data.layouts.voc as voc
from sslbench.data.check import check
from sslbench.data.classes import CIFAR10_CLASSES, STL10_CLASSES
from sslbench.data.datasets import Embedded, collate_skip_corrupt
from sslbench.data.layouts import format_names, synth
from sslbench.data.layouts.cifar10 import write_cifar10
from sslbench.data.layouts.imagenet import write_imagenet
from sslbench.data.layouts.sbd import sbd_boundaries, sbd_segmentation, write_sbd
from sslbench.data.layouts.stl10 import write_stl10
from sslbench.data.layouts.voc import voc_colormap, voc_segmentation, write_voc
from sslbench.data.synthetic import CLASSES, render_sample
from sslbench.errors import UserError
from sslbench.registry import DATASETS, LAYOUTS

SEED = 5
SIZE = 48


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SSLBENCH_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="module")
def voc07(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("voc07")
    assert write_voc(out, 6, SIZE, SEED, "2007") == out / "VOCdevkit" / "VOC2007"
    return out


def load(name: str, root: Path | str, split: str, image_size: int = 0, num: int = 0):
    return DATASETS.get(name)(str(root), split, image_size, num, 0)


def expected_main_label(objects) -> int:
    """The VOC loader's rule: class of the largest non-difficult box."""
    easy = [o for o in objects if not o.difficult] or objects
    return max(easy, key=lambda o: (o.box[2] - o.box[0] + 1) * (o.box[3] - o.box[1] + 1)).cls


# ---------------------------------------------------------------- every layout


@pytest.mark.parametrize("name", LAYOUTS.names())
def test_every_layout_round_trips_the_embedded_data(name: str, tmp_path: Path) -> None:
    """Written by `synth`, read back by the registered loader: every split `data check` reads holds the embedded
    samples the layout says it wrote, in reading order, at the format's size."""
    layout, num, size = LAYOUTS.get(name), 6, 40
    folder = synth(name, tmp_path, num, size, SEED)
    assert folder.is_dir() and not list(tmp_path.glob(".*")), "temporary folders left behind"
    side = layout.fixed_size or size
    for split in layout.check_splits:
        ds = load(name, tmp_path, split)
        sources = layout.sources(split, num, size, SEED)
        assert len(ds) == len(sources) > 0, split
        for i, (base, index) in enumerate(sources):
            img, target = ds[i]
            want = render_sample(SEED, base, index, side).image
            assert img.dtype == torch.uint8 and img.shape == (3, side, side), (split, i)
            assert np.abs(img.permute(1, 2, 0).numpy().astype(float) - want).mean() < 4.0, (split, i)  # JPEG q95 4:4:4
            assert -1 <= int(target["label"]) < len(ds.classes)
    summary = check(name, str(tmp_path))
    assert summary.startswith(f"{name} at {tmp_path}") and "0 unreadable" in summary and "\n" not in summary


def test_format_names_come_from_the_registry() -> None:
    assert set(format_names()) == set(LAYOUTS.names()) | {"voc"}


# ---------------------------------------------------------------- VOC


VOC07_SPLITS = {  # split -> (generator split, generator indices) in file order
    "train": ("trainval", range(0, 12, 2)), "val": ("trainval", range(1, 12, 2)),
    "trainval": ("trainval", range(12)), "test": ("test", range(6)),
}


@pytest.mark.parametrize("split", list(VOC07_SPLITS))
def test_voc2007_round_trip(voc07: Path, split: str) -> None:
    base, indices = VOC07_SPLITS[split]
    ds = load("voc2007", voc07, split)
    assert len(ds) == len(indices)
    for i, index in enumerate(indices):
        s = render_sample(SEED, base, index, SIZE)
        img, t = ds[i]
        assert img.dtype == torch.uint8 and img.shape == (3, SIZE, SIZE)
        diff = np.abs(img.permute(1, 2, 0).numpy().astype(float) - s.image.astype(float)).mean()
        assert diff < 4.0, diff  # JPEG quality 95, 4:4:4
        boxes = np.array([o.box for o in s.objects], np.float32)
        assert np.abs(t["boxes"].numpy() - boxes).max() <= 1.0
        assert t["box_labels"].tolist() == [o.cls for o in s.objects]
        assert t["box_difficult"].tolist() == [o.difficult for o in s.objects]
        assert int(t["label"]) == expected_main_label(s.objects)
        hot = {o.cls for o in s.objects if not o.difficult}
        assert t["labels"].nonzero().flatten().tolist() == sorted(hot)
        hard = {o.cls for o in s.objects if o.difficult} - hot
        assert t["difficult"].nonzero().flatten().tolist() == sorted(hard)


def test_voc_train_matches_embedded_split(voc07: Path) -> None:
    ds, emb = load("voc2007", voc07, "train", num=4), Embedded("train", SIZE, 4, SEED)
    assert len(ds) == len(emb) == 4
    for i in range(4):
        (a, ta), (b, tb) = ds[i], emb[i]
        assert torch.equal(ta["box_labels"], tb["box_labels"]) and torch.allclose(ta["boxes"], tb["boxes"], atol=1)
        assert (a.float() - b.float()).abs().mean() < 4


def test_voc_resize_scales_boxes_and_root_variants(voc07: Path) -> None:
    full, small = load("voc2007", voc07, "val"), load("voc2007", voc07, "val", image_size=24)
    img, t = small[0]
    assert img.shape == (3, 24, 24)
    assert torch.allclose(t["boxes"], full[0][1]["boxes"] * 0.5)
    for root in (voc07 / "VOCdevkit", voc07 / "VOCdevkit" / "VOC2007"):
        assert len(load("voc2007", root, "trainval")) == 12
    assert len(load("voc2007", voc07, "trainval", num=5)) == 5


def test_voc_image_sets(voc07: Path) -> None:
    voc = voc07 / "VOCdevkit" / "VOC2007"
    sets = voc / "ImageSets"
    assert (sets / "Main" / "train.txt").read_text().split() == [f"{i + 1:06d}" for i in range(0, 12, 2)]
    assert (sets / "Main" / "test.txt").read_text().split() == [f"{i:06d}" for i in range(13, 19)]
    for name in ("train", "val", "trainval"):
        assert (sets / "Segmentation" / f"{name}.txt").read_text() == (sets / "Main" / f"{name}.txt").read_text()
    flags_seen = set()
    for c, cls in enumerate(CLASSES):
        lines = (sets / "Main" / f"{cls}_trainval.txt").read_text().splitlines()
        assert len(lines) == 12
        for k, line in enumerate(lines):
            assert line[:6] == f"{k + 1:06d}" and line[6] == " " and len(line) == 9
            here = [o.difficult for o in render_sample(SEED, "trainval", k, SIZE).objects if o.cls == c]
            want = -1 if not here else (0 if all(here) else 1)
            assert int(line[7:]) == want
            flags_seen.add(line[7:])
    assert {" 1", "-1"} <= flags_seen
    xml = (voc / "Annotations" / "000001.xml").read_text()
    for tag in ("<filename>000001.jpg</filename>", "<width>48</width>", "<depth>3</depth>",
                "<pose>Unspecified</pose>", "<truncated>0</truncated>", "<difficult>"):
        assert tag in xml


def test_voc_segmentation_round_trip(voc07: Path) -> None:
    seg = voc_segmentation(str(voc07), "2007", "val", 0)
    assert len(seg) == 6
    for i, index in enumerate(range(1, 12, 2)):
        s = render_sample(SEED, "trainval", index, SIZE, full=True)
        img, mask = seg[i]
        assert img.shape == (3, SIZE, SIZE) and mask.dtype == torch.int64
        assert np.array_equal(mask.numpy(), s.seg.astype(np.int64))
    assert (mask == 255).any() and ((mask > 0) & (mask < 255)).any()
    png = Image.open(voc07 / "VOCdevkit" / "VOC2007" / "SegmentationClass" / "000002.png")
    assert png.mode == "P"
    palette = np.array(png.getpalette()[:768], np.uint8).reshape(-1, 3)
    assert np.array_equal(palette, voc_colormap())
    assert palette[255].tolist() == [224, 224, 192] and palette[1].tolist() == [128, 0, 0]
    small_img, small_mask = voc_segmentation(str(voc07), "2007", "val", 24)[0]
    assert small_img.shape == (3, 24, 24) and small_mask.shape == (24, 24)
    assert set(small_mask.unique().tolist()) <= set(mask.unique().tolist()) | set(seg[0][1].unique().tolist())


def test_voc2012_splits(tmp_path: Path) -> None:
    synth("voc2012", tmp_path, 3, 32, SEED)
    assert [len(load("voc2012", tmp_path, s)) for s in ("train", "val", "trainval")] == [3, 3, 6]
    with pytest.raises(UserError, match="no split 'test'"):
        load("voc2012", tmp_path, "test")
    with pytest.raises(UserError, match="missing VOCdevkit/VOC2007"):
        load("voc2007", tmp_path, "train")


def test_corrupt_jpeg_is_skipped(tmp_path: Path) -> None:
    write_voc(tmp_path, 3, 32, SEED, "2012")
    jpg = tmp_path / "VOCdevkit" / "VOC2012" / "JPEGImages"
    (jpg / "000001.jpg").write_bytes(b"this is not a jpeg")
    data = (jpg / "000003.jpg").read_bytes()
    (jpg / "000003.jpg").write_bytes(data[: len(data) // 3])  # truncated
    ds = load("voc2012", tmp_path, "train")
    with pytest.warns(UserWarning, match="skipping unreadable image .*000001.jpg"):
        assert ds[0] is None
    with pytest.warns(UserWarning, match="skipping unreadable image .*000003.jpg"):
        assert ds[1] is None
    with pytest.warns(UserWarning):
        images, target = collate_skip_corrupt([ds[i] for i in range(len(ds))])
    assert images.shape == (1, 3, 32, 32) and target["label"].shape == (1,) and len(target["boxes"]) == 1
    with pytest.warns(UserWarning):
        assert voc_segmentation(str(tmp_path), "2012", "train", 0)[0] is None
    summary = check("voc2012", str(tmp_path))
    assert "2 unreadable file(s) skipped" in summary and "000001.jpg" in summary


def test_missing_layout_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"is not a directory.*sslbench data synth --format voc --out DIR"):
        load("voc2007", tmp_path / "nope", "train")
    with pytest.raises(UserError, match=r"voc2007=PATH"):
        DATASETS.get("voc2007")(None, "train", 0, 0, 0)
    write_voc(tmp_path, 2, 32, SEED)
    voc = tmp_path / "VOCdevkit" / "VOC2007"
    (voc / "Annotations").rename(voc / "Annotations.moved")
    with pytest.raises(UserError) as err:
        load("voc2007", tmp_path, "train")
    msg = str(err.value)
    assert "expected <root>/VOCdevkit/VOC2007/{JPEGImages,Annotations,ImageSets/Main}; missing Annotations" in msg
    assert "`sslbench data synth --format voc --out DIR`" in msg and "\n" not in msg
    with pytest.raises(UserError, match=r"cifar-10-batches-py.*sslbench data synth --format cifar10"):
        load("cifar10", tmp_path, "train")
    with pytest.raises(UserError, match=r"stl10_binary.*sslbench data synth --format stl10"):
        load("stl10", tmp_path, "train")
    with pytest.raises(UserError, match=r"no split 'validation'; valid: train, test"):
        load("cifar10", tmp_path, "validation")
    with pytest.raises(UserError, match="not a directory"):
        check("imagenet", str(tmp_path / "nope"))


def test_malformed_xml_is_a_user_error(tmp_path: Path) -> None:
    write_voc(tmp_path, 2, 32, SEED, "2012")
    ann = tmp_path / "VOCdevkit" / "VOC2012" / "Annotations"
    (ann / "000003.xml").write_text("<annotation><object><name>dog</name></annotation>")
    with pytest.raises(UserError, match=r"malformed VOC annotation .*000003\.xml: mismatched tag: line 1"):
        load("voc2012", tmp_path, "train")
    (ann / "000003.xml").write_text("<annotation><object><name>dog</name></object></annotation>")
    with pytest.raises(UserError, match=r"000003\.xml: object 1 \(dog\) needs a <bndbox>"):
        load("voc2012", tmp_path, "train")
    (ann / "000003.xml").write_text("<annotation><object><name>unicorn</name></object></annotation>")
    with pytest.raises(UserError, match=r"000003\.xml: object 1 has class 'unicorn'"):
        load("voc2012", tmp_path, "train")
    assert len(load("voc2012", tmp_path, "val")) == 2  # the other split is unaffected


# ---------------------------------------------------------------- CIFAR-10 / STL-10


def ten_class_selection(split: str, num: int, size: int, classes: tuple[str, ...]) -> list[tuple[int, int]]:
    """(generator index, label) as documented: first scenes whose main class is one of the ten, balanced."""
    quota, counts, out, index = math.ceil(num / 10), [0] * 10, [], 0
    while len(out) < num:
        cls = CLASSES[render_sample(SEED, split, index, size).label]
        if cls in classes and counts[classes.index(cls)] < quota:
            counts[classes.index(cls)] += 1
            out.append((index, classes.index(cls)))
        index += 1
    return out


def test_cifar10_round_trip(tmp_path: Path) -> None:
    folder = write_cifar10(tmp_path, 23, 7, SEED)
    assert folder == tmp_path / "cifar-10-batches-py"
    for split, base, num in (("train", "trainval", 23), ("test", "test", 7)):
        ds = load("cifar10", tmp_path, split)
        want = ten_class_selection(base, num, 32, CIFAR10_CLASSES)
        assert len(ds) == num and ds.classes == list(CIFAR10_CLASSES)
        for i, (index, label) in enumerate(want):
            img, t = ds[i]
            assert torch.equal(img, torch.from_numpy(render_sample(SEED, base, index, 32).image).permute(2, 0, 1))
            assert int(t["label"]) == label
    # the pickles are the real ones' shape: bytes keys under encoding="bytes", [N, 3072] uint8 rows
    sizes = []
    for b in range(1, 6):
        with open(folder / f"data_batch_{b}", "rb") as f:
            d = pickle.load(f, encoding="bytes")
        assert set(d) == {b"data", b"labels", b"batch_label", b"filenames"}
        assert d[b"data"].dtype == np.uint8 and d[b"data"].shape[1] == 3072
        assert d[b"batch_label"] == f"training batch {b} of 5".encode()
        sizes.append(len(d[b"labels"]))
    assert sum(sizes) == 23 and max(sizes) - min(sizes) <= 1
    with open(folder / "batches.meta", "rb") as f:
        assert pickle.load(f, encoding="bytes")[b"label_names"] == [c.encode() for c in CIFAR10_CLASSES]
    assert len(load("cifar10", folder, "unlabeled", num=5)) == 5  # root may be the batches folder itself
    img, _ = load("cifar10", tmp_path, "test", image_size=16)[0]
    assert img.shape == (3, 16, 16) and img.dtype == torch.uint8


def test_stl10_round_trip(tmp_path: Path) -> None:
    folder = write_stl10(tmp_path, 10, 6, 4, SEED)
    assert (folder / "train_X.bin").stat().st_size == 10 * 3 * 96 * 96
    assert sorted(np.fromfile(folder / "train_y.bin", np.uint8).tolist())[0] >= 1
    for split, base, num in (("train", "trainval", 10), ("test", "test", 6)):
        ds = load("stl10", tmp_path, split)
        assert len(ds) == num and ds.classes == list(STL10_CLASSES)
        for i, (index, label) in enumerate(ten_class_selection(base, num, 96, STL10_CLASSES)):
            img, t = ds[i]
            assert torch.equal(img, torch.from_numpy(render_sample(SEED, base, index, 96).image).permute(2, 0, 1))
            assert int(t["label"]) == label
    unl = load("stl10", folder, "unlabeled")
    assert len(unl) == 4
    for i in range(4):
        img, t = unl[i]
        assert torch.equal(img, torch.from_numpy(render_sample(SEED, "unlabeled", i, 96).image).permute(2, 0, 1))
        assert int(t["label"]) == -1
    folds = (folder / "fold_indices.txt").read_text().splitlines()
    assert len(folds) == 10 and all(len(f.split()) == 2 for f in folds)
    assert load("stl10", tmp_path, "train", image_size=32)[0][0].shape == (3, 32, 32)


# ---------------------------------------------------------------- ImageNet layout


def test_imagenet_round_trip(tmp_path: Path) -> None:
    write_imagenet(tmp_path, 10, 4, 40, SEED)
    train = load("imagenet", tmp_path, "train")
    assert len(train) == 10 and train.classes == list(CLASSES)
    for i, (path, _) in enumerate(train.samples):
        index = int(Path(path).stem.rsplit("_", 1)[1])
        s = render_sample(SEED, "trainval", index, 40)
        img, t = train[i]
        assert int(t["label"]) == s.label and Path(path).parent.name == CLASSES[s.label]
        assert (img.permute(1, 2, 0).float() - torch.from_numpy(s.image).float()).abs().mean() < 4
    assert [int(train[i][1]["label"]) for i in range(3)] == sorted({int(train[i][1]["label"]) for i in range(10)})[:3]
    val = load("imagenet", tmp_path / "imagenet", "val", image_size=32)
    assert len(val) == 4 and val[0][0].shape == (3, 32, 32)
    for (path, label) in val.samples:
        assert CLASSES[label] == Path(path).parent.name


# ---------------------------------------------------------------- Caltech-101 / 256 layouts


@pytest.mark.parametrize("name", ["caltech101", "caltech256"])
def test_caltech_is_read_through_torchvision_without_its_background_class(name: str, tmp_path: Path) -> None:
    from sslbench.data.layouts.caltech import RELEASES

    release = RELEASES[name]
    folder = synth(name, tmp_path, 40, 40, SEED)  # 2 images of each of the 20 classes, 3 background images
    tv = release.reader(str(tmp_path))  # torchvision's own reader of the layout
    assert len(tv.categories) == (20 if name == "caltech101" else 21)  # torchvision keeps Caltech-256's clutter
    ds = load(name, folder, "all")  # the root may be the release folder itself
    assert len(ds) == 40 and len(ds.classes) == 20 and ds.classes[0] == "aeroplane"
    assert sorted(ds.labels) == sorted(list(range(20)) * 2)
    by_path = {str(folder / release.categories / tv.categories[y] / release.file_name(y, i)): k
               for k, (y, i) in enumerate(zip(tv.y, tv.index))}
    for i in range(len(ds)):
        img, target = ds[i]
        tv_img, tv_label = tv[by_path[ds.paths[i]]]
        assert torch.equal(img, torch.from_numpy(np.array(tv_img.convert("RGB"))).permute(2, 0, 1))
        assert ds.classes[int(target["label"])] in tv.categories[tv_label]
        assert release.background not in ds.paths[i] and "clutter" not in ds.paths[i]
    assert load(name, tmp_path, "all", image_size=24)[0][0].shape == (3, 24, 24)


@pytest.mark.parametrize("name", ["caltech101", "caltech256"])
def test_caltech_bad_layouts_are_one_line_errors(name: str, tmp_path: Path) -> None:
    from sslbench.data.layouts.caltech import RELEASES

    release = RELEASES[name]
    with pytest.raises(UserError, match=f"{name} has no split 'train'; valid: all"):
        load(name, tmp_path, "train")
    with pytest.raises(UserError, match=f"expected <root>/{name}/{release.categories}"):
        load(name, tmp_path, "all")
    assert not (tmp_path / name).exists()  # torchvision would have made the folder: nothing is created
    folder = synth(name, tmp_path, 40, 40, SEED)
    cls = sorted((folder / release.categories).iterdir())[3]
    first = sorted(cls.iterdir())[0]
    first.unlink()  # a gap in the numbering torchvision relies on
    with pytest.raises(UserError, match=r"not found \(1 such\).*numbered 1..N"):
        load(name, tmp_path, "all")
    for f in cls.iterdir():
        f.unlink()
    with pytest.raises(UserError, match=f"class folder .*{cls.name} holds no image"):
        load(name, tmp_path, "all")


# ---------------------------------------------------------------- synth, check, atomic writes


def test_synth_dispatch_and_unknown_format(tmp_path: Path) -> None:
    valid = "caltech101, caltech256, cifar10, imagenet, motion, nyu, sbd, stl10, voc, voc2007"
    with pytest.raises(UserError, match=f"unknown data format 'coco'; valid: {valid}"):
        synth("coco", tmp_path, 4, 32, 0)
    with pytest.raises(UserError, match="--num expects 1 to 1000000 images per split, found 0"):
        synth("voc", tmp_path, 0, 32, 0)
    assert synth("cifar10", tmp_path, 4, 64, 0) == tmp_path / "cifar-10-batches-py"
    assert len(load("cifar10", tmp_path, "test")) == 4
    assert not list(tmp_path.glob(".*"))  # no temporary folders left behind


def test_check_summaries(voc07: Path, tmp_path: Path) -> None:
    text = check("voc2007", str(voc07))
    assert text.startswith(f"voc2007 at {voc07}: train 6, val 6, test 6 images")
    assert "images 48x48" in text and "20 classes" in text and "0 unreadable" in text and "\n" not in text
    write_cifar10(tmp_path, 5, 0, SEED)
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    text = check("cifar10", str(tmp_path))
    assert "train 5 images (test absent)" in text and "images 32x32" in text and "10 classes" in text
    with pytest.raises(UserError, match="takes no path"):
        check("embedded", str(tmp_path))
    with pytest.raises(UserError, match="unknown data set 'cifar11'"):
        check("cifar11", str(tmp_path))


def test_writer_failure_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_voc(tmp_path, 2, 32, SEED)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    calls = {"n": 0}
    real = voc.render_sample

    def failing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 3:
            raise RuntimeError("disk on fire")
        return real(*args, **kwargs)

    monkeypatch.setattr(voc, "render_sample", failing)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_voc(tmp_path, 4, 32, SEED + 1)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # old copy intact, no temp dir
    monkeypatch.setattr(voc, "render_sample", real)
    write_voc(tmp_path, 3, 32, SEED)  # rewriting replaces the folder
    assert len(load("voc2007", tmp_path, "trainval")) == 6
    assert [p.name for p in (tmp_path / "VOCdevkit").iterdir()] == ["VOC2007"]


# ---------------------------------------------------------------- SBD


@pytest.fixture(scope="module")
def voc12_sbd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("voc12sbd")
    write_voc(root, 6, 40, seed=5, year="2012")
    write_sbd(root, 6, 40, seed=5)
    return root


def test_sbd_boundaries_match_a_pixel_loop() -> None:
    rng = np.random.default_rng(0)
    classes = rng.choice([0, 3, 7], size=(9, 11)).astype(np.uint8)
    got = sbd_boundaries(classes)
    for c in range(1, 21):
        want = np.zeros_like(classes, bool)
        for y in range(9):
            for x in range(11):
                if classes[y, x] != c:
                    continue
                for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                    yy, xx = y + dy, x + dx
                    if 0 <= yy < 9 and 0 <= xx < 11 and classes[yy, xx] != c:
                        want[y, x] = True
        np.testing.assert_array_equal(got[c - 1], want)


def test_sbd_round_trip_through_torchvision(voc12_sbd: Path) -> None:
    import torchvision

    d = voc12_sbd / "benchmark_RELEASE" / "dataset"
    train, val = (d / "train.txt").read_text().split(), (d / "val.txt").read_text().split()
    assert len(train) + len(val) == 18 and not set(train) & set(val)
    jobs = [("trainval", i) for i in range(12)] + [("test", j) for j in range(6)]
    for split, mode in (("train", "segmentation"), ("val", "boundaries")):
        tv = torchvision.datasets.SBDataset(str(d), image_set=split, mode=mode)
        for k in (0, len(tv) - 1):
            n = int(Path(tv.images[k]).stem) - 1
            s = render_sample(5, *jobs[n], 40, full=True)
            img, target = tv[k]
            assert np.abs(np.asarray(img, np.int16) - s.image).mean() < 4  # JPEG q95 4:4:4
            if mode == "segmentation":
                np.testing.assert_array_equal(np.asarray(target), s.classes)
                assert 255 not in np.asarray(target)  # SBD marks no outlines
            else:
                np.testing.assert_array_equal(target.astype(bool), np.stack(sbd_boundaries(s.classes)))


def test_sbd_shares_the_voc2012_images_and_crosses_its_split(voc12_sbd: Path) -> None:
    sbd_train = sbd_segmentation(str(voc12_sbd), "train", 0)
    voc_val = voc_segmentation(str(voc12_sbd), "2012", "val", 0)
    shared = set(sbd_train.ids) & set(voc_val.ids)
    assert shared  # as in the real SBD: some of its train images are VOC2012 val images
    i = sbd_train.ids.index(sorted(shared)[0])
    j = voc_val.ids.index(sorted(shared)[0])
    assert torch.equal(sbd_train[i][0], voc_val[j][0])
    voc_mask, sbd_mask = voc_val[j][1], sbd_train[i][1]
    keep = voc_mask != 255
    assert torch.equal(voc_mask[keep], sbd_mask[keep])  # same scene; VOC adds 255 outlines


def test_train_aug_is_the_union_minus_val(voc12_sbd: Path) -> None:
    from sslbench.protocols.voc_seg import train_aug

    voc_train = voc_segmentation(str(voc12_sbd), "2012", "train", 24)
    val_ids = voc_segmentation(str(voc12_sbd), "2012", "val", 0).ids
    aug = train_aug(voc_train, str(voc12_sbd), val_ids, 24)
    ids = [i for part in aug.datasets for i in part.ids]
    all_sbd = set(sbd_segmentation(str(voc12_sbd), "train", 0).ids) | set(sbd_segmentation(str(voc12_sbd), "val", 0).ids)
    assert len(ids) == len(set(ids)) == len(aug)
    assert set(ids) == (set(voc_train.ids) | all_sbd) - set(val_ids)
    assert 255 in torch.cat([aug[k][1].flatten() for k in range(len(voc_train))])  # VOC's own masks come first
    assert len(train_aug(voc_train, str(voc12_sbd), val_ids, 24, num=7)) == 7


def test_sbd_bad_input(voc12_sbd: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="missing img, cls"):
        sbd_segmentation(str(tmp_path), "train", 0)
    d = tmp_path / "dataset"
    for sub in ("img", "cls"):
        (d / sub).mkdir(parents=True)
    with pytest.raises(UserError, match="no val.txt"):
        sbd_segmentation(str(tmp_path), "val", 0)
    with pytest.raises(UserError, match="has no split 'test'"):
        sbd_segmentation(str(tmp_path), "test", 0)
    (d / "train.txt").write_text("x1\n")
    Image.new("RGB", (8, 8)).save(d / "img" / "x1.jpg")
    with pytest.raises(UserError, match=r"1 file\(s\) of train.txt missing"):
        sbd_segmentation(str(tmp_path), "train", 0)
    (d / "cls" / "x1.mat").write_bytes(b"not a mat file at all" * 10)
    with pytest.raises(UserError, match=r"malformed SBD mask .*x1.mat"):
        sbd_segmentation(str(tmp_path), "train", 0)[0]
    from scipy.io import savemat

    savemat(d / "cls" / "x1.mat", {"other": np.zeros((8, 8))})
    with pytest.raises(UserError, match="GTcls struct.*found keys other"):
        sbd_segmentation(str(tmp_path), "train", 0)[0]
