"""The shared transforms: window cutting against slicing, sRGB <-> Lab against published values and OpenCV,
the named transfer inputs."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import sslbench.transforms as T
from sslbench.transforms import (
    TRANSFER_INPUTS,
    cut_windows,
    gray_input,
    lab_to_rgb,
    luma,
    rgb8_to_lab,
    rgb_to_lab,
    standardize_,
)


def test_cut_windows_matches_slicing() -> None:
    images = torch.randint(0, 256, (3, 3, 40, 50), dtype=torch.uint8)
    ys = torch.randint(0, 40 - 7, (3, 9))
    xs = torch.randint(0, 50 - 7, (3, 9))
    out = cut_windows(images, ys, xs, 7)
    assert out.shape == (3, 9, 3, 7, 7)
    for n, k in itertools.product(range(3), range(9)):
        y, x = int(ys[n, k]), int(xs[n, k])
        assert torch.equal(out[n, k], images[n, :, y : y + 7, x : x + 7])
    channel = torch.randint(0, 3, (3, 9))
    one = cut_windows(images, ys, xs, 7, channels=channel)
    assert one.shape == (3, 9, 1, 7, 7)
    for n, k in itertools.product(range(3), range(9)):
        assert torch.equal(one[n, k, 0], out[n, k, channel[n, k]])


def test_cut_windows_with_per_channel_corners_matches_slicing() -> None:
    images = torch.randint(0, 256, (2, 3, 40, 40), dtype=torch.uint8)
    rows, cols = torch.randint(0, 31, (2, 9, 3)), torch.randint(0, 31, (2, 9, 3))
    tiles = cut_windows(images, rows, cols, 9)
    assert tiles.shape == (2, 9, 3, 9, 9)
    for i, k, ch in itertools.product(range(2), range(9), range(3)):
        y, x = int(rows[i, k, ch]), int(cols[i, k, ch])
        assert torch.equal(tiles[i, k, ch], images[i, ch, y : y + 9, x : x + 9])


def cv2_lab(images: torch.Tensor) -> torch.Tensor:
    """uint8 [N,3,H,W] -> Lab [N,3,H,W] by OpenCV (float input: L 0..100, a/b unscaled)."""
    cv2 = pytest.importorskip("cv2")
    out = [cv2.cvtColor(img.permute(1, 2, 0).numpy().astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab) for img in images]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2)


PRIMARIES = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1], [0.5, 0.5, 0.5]]).T.reshape(1, 3, 5, 1)
PUBLISHED = torch.tensor([[53.2408, 80.0925, 67.2032], [87.7347, -86.1827, 83.1793], [32.2970, 79.1875, -107.8602],
                          [100.0, 0.0, 0.0], [53.3890, 0.0, 0.0]])  # sRGB D65 (e.g. Lindbloom's calculator)


def test_rgb_to_lab_matches_published_values_and_opencv() -> None:
    assert torch.allclose(rgb_to_lab(PRIMARIES)[0, :, :, 0].T, PUBLISHED, atol=0.01)
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    # OpenCV's float path interpolates the sRGB curve from a table: agreement to a fraction of a Lab unit.
    assert torch.allclose(rgb_to_lab(images.float() / 255.0), cv2_lab(images), atol=0.5)


def test_lab_to_rgb_inverts_rgb_to_lab_and_matches_opencv() -> None:
    cv2 = pytest.importorskip("cv2")
    rgb = torch.rand(3, 3, 12, 12, dtype=torch.float64)
    torch.testing.assert_close(lab_to_rgb(rgb_to_lab(rgb)), rgb, atol=1e-6, rtol=0)
    lab = PUBLISHED.T.reshape(1, 3, 5, 1).float()
    torch.testing.assert_close(lab_to_rgb(lab), PRIMARIES.float(), atol=1e-3, rtol=0)  # 4-digit published Lab
    ours = lab_to_rgb(rgb_to_lab(rgb.float()))[0].permute(1, 2, 0).numpy()
    theirs = cv2.cvtColor(cv2.cvtColor(rgb[0].permute(1, 2, 0).numpy().astype(np.float32), cv2.COLOR_RGB2Lab),
                          cv2.COLOR_Lab2RGB)
    assert np.abs(ours - theirs).max() < 5e-3


@pytest.mark.parametrize("chunk", [1 << 17, 300])  # one chunk; chunks of one 3x9x11 image (the last one short)
def test_rgb8_to_lab_table_lookup_equals_the_formula(chunk: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(T, "LAB_CHUNK", chunk)
    images = torch.randint(0, 256, (5, 2, 3, 9, 11), dtype=torch.uint8)
    images[0, 0, :, 0, :3] = torch.tensor([0, 10, 255], dtype=torch.uint8)[:, None]  # both branches of each curve
    torch.testing.assert_close(rgb8_to_lab(images), rgb_to_lab(images.float() / 255.0), atol=2e-4, rtol=1e-5)


def test_luma_and_standardize_against_loops() -> None:
    x = torch.rand(2, 3, 4, 5)
    want = 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    torch.testing.assert_close(luma(x)[:, 0], want)
    torch.testing.assert_close(gray_input((x * 255).round().to(torch.uint8)), (luma((x * 255).round() / 255) - 0.45) / 0.25)
    y = standardize_(x.clone(), (1, 2, 3))
    for i in range(2):
        assert abs(float(y[i].mean())) < 1e-6 and abs(float(y[i].std()) - 1.0) < 1e-5


def test_every_transfer_input_maps_uint8_images_to_a_finite_float_input() -> None:
    images = torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8)
    channels = {"imagenet": 3, "cifar": 3, "per-image-std": 3, "per-channel-std": 3, "lab-l-std": 1, "gray": 1,
                "lab-l": 1, "lab": 3}
    assert set(TRANSFER_INPUTS.names()) == set(channels)
    for name in TRANSFER_INPUTS.names():
        out = TRANSFER_INPUTS.get(name)(images)
        assert out.shape == (2, channels[name], 16, 16) and out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("shape", [(5, 3, 4, 6), (5, 4, 6)])
def test_mirror_flips_exactly_the_chosen_rows(shape: tuple) -> None:
    from sslbench.transforms import mirror

    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    flips = torch.tensor([True, False, False, True, True])
    out = mirror(x, flips)
    for i in range(len(x)):
        assert torch.equal(out[i], x[i].flip(-1) if flips[i] else x[i])
