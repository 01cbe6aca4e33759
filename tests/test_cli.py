"""The command line and its bad-input catalogue: one clear line, exit code 1, nothing half-written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sslbench.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def _error_line(p: subprocess.CompletedProcess) -> str:
    assert p.returncode == 1, (p.stdout, p.stderr)
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def in_process(*args: str):  # noqa: ANN201
    """The CLI's app run in this process (no interpreter start-up: help and listings; the entry point's error
    handling is what the subprocess tests check)."""
    from typer.testing import CliRunner

    from sslbench.cli import app

    return CliRunner().invoke(app, list(args))


@pytest.mark.parametrize("command", ["pretrain", "eval", "table", "reproduce", "list", "data synth", "data check",
                                     "show", "doctor", "report", "export torchvision", "export detectron2",
                                     "import"])
def test_every_command_help_has_an_example(command: str) -> None:
    p = in_process(*command.split(), "--help")
    assert p.exit_code == 0 and "Example" in p.output, p.output


def test_unknown_task_lists_valid_names_and_closest(tmp_path: Path) -> None:
    line = _error_line(run("pretrain", "rotatoin", "--runs", str(tmp_path)))
    assert "valid: " in line and "Did you mean 'rotation'" in line
    assert not any(tmp_path.iterdir()), "a failed command left files behind"


def test_unknown_protocol_and_table(tmp_path: Path) -> None:
    assert "Did you mean 'linear'" in _error_line(run("eval", "--protocol", "linaer", "--checkpoint", "random", "--runs", str(tmp_path)))
    assert "Did you mean 'rotations'" in _error_line(run("table", "rotatons"))
    assert "unknown table" in _error_line(run("reproduce", "nope", "--runs", str(tmp_path)))
    assert not any(tmp_path.iterdir())


def test_unknown_recipe_flavour() -> None:
    line = _error_line(run("pretrain", "rotation", "--recipe", "vgg"))
    assert "available recipes: mini, mini-alexnet" in line


def test_bad_set_names_key_and_file() -> None:
    line = _error_line(run("pretrain", "rotation", "--set", "optim.lrate=0.1"))
    assert "'lrate'" in line and "mini.toml" in line


def test_missing_data_directory_names_layout_and_synth_command(tmp_path: Path) -> None:
    line = _error_line(run("pretrain", "rotation", "--data", f"cifar10={tmp_path / 'nowhere'}", "--runs", str(tmp_path / "runs")))
    assert "cifar-10-batches-py" in line and "sslbench data synth --format cifar10" in line
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_checkpoint_of_another_architecture_says_which_keys_differ(tmp_path: Path) -> None:
    torch.save({"features.0.weight": torch.zeros(3)}, tmp_path / "other.pt")
    line = _error_line(run("eval", "--protocol", "linear", "--checkpoint", str(tmp_path / "other.pt"), "--runs", str(tmp_path / "runs")))
    assert "missing:" in line and "unexpected: features.0.weight" in line
    assert not (tmp_path / "runs").exists()


def test_damaged_checkpoint_file(tmp_path: Path) -> None:
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    assert "not a readable torch checkpoint" in _error_line(run("eval", "--protocol", "linear", "--checkpoint", str(tmp_path / "bad.pt")))


def test_list_commands() -> None:
    for what, expected in [("tasks", "rotation"), ("protocols", "rotnet-blocks"), ("tables", "rotations-pascal"),
                           ("recipes", "rotation/mini-alexnet"), ("backbones", "alexnet"), ("datasets", "embedded")]:
        p = in_process("list", what)
        assert p.exit_code == 0 and expected in p.output, (what, p.output)
    assert "Did you mean 'tasks'" in _error_line(run("list", "taks"))


def test_table_formats_from_the_command_line() -> None:
    p = run("table", "rotations-cifar", "--format", "csv")
    assert p.returncode == 0 and p.stdout.startswith("table,source,Model,ConvB1")
    assert "valid: rich, markdown" in _error_line(run("table", "jigsaw", "--format", "pdf"))


def test_unknown_option_is_a_usage_error_not_a_traceback() -> None:
    p = run("pretrain", "rotation", "--flavour", "alexnet")
    assert p.returncode == 2 and "No such option" in p.stderr and "Traceback" not in p.stderr


def test_one_main_data_set_plus_sbd(tmp_path: Path) -> None:
    line = _error_line(run("eval", "--protocol", "voc-seg", "--checkpoint", "random", "--data", "voc2012=a",
                           "--data", "voc2007=b", "--runs", str(tmp_path)))
    assert "one data set per run (plus sbd, which voc-seg adds to it)" in line and "voc2012, voc2007" in line
    line = _error_line(run("eval", "--protocol", "voc-seg", "--checkpoint", "random", "--data", f"sbd={tmp_path / 'no'}",
                           "--runs", str(tmp_path / "runs")))
    assert "sbd:" in line and "not a directory" in line and "sslbench data synth --format sbd" in line
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_bad_seeds_are_one_line_errors(tmp_path: Path) -> None:
    assert "comma-separated integers" in _error_line(run("reproduce", "jigsaw", "--seeds", "0,x", "--runs", str(tmp_path)))
    assert "twice" in _error_line(run("reproduce", "jigsaw", "--seeds", "1,1", "--runs", str(tmp_path)))
    assert "--seed and --seeds" in _error_line(run("reproduce", "jigsaw", "--seeds", "0,1", "--seed", "2",
                                                   "--runs", str(tmp_path)))
    assert not any(tmp_path.iterdir())


def test_doctor_names_what_it_found_and_fails_on_what_the_default_run_lacks(tmp_path: Path,
                                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision

    p = in_process("doctor")
    assert p.exit_code == 0, p.output
    lines = p.output.splitlines()
    assert any(line.startswith("ok") and "torchvision" in line and torchvision.__version__ in line for line in lines)
    assert {line.split()[1] for line in lines} >= {"python", "torch", "device", "jpeg", "selective", "cache",
                                                     "recipes", "tables"}
    monkeypatch.setenv("SSLBENCH_TABLES", str(tmp_path / "nowhere"))
    p = in_process("doctor")
    assert p.exit_code == 1 and any(line.startswith("MISSING tables") for line in p.output.splitlines())


def test_doctor_says_when_mmsegs_opencv_overwrote_selective_search(monkeypatch: pytest.MonkeyPatch) -> None:
    """opencv-python (mmsegmentation's dependency) installed over opencv-contrib-python-headless leaves a cv2
    whose ximgproc has no segmentation module: doctor names the cause and the one-line fix."""
    import types

    from sslbench import doctor

    monkeypatch.setitem(sys.modules, "cv2", types.SimpleNamespace(ximgproc=types.SimpleNamespace(), __version__="5"))
    monkeypatch.setattr(doctor, "_distribution", lambda name: "5.1.0")
    check = doctor._selective_search()
    assert not check.ok and "opencv-python (mmsegmentation's dependency) overwrote" in check.line()
    assert "pip install --force-reinstall --no-deps opencv-contrib-python-headless" in check.line()
    monkeypatch.setattr(doctor, "_distribution", lambda name: "" if name == "opencv-python" else "5.1.0")
    assert "overwrote" not in doctor._selective_search().line()
    engines = {c.name: c for c in doctor._engines()}
    assert set(engines) == {"detectron2", "mmseg"} and not any(c.needed for c in engines.values())


def test_doctor_decodes_a_jpeg_batch_the_way_data_decode_device_would(monkeypatch: pytest.MonkeyPatch) -> None:
    """A decoder that works is an ok line; one that fails is a line naming the error and data.decode = "loader",
    which the default run does not need."""
    import sslbench.data.decode as decode
    from sslbench import doctor

    check = doctor._jpeg_decoder()
    assert check.ok and "decode_jpeg" in check.value

    def broken(batch, device):  # noqa: ANN001, ANN202
        raise RuntimeError("no nvjpeg")

    monkeypatch.setattr(decode, "decode_batch", broken)
    check = doctor._jpeg_decoder()
    assert not check.ok and not check.needed
    assert check.line().startswith("absent  jpeg decode") and "RuntimeError: no nvjpeg" in check.line()
    assert 'data.decode = "loader"' in check.line()
