"""Benchmark (h): Colorization's soft-encoding of a batch of ab maps.

sslbench's `soft_encode` (the bins lie on a lattice: each pixel is compared with the 16 lattice points around
its cell only, top-k of those; pixels near the gamut's edge against all bins; weights from exact distances)
against the released code's approach written plainly, as `NNEncode` in richzhang/colorization
resources/caffe_traininglayers.py does it: scikit-learn `NearestNeighbors(algorithm="ball_tree")` fitted on the
bins, `kneighbors` of every pixel, the Gaussian weights normalised, scattered into the dense [N, Q, H, W]
encoding. Both outputs are compared as dense encodings: the max abs difference over the pixels whose k-th and
(k+1)-th nearest bins are not tied (at a tie either bin is right; the tied pixels are counted). Default: 32
maps of 56 x 56 (the released VGG net's target grid), k = 10 (the released NN) and k = 5 (the paper's).
Run:  python benchmarks/bench_colorization.py [threads] [batch] [side]     (defaults 2, 32, 56)
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
from sklearn.neighbors import NearestNeighbors

from sslbench.data.synthetic import embedded_images
from sslbench.tasks.colorization import ab_gamut_bins, dense_encoding, soft_encode
from sslbench.transforms import rgb8_to_lab


def released_encode(ab: np.ndarray, bins: np.ndarray, k: int, sigma: float) -> np.ndarray:
    """The NNEncode structure: ball tree over the bins, k nearest per pixel, Gaussian weights, dense output."""
    n, _, h, w = ab.shape
    flat = ab.transpose(0, 2, 3, 1).reshape(-1, 2)
    nn = NearestNeighbors(n_neighbors=k, algorithm="ball_tree").fit(bins)
    dists, inds = nn.kneighbors(flat)
    wts = np.exp(-dists**2 / (2 * sigma**2))
    wts = wts / wts.sum(axis=1, keepdims=True)
    out = np.zeros((flat.shape[0], len(bins)))
    out[np.arange(flat.shape[0])[:, None], inds] = wts
    return out.reshape(n, h, w, len(bins)).transpose(0, 3, 1, 2)


def best_of(fn, repeats: int = 5) -> float:  # noqa: ANN001
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 32
    side = int(sys.argv[3]) if len(sys.argv) > 3 else 56
    torch.set_num_threads(threads)
    bins = ab_gamut_bins(10)
    ab = rgb8_to_lab(embedded_images("unlabeled", side, batch, 0))[:, 1:].contiguous()  # the embedded images' ab,
    ab += torch.rand(ab.shape, generator=torch.Generator().manual_seed(0)) - 0.5  # +-0.5 apart: no exact ties
    print(f"{batch} ab maps of {side}x{side} ({batch * side * side:,} pixels), {len(bins)} bins, {threads} threads")
    print("| k | sslbench soft_encode | released approach (sklearn ball tree) | speed-up | max abs diff | ties |")
    print("|---|---|---|---|---|---|")
    ks = (10, 5)
    # ours first for every k: scikit-learn's thread pool, once started, slows torch's later CPU ops on a small machine
    ours = {k: best_of(lambda: soft_encode(ab, bins, k, 5.0, 10)) for k in ks}  # noqa: B023
    for k in ks:
        naive = best_of(lambda: released_encode(ab.numpy(), bins.numpy(), k, 5.0), repeats=3)  # noqa: B023
        index, weight = soft_encode(ab, bins, k, 5.0, 10)
        diff = np.abs(dense_encoding(index, weight, len(bins)).double().numpy()
                      - released_encode(ab.double().numpy(), bins.double().numpy(), k, 5.0)).max(1)  # per pixel
        ties = tied(ab.double(), bins.double(), k)
        print(f"| {k} | {ours[k] * 1e3:.1f} ms | {naive * 1e3:.1f} ms | {naive / ours[k]:.1f}x | {diff[~ties].max():.1e} "
              f"| {int(ties.sum())} |")


def tied(ab: torch.Tensor, bins: torch.Tensor, k: int, gap: float = 1e-4) -> np.ndarray:
    """Pixels whose k-th and (k+1)-th nearest bins are equally far (within `gap`): either choice is right."""
    x = ab.permute(0, 2, 3, 1).reshape(-1, 2)
    d = torch.cdist(x, bins).sort(1).values
    return (d[:, k] - d[:, k - 1] < gap).view(ab.shape[0], *ab.shape[2:]).numpy()


if __name__ == "__main__":
    main()
