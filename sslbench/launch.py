"""Where `reproduce` runs its pretrainings and evaluations: in this process (`--launcher local`, the default), or as
jobs through submitit: on a SLURM cluster (`--launcher slurm`, each pretraining a job and its evaluations jobs that
start after it, `afterok`), or as local subprocess jobs (`--launcher submitit-local`, submitit's LocalExecutor: the
same jobs and job folder without a cluster; what the tests run).

A job is a picklable call (JobCall): on several GPUs (--gpus-per-node N: N tasks of one node) it first exports
torch.distributed's environment from SLURM's (submitit.helpers.TorchDistributedEnvironment), so the call runs as
under torchrun. Its stdout, stderr and pickled result stay in `<runs>/jobs/` (submitit's folder layout, one
`<job id>_0_log.err` per job), which a failure names.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sslbench.errors import UserError

LAUNCHERS = ("local", "slurm", "submitit-local")
INSTALL = "the slurm and submitit-local launchers need submitit: pip install submitit"


class Job(Protocol):
    job_id: str

    def result(self) -> Any: ...


@dataclass
class Finished:
    """A call that already ran (the local launcher's job)."""

    value: Any
    job_id: str = "local"

    def result(self) -> Any:
        return self.value

    def results(self) -> list[Any]:
        return [self.value]


@dataclass(frozen=True)
class Cluster:
    """--launcher and its job settings."""

    launcher: str = "local"
    partition: str = ""  # SLURM partition ('' = the cluster's default)
    gpus_per_node: int = 1  # GPUs (and tasks: one process per GPU) of each job's one node
    timeout_h: float = 24.0  # each job's wall-clock limit in hours
    cpus_per_task: int = 8

    def __post_init__(self) -> None:
        if self.launcher not in LAUNCHERS:
            raise UserError(f"--launcher expects one of {', '.join(LAUNCHERS)}, found {self.launcher!r}")
        if self.gpus_per_node < 0 or self.timeout_h <= 0 or self.cpus_per_task < 1:
            raise UserError(f"--gpus-per-node must be >= 0 and --timeout > 0 hours, found {self.gpus_per_node} and "
                            f"{self.timeout_h}")
        if self.launcher == "local" and (self.partition or self.gpus_per_node != 1 or self.timeout_h != 24.0):
            raise UserError("--partition / --gpus-per-node / --timeout set jobs of --launcher slurm; the local "
                            "launcher runs in this process (use torchrun for several GPUs)")


class JobCall:
    """`fn(*args)` in a submitit job; with several tasks, torch.distributed's environment first."""

    def __init__(self, fn: Callable[..., Any], args: Sequence[Any]) -> None:
        self.fn, self.args = fn, tuple(args)

    def __call__(self) -> Any:
        import submitit

        from sslbench.plugins import load_all

        load_all()  # a fresh interpreter: the tasks and protocols registered, as the CLI does
        env = submitit.JobEnvironment()
        if env.num_tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
        return self.fn(*self.args)


class LocalLauncher:
    """Each call runs at once in this process (the default; exceptions, Ctrl-C included, propagate)."""

    immediate = True

    def submit(self, name: str, fn: Callable[..., Any], args: Sequence[Any], after: Sequence[Job] = ()) -> Job:
        return Finished(fn(*args))


class SubmititLauncher:
    """Each call a submitit job; `after` jobs must succeed first (SLURM: an afterok dependency; submitit's local
    executor has none, so their results are waited for before the submission)."""

    immediate = False

    def __init__(self, cluster: Cluster, folder: Path) -> None:
        try:
            import submitit
        except ImportError:
            raise UserError(INSTALL) from None
        self.cluster = cluster
        self.folder = Path(folder)
        kind = "slurm" if cluster.launcher == "slurm" else "local"
        try:
            self.executor = submitit.AutoExecutor(folder=str(self.folder), cluster=kind)
        except RuntimeError as exc:  # no srun: not a SLURM machine
            raise UserError(f"--launcher slurm: {exc}; run reproduce on the cluster's login node, or use --launcher "
                            "local (this process) or submitit-local") from None
        tasks = max(1, cluster.gpus_per_node)
        params: dict[str, Any] = {"timeout_min": int(round(cluster.timeout_h * 60)), "nodes": 1,
                                  "tasks_per_node": tasks, "cpus_per_task": cluster.cpus_per_task}
        if kind == "slurm":
            params["gpus_per_node"] = cluster.gpus_per_node
            if cluster.partition:
                params["slurm_partition"] = cluster.partition
        self.executor.update_parameters(**params)

    def submit(self, name: str, fn: Callable[..., Any], args: Sequence[Any], after: Sequence[Job] = ()) -> Job:
        extra: dict[str, Any] = {}
        if self.cluster.launcher == "slurm":
            extra = {"slurm_additional_parameters": {"dependency": "afterok:" + ":".join(j.job_id for j in after)}
                     } if after else {"slurm_additional_parameters": {}}
        else:
            for job in after:  # a failed one is collect's one line, before anything depending on it starts
                collect(job, f"the job {job.job_id} this one waits for", self.folder)
        self.executor.update_parameters(name=f"sslbench-{name}"[:100], **extra)
        return self.executor.submit(JobCall(fn, args))


def launcher(cluster: Cluster, runs: Path) -> LocalLauncher | SubmititLauncher:
    if cluster.launcher == "local":
        return LocalLauncher()
    return SubmititLauncher(cluster, Path(runs) / "jobs")


def collect(job: Job, what: str, folder: Path | None) -> Any:
    """A job's result (task 0's, for a job of several tasks: every rank ran the same call), or one line naming the
    failed job, the last line of its stderr, and its log."""
    try:
        return job.results()[0] if hasattr(job, "results") else job.result()
    except UserError:
        raise
    except Exception as exc:  # submitit's FailedJobError / UncompletedJobError: the job's own traceback is its log
        if folder is None:
            raise
        err = getattr(job, "stderr", lambda: None)() or str(exc)
        last = next((line.strip() for line in reversed(err.splitlines()) if line.strip()), type(exc).__name__)
        raise UserError(f"{what}: job {job.job_id} failed ({last}); its log: {folder / f'{job.job_id}_0_log.err'}"
                        ) from None


def cancel(jobs: list[Job]) -> None:
    """Cancel jobs still queued or running (a failed sweep's rest: SLURM would keep its afterok jobs pending)."""
    for job in jobs:
        stop = getattr(job, "cancel", None)
        if stop is not None:
            try:
                stop(check=False)
            except Exception:  # noqa: BLE001 - a job that already ended cannot be cancelled; nothing to do
                pass
