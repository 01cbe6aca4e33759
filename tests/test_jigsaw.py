"""Jigsaw: the greedy permutation set against a brute-force reference, tiles that reassemble into the image
under the inverse permutation, tiles inside their cells, the set stored with the checkpoint, a loss that goes down."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from sslbench.backbones.base import build_backbone
from sslbench.data.synthetic import embedded_images
from sslbench.engine import pretrain
from sslbench.errors import UserError
from sslbench.recipes import load_recipe
from sslbench.registry import TASKS
from sslbench.tasks.jigsaw import (
    all_permutations,
    hamming_permutation_set,
    min_hamming_distance,
    tile_corners,
)
from sslbench.training import build_optimizer
from sslbench.transforms import normalize
from tests.conftest import fit_losses

from .conftest import tiny_pretrain

# Small puzzles for tests; the tiny AlexNet runs on 24 px tiles (its smallest size with conv1_stride 1).
TINY_NET = ["backbone.width=0.125", "backbone.fc_dim=32", "backbone.conv1_stride=1", "task.fc7_dim=32",
            "backbone.image_size=24", "task.tile=24", "task.num_permutations=20"]
PLAIN = ["task.gray_prob=0.0", "task.tile_norm=false", "task.channel_jitter=0"]
EXACT = TINY_NET + PLAIN + ["task.cell=24", "task.random_offsets=false"]  # tiles fill their cells: no gaps
GAPS = TINY_NET + ["task.cell=28"]  # 4 px of play inside each cell


def make_task(overrides: list[str]):
    r = load_recipe("pretrain", "jigsaw", "mini", overrides)
    return TASKS.get("jigsaw")(r.component.cfg, build_backbone(r.backbone.name, r.backbone.cfg))


# ---------------------------------------------------------------- the permutation set


def hamming(p: tuple[int, ...], q: tuple[int, ...]) -> int:
    return sum(a != b for a, b in zip(p, q))


def reference_set(size: int, n: int, first: int, selection: str) -> list[tuple[int, ...]]:
    """Algorithm 1 written out plainly: every candidate scored against every chosen permutation, each step."""
    candidates = list(itertools.permutations(range(n)))
    chosen = [candidates[first]]
    while len(chosen) < size:
        best, best_key = None, None
        for cand in candidates:
            if cand in chosen:
                continue
            distances = [hamming(cand, c) for c in chosen]
            key = (sum(distances),) if selection == "max-mean" else (min(distances), sum(distances))
            if best_key is None or key > best_key:  # strict: the first candidate wins a tie
                best, best_key = cand, key
        chosen.append(best)
    return chosen


@pytest.mark.parametrize("n,size", [(4, 12), (5, 30)])
@pytest.mark.parametrize("selection", ["max-mean", "max-min"])
def test_greedy_set_matches_a_brute_force_reference(n: int, size: int, selection: str) -> None:
    ours = hamming_permutation_set(size, n, seed=3, selection=selection)
    first = list(itertools.permutations(range(n))).index(tuple(ours[0]))
    ref = reference_set(size, n, first, selection)
    assert [tuple(p) for p in ours] == ref
    brute_min = min(hamming(p, q) for p, q in itertools.combinations(ref, 2))
    assert min_hamming_distance(ours) == brute_min


def test_max_min_keeps_permutations_apart() -> None:
    """The max-min rule finds sets whose closest pair is farther apart than the max-mean rule's."""
    mean_rule = hamming_permutation_set(60, 9, seed=0, selection="max-mean")
    min_rule = hamming_permutation_set(60, 9, seed=0, selection="max-min")
    assert min_hamming_distance(min_rule) > min_hamming_distance(mean_rule)


def test_set_of_nine_has_the_size_no_duplicates_and_is_deterministic() -> None:
    a = hamming_permutation_set(50, 9, seed=7)
    assert a.shape == (50, 9)
    assert len({tuple(p) for p in a}) == 50
    assert (np.sort(a, axis=1) == np.arange(9)).all()  # every row is a permutation of 0..8
    assert np.array_equal(a, hamming_permutation_set(50, 9, seed=7))
    assert not np.array_equal(a, hamming_permutation_set(50, 9, seed=8))


def test_all_permutations_are_lexicographic_and_complete() -> None:
    assert [tuple(p) for p in all_permutations(4)] == list(itertools.permutations(range(4)))


