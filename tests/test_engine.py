"""The training loop: exact resume, DDP on gloo equals one process, non-finite loss, run records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sslbench.config import ScheduleConfig
from sslbench.engine import pretrain
from sslbench.errors import UserError
from sslbench.runtime import Dist
from sslbench.training import EpochBatches, lr_at
from tests.conftest import crash_at_call, tiny_alexnet, tiny_pretrain


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["model"]


def _resume_recipe():
    # AlexNet with dropout + random crops/flips: resume must restore data order, batch RNG and dropout RNG.
    return tiny_pretrain("rotation", tiny_alexnet(["schedule.epochs=2", "engine.checkpoint_every=2",
                                                   "backbone.dropout=0.5", "task.crop_pad=2"]), flavour="alexnet")


def test_interrupted_then_resumed_run_is_bit_identical(tmp_path: Path) -> None:
    from sslbench.tasks.rotation import Rotation

    recipe = _resume_recipe()
    full = pretrain(recipe, tmp_path / "a", "cpu", progress=False)
    assert full.steps == 6
    with crash_at_call(Rotation, 5), pytest.raises(KeyboardInterrupt):  # a kill after the checkpoint of step 4
        pretrain(recipe, tmp_path / "b", "cpu", progress=False)
    (crashed,) = (tmp_path / "b").glob("rotation-*")
    assert json.loads((crashed / "status.json").read_text())["step"] == 4
    resumed = pretrain(recipe, tmp_path / "b", "cpu", progress=False, resume=True)
    assert resumed.run_dir == crashed and resumed.steps == 6
    a, b = _weights(full.checkpoint), _weights(resumed.checkpoint)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_without_an_unfinished_run_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no unfinished rotation run"):
        pretrain(_resume_recipe(), tmp_path, "cpu", progress=False, resume=True)


def test_run_directory_records_recipe_metrics_and_tensorboard(tmp_path: Path) -> None:
    out = pretrain(tiny_pretrain("rotation"), tmp_path, "cpu", progress=False, argv=["sslbench", "pretrain", "rotation"])
    d = out.run_dir
    recipe = json.loads((d / "recipe.json").read_text())
    meta = json.loads((d / "meta.json").read_text())
    assert recipe["task"]["name"] == "rotation" and recipe["data"]["num_images"] == 48
    assert meta["command"] == "sslbench pretrain rotation" and meta["version"].startswith("0.1.0+g")
    lines = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [1, 2, 3] and all("loss" in r and "lr" in r for r in lines)
    assert list((d / "tb").glob("events.out.tfevents.*"))
    assert not list(d.glob(".*tmp*")), "temp files left behind"
    from sslbench.results import default_store

    (row,) = default_store(tmp_path).pretrain_runs()
    assert row.run_id == d.name and row.method == "rotation"


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sslbench.tasks.rotation import Rotation

    calls = {"n": 0}
    real = Rotation.loss

    def poisoned(self, batch):  # the 5th step's loss is NaN
        out = real(self, batch)
        calls["n"] += 1
        return {**out, "loss": out["loss"] * float("nan")} if calls["n"] == 5 else out

    monkeypatch.setattr(Rotation, "loss", poisoned)
    recipe = tiny_pretrain("rotation", ["schedule.epochs=3", "engine.checkpoint_every=2"])
    with pytest.raises(UserError, match=r"loss became nan at step 5; stopped; the run is marked diverged and its "
                                        r"checkpoint \(step 4\) is in .*rotation-.*--allow-unfinished.*lower optim.lr"):
        pretrain(recipe, tmp_path, "cpu", progress=False)
    (run,) = tmp_path.glob("rotation-*")
    state = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=True)
    assert state["fit"]["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert json.loads((run / "status.json").read_text())["state"] == "diverged"
    with pytest.raises(UserError, match="no unfinished rotation run"):  # a diverged run is not resumed
        pretrain(recipe, tmp_path, "cpu", progress=False, resume=True)


def test_epoch_batches_ranks_partition_the_global_batch() -> None:
    one = list(EpochBatches(20, 8, seed=3, epoch=1, ddp=Dist()))
    r0 = list(EpochBatches(20, 8, seed=3, epoch=1, ddp=Dist(0, 2)))
    r1 = list(EpochBatches(20, 8, seed=3, epoch=1, ddp=Dist(1, 2)))
    assert [a + b for a, b in zip(r0, r1)] == one and len(one) == 2
    assert list(EpochBatches(20, 8, 3, 1, Dist(), start=1)) == one[1:]


def test_lr_schedule_is_a_pure_function_of_the_step() -> None:
    cfg = ScheduleConfig(epochs=10, kind="multistep", milestones=(3, 6), gamma=0.1)
    assert lr_at(0, 10, 1.0, cfg) == 1.0
    assert lr_at(30, 10, 1.0, cfg) == pytest.approx(0.1)
    assert lr_at(65, 10, 1.0, cfg) == pytest.approx(0.01)
    cos = ScheduleConfig(epochs=4, kind="cosine")
    assert lr_at(0, 5, 1.0, cos) == 1.0 and lr_at(10, 5, 1.0, cos) == pytest.approx(0.5)


DDP_SCRIPT = """
import sys, torch
from pathlib import Path
from sslbench.engine import pretrain
from tests.conftest import crash_at_call, tiny_alexnet, tiny_pretrain
torch.set_num_threads(1)
# No BatchNorm (per-rank statistics would differ), no dropout, no augmentation: the only difference
# between 1 and 2 processes is how the global batch is split.
recipe = tiny_pretrain("rotation", tiny_alexnet(["backbone.bn=false", "backbone.dropout=0.0", "task.crop_pad=0",
                                                 "task.flip=false", "schedule.epochs=2"]), flavour="alexnet")
