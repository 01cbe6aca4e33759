"""The embedded data set: deterministic, cached by version + parameters, targets consistent with the pixels."""

from __future__ import annotations

import numpy as np
import pytest

from sslbench.config import DataConfig
from sslbench.data import synthetic as syn
from sslbench.data.build import build_dataset
from sslbench.data.datasets import collate_skip_corrupt
from sslbench.errors import UserError


def test_rendering_is_deterministic_and_seeded() -> None:
    a = syn.render_sample(0, "unlabeled", 7, 32, full=True)
    b = syn.render_sample(0, "unlabeled", 7, 32, full=True)
    c = syn.render_sample(1, "unlabeled", 7, 32)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.seg, b.seg) and np.array_equal(a.frame2, b.frame2)
    assert not np.array_equal(a.image, c.image)


def test_splits_are_disjoint_and_train_val_halve_trainval() -> None:
    tv = syn.load_split("trainval", 16, 10, 0)
    train, val = syn.load_split("train", 16, 5, 0), syn.load_split("val", 16, 5, 0)
    assert np.array_equal(train.images, tv.images[0::2]) and np.array_equal(val.images, tv.images[1::2])
    test = syn.load_split("test", 16, 10, 0)
    assert not any(np.array_equal(x, y) for x in test.images for y in tv.images)


def test_cache_is_reused_and_keyed_by_version(monkeypatch: pytest.MonkeyPatch) -> None:
    first = syn.load_split("unlabeled", 16, 6, 3)
    files = sorted(syn.cache_dir().glob("embedded-unlabeled-16px-6-*.npz"))
    assert len(files) == 1
    monkeypatch.setattr(syn, "render_sample", lambda *a, **k: pytest.fail("cache not used"))
    again = syn.load_split("unlabeled", 16, 6, 3)
    assert np.array_equal(first.images, again.images) and first.objects == again.objects
    monkeypatch.setattr(syn, "GENERATOR_VERSION", syn.GENERATOR_VERSION + 1)
    with pytest.raises(pytest.fail.Exception):
        syn.load_split("unlabeled", 16, 6, 3)  # a new version must re-render


def test_targets_agree_with_the_pixels() -> None:
    for i in range(20):
        s = syn.render_sample(0, "trainval", i, 48, full=True)
        assert s.image.shape == (48, 48, 3) and s.image.dtype == np.uint8
        assert s.label in [o.cls for o in s.objects] or not s.objects
        classes = set(np.unique(s.seg)) - {0, 255}
        assert classes <= {o.cls + 1 for o in s.objects}  # a sliver of an object may be all outline (255)
        for o in s.objects:
            x0, y0, x1, y1 = (int(v) for v in o.box)
            inside = s.seg[y0 : y1 + 1, x0 : x1 + 1]
            assert (inside == o.cls + 1).any() or (inside == 255).any()
        assert s.depth.shape == (48, 48) and (s.depth > 0).all()
        assert s.motion.dtype == bool
        if s.motion.any():
            assert not np.array_equal(s.image[s.motion], s.frame2[s.motion])


def test_classes_share_palettes_and_every_class_appears() -> None:
    assert len(syn.CLASSES) == 20 and set(syn.SHAPES) == set(syn.CLASSES)
    labels = syn.load_split("unlabeled", 16, 400, 0).labels
    assert set(labels.tolist()) == set(range(20))


def test_dataset_items_and_collate() -> None:
    ds = build_dataset(DataConfig(image_size=24), "trainval", 6)
    image, target = ds[0]
    assert image.shape == (3, 24, 24) and target["labels"].shape == (20,)
    images, batch = collate_skip_corrupt([ds[0], None, ds[1]])
    assert images.shape == (2, 3, 24, 24) and batch["label"].shape == (2,)
    assert isinstance(batch["boxes"], list) and len(batch["boxes"]) == 2
    with pytest.raises(UserError, match="no split 'validation'"):
        build_dataset(DataConfig(), "validation", 4)