def test_min_hamming_distance_matches_brute_force_on_random_sets() -> None:
    rng = np.random.default_rng(0)
    perms = np.stack([rng.permutation(6) for _ in range(15)])
    brute = min(hamming(tuple(p), tuple(q)) for p, q in itertools.combinations(perms.tolist(), 2))
    assert min_hamming_distance(perms) == brute


# ---------------------------------------------------------------- tiles and labels


def test_tiles_reassemble_into_the_image_under_the_inverse_permutation() -> None:
    task = make_task(EXACT)
    images = torch.randint(0, 256, (5, 3, 72, 72), dtype=torch.uint8)
    batch = task.make_batch(images, {}, torch.Generator().manual_seed(0))
    tiles, labels = batch["tiles"], batch["labels"]  # [5,9,3,24,24], [5]
    assert tiles.shape == (5, 9, 3, 24, 24)
    expected = normalize(images)
    for i in range(5):
        perm = task.permutations[labels[i]].tolist()  # slot s shows the tile of cell perm[s]
        canvas = torch.empty(3, 72, 72)
        for slot, cell in enumerate(perm):
            r, c = divmod(cell, 3)
            canvas[:, r * 24 : (r + 1) * 24, c * 24 : (c + 1) * 24] = tiles[i, slot]
        assert torch.equal(canvas, expected[i])


def test_random_offset_tiles_come_from_inside_their_cells() -> None:
    """With gaps and a random grid position, every shuffled tile is found inside the cell its label names."""
    task = make_task(GAPS + PLAIN + ["task.random_offsets=true"])
    images = torch.randint(0, 256, (3, 3, 88, 88), dtype=torch.uint8)  # the 84 px grid sits at 0..4
    batch = task.make_batch(images, {}, torch.Generator().manual_seed(1))
    full = normalize(images)
    for i in range(3):
        perm = task.permutations[batch["labels"][i]].tolist()
        for slot, cell in enumerate(perm):
            r, c = divmod(cell, 3)
            found = [
                (y, x)
                for y in range(r * 28, r * 28 + 9)  # grid origin 0..4 + offset 0..4 inside the cell
                for x in range(c * 28, c * 28 + 9)
                if torch.equal(full[i, :, y : y + 24, x : x + 24], batch["tiles"][i, slot])
            ]
            assert found, (i, slot, cell)


def test_tile_corners_stay_inside_the_image_with_per_channel_jitter() -> None:
    gen = torch.Generator().manual_seed(2)
    corners = tile_corners(2, 3, 40, 40, cell=12, tile=9, random_offsets=True, jitter=2, generator=gen)
    assert corners.shape == (2, 9, 3, 2)
    assert int(corners.min()) >= 0 and int(corners.max()) <= 40 - 9

def test_corners_without_jitter_stay_inside_their_cells() -> None:
    gen = torch.Generator().manual_seed(3)
    corners = tile_corners(64, 3, 90, 90, cell=30, tile=22, random_offsets=True, jitter=0, generator=gen)
    first = corners[:, 0:1, :, :]  # cell 0's tile: grid origin + its offset
    for k in range(9):
        r, c = divmod(k, 3)
        inside = corners[:, k] - torch.tensor([r * 30, c * 30])  # grid origin + offset, in 0..8
        assert int(inside.min()) >= 0 and int(inside.max()) <= 30 - 22
    assert (corners[..., 0, :] == corners[..., 1, :]).all()  # one corner for all channels
    assert len(torch.unique(first[:, 0, 0, 0])) > 1  # the offsets are random


def test_grayscale_and_per_tile_normalisation() -> None:
    task = make_task(GAPS + ["task.gray_prob=1.0", "task.tile_norm=true", "task.channel_jitter=0"])
    images = torch.randint(0, 256, (4, 3, 84, 84), dtype=torch.uint8)
    tiles = task.make_batch(images, {}, torch.Generator().manual_seed(0))["tiles"]
    assert torch.equal(tiles[:, :, 0], tiles[:, :, 1]) and torch.equal(tiles[:, :, 1], tiles[:, :, 2])
    per_channel = tiles.flatten(3)  # each channel of each tile on its own (the PyTorch port's normalisation)
    assert torch.allclose(per_channel.mean(-1), torch.zeros(4, 9, 3), atol=1e-5)
    assert torch.allclose(per_channel.std(-1), torch.ones(4, 9, 3), atol=1e-4)


