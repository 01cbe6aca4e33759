"""NYU Depth v2: the depth metrics against a hand-worked case, the labelled set's .mat layout through h5py and its
official split file, and the one-line errors."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from sslbench.data.layouts import synth
from sslbench.data.synthetic import render_sample
from sslbench.errors import UserError
from sslbench.metrics import depth_errors, depth_metrics
from sslbench.protocols.nyu_depth import log_l1
from sslbench.registry import DATASETS


def test_depth_metrics_by_hand() -> None:
    target = torch.tensor([[1.0, 2.0], [4.0, 0.0]])  # the last pixel has no depth
    pred = torch.tensor([[1.2, 3.0], [4.0, 9.0]])
    m = depth_metrics(depth_errors(pred, target))
    # ratios 1.2, 1.5, 1.0: two below 1.25; 1.5 < 1.5625 = 1.25^2
    assert m["pct-within-1.25"] == pytest.approx(200 / 3)
    assert m["pct-within-1.25^2"] == pytest.approx(100.0) and m["pct-within-1.25^3"] == pytest.approx(100.0)
    assert m["rmse"] == pytest.approx(((0.2**2 + 1.0**2 + 0.0) / 3) ** 0.5)
    assert m["abs-rel"] == pytest.approx((0.2 / 1 + 1.0 / 2 + 0.0) / 3)
    assert m["log10"] == pytest.approx((np.log10(1.2) + np.log10(1.5) + 0.0) / 3)
    halves = [depth_errors(pred[:1], target[:1]), depth_errors(pred[1:], target[1:])]  # sums add up over shards
    assert depth_metrics({k: halves[0][k] + halves[1][k] for k in halves[0]}) == pytest.approx(m)
    assert float(log_l1(pred, target)) == pytest.approx((np.log(1.2) + np.log(1.5)) / 3)
    with pytest.raises(ValueError, match="no valid pixel"):
        depth_metrics(depth_errors(pred, torch.zeros(2, 2)))


def test_the_labelled_set_round_trips_through_h5py_and_its_split_file(tmp_path: Path) -> None:
    folder = synth("nyu", tmp_path, 3, 40, 0)
    with h5py.File(folder / "nyu_depth_v2_labeled.mat", "r") as f:  # MATLAB's column-major shapes, reversed
        assert f["images"].shape == (6, 3, 40, 40) and f["depths"].shape == (6, 40, 40)
    assert (folder / "nyu_depth_v2_labeled.mat").read_bytes()[:10] == b"MATLAB 7.3"
    from scipy.io import loadmat

    splits = loadmat(folder / "splits.mat")
    assert splits["trainNdxs"].ravel().tolist() == [1, 3, 5] and splits["testNdxs"].ravel().tolist() == [2, 4, 6]
    for split, base in (("train", "trainval"), ("test", "test")):
        ds = DATASETS.get("nyu")(str(tmp_path), split, 0, 0, 0)
        assert len(ds) == 3
        for i in range(3):
            s = render_sample(0, base, i, 40, full=True)
            img, target = ds[i]
            assert torch.equal(img, torch.from_numpy(s.image).permute(2, 0, 1))
            assert torch.equal(target["depth"], torch.from_numpy(s.depth))
    small = DATASETS.get("nyu")(str(folder), "train", 20, 2, 0)  # the release folder itself; height 20
    assert len(small) == 2 and small[0][0].shape == (3, 20, 20) and small[0][1]["depth"].shape == (20, 20)


def test_nyu_bad_input_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="has no nyu_depth_v2_labeled.mat"):
        DATASETS.get("nyu")(str(tmp_path), "train", 0, 0, 0)
    with pytest.raises(UserError, match="no split 'val'"):
        DATASETS.get("nyu")(str(tmp_path), "val", 0, 0, 0)
    folder = synth("nyu", tmp_path, 2, 16, 0)
    (folder / "splits.mat").unlink()
    with pytest.raises(UserError, match="splits.mat not found; the official split"):
        DATASETS.get("nyu")(str(folder), "train", 0, 0, 0)
    (folder / "nyu_depth_v2_labeled.mat").write_bytes(b"not hdf5")
    with pytest.raises(UserError, match="not a readable MATLAB v7.3"):
        DATASETS.get("nyu")(str(folder), "train", 0, 0, 0)
