"""The deck's figures: attention maps against the formula (a plain loop, and a hand-built trunk whose activations are
known), nearest neighbours against a per-query loop, every pretext figure drawn from make_batch (a changed label
changes the figure), and `sslbench show` end to end on a tiny checkpoint, the PNG's size following its panels."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from sslbench.backbones.base import build_backbone
from sslbench.config import build
from sslbench.engine import pretrain
from sslbench.errors import UserError
from sslbench.figures import (
    CAPTION,
    GAP,
    PRETEXT,
    assemble,
    attention_map,
    jigsaw_sheet,
    nearest,
    panel_count,
    pretext_sheet,
    render,
    rotation_sheet,
    sheet_size,
)
from sslbench.registry import BACKBONES, TASKS
from sslbench.show import features, figure, load_trunks
from sslbench.transforms import MEAN, STD
from tests.conftest import tiny_pretrain

# ---------------------------------------------------------------- attention


@pytest.mark.parametrize("power", [1.0, 2.0, 4.0])
def test_attention_map_is_the_normalised_sum_of_powered_activations(power: float) -> None:
    x = torch.randn(3, 5, 4, 6, generator=torch.Generator().manual_seed(0))
    got = attention_map(x, power)
    for n in range(3):
        raw = [[sum(abs(float(x[n, c, i, j])) ** power for c in range(5)) for j in range(6)] for i in range(4)]
        lo, hi = min(map(min, raw)), max(map(max, raw))
        want = torch.tensor([[(v - lo) / (hi - lo) for v in row] for row in raw])
        assert torch.allclose(got[n], want, atol=1e-5)
    assert torch.equal(attention_map(torch.ones(1, 2, 3, 3), 2.0), torch.zeros(1, 3, 3))  # constant: all zero


def test_attention_of_a_hand_built_trunk_follows_its_known_activations(tmp_path: Path) -> None:
    """conv1 reduced to one filter that copies input channel 0 at the kernel's centre: its map is that channel,
    sampled at conv1's stride, to the power p, normalised."""
    recipe = tiny_pretrain("rotation", ["backbone.bn=false", "backbone.width=0.125", "backbone.fc_dim=32",
                                        "schedule.max_steps=1"], flavour="alexnet")
    out = pretrain(recipe, tmp_path / "runs", device="cpu", progress=False, argv=[])
    (trunk,), _, size = load_trunks([out.checkpoint], 0)
    conv = trunk.backbone.conv1[0]
    k, stride, pad = conv.kernel_size[0], conv.stride[0], conv.padding[0]
    with torch.no_grad():
        conv.weight.zero_()
        conv.bias.zero_()
        conv.weight[0, 0, k // 2, k // 2] = 1.0
    images = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    x = trunk.prepare(images)[:, 0]
    acts = features(trunk, images, ("conv1",))["conv1"]
    side = acts.shape[-1]
    centre = torch.nn.functional.pad(x, (pad, pad, pad, pad))[:, k // 2::stride, k // 2::stride][:, :side, :side]
    raw = centre.clamp_min(0) ** 2  # ReLU, then |a|^p with p = 2
    lo, hi = raw.flatten(1).min(1).values.view(-1, 1, 1), raw.flatten(1).max(1).values.view(-1, 1, 1)
    assert torch.allclose(attention_map(acts, 2.0), (raw - lo) / (hi - lo), atol=1e-5)


# ---------------------------------------------------------------- neighbours


def test_a_query_is_never_its_own_neighbour_even_tied_with_a_duplicate() -> None:
    from sslbench.figures import others

    candidates = torch.randn(8, 5, generator=torch.Generator().manual_seed(4))
    candidates[6] = candidates[2]  # a duplicate of query 2: it may rank before the query itself
    idx, sim = others(*nearest(candidates[[2, 5]], candidates, 4), [2, 5], 3)
    assert idx.shape == (2, 3) and 2 not in idx[0].tolist() and 5 not in idx[1].tolist()
    assert int(idx[0, 0]) == 6 and torch.allclose(sim[0, 0], torch.tensor(1.0))


def test_nearest_finds_a_query_in_the_candidates_first_and_matches_a_per_query_loop() -> None:
    candidates = torch.randn(30, 7, generator=torch.Generator().manual_seed(2))
    queries = candidates[[3, 11, 29]]
    idx, sim = nearest(queries, candidates, 4)
    assert idx[:, 0].tolist() == [3, 11, 29] and torch.allclose(sim[:, 0], torch.ones(3))
    for q in range(3):
        cos = [float(torch.dot(queries[q], c) / (queries[q].norm() * c.norm())) for c in candidates]
        order = sorted(range(30), key=lambda i: -cos[i])[:4]
        assert idx[q].tolist() == order
        assert torch.allclose(sim[q], torch.tensor([cos[i] for i in order]), atol=1e-5)
    with pytest.raises(UserError, match="--k must be between 1 and the 30 candidates"):
        nearest(queries, candidates, 31)


# ---------------------------------------------------------------- pretext


def tiny_task_and_batch(name: str, seed: int = 0):  # noqa: ANN201
    cls = TASKS.get(name)
    setup = cls.tiny()
    cfg = build(BACKBONES.entry(setup.backbone).config, dict(setup.backbone_cfg), "test")
    task = cls(build(TASKS.entry(name).config, dict(setup.cfg), "test"), build_backbone(setup.backbone, cfg))
    images = torch.randint(0, 256, (4, 3, setup.image_size, setup.image_size), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(seed))
    task.restore(task.setup(torch.utils.data.TensorDataset(images), torch.Generator().manual_seed(0)))
    batch = task.make_batch(images, {"index": torch.arange(4), **setup.targets}, torch.Generator().manual_seed(seed))
    return task, batch


@pytest.mark.parametrize("name", list(PRETEXT))
def test_every_pretext_figure_is_drawn_from_make_batch(name: str) -> None:
    task, batch = tiny_task_and_batch(name)
    sheet = pretext_sheet(name, task, batch, 3)
    per_row = {"rotation": 4, "jigsaw": 2, "damaged-jigsaw": 3, "context": 4, "inpainting": 3, "colorization": 2,
               "exemplar": getattr(task.cfg, "views", 0), "multitask": 0}[name]
    if name == "multitask":  # each sub-task with a figure, three rows each, named over its first
        drawn = [n for n in task.subtasks if n in PRETEXT]
        assert drawn and len(sheet) == 3 * len(drawn) and sheet[0][0].startswith(f"{drawn[0]}: ")
    else:
        assert len(sheet) == 3 and panel_count(sheet) == 3 * per_row
    assert all(p.dtype == torch.uint8 and p.shape[0] == 3 for _, row in sheet for _, p in row)
    image = render(sheet)
    width = max(sum(p.shape[2] for _, p in row) + GAP * (len(row) - 1) for _, row in sheet)
    height = sum((CAPTION if title else 0) + CAPTION + max(p.shape[1] for _, p in row) for title, row in sheet)
    assert image.size == sheet_size(sheet) == (width, height + GAP * (len(sheet) - 1))


def test_a_changed_label_changes_the_figure() -> None:
    task, batch = tiny_task_and_batch("jigsaw")
    before = jigsaw_sheet(task, batch, 1)
    changed = dict(batch, labels=(batch["labels"] + 1) % len(task.permutations))
    after = jigsaw_sheet(task, changed, 1)
    perm = task.permutations[int(changed["labels"][0])]
    title = f"permutation {int(changed['labels'][0])} = " + ",".join(str(int(v) + 1) for v in perm)
    assert before[0][0] != after[0][0] and after[0][0] == title
    assert not torch.equal(before[0][1][1][1], after[0][1][1][1])  # reassembled by another permutation
    task, batch = tiny_task_and_batch("rotation")
    flipped = dict(batch, labels=batch["labels"].flip(0))
    assert [c for c, _ in rotation_sheet(task, batch, 1)[0][1]] == ["0: 0 deg", "1: 90 deg", "2: 180 deg", "3: 270 deg"]
    assert rotation_sheet(task, flipped, 1)[0][1][1][0] != "1: 90 deg"


def test_the_context_rows_together_show_all_eight_positions() -> None:
    from sslbench.figures import context_sheet

    task, batch = tiny_task_and_batch("context")
    sheet = context_sheet(task, batch, 2)
    captions = [caption for _, row in sheet for caption, _ in row]
    assert sorted(captions) == sorted(f"{i}: {p}" for i, p in enumerate(
        ("up-left", "up", "up-right", "left", "right", "down-left", "down", "down-right")))


def test_the_reordered_puzzle_is_the_crop_the_tiles_were_cut_from() -> None:
    """EXACT geometry (tiles fill their cells, no gray, no normalisation): putting the shuffled tiles back by the
    batch's permutation gives the 3x3 crop of the image, the check the figure makes visible."""
    from sslbench.recipes import load_recipe

    r = load_recipe("pretrain", "jigsaw", "mini", ["backbone.width=0.125", "backbone.fc_dim=32",
                                                   "backbone.conv1_stride=1", "task.fc7_dim=32",
                                                   "backbone.image_size=24", "task.tile=24", "task.cell=24",
                                                   "task.num_permutations=20", "task.gray_prob=0.0",
                                                   "task.tile_norm=false", "task.channel_jitter=0",
                                                   "task.random_offsets=false"])
    task = TASKS.get("jigsaw")(r.component.cfg, build_backbone(r.backbone.name, r.backbone.cfg))
    images = torch.randint(0, 256, (1, 3, 72, 72), dtype=torch.uint8)
    batch = task.make_batch(images, {}, torch.Generator().manual_seed(0))
    sheet = jigsaw_sheet(task, batch, 1)
    crop = torch.stack([images[0, :, r * 24:(r + 1) * 24, c * 24:(c + 1) * 24] for r in range(3) for c in range(3)])
    cells = (crop.float() / 255 - MEAN) / STD  # the cells as make_batch normalises them (tile_norm off)
    (_, shuffled), (_, reordered) = sheet[0][1]
    assert (reordered.int() - assemble(cells).int()).abs().max() <= 1
    assert (shuffled.int() - assemble(cells).int()).abs().max() > 1  # the shuffled puzzle is not the crop


# ---------------------------------------------------------------- sslbench show, end to end


@pytest.fixture(scope="module")
def rotation_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = tmp_path_factory.mktemp("figures") / "runs"
    recipe = tiny_pretrain("rotation", ["backbone.width=0.125", "backbone.fc_dim=32", "schedule.max_steps=2"],
                           flavour="alexnet")
    return pretrain(recipe, runs, device="cpu", progress=False, argv=[]).checkpoint


def test_show_attention_neighbours_and_pretext_write_pngs(tmp_path: Path, rotation_checkpoint: Path) -> None:
    from sslbench.cli import main as cli

    specs = [str(rotation_checkpoint), f"random:{rotation_checkpoint}"]
    att = figure("attention", specs, 2)
    size = load_trunks(specs, 0)[2]
    # per model, one row per image (a title over the first): the input and 3 taps, each under its caption strip
    assert att.size == (4 * size + 3 * GAP, 2 * CAPTION + 4 * (CAPTION + size) + 3 * GAP)
    nbr = figure("neighbours", specs, 2, k=3, candidates=10)
    assert nbr.size == (4 * size + 3 * GAP, 4 * (2 * CAPTION + size) + 3 * GAP)  # 2 queries x 2 models, titled
    patched = figure("neighbours", specs, 1, k=2, candidates=6, size=48, patches=True)
    assert patched.size == (3 * 48 + 2 * GAP, 2 * (2 * CAPTION + 48) + GAP)  # 48 px patches of the 64 px images
    pre = figure("pretext", [rotation_checkpoint], 2)
    assert pre.size == (4 * size + 3 * GAP, 2 * (CAPTION + size) + GAP)  # two rows of four rotations
    out = tmp_path / "att.png"
    argv = ["sslbench", "show", "attention", *specs, str(out), "--num", "1", "--taps", "conv2", "--power", "1"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("sys.argv", argv)
        cli()
    with Image.open(out) as png:
        assert png.format == "PNG" and png.size == (2 * size + GAP, 2 * (2 * CAPTION + size) + GAP)


def test_show_refuses_bad_input_in_one_line(tmp_path: Path, rotation_checkpoint: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from sslbench.cli import main as cli

    for argv, message in (
        (["attention", str(tmp_path / "out.png")], "expected CKPT... OUT.png"),
        (["attention", str(rotation_checkpoint), str(tmp_path / "out.jpg")], "must end in .png"),
        (["attention", "random", str(tmp_path / "out.png")], "besides 'random'"),
        (["pretext", str(rotation_checkpoint), str(tmp_path / "o.png"), "--k", "3"], "takes no --k"),
        (["attention", str(rotation_checkpoint), str(tmp_path / "o.png"), "--taps", "conv9"], "no tap 'conv9'"),
        (["attention", str(rotation_checkpoint), str(tmp_path / "o.png"), "--power", "0"], "--power must be > 0"),
        (["neighbours", str(rotation_checkpoint), str(tmp_path / "o.png"), "--k", "0"], "--k must be >= 1"),
        (["neighbours", str(rotation_checkpoint), "random", str(tmp_path / "o.png"), "--candidates", "3",
          "--num", "3"], "--candidates must exceed --num"),
    ):
        with pytest.MonkeyPatch.context() as mp, pytest.raises(SystemExit) as exit_:
            mp.setattr("sys.argv", ["sslbench", "show", *argv])
            cli()
        err = capsys.readouterr().err
        assert exit_.value.code == 1 and message in err, (argv, err)
        assert not list(tmp_path.glob("*.png"))


def test_show_pretext_of_a_task_ensemble_with_motion_masks_and_mixed_trunks(tmp_path: Path, rotation_checkpoint: Path,
                                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """The motion sub-task's masks come with the held-out frames (its make_batch needs them; it draws nothing), the
    context sub-task draws its pairs; trunks of two architectures in one figure are one line, not a traceback; a
    task without a pretext figure says which have one."""
    from sslbench.cli import main as cli

    ensemble = pretrain(tiny_pretrain("multitask", ["schedule.max_steps=1"], flavour="rp+ms"), tmp_path / "runs",
                        device="cpu", progress=False, argv=[]).checkpoint
    sheet = figure("pretext", [ensemble], 2)
    assert sheet.size[0] > 0
    supervised = pretrain(tiny_pretrain("supervised", ["schedule.max_steps=1"]), tmp_path / "runs", device="cpu",
                          progress=False, argv=[]).checkpoint
    for argv, message in ((["pretext", str(supervised)], "show pretext draws rotation, jigsaw"),
                          (["attention", str(rotation_checkpoint), str(ensemble)], "must be of one architecture")):
        with pytest.MonkeyPatch.context() as mp, pytest.raises(SystemExit) as exit_:
            mp.setattr("sys.argv", ["sslbench", "show", *argv, str(tmp_path / "x.png")])
            cli()
        err = capsys.readouterr().err
        assert exit_.value.code == 1 and message in err and "Traceback" not in err, err
