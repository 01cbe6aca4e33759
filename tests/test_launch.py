"""reproduce --launcher slurm / submitit-local: every missing run a submitit job (pretraining first, its evaluations
after it), results collected into the store; tested with submitit's local executor (subprocess jobs, the same job
functions and folders as on a cluster), since no SLURM is here."""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from sslbench.errors import UserError
from sslbench.launch import Cluster, SubmititLauncher, collect
from sslbench.results import default_store
from tests.conftest import TINY_PRETRAIN, TINY_PROTOCOL

pytest.importorskip("submitit")


def fake_table(monkeypatch: pytest.MonkeyPatch, runs: list[dict]) -> None:
    import sslbench.reproduce as rp
    from sslbench.config import build
    from sslbench.tables import Reproduce

    plan = build(Reproduce, {"runs": runs}, "tables/fake.toml [reproduce]")
    monkeypatch.setattr(rp, "resolve", lambda name: [name])
    monkeypatch.setattr(rp, "load_table", lambda name: types.SimpleNamespace(reproduce=plan))


def test_a_sweep_as_submitit_jobs_pretrains_first_and_collects_every_result(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from sslbench.reproduce import Options, reproduce

    probe = {"protocol": "rotnet-blocks", "set": TINY_PROTOCOL}
    fake_table(monkeypatch, [{"task": "rotation", "set": TINY_PRETRAIN, "protocols": [probe]},
                             {"task": "random", "protocols": [probe]}])
    lines: list[str] = []
    opts = Options(runs=tmp_path / "runs", device="cpu", progress=False, echo=lines.append,
                   cluster=Cluster("submitit-local", timeout_h=0.25))
    _, summary = reproduce("fake", opts)
    assert len(summary.ran) == 3 and summary.ran[0].startswith("pretrain rotation (rotation-")
    assert any(line.startswith("rotnet-blocks") and "on rotation" in line for line in summary.ran)
    store = default_store(tmp_path / "runs")
    pretrained = [r.checkpoint for r in store.pretrain_runs()]
    assert len(pretrained) == 1
    checkpoints = {row.prov.checkpoint for row in store.results("rotnet-blocks/")}
    assert checkpoints == {"random", f"file:{pretrained[0]}"} or checkpoints == {"random", pretrained[0]}
    assert len(list((tmp_path / "runs" / "jobs").glob("*_0_log.err"))) == 3  # one log per job
    # the second time nothing is missing: no job at all
    lines.clear()
    _, again = reproduce("fake", opts)
    assert not again.ran and len(again.reused) == 3 and len(list((tmp_path / "runs" / "jobs").glob("*.err"))) == 3


def test_a_failed_job_is_one_line_naming_its_log(tmp_path: Path) -> None:
    jobs = SubmititLauncher(Cluster("submitit-local", timeout_h=0.1), tmp_path / "jobs")
    job = jobs.submit("bad", int, ("not a number",))
    with pytest.raises(UserError, match=r"a bad run: job \d+ failed \(ValueError: invalid literal.*\); its log: .*jobs/\d+_0_log.err"):
        collect(job, "a bad run", jobs.folder)


def test_job_settings_belong_to_a_cluster_launcher(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sslbench.launch import Finished

    with pytest.raises(UserError, match="--launcher expects one of local, slurm, submitit-local"):
        Cluster("pbs")
    with pytest.raises(UserError, match="set jobs of --launcher slurm"):
        Cluster("local", partition="gpu")
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun on the path: not a SLURM machine, one line
    with pytest.raises(UserError, match='--launcher slurm: Could not detect "srun"'):
        SubmititLauncher(Cluster("slurm"), tmp_path / "jobs")
    srun = tmp_path / "srun"  # a SLURM machine, as far as submitit can tell: the batch script it would submit
    srun.write_text("#!/bin/sh\nexit 0\n")
    srun.chmod(0o755)
    slurm = SubmititLauncher(Cluster("slurm", "gpu", 8, 72.0), tmp_path / "jobs")
    monkeypatch.setattr(slurm.executor, "submit", lambda call: Finished(None, "124"))
    assert slurm.submit("eval-linear", int, ("1",), after=[Finished(None, "123")]).job_id == "124"
    script = slurm.executor._executor._make_submission_file_text("python -m job", "uid")  # submitit's own text
    for line in ("--partition=gpu", "--gpus-per-node=8", "--ntasks-per-node=8", "--nodes=1", "--time=4320",
                 "--dependency=afterok:123", "--job-name=sslbench-eval-linear"):
        assert f"#SBATCH {line}" in script, script
    slurm.submit("pretrain-rotation", int, ("1",))  # no dependency: the last one is not carried over
    assert "--dependency" not in slurm.executor._executor._make_submission_file_text("python -m job", "uid")


def test_a_job_of_several_tasks_gives_task_0s_result_with_torchruns_environment(tmp_path: Path) -> None:
    """--gpus-per-node 2: two tasks, each with torch.distributed's environment exported (RANK, WORLD_SIZE, ...)."""
    import os

    jobs = SubmititLauncher(Cluster("submitit-local", gpus_per_node=2, timeout_h=0.1), tmp_path / "jobs")
    job = jobs.submit("env", os.getenv, ("WORLD_SIZE",))  # by reference: the job's own environment
    assert collect(job, "a two-task job", jobs.folder) == "2"
    assert sorted(job.results()) == ["2", "2"]
