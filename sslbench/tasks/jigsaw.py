"""Jigsaw puzzles (Noroozi & Favaro, ECCV 2016): reorder 9 shuffled tiles, i.e. classify the permutation.

A crop of 3x3 cells is cut from the image; one tile per cell, at a random offset inside the cell (the gap
stops the network from matching tile edges); the 9 tiles are shuffled by a permutation drawn from a fixed
set chosen for large Hamming distances, and the network predicts the permutation's index in the set. The
context-free network (CFN) runs the backbone on every tile with shared weights up to its fuse tap (AlexNet:
fc6), concatenates the 9 outputs in the shuffled order, then fc7 and fc8 (both in this task's head) over the
permutation classes. Guards against shortcuts, as in the paper: each tile normalised by its own mean and std, a
fraction of the images made grayscale, and optionally the colour channels jittered apart (chromatic
aberration). The permutation set is a registered buffer, so it travels with the checkpoint.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslbench.backbones.base import Backbone
from sslbench.config import Dropout, In, Rate, Seed, Units
from sslbench.errors import UserError
from sslbench.registry import register_task
from sslbench.tasks.base import PretextTask, TinySetup, accuracy
from sslbench.transforms import GRID, MEAN, STD, cache_chunks, cut_windows, luma, standardize_

TILES = GRID * GRID  # the paper's 3x3 puzzle: 9 tiles, 9! = 362880 candidate permutations
Selection = Literal["max-mean", "max-min"]


@dataclass(frozen=True)
class PuzzleConfig:
    """What Jigsaw and Damaged Jigsaw share: the permutation set, the tiles, the CFN head."""

    # permutation classes (paper default and best of its Table 3: 1000)
    num_permutations: Annotated[int, In(2, 362_880)] = 1000
    selection: Selection = "max-mean"  # greedy rule of the set (Algorithm 1: maximal average Hamming distance)
    permutation_seed: Seed = 0  # draws the set's first permutation; the rest follows deterministically
    # side of each of the 3x3 cells (paper Fig. 3: a 225 px crop in 75 px cells; 85 = a 255 px crop)
    cell: Annotated[int, In(1, 1024)] = 75
    # side of the tile cut inside each cell (paper: 64 px); cell - tile is the gap
    tile: Annotated[int, In(1, 1024)] = 64
    random_offsets: bool = True  # tile at a random offset inside its cell (paper); false = centred
    tile_norm: bool = True  # normalise each tile by its own mean and std (paper: no low-level statistics cue)
    fc7_dim: Units = 4096  # width of fc7 over the 9 concatenated fc6 outputs (paper: 4096)
    head_bn: bool = True  # BatchNorm in fc7 (the PyTorch ports needed BatchNorm to train)
    dropout: Dropout = 0.5  # dropout before fc8 (paper: 0.5, as in AlexNet)

    def __post_init__(self) -> None:
        check_puzzle(self.cell, self.tile, self.num_permutations)


@dataclass(frozen=True)
class JigsawConfig(PuzzleConfig):
    # shift each colour channel of a tile independently by up to this many px
    channel_jitter: Annotated[int, In(0, 64)] = 0
    gray_prob: Rate = 0.3  # fraction of images made grayscale against colour / chromatic-aberration cues
    # tile_norm per colour channel, as the PyTorch port (bbrattoli/JigsawPuzzlePytorch Dataset/JigsawImageLoader.py
    # l.52-56 since commit ec85994: mean/std of each channel of each tile; before it, one over all three), which
    # also removes a tile's colour cast; false: one mean/std over the tile's three channels
    tile_norm_per_channel: bool = True

    def __post_init__(self) -> None:
        check_puzzle(self.cell, self.tile, self.num_permutations, self.gray_prob, self.channel_jitter)


def check_puzzle(cell: int, tile: int, num_permutations: int, gray_prob: float = 0.0, jitter: int = 0) -> None:
    """Refuse impossible puzzles in the recipe, before any work."""
    if not 1 <= tile <= cell:
        raise UserError(f"task.tile must be between 1 and task.cell ({cell}), found {tile}; "
                        "the tile is cut inside its cell")
    limit = math.factorial(TILES)
    if not 1 <= num_permutations <= limit:
        raise UserError(f"task.num_permutations must be between 1 and 9! = {limit}, found {num_permutations}")
    if not 0.0 <= gray_prob <= 1.0:
        raise UserError(f"task.gray_prob is a fraction of images: expected 0..1, found {gray_prob}")
    if jitter < 0:
        raise UserError(f"task.channel_jitter is a distance in pixels: expected >= 0, found {jitter}")


# ---------------------------------------------------------------- the permutation set


def all_permutations(n: int) -> np.ndarray:
    """Every permutation of range(n) in lexicographic order: [n!, n] uint8."""
    flat = itertools.chain.from_iterable(itertools.permutations(range(n)))
    return np.fromiter(flat, dtype=np.uint8, count=n * math.factorial(n)).reshape(-1, n)


@functools.lru_cache(maxsize=8)
def _cached_set(size: int, n: int, seed: int, selection: Selection) -> np.ndarray:
    candidates = all_permutations(n)  # [M, n]
    m = len(candidates)
    # One row per (position, value): row p*n+v marks the candidates holding v at position p, so the number
    # of positions a candidate shares with a permutation q (n minus their Hamming distance) is the sum of
    # n contiguous rows.
    holds = np.zeros((n * n, m), dtype=np.uint8)
    holds[np.arange(n) * n + candidates, np.arange(m)[:, None]] = 1
    shared_sum = np.zeros(m, dtype=np.int32)  # sum over the chosen set of shared positions = n*|set| - 1^T D
    shared_max = np.zeros(m, dtype=np.int32)  # shared positions with the nearest chosen permutation
    taken = np.zeros(m, dtype=np.int32)  # a penalty larger than any score on the chosen ones
    chosen = [int(np.random.default_rng(seed).integers(m))]
    for _ in range(size - 1):
        last = chosen[-1]
        taken[last] = np.iinfo(np.int32).max // 2
        rows = holds[np.arange(n) * n + candidates[last]]
        shared = rows[0].copy()
        for row in rows[1:]:
            shared += row  # uint8: at most n shared positions
        shared_sum += shared
        np.maximum(shared_max, shared, out=shared_max)
        # Fewest shared positions = largest Hamming distance. max-min: to the nearest chosen permutation
        # first, ties (there are many) by the sum.
        cost = shared_sum if selection == "max-mean" else shared_max * (n * size + 1) + shared_sum
        chosen.append(int((cost + taken).argmin()))  # first minimum: deterministic, like Matlab's max in the paper
    return candidates[chosen].astype(np.int64)


def hamming_permutation_set(size: int, n: int = TILES, seed: int = 0, selection: Selection = "max-mean") -> np.ndarray:
    """The greedy maximal-Hamming-distance permutation set (Noroozi & Favaro 2016, Algorithm 1): [size, n].

    Start from a seeded random permutation of range(n); then, `size - 1` times, add the not yet chosen
    permutation with the largest score over all n! candidates:
    - "max-mean": the sum (equivalently the average) of its Hamming distances to the chosen set, D-bar =
      1^T D in the paper's Algorithm 1 and the PyTorch port's `select_permutations.py`;
    - "max-min": its distance to the nearest chosen permutation, ties broken by the sum.
    Ties go to the lexicographically first candidate, so the set is a pure function of its arguments.
    Each step costs one pass over the n! candidates (vectorised; ~ms for n = 9).
    """
    if not 1 <= size <= math.factorial(n):
        raise UserError(f"a permutation set of {n} elements holds 1..{math.factorial(n)} permutations, "
                        f"asked for {size}")
    return _cached_set(size, n, seed, selection).copy()


def min_hamming_distance(perms: np.ndarray) -> int:
    """Smallest Hamming distance between two different rows of perms [K, n] (n if K = 1)."""
    distance = (perms[:, None, :] != perms[None, :, :]).sum(-1)  # [K, K]
    np.fill_diagonal(distance, perms.shape[1])
    return int(distance.min())


# ---------------------------------------------------------------- cutting tiles


def tile_corners(n: int, channels: int, height: int, width: int, cell: int, tile: int, random_offsets: bool,
                 jitter: int, generator: torch.Generator) -> Tensor:
    """Top-left corner (row, col) of every tile of every image, per channel: [N, 9, C, 2], cells row-major.

    The 3x3 grid sits at a random position of the image; each tile at a random (or the centre) offset inside
    its cell; with `jitter`, every channel moves by its own +-jitter px (kept inside the image).
    """
    crop, on = GRID * cell, generator.device
    if height < crop or width < crop:
        raise UserError(
            f"jigsaw: images are {height}x{width} px but 3 cells of {cell} px need {crop}x{crop}; "
            f"raise data.image_size to >= {crop} or lower task.cell to <= {min(height, width) // GRID}"
        )
    origin = torch.stack([torch.randint(0, height - crop + 1, (n,), generator=generator, device=on),
                          torch.randint(0, width - crop + 1, (n,), generator=generator, device=on)], -1)  # [N, 2]
    cells = torch.arange(GRID, device=on)
    grid = torch.stack(torch.meshgrid(cells, cells, indexing="ij"), -1).view(TILES, 2) * cell
    if random_offsets:
        offsets = torch.randint(0, cell - tile + 1, (n, TILES, 2), generator=generator, device=on)
    else:
        offsets = torch.full((n, TILES, 2), (cell - tile) // 2, device=on)
    corners = (origin[:, None] + grid[None] + offsets)[:, :, None, :].expand(n, TILES, channels, 2)
    if jitter:
        shift = torch.randint(-jitter, jitter + 1, (n, TILES, channels, 2), generator=generator, device=on)
        limit = torch.tensor([height - tile, width - tile], device=on)
        corners = torch.minimum((corners + shift).clamp_min(0), limit)
    return corners.contiguous()


def gray_(tiles: Tensor) -> Tensor:
    """In place: RGB tiles [..., 3, t, t] replaced by their luma in all three channels."""
    return tiles.copy_(luma(tiles).expand_as(tiles))


def shuffle_tiles(tiles: Tensor, order: Tensor) -> Tensor:
    """tiles [N,K,...] in cell order, order [N,K] -> slot s of image i holds the entry of cell order[i, s]."""
    return tiles[torch.arange(tiles.shape[0], device=tiles.device)[:, None], order]


# ---------------------------------------------------------------- the network


def tower_features(backbone: Backbone, tiles: Tensor) -> Tensor:
    """The weight-shared towers: tiles [N,K,C,t,t] -> each tile's fuse-tap vector (AlexNet: fc6), concatenated in
    slot order [N, K*D]."""
    n, k = tiles.shape[:2]
    tap = backbone.fuse_tap
    features = backbone(tiles.flatten(0, 1), taps=(tap,))[tap]  # [N*K, D]
    return features.reshape(n, k * features.shape[1])


def fc_head(in_dim: int, hidden: int, classes: int, bn: bool, dropout: float) -> nn.Sequential:
    """fc7 (+BN) + ReLU + dropout + fc8: the CFN's layers above the concatenated fc6 outputs."""
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden, bias=not bn)]
    layers += [nn.BatchNorm1d(hidden)] if bn else []
    return nn.Sequential(*layers, nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(hidden, classes))


