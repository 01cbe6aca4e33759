"""Nothing lost, nothing silent: the failure catalogue of the reliability issue, one regression test per defect.

Every bad input is one `error:` line and a non-zero exit before any work, leaving nothing behind; Ctrl-C is exit
130 with a line that says whether --resume continues; a run ends finished, interrupted, failed or diverged, and
never as an anonymous empty folder; a table cell comes from the recipes its plan names.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sslbench.cli import main
from sslbench.config import recipe_key
from sslbench.engine import pretrain
from sslbench.errors import Interrupted, UserError
from sslbench.protocols.base import evaluate
from sslbench.recipes import resumed_recipe
from sslbench.results import ResultStore, check_store, default_store
from sslbench.runlog import MetricLogger
from sslbench.runs import RunLock, pick_resumable, read_status
from sslbench.runtime import Dist
from tests.conftest import crash_at_call, tiny_pretrain, tiny_protocol

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    """Run `sslbench ARGS` in this process: (exit code, the non-empty lines of stderr)."""
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def run(*args: str) -> tuple[int, list[str]]:
        monkeypatch.setattr(sys, "argv", ["sslbench", *args])
        capsys.readouterr()
        try:
            main()
            rc = 0
        except SystemExit as exc:
            rc = int(exc.code or 0)
        finally:
            for s, h in handlers.items():
                signal.signal(s, h)
        captured = capsys.readouterr()
        run.stdout = captured.out  # type: ignore[attr-defined]
        return rc, [line for line in captured.err.splitlines() if line.strip()]

    return run


def _one_error(result: tuple[int, list[str]], rc: int = 1) -> str:
    code, lines = result
    assert code == rc and len(lines) == 1 and lines[0].startswith("error: "), result
    return lines[0]


def _left(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


# ---------------------------------------------------------------- 5, 7, 11: bad values fail before any work

TINY = ["--quiet", "--set", "data.num_images=48", "--set", "data.batch_size=16"]
CASES = [  # (command, expected part of the one error line)
    ("pretrain rotation --set data.batch_size=-4", "[data].batch_size: expected a value in [1, 65 536], found -4"),
    ("pretrain rotation --set data.batch_size=0", "[data].batch_size: expected a value in [1, 65 536], found 0"),
    ("pretrain rotation --set schedule.epochs=0", "[schedule].epochs: expected a value in [1, 100 000], found 0"),
    ("pretrain rotation --set schedule.epochs=99999999999999999999", "[schedule].epochs: expected a value in"),
    ("pretrain rotation --set optim.lr=nan", "[optim].lr: expected a finite number, found nan"),
    ("pretrain rotation --set optim.lr=inf", "[optim].lr: expected a finite number, found inf"),
    ("pretrain rotation --set optim.lr=1e400", "[optim].lr: expected a finite number"),
    ("pretrain rotation --set optim.lr=0", "[optim].lr: expected a value in (0, 1 000], found 0"),
    ("pretrain rotation --set engine.threads=100000", "[engine].threads: expected a value in [0, 1 024]"),
    ("pretrain rotation --set engine.threads=-1", "[engine].threads: expected a value in [0, 1 024], found -1"),
    ("pretrain rotation --set task.crop_pad=1e29", "[task].crop_pad: expected an integer"),
    ("pretrain rotation --set task.crop_pad=-2", "[task].crop_pad: expected a value in [0, 1 024], found -2"),
    ("pretrain rotation --set data.image_size=0", "rotation needs a fixed side"),
    ("pretrain rotation --seed -1", "--seed: expected a value in [0, 2 147 483 647], found -1"),
    ("pretrain rotation --set seed=abc", ".seed: expected an integer, found 'abc'"),
    ("eval --protocol linear --checkpoint random --set data.image_size=0", "linear needs a fixed side"),
    ("eval --protocol linear --checkpoint random --set num_classes=0", "[protocol].num_classes: expected a value in"),
    ("eval --protocol linear --checkpoint random --set num_classes=5", "embedded has 20 classes but protocol.num_"),
    ("eval --protocol linear --checkpoint random --set protocol.pool.conv1.size=-3", "pool.conv1.size: expected a "),
    ("eval --protocol linear --checkpoint random --set pool.conv1.size=3", "'pool' is a [protocol] key"),
    ("eval --protocol linear --checkpoint random --set data.num_images=-5", "[data].num_images: expected a value"),
    ("eval --protocol linear --checkpoint random --set backbone.width=0", "[backbone].width: expected a value in (0"),
    ("eval --protocol linear --checkpoint random --set data.num_images=1", "less than one batch"),
    ("eval --protocol linear --checkpoint random --set schedule.epochs=0", "[schedule].epochs: expected a value"),
    ("reproduce rotations-cifar --format jsn", "unknown format 'jsn'"),
    ("reproduce rotations-pascal --plot p.png", "--plot draws the probe tables only"),
    ("table rotations-linear --plot p.txt", "expected a file name ending in"),
    ("pretrain rotation --resume", "no unfinished rotation run"),
    ("eval --protocol linear --checkpoint ", "--checkpoint is empty"),
    ("data synth --format voc --out OUT --num 0", "--num expects 1 to 1000000"),
]


@pytest.mark.parametrize(("command", "expected"), CASES, ids=[c for c, _ in CASES])
def test_bad_values_are_one_line_before_any_work(command: str, expected: str, cli, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    args = [a.replace("OUT", str(tmp_path / "out")) for a in command.split(" ")]
    if args[0] in ("pretrain", "eval", "reproduce"):
        args += ["--runs", str(runs), *TINY[:1]]
    start = time.time()
    line = _one_error(cli(*args))
    assert expected in line, line
    assert time.time() - start < 20, "the check came after work"
    assert _left(tmp_path) == [], "a refused command left files behind"


def test_usage_errors_are_one_error_line_with_exit_2(cli, tmp_path: Path) -> None:
    assert "Missing option '--checkpoint'" in _one_error(cli("eval", "--protocol", "linear"), rc=2)
    assert "'--seed'" in _one_error(cli("pretrain", "rotation", "--seed", "abc"), rc=2)
    assert "unexpected extra argument" in _one_error(cli("pretrain", "rotation", "extra"), rc=2)


def test_a_run_directory_as_checkpoint_names_the_checkpoint_inside(cli, tmp_path: Path) -> None:
    run_dir = tmp_path / "rotation-1"
    run_dir.mkdir()
    (run_dir / "checkpoint.pt").write_bytes(b"x")
    line = _one_error(cli("eval", "--protocol", "linear", "--checkpoint", str(run_dir), "--runs", str(tmp_path / "r")))
    assert "is a directory, not a checkpoint file; its checkpoint is" in line and str(run_dir / "checkpoint.pt") in line


def test_plot_into_a_directory_is_one_line(cli, tmp_path: Path) -> None:
    assert "is a directory; give a file name" in _one_error(cli("table", "rotations-linear", "--plot", str(tmp_path)))


# ---------------------------------------------------------------- 7, 11: --runs and the store, checked first


def test_runs_that_cannot_be_written_is_one_line(cli, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("hi")
    line = _one_error(cli("pretrain", "rotation", "--runs", str(tmp_path / "file" / "runs"), *TINY))
    assert "is not a directory" in line
    line = _one_error(cli("eval", "--protocol", "linear", "--checkpoint", "random", "--runs",
                          str(tmp_path / "file" / "runs"), "--quiet"))
    assert "is not a directory" in line


def test_a_corrupt_store_is_found_before_the_work(cli, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "results.sqlite").write_bytes(os.urandom(50_000))
    start = time.time()
    line = _one_error(cli("pretrain", "rotation", "--runs", str(runs), *TINY))
    assert "results store" in line and "not a readable SQLite database" in line and "move it aside" in line
    assert time.time() - start < 20 and _left(runs) == ["results.sqlite"]  # no run directory was made


def test_a_read_only_store_is_found_before_the_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ResultStore(tmp_path / "results.sqlite")  # a real store; the write lock is refused as a read-only file's
    real = sqlite3.connect

    def read_only(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        return real(f"file:{tmp_path / 'results.sqlite'}?mode=ro", uri=True, timeout=1.0, isolation_level=None)

    monkeypatch.setattr(sqlite3, "connect", read_only)
    with pytest.raises(UserError, match=r"results store .*readonly.*cannot be written"):
        check_store(tmp_path)
    assert store.path.is_file()


def test_groups_print_one_json_document_and_one_csv_table(cli, tmp_path: Path) -> None:
    assert cli("table", "rotations", "--format", "json", "--runs", str(tmp_path))[0] == 0
    doc = json.loads(cli.stdout)
    assert [t["table"] for t in doc["tables"]] == ["rotations-cifar", "rotations-linear", "rotations-pascal"]
    assert cli("table", "rotations", "--format", "csv", "--runs", str(tmp_path))[0] == 0
    lines = cli.stdout.splitlines()
    assert lines[0] == "table,source,row,column,cell" and all(line.count(",") >= 4 for line in lines)
    assert {line.split(",")[0] for line in lines[1:]} == {"rotations-cifar", "rotations-linear", "rotations-pascal"}


# ---------------------------------------------------------------- 3: data synth never removes a data set


def test_data_synth_refuses_an_existing_data_set_and_force_removes_nothing(cli, tmp_path: Path) -> None:
    voc = tmp_path / "VOCdevkit" / "VOC2007"
    voc.mkdir(parents=True)
    (voc / "mine.txt").write_text("my notes")
    line = _one_error(cli("data", "synth", "--format", "voc", "--out", str(tmp_path), "--num", "2"))
    assert "already exists and is not empty" in line and "--force" in line
    assert _left(tmp_path) == ["VOCdevkit", "VOCdevkit/VOC2007", "VOCdevkit/VOC2007/mine.txt"]
    code, _ = cli("data", "synth", "--format", "voc", "--out", str(tmp_path), "--num", "2", "--force")
    assert code == 0 and (voc / "mine.txt").read_text() == "my notes"
    assert (voc / "ImageSets" / "Main" / "train.txt").is_file() and not list(tmp_path.glob(".sslbench-synth-*"))
    code, _ = cli("data", "synth", "--format", "cifar10", "--out", str(tmp_path), "--num", "2")  # another layout
    assert code == 0 and (tmp_path / "cifar-10-batches-py" / "test_batch").is_file()


# ---------------------------------------------------------------- 4: loading a checkpoint runs no code


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_payload_in_a_checkpoint_is_refused_without_running(cli, tmp_path: Path) -> None:
    marker = tmp_path / "PWNED"
    torch.save({"format": "sslbench-pretrain-2", "x": _Payload(marker)}, tmp_path / "evil.pt")
    line = _one_error(cli("eval", "--protocol", "linear", "--checkpoint", str(tmp_path / "evil.pt"),
                          "--runs", str(tmp_path / "runs"), "--quiet"))
    assert "refused" in line and "system" in line and "never runs code" in line
    assert not marker.exists(), "the payload ran"


# ---------------------------------------------------------------- 2: Ctrl-C is not success


def _sigint_when(args: list[str], started: Callable[[], bool], env: dict[str, str]) -> tuple[int, str]:
    """SIGINT to `sslbench ARGS` a second after `started()` holds (the run is training), as Ctrl-C does."""
    p = subprocess.Popen([sys.executable, "-m", "sslbench.cli", *args], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    deadline = time.time() + 120
    while not started() and time.time() < deadline and p.poll() is None:
        time.sleep(0.2)
    time.sleep(1.0)
    os.killpg(p.pid, signal.SIGINT)
    _, err = p.communicate(timeout=120)
    return p.returncode, err


@pytest.mark.slow
def test_ctrl_c_exits_130_with_one_line_and_resume_continues(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = tmp_path / "runs"
    args = ["pretrain", "rotation", "--runs", str(runs), "--quiet", "--set", "engine.threads=1",
            "--set", "schedule.epochs=60", "--set", "data.num_images=512", "--set", "engine.checkpoint_every=1000"]
    rc, err = _sigint_when(args, lambda: bool(list(runs.glob("rotation-*/status.json"))), env)
    lines = [line for line in err.splitlines() if line.startswith(("interrupted:", "error:"))]
    assert rc == 130 and len(lines) == 1 and lines[0].startswith("interrupted: pretrain rotation at step"), err
    assert "--resume" in lines[0]
    (run,) = runs.glob("rotation-*")
    status = read_status(run)
    assert status["state"] == "interrupted" and status["step"] > 0  # checkpointed where it stopped, not at 1000
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    assert state["fit"]["step"] == status["step"] and not state["finished"]
    rc, err = _sigint_when(["eval", "--protocol", "linear", "--checkpoint", "random", "--runs", str(runs),
                            "--quiet", "--set", "engine.threads=1"], lambda: bool(list(runs.glob("eval-*"))), env)
    assert rc == 130 and "interrupted: eval linear" in err and "nothing was stored" in err, err
    assert not list(runs.glob("eval-*")), "an interrupted evaluation left its folder"


def test_a_signal_during_a_step_checkpoints_that_step_and_resume_is_bit_identical(tmp_path: Path) -> None:
    """The first SIGINT waits for the end of the step, the run checkpoints there and raises Interrupted."""
    import sslbench.runtime as runtime
    from sslbench.tasks.rotation import Rotation

    recipe = tiny_pretrain("rotation", ["schedule.epochs=2", "engine.checkpoint_every=100"])
    full = pretrain(recipe, tmp_path / "a", "cpu", progress=False)
    real, calls = Rotation.loss, {"n": 0}

    def signalled(self, batch):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] == 4:
            runtime._pending.append(signal.SIGINT)  # what the handler does when a signal arrives mid-step
        return real(self, batch)

    Rotation.loss = signalled
    try:
        with pytest.raises(Interrupted) as caught:
            pretrain(recipe, tmp_path / "b", "cpu", progress=False)
    finally:
        Rotation.loss = real
    assert caught.value.signum == signal.SIGINT and "at step 4 of 6" in caught.value.message
    (run,) = (tmp_path / "b").glob("rotation-*")
    assert read_status(run) == {"state": "interrupted", "step": 4, "total": 6}
    resumed = pretrain(recipe, tmp_path / "b", "cpu", progress=False, resume=True)
    a = torch.load(full.checkpoint, weights_only=True)["model"]
    b = torch.load(resumed.checkpoint, weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    (row,) = default_store(tmp_path / "b").pretrain_runs()
    assert row.threads == torch.get_num_threads() and row.wall_time >= resumed.wall_time - 1e-6
    meta = json.loads((run / "meta.json").read_text())
    assert len(meta["legs"]) == 2 and all(leg["threads"] == torch.get_num_threads() for leg in meta["legs"])


# ---------------------------------------------------------------- 6: --resume keeps the run's recipe


def _interrupted_run(tmp_path: Path, extra: list[str] | None = None) -> Path:
    from sslbench.tasks.rotation import Rotation

    recipe = tiny_pretrain("rotation", ["schedule.epochs=2", "engine.checkpoint_every=2", *(extra or [])])
    with crash_at_call(Rotation, 3), pytest.raises(KeyboardInterrupt):
        pretrain(recipe, tmp_path, "cpu", progress=False)
    (run,) = tmp_path.glob("rotation-*")
    return run


def test_resume_refuses_another_recipe_and_rebuilds_the_runs_own(tmp_path: Path) -> None:
    run = _interrupted_run(tmp_path, ["optim.lr=0.05"])
    with pytest.raises(UserError, match=r"has another recipe than the one asked for \(optim.lr=0.5 \(the run has 0.05"):
        pick_resumable(tmp_path, "rotation", lambda r: resumed_recipe(r, ["optim.lr=0.5"]))
    with pytest.raises(UserError, match="has another recipe"):  # another flavour: refused in one line, no traceback
        pick_resumable(tmp_path, "rotation", lambda r: tiny_pretrain("rotation", flavour="alexnet"))
    path, recipe = pick_resumable(tmp_path, "rotation", lambda r: resumed_recipe(r, ["optim.lr=0.05"]))
    assert path == run and recipe.optim.lr == 0.05  # the run's own recipe, without repeating its --set
    out = pretrain(recipe, tmp_path, "cpu", progress=False, resume=path)
    assert out.steps == 6 and json.loads((run / "recipe.json").read_text())["optim"]["lr"] == 0.05
    (row,) = default_store(tmp_path).pretrain_runs()
    assert row.recipe_key == recipe_key(recipe)


def test_two_resumes_of_one_run_the_second_is_refused(tmp_path: Path) -> None:
    run = _interrupted_run(tmp_path)
    lock = RunLock(run).acquire()  # another process working on it
    try:
        with pytest.raises(UserError, match="is being run by another sslbench process"):
            pick_resumable(tmp_path, "rotation", lambda r: r)
        with pytest.raises(UserError, match=r"in use by another sslbench process \(pid"):
            RunLock(run).acquire()
    finally:
        lock.release()
    assert pick_resumable(tmp_path, "rotation", lambda r: r)[0] == run


def test_a_truncated_checkpoint_or_a_partial_metrics_line_on_resume(tmp_path: Path) -> None:
    run = _interrupted_run(tmp_path)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 17, "time": 1796')  # a process killed while writing
    recipe = tiny_pretrain("rotation", ["schedule.epochs=2", "engine.checkpoint_every=2"])
    good = (run / "checkpoint.pt").read_bytes()
    (run / "checkpoint.pt").write_bytes(good[:1000])
    with pytest.raises(UserError, match="not a readable torch checkpoint"):
        pretrain(recipe, tmp_path, "cpu", progress=False, resume=True)
    assert read_status(run)["state"] == "failed"  # marked, kept, still resumable once the file is back
    (run / "checkpoint.pt").write_bytes(good)
    out = pretrain(recipe, tmp_path, "cpu", progress=False, resume=True)
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert out.steps == 6 and steps == sorted(steps) and steps[-1] == 6


# ---------------------------------------------------------------- 8: a non-finite loss


def test_non_finite_loss_before_any_checkpoint_names_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sslbench.tasks.rotation import Rotation

    real = Rotation.loss
    monkeypatch.setattr(Rotation, "loss", lambda self, b: {**real(self, b), "loss": real(self, b)["loss"] * np.nan})
    with pytest.raises(UserError, match=r"loss became nan at step 1; stopped; the run is marked diverged and no "
                                        r"checkpoint was written before it\. Start a new run with a lower optim.lr"):
        pretrain(tiny_pretrain("rotation"), tmp_path, "cpu", progress=False)
    (run,) = tmp_path.glob("rotation-*")
    assert read_status(run)["state"] == "diverged" and not (run / "checkpoint.pt").exists()
    assert not default_store(tmp_path).pretrain_runs()


def test_blown_up_weights_are_not_a_trunk(tmp_path: Path) -> None:
    from sslbench.checkpoint import insane_weights

    assert insane_weights({"w": torch.ones(3)}) == ""
    assert "non-finite" in insane_weights({"w": torch.tensor([1.0, float("nan")])})
    assert "9.0e+16" in insane_weights({"conv1.weight": torch.tensor([9e16])})
    out = pretrain(tiny_pretrain("rotation"), tmp_path, "cpu", progress=False)
    state = torch.load(out.checkpoint, weights_only=True)
    key = next(iter(state["backbone_state"]))
    state["backbone_state"][key] = state["backbone_state"][key] * 0 + 9e16
    torch.save(state, tmp_path / "blown.pt")
    with pytest.raises(UserError, match="not a usable trunk: .*9.0e\\+16.*diverged"):
        evaluate(tiny_protocol("rotnet-blocks"), str(tmp_path / "blown.pt"), tmp_path / "runs", "cpu", progress=False)


# ---------------------------------------------------------------- 9: unfinished checkpoints


def test_an_unfinished_checkpoint_is_refused_unless_allowed_and_then_labelled(tmp_path: Path) -> None:
    from sslbench import report
    from sslbench.tables import load_table

    run = _interrupted_run(tmp_path / "pre")
    protocol = tiny_protocol("rotnet-blocks", ["engine.threads=1"])
    with pytest.raises(UserError, match=r"unfinished \(stopped at step 2 of 6\).*--allow-unfinished"):
        evaluate(protocol, str(run / "checkpoint.pt"), tmp_path / "runs", "cpu", progress=False)
    assert not (tmp_path / "runs").exists()
    out = evaluate(protocol, str(run / "checkpoint.pt"), tmp_path / "runs", "cpu", progress=False,
                   allow_unfinished=True)
    assert out.provenance.unfinished == "step 2 of 6"
    rows = report.sslbench_rows(load_table("rotations-cifar"), default_store(tmp_path / "runs"))
    assert len(rows) == 1 and "unfinished pretraining (step 2 of 6)" in rows[0].label


# ---------------------------------------------------------------- 1: a table shows the plan's runs


def test_a_quick_debug_eval_does_not_replace_the_tables_row(tmp_path: Path) -> None:
    from sslbench import report
    from sslbench.recipes import load_recipe
    from sslbench.results import Provenance
    from sslbench.tables import load_table

    store = ResultStore(tmp_path / "results.sqlite")
    pre = load_recipe("pretrain", "rotation", "mini").to_json()
    for run, value, sets in (("eval-a", 54.9, []), ("eval-b", 1.56, ["schedule.epochs=1", "optim.lr=1e-6"]),
                             ("eval-c", 55.3, ["engine.threads=1", "seed=3"])):  # the plan's recipe, seed 3
        recipe = load_recipe("protocol", "rotnet-blocks", "mini", sets)
        prov = Provenance(run, "rotation", "", "nin-4blocks-w0.33", "embedded", "embedded", "mini", "checkpoint",
                          recipe.seed, "v", "c.pt", "rotation-1", recipe.to_json(), pretrain_recipe=pre)
        store.add_results("rotnet-blocks", {"rotnet-blocks/block1": value}, prov, 1.0)
    rows = {r.label: r for r in report.sslbench_rows(load_table("rotations-cifar"), store)}
    (plan,) = [r for label, r in rows.items() if "not the plan's recipe" not in label]
    (debug,) = [r for label, r in rows.items() if "not the plan's recipe" in label]
    assert plan.cells[0].startswith("55.10 ± 0.28 (n=2)")  # seeds 0 and 3 of the plan's recipe; not the debug run
    assert debug.cells[0].startswith("1.56") and "optim.lr=1e-06 (not 0.05)" in debug.label
    assert "schedule.epochs=1 (not 12)" in debug.label


# ---------------------------------------------------------------- 10: data checks


def _voc(tmp_path: Path, size: int = 48) -> Path:
    from sslbench.data.layouts.voc import write_voc

    write_voc(tmp_path, 4, size, 0, "2007")
    return tmp_path / "VOCdevkit" / "VOC2007"


def test_data_check_reports_bad_boxes(cli, tmp_path: Path) -> None:
    voc = _voc(tmp_path)
    xml = voc / "Annotations" / "000001.xml"
    text = xml.read_text()
    start = text.index("<xmax>") + len("<xmax>")
    xml.write_text(text[:start] + "500" + text[text.index("</xmax>"):])
    line = _one_error(cli("data", "check", f"voc2007={tmp_path}"))
    assert "bad box" in line and "000001.xml" in line and "outside the 48x48 image" in line
    text = text[:start] + "0" + text[text.index("</xmax>"):]  # xmax < xmin
    xml.write_text(text)
    assert "xmax < xmin" in _one_error(cli("data", "check", f"voc2007={tmp_path}"))


def test_data_check_reports_masks_of_the_wrong_size(cli, tmp_path: Path) -> None:
    voc = _voc(tmp_path)
    Image.new("P", (50, 70)).save(voc / "SegmentationClass" / "000002.png")
    assert "000002.png is 50x70, its image 48x48" in _one_error(cli("data", "check", f"voc2007={tmp_path}"))


def test_cifar_labels_out_of_range_are_an_error_naming_the_batch(cli, tmp_path: Path) -> None:
    import pickle

    from sslbench.data.layouts.cifar10 import _dump_py2, write_cifar10

    folder = write_cifar10(tmp_path, 10, 4, 0)
    with open(folder / "data_batch_3", "rb") as f:
        batch = pickle.load(f, encoding="latin1")
    batch["labels"][0] = 42
    _dump_py2(batch, folder / "data_batch_3")
    line = _one_error(cli("data", "check", f"cifar10={tmp_path}"))
    assert "data_batch_3 holds label 42" in line and "outside 0..9" in line
    line = _one_error(cli("eval", "--protocol", "rotnet-blocks", "--checkpoint", "random", "--data",
                          f"cifar10={tmp_path}", "--runs", str(tmp_path / "runs"), "--quiet"))
    assert "holds label 42" in line and not (tmp_path / "runs").exists()


@pytest.mark.filterwarnings("ignore:skipping unreadable image")
def test_a_data_set_with_no_readable_image_is_an_error_everywhere(cli, tmp_path: Path) -> None:
    voc = _voc(tmp_path)
    for jpg in (voc / "JPEGImages").glob("*.jpg"):
        jpg.write_bytes(b"not a jpeg")
    assert "none of the" in _one_error(cli("data", "check", f"voc2007={tmp_path}"))
    line = _one_error(cli("pretrain", "rotation", "--recipe", "alexnet", "--data", f"voc2007={tmp_path}",
                          "--runs", str(tmp_path / "runs"), "--quiet", "--set", "data.batch_size=4"))
    assert "none of the 8 items read could be decoded" in line
    assert not (tmp_path / "runs").exists() or _left(tmp_path / "runs") == []


def test_eval_counts_the_unreadable_test_images(tmp_path: Path) -> None:
    from sslbench.recipes import load_recipe

    voc = _voc(tmp_path, 64)
    jpg = voc / "JPEGImages" / "000009.jpg"  # the first test image (ids after trainval's 8)
    jpg.write_bytes(jpg.read_bytes()[:200])
    recipe = load_recipe("protocol", "voc07-svm", "mini", ["data.num_images=0", "data.num_test=0",
                                                           "data.batch_size=4", 'taps=["conv1"]'],
                         data={"voc2007": str(tmp_path)})
    with pytest.warns(UserWarning, match="unreadable"):
        out = evaluate(recipe, "random", tmp_path / "runs", "cpu", progress=False)
    assert out.unreadable == "1 of 4 test images unreadable (skipped)"
    result = json.loads((out.run_dir / "result.json").read_text())
    assert result["unreadable"]["test"] == {"skipped": 1, "of": 4}
    assert {r.prov.skipped for r in default_store(tmp_path / "runs").results()} == {1}


# ---------------------------------------------------------------- 11: runs end marked, never anonymous


def test_a_failed_run_is_marked_failed_or_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sslbench.tasks.rotation import Rotation

    real, calls = Rotation.loss, {"n": 0}

    def broken(self, batch):  # noqa: ANN001, ANN202
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("disk on fire")
        return real(self, batch)

    monkeypatch.setattr(Rotation, "loss", broken)
    recipe = tiny_pretrain("rotation", ["schedule.epochs=2", "engine.checkpoint_every=2"])
    with pytest.raises(RuntimeError):
        pretrain(recipe, tmp_path / "a", "cpu", progress=False)
    (run,) = (tmp_path / "a").glob("rotation-*")
    assert read_status(run) == {"state": "failed", "step": 2, "total": 6, "error": "RuntimeError: disk on fire"}
    calls["n"] = 0
    recipe = tiny_pretrain("rotation", ["schedule.epochs=2", "engine.checkpoint_every=4"])
    with pytest.raises(RuntimeError):  # before its first checkpoint: nothing worth keeping
        pretrain(recipe, tmp_path / "b", "cpu", progress=False)
    assert not (tmp_path / "b").exists()


def test_metrics_log_drops_a_partial_line_on_resume(tmp_path: Path) -> None:
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"step": 4, "ti')
    MetricLogger(tmp_path, purge_step=2).close()
    assert (tmp_path / "metrics.jsonl").read_text() == '{"step": 1}\n{"step": 2}\n'


# ---------------------------------------------------------------- the goal figure: SIGKILL, then --resume


@pytest.mark.slow
def test_sigkill_at_a_random_step_then_resume_is_bit_identical(tmp_path: Path) -> None:
    """One trial here (`python -m tests.kill_resume --trials 10` runs ten)."""
    import random

    from tests.kill_resume import STEPS, reference, trial

    expected = reference(tmp_path)
    same, killed, saved = trial(tmp_path, random.Random(11).randint(6, STEPS - 3), expected)
    assert same and 0 < saved <= killed < STEPS, (killed, saved)


@pytest.mark.parametrize(("content", "says"), [(b"", "the file is empty (0 bytes)"),
                                               (b"\x80\x02", "the file ends too early")])
def test_an_empty_or_cut_pickle_is_one_line_naming_what_is_wrong(tmp_path: Path, content: bytes, says: str) -> None:
    from sslbench.runtime import load_weights_only

    (tmp_path / "c.pt").write_bytes(content)
    with pytest.raises(UserError, match="not a readable torch checkpoint") as info:
        load_weights_only(tmp_path / "c.pt")
    assert says in str(info.value)


# ---------------------------------------------------------------- the review of this change: signals and stores


def _signal_at_batch(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """The real handler receives SIGINT while the loader fetches batch n (not during a step)."""
    import sslbench.engine as engine
    import sslbench.runtime as runtime

    monkeypatch.setattr(runtime, "_owner", [os.getpid()])
    real = engine.epoch_loader

    def loader(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        for i, batch in enumerate(real(*args, **kwargs)):
            if args[3] * 2 + i + 1 == n:  # epoch (args[3]) of 2 steps, batch i
                runtime._on_signal(signal.SIGINT, None)
            yield batch

    monkeypatch.setattr(engine, "epoch_loader", loader)


def test_a_signal_while_a_batch_loads_waits_for_the_step_and_checkpoints_it(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = tiny_pretrain("rotation", ["schedule.epochs=3", "data.num_images=32", "engine.checkpoint_every=100"])
    _signal_at_batch(monkeypatch, 4)
    with pytest.raises(Interrupted) as caught:
        pretrain(recipe, tmp_path, "cpu", progress=False)
    assert "at step 4 of 6" in caught.value.message  # not lost with nothing kept
    (run,) = tmp_path.glob("rotation-*")
    assert read_status(run) == {"state": "interrupted", "step": 4, "total": 6}


def test_a_signal_during_the_last_step_lets_the_run_finish_and_be_stored(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import sslbench.runtime as runtime

    recipe = tiny_pretrain("rotation", ["schedule.epochs=3", "data.num_images=32", "engine.checkpoint_every=100"])
    _signal_at_batch(monkeypatch, 6)
    out = pretrain(recipe, tmp_path, "cpu", progress=False)
    assert out.steps == 6 and out.metrics and read_status(out.run_dir)["state"] == "finished"
    assert len(default_store(tmp_path).pretrain_runs()) == 1
    with pytest.raises(Interrupted):  # still pending: what comes next (reproduce's next run) stops before it starts
        pretrain(recipe, tmp_path, "cpu", progress=False)
    assert runtime.pending_interrupt() is None and len(list(tmp_path.glob("rotation-*"))) == 1


def test_a_failed_store_write_leaves_the_run_resumable_and_resume_stores_it(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    recipe = tiny_pretrain("rotation", ["schedule.epochs=1"])

    def locked(self, row):  # noqa: ANN001, ANN202
        raise UserError("results store: database is locked")

    with monkeypatch.context() as m:
        m.setattr(ResultStore, "add_pretrain_run", locked)
        with pytest.raises(UserError, match="locked"):
            pretrain(recipe, tmp_path, "cpu", progress=False)
    (run,) = tmp_path.glob("rotation-*")
    status = read_status(run)
    assert status["state"] == "failed" and status["step"] == status["total"] and "storing" in status["error"]
    out = pretrain(recipe, tmp_path, "cpu", progress=False, resume=True)  # nothing left to train: it is stored
    (row,) = default_store(tmp_path).pretrain_runs()
    assert out.run_dir == run and row.run_id == run.name and row.metrics == out.metrics and out.metrics
    assert read_status(run)["state"] == "finished"


def test_resume_with_the_runs_own_scale_is_not_a_difference(cli, tmp_path: Path) -> None:
    run = _interrupted_run(tmp_path, ["optim.lr=0.05"])
    rc, lines = cli("pretrain", "rotation", "--resume", "--scale", "mini", "--runs", str(tmp_path), "--quiet")
    assert rc == 0, lines
    assert read_status(run)["state"] == "finished"
    rc, lines = cli("pretrain", "rotation", "--resume", "--scale", "paper", "--runs", str(tmp_path), "--quiet")
    assert rc == 1 and "no unfinished rotation run" in lines[-1]


def test_an_eval_whose_store_write_fails_leaves_no_half_written_folder(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    def locked(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise UserError("results store: database is locked")

    monkeypatch.setattr(ResultStore, "add_results", locked)
    with pytest.raises(UserError, match="locked"):
        evaluate(tiny_protocol("linear"), "random", tmp_path / "runs", "cpu", progress=False)
    assert not list((tmp_path / "runs").glob("eval-*"))


def test_the_unreadable_tally_keeps_what_was_asked_across_a_resume() -> None:
    from sslbench.training import Unreadable

    tally = Unreadable()
    tally.add("train", list(range(64)), [i for i in range(64) if i != 5])
    again = Unreadable()
    again.load_state_dict(tally.state_dict())
    assert again.counts(Dist()) == {"train": (1, 64)}
    old = Unreadable()
    old.load_state_dict({"train": [5]})  # the first format: the missed items only
    assert old.counts(Dist()) == {"train": (1, 1)}



@pytest.mark.slow
def test_ctrl_c_with_loader_workers_is_the_same_one_line_and_a_resumable_run(tmp_path: Path) -> None:
    """Ctrl-C reaches the whole process group: the DataLoader workers must leave it to the main process."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = tmp_path / "runs"
    args = ["pretrain", "rotation", "--runs", str(runs), "--quiet", "--set", "engine.threads=1", "--set",
            "data.workers=2", "--set", "schedule.epochs=60", "--set", "data.num_images=512"]
    rc, err = _sigint_when(args, lambda: bool(list(runs.glob("rotation-*/metrics.jsonl"))), env)
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 130 and lines[-1].startswith("interrupted: pretrain rotation at step"), err
    assert "Traceback" not in err and "exited unexpectedly" not in err, err
    (run,) = runs.glob("rotation-*")
    assert read_status(run)["state"] == "interrupted"


def test_a_forked_loader_worker_leaves_the_signal_to_the_main_process(monkeypatch: pytest.MonkeyPatch) -> None:
    import sslbench.runtime as runtime

    monkeypatch.setattr(runtime, "_owner", [os.getpid()])
    monkeypatch.setattr(runtime, "_deferring", [0])  # outside a training loop: the main process would stop at once
    with pytest.raises(Interrupted):
        runtime._on_signal(signal.SIGINT, None)
    pid = os.fork()
    if pid == 0:  # the child: a DataLoader worker forked from the main process
        try:
            runtime._on_signal(signal.SIGINT, None)
            os._exit(0)
        except BaseException:  # noqa: BLE001
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0  # it went on; the main process ends the run