def reference_tiles(task, images: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Jigsaw's tiles written out per tile: the task's draws in its order, then each tile cut, scaled, grayed and
    normalised channel by channel on its own."""
    cfg, (n, c, h, w) = task.cfg, images.shape
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, len(task.permutations), (n,), generator=g)
    corners = tile_corners(n, c, h, w, cfg.cell, cfg.tile, cfg.random_offsets, cfg.channel_jitter, g)
    gray = torch.rand(n, generator=g) < cfg.gray_prob
    out = torch.empty(n, 9, c, cfg.tile, cfg.tile)
    for i in range(n):
        for slot, cell in enumerate(task.permutations[labels[i]].tolist()):
            tile = torch.stack([images[i, ch, y:y + cfg.tile, x:x + cfg.tile]
                                for ch, (y, x) in enumerate(corners[i, cell].tolist())]).float() / 255.0
            if gray[i]:
                tile = (0.299 * tile[0] + 0.587 * tile[1] + 0.114 * tile[2]).expand(3, -1, -1)
            for ch in range(c):
                x = tile[ch] - tile[ch].mean()
                out[i, slot, ch] = x / max(float((x * x).sum() / (x.numel() - 1)) ** 0.5, 1e-3)
    return out, labels


@pytest.mark.parametrize("threads", [1, 2])
def test_make_batch_equals_a_per_tile_reference_and_chunking_changes_no_bit(monkeypatch, threads: int) -> None:
    task = make_task(GAPS + ["task.gray_prob=0.5", "task.channel_jitter=2"])
    images = torch.randint(0, 256, (6, 3, 90, 90), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        whole = task.make_batch(images, {}, torch.Generator().manual_seed(7))
        monkeypatch.setattr("sslbench.transforms.CACHE_BYTES", 1)  # one image per chunk
        chunked = task.make_batch(images, {}, torch.Generator().manual_seed(7))
    finally:
        torch.set_num_threads(before)
    assert torch.equal(whole["tiles"], chunked["tiles"]) and torch.equal(whole["labels"], chunked["labels"])
    tiles, labels = reference_tiles(task, images, 7)
    assert torch.equal(whole["labels"], labels)
    assert torch.allclose(whole["tiles"], tiles, atol=1e-5)


def test_make_batch_is_pure_given_the_generator() -> None:
    task = make_task(GAPS + ["task.channel_jitter=1"])
    images = torch.randint(0, 256, (4, 3, 90, 90), dtype=torch.uint8)
    a = task.make_batch(images, {}, torch.Generator().manual_seed(5))
    b = task.make_batch(images, {}, torch.Generator().manual_seed(5))
    assert torch.equal(a["tiles"], b["tiles"]) and torch.equal(a["labels"], b["labels"])


# ---------------------------------------------------------------- errors a user can act on


def test_bad_geometry_is_refused_with_what_to_do() -> None:
    with pytest.raises(UserError, match="task.tile"):
        make_task(["task.tile=50", "task.cell=42"])
    with pytest.raises(UserError, match="backbone.image_size"):
        make_task(["backbone.image_size=40"])
    task = make_task(EXACT)
    with pytest.raises(UserError, match="data.image_size"):
        task.make_batch(torch.zeros(2, 3, 60, 60, dtype=torch.uint8), {}, torch.Generator())


# ---------------------------------------------------------------- training


def test_permutation_set_is_stored_with_the_checkpoint(tmp_path) -> None:
    r = tiny_pretrain("jigsaw", GAPS + ["data.image_size=84", "task.num_permutations=10"])
    out = pretrain(r, tmp_path, progress=False)
    state = torch.load(out.checkpoint, map_location="cpu", weights_only=False)
    stored = state["model"]["permutations"]
    assert stored.shape == (10, 9)
    assert torch.equal(stored, torch.from_numpy(hamming_permutation_set(10, 9, 0, "max-mean")))


def test_jigsaw_loss_goes_down_on_embedded_images() -> None:
    """One fixed batch of puzzles (fixed permutations and offsets): the network must learn to fit it."""
    torch.manual_seed(0)
    r = load_recipe("pretrain", "jigsaw", "mini", GAPS + ["optim.lr=0.05"])
    task = TASKS.get("jigsaw")(r.component.cfg, build_backbone(r.backbone.name, r.backbone.cfg))
    opt = build_optimizer(task.parameters(), r.optim)
    images = embedded_images("unlabeled", 84, 16, 0)
    batch = task.make_batch(images, {}, torch.Generator().manual_seed(0))
    losses = fit_losses(task, opt, [batch] * 20)
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:3]), losses