def tile_towers(backbone: Backbone, tile: int, task: str) -> int:
    """The towers see tiles, so the trunk must be built at the tile size and have a fuse tap; the stages after
    it are frozen (the CFN head replaces them). Returns the width of the concatenated tile vectors."""
    tap = backbone.role("fuse_tap", f"{task} (the context-free network concatenates each tile's vector)")
    if backbone.image_size != tile:
        raise UserError(f"{task}: backbone.image_size is {backbone.image_size} but the towers see {tile} px tiles; "
                        f"set backbone.image_size={tile} (or task.tile={backbone.image_size})")
    backbone.freeze_after(tap)
    return TILES * backbone.feature_info[tap].channels


@register_task("jigsaw", config=JigsawConfig)
class Jigsaw(PretextTask):
    """Jigsaw puzzles: classify which of a fixed set of permutations shuffled the 3x3 tiles (CFN)."""

    display_name = "Jigsaw"

    def __init__(self, cfg: JigsawConfig, backbone: Backbone) -> None:
        super().__init__(cfg, backbone)
        concat = tile_towers(backbone, cfg.tile, "jigsaw")
        perms = hamming_permutation_set(cfg.num_permutations, TILES, cfg.permutation_seed, cfg.selection)
        self.register_buffer("permutations", torch.from_numpy(perms))  # [P, 9], saved in the state dict
        self.head = fc_head(concat, cfg.fc7_dim, cfg.num_permutations, cfg.head_bn, cfg.dropout)

    def make_batch(self, images: Tensor, targets: dict[str, Any], generator: torch.Generator) -> dict[str, Tensor]:
        """uint8 [N,3,H,W] -> tiles [N,9,3,t,t] (slot order) and labels [N] (index into the permutation set).

        The draws first (labels, tile corners, which images turn gray), then the tiles are built a few images at a
        time straight into the output: cut, scaled to 0..1, grayed, normalised while the chunk is in the CPU's cache
        (at 256 images of 9 x 3 x 64^2 px the output is 113 MB, and every full pass over it costs as much as the
        arithmetic). Every step is per tile, so chunking changes no value: the same tensors as one pass."""
        cfg, on = self.cfg, generator.device
        n, c, h, w = images.shape
        perms = self.permutations.to(on)
        labels = torch.randint(0, len(perms), (n,), generator=generator, device=on)
        corners = tile_corners(n, c, h, w, cfg.cell, cfg.tile, cfg.random_offsets, cfg.channel_jitter, generator)
        # Cut straight into slot order (slot s shows cell perm[s]): the tiles are never copied to shuffle them.
        corners = shuffle_tiles(corners, perms[labels]).to(images.device)
        gray = (torch.rand(n, generator=generator, device=on) < cfg.gray_prob).tolist() if cfg.gray_prob else \
            [False] * n
        tiles = torch.empty((n, TILES, c, cfg.tile, cfg.tile), device=images.device)
        dims = (3, 4) if cfg.tile_norm_per_channel else (2, 3, 4)
        for part in cache_chunks(n, tiles[0].numel() * 4, images.device):
            out = tiles[part]
            torch.div(cut_windows(images[part], corners[part, ..., 0], corners[part, ..., 1], cfg.tile), 255.0,
                      out=out)
            for i in (i for i, g in enumerate(gray[part]) if g):
                gray_(out[i])
            if cfg.tile_norm:
                standardize_(out, dims)
            else:
                out.sub_(MEAN.to(out.device).view(1, 1, 3, 1, 1)).div_(STD.to(out.device).view(1, 1, 3, 1, 1))
        return {"tiles": tiles, "labels": labels.to(images.device)}

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        logits = self.head(tower_features(self.backbone, batch["tiles"]))  # [N, P]
        return {"loss": F.cross_entropy(logits, batch["labels"]), "acc": accuracy(logits, batch["labels"])}

    def transfer_input(self) -> str:
        """Transfer sees whole images normalised the way each tile was: by the image's own mean and std (of each
        channel, or of all three)."""
        per_channel = self.cfg.tile_norm and self.cfg.tile_norm_per_channel
        return "per-channel-std" if per_channel else "per-image-std"

    @classmethod
    def tiny(cls) -> TinySetup:
        return TinySetup("alexnet", {"width": 0.125, "fc_dim": 32, "image_size": 36, "conv1_stride": 2}, 120,
                         {"num_permutations": 10, "cell": 40, "tile": 36, "fc7_dim": 32})