pretrain(recipe, Path(sys.argv[1]), "cpu", progress=False)
"""


@pytest.mark.slow
def test_ddp_two_gloo_processes_match_one_process(tmp_path: Path) -> None:
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(script), str(tmp_path / "one")], check=True, env=env, timeout=300)
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29517",
                    str(script), str(tmp_path / "two")], check=True, env=env, timeout=300)
    (one,) = (tmp_path / "one").glob("rotation-*/checkpoint.pt")
    (two,) = (tmp_path / "two").glob("rotation-*/checkpoint.pt")
    a, b = _weights(one), _weights(two)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


def test_a_checkpoint_of_the_previous_format_resumes(tmp_path: Path) -> None:
    """Format 1 kept step, optimizer and scaler at the top level and one RNG state: --resume still reads it."""
    from sslbench.tasks.rotation import Rotation

    recipe = tiny_pretrain("rotation", ["schedule.epochs=2", "engine.checkpoint_every=2"])
    with crash_at_call(Rotation, 3), pytest.raises(KeyboardInterrupt):
        pretrain(recipe, tmp_path, "cpu", progress=False)
    (run,) = tmp_path.glob("rotation-*")
    state = torch.load(run / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert isinstance(state["rng"], list) and len(state["rng"]) == 1  # one RNG state per rank
    old = {k: v for k, v in state.items() if k not in ("fit", "rng", "setup", "transfer_input")}
    old.update(state["fit"], rng=state["rng"][0], format="sslbench-pretrain-1")
    torch.save(old, run / "checkpoint.pt")
    out = pretrain(recipe, tmp_path, "cpu", progress=False, resume=True)
    assert out.run_dir == run and out.steps == 6


def test_building_the_batch_on_the_training_device_is_in_the_identity_and_the_same_bits_on_the_cpu(
        tmp_path: Path) -> None:
    """engine.batch_on = device: on the CPU the images already are where the step runs, so the same weights as the
    default; the option enters the recipe key (on a GPU its draws are another generator's), the default does not."""
    from sslbench.config import recipe_key

    extra = ["schedule.epochs=1", "task.crop_pad=2"]
    plain = pretrain(tiny_pretrain("rotation", tiny_alexnet(extra), flavour="alexnet"), tmp_path / "a", "cpu",
                     progress=False)
    moved = tiny_pretrain("rotation", tiny_alexnet([*extra, "engine.batch_on=device"]), flavour="alexnet")
    there = pretrain(moved, tmp_path / "b", "cpu", progress=False)
    a, b = _weights(plain.checkpoint), _weights(there.checkpoint)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    default = tiny_pretrain("rotation", tiny_alexnet([*extra, "engine.batch_on=loader"]), flavour="alexnet")
    assert recipe_key(default) == recipe_key(tiny_pretrain("rotation", tiny_alexnet(extra), flavour="alexnet"))
    assert recipe_key(moved) != recipe_key(default)


def test_prefetching_the_next_batch_changes_no_bit(tmp_path: Path) -> None:
    """engine.prefetch builds batch s + 1 in a thread while step s trains: the same weights as without it, and an
    interrupted prefetching run resumes to the same bits too."""
    from sslbench.tasks.rotation import Rotation

    plain = pretrain(_resume_recipe(), tmp_path / "a", "cpu", progress=False)
    recipe = tiny_pretrain("rotation", tiny_alexnet(["schedule.epochs=2", "engine.checkpoint_every=2",
                                                     "backbone.dropout=0.5", "task.crop_pad=2",
                                                     "engine.prefetch=true"]), flavour="alexnet")
    import threading

    threads, real = set(), Rotation.make_batch

    def recording(self, *args):  # noqa: ANN001, ANN202
        threads.add(threading.current_thread().name)
        return real(self, *args)

    Rotation.make_batch = recording
    try:
        ahead = pretrain(recipe, tmp_path / "b", "cpu", progress=False)
    finally:
        Rotation.make_batch = real
    assert threads and all(name.startswith("sslbench-prefetch") for name in threads)  # built in the thread
    with crash_at_call(Rotation, 5), pytest.raises(KeyboardInterrupt):
        pretrain(recipe, tmp_path / "c", "cpu", progress=False)
    resumed = pretrain(recipe, tmp_path / "c", "cpu", progress=False, resume=True)
    a = _weights(plain.checkpoint)
    for other in (ahead, resumed):
        b = _weights(other.checkpoint)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
