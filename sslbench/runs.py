"""Run directories: runs/<name>-<timestamp>/ with the resolved recipe, the run's metadata, its status and its lock.

A run's `status.json` says where it stands: running, finished, interrupted (a signal; resumable from its last
checkpoint), failed (an error after its first checkpoint; resumable), or diverged (a non-finite loss: resuming the
same recipe would diverge again, so it is not resumable). A run that ends before writing anything worth keeping
is removed with its folder, so no anonymous empty directories are left. While a process works on a run it holds
the run's lock (`.lock`, an flock the kernel releases when the process dies), so two processes never write one run.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch
import torch.distributed as dist

from sslbench.config import RESUME_FREE, Recipe, describe_diff, recipe_diff, recipe_from_json
from sslbench.errors import UserError
from sslbench.runtime import Dist, atomic_write_text, code_version, write_json

CHECKPOINT = "checkpoint.pt"
STATUS = "status.json"
RESUMABLE = ("running", "interrupted", "failed")  # with a checkpoint; "finished" and "diverged" are not


# ---------------------------------------------------------------- the --runs folder


def check_runs_writable(runs: Path) -> None:
    """--runs must be a directory this process can write, or creatable under one; checked before any work."""
    probe = Path(runs)
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"--runs {runs}: {probe} is not a directory; pass a directory (or a path to create)")
    try:
        fd, name = tempfile.mkstemp(prefix=".sslbench-write-test-", dir=probe)
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise UserError(f"--runs {runs}: cannot write in {probe} ({exc.strerror or exc}); "
                        "pass a directory you can write") from None


def new_run_dir(runs: Path, name: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        path = runs / (f"{name}-{stamp}" + (f"-{i}" if i else ""))
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
        except OSError as exc:
            raise UserError(f"--runs {runs}: cannot create a run directory ({exc.strerror or exc})") from None
    raise UserError(f"--runs {runs}: 1000 run directories named {name}-{stamp} already exist")


# ---------------------------------------------------------------- status and lock


def read_status(run_dir: Path) -> dict[str, Any]:
    """The run's status.json ({} if missing or unreadable: a run killed before its first status)."""
    try:
        status = json.loads((run_dir / STATUS).read_text())
    except (OSError, ValueError):
        return {}
    return status if isinstance(status, dict) else {}


class RunLock:
    """An exclusive flock on `run_dir`/.lock for as long as this process works on the run."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / ".lock"
        self.handle: IO[str] | None = None

    def acquire(self) -> RunLock:
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            pid = handle.read().strip() or "?"
            handle.close()
            raise UserError(f"{self.path.parent} is in use by another sslbench process (pid {pid}); wait for it to "
                            "end (or stop it) before resuming this run") from None
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self.handle = handle
        return self

    def release(self) -> None:
        if self.handle is not None:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()
            self.handle = None

    @staticmethod
    def held(run_dir: Path) -> bool:
        """Whether another process holds `run_dir`'s lock now."""
        path = run_dir / ".lock"
        if not path.exists():
            return False
        with open(path, "a+") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
        return False


@dataclass
class Run:
    """One run directory as a process works on it: rank 0 writes its files; every rank knows its path."""

    path: Path
    ddp: Dist
    lock: RunLock | None = None
    made_runs: bool = False  # this process created the --runs folder (removed again if the run leaves nothing)

    def status(self, state: str, **info: Any) -> None:
        if self.ddp.is_main:
            write_json(self.path / STATUS, {"state": state, **info})

    def discard(self) -> None:
        """Remove the run: it ended before writing anything worth keeping."""
        if not self.ddp.is_main:
            return
        self.release()
        shutil.rmtree(self.path, ignore_errors=True)
        if self.made_runs:
            with contextlib.suppress(OSError):
                self.path.parent.rmdir()  # only if empty

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def open_run(runs: Path, name: str, ddp: Dist, resume: Path | None = None, lock: bool = True) -> Run:
    """The run directory on every rank: rank 0 creates it (or takes `resume`) and its lock, the others receive
    its name."""
    path: list[str | None] = [None]
    held: RunLock | None = None
    made = False
    if ddp.is_main:
        made = not Path(runs).exists()
        target = resume if resume is not None else new_run_dir(runs, name)
        if lock:
            held = RunLock(target).acquire()
        path[0] = str(target)
    if ddp.enabled:
        dist.broadcast_object_list(path, src=0)
    return Run(Path(str(path[0])), ddp, held, made)


# ---------------------------------------------------------------- what a run records


def _leg(argv: list[str] | None) -> dict[str, Any]:
    command = shlex.join(argv if argv is not None else sys.argv)
    return {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "command": command, "version": code_version(),
            "threads": torch.get_num_threads(), "host": os.uname().nodename}


def record_run(run_dir: Path, recipe: Recipe, argv: list[str] | None) -> None:
    atomic_write_text(run_dir / "recipe.json", recipe.to_json() + "\n")
    leg = _leg(argv)
    write_json(run_dir / "meta.json", {
        "version": leg["version"], "seed": recipe.seed, "scale": recipe.scale, "command": leg["command"],
        "torch": torch.__version__, "threads": leg["threads"], "legs": [leg],
    })


def record_resume(run_dir: Path, recipe: Recipe, argv: list[str] | None) -> None:
    """A resumed leg: appended to meta.json's legs; recipe.json rewritten only where a resume may differ
    (RESUME_FREE: the data's root, the loader processes)."""
    try:
        meta = json.loads((run_dir / "meta.json").read_text())
    except (OSError, ValueError):
        meta = {}
    meta.setdefault("legs", []).append(_leg(argv))
    write_json(run_dir / "meta.json", meta)
    atomic_write_text(run_dir / "recipe.json", recipe.to_json() + "\n")


# ---------------------------------------------------------------- which run --resume continues


def run_recipe(run_dir: Path) -> Recipe:
    try:
        return recipe_from_json((run_dir / "recipe.json").read_text())
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"{run_dir}/recipe.json cannot be read ({type(exc).__name__}: {exc}); "
                        "this run cannot be resumed") from None


def resumable_runs(runs: Path, name: str, exact: bool = False) -> list[Path]:
    """Runs of `name` under `runs` (`exact`: the run directory `name` itself) that can continue: a checkpoint, a
    resumable state; newest first."""
    found = [p for p in Path(runs).glob(name if exact else f"{name}-*") if p.is_dir() and (p / CHECKPOINT).is_file()]
    return sorted((p for p in found if read_status(p).get("state", "running") in RESUMABLE), reverse=True)


def pick_resumable(runs: Path, name: str, wanted: Callable[[Recipe], Recipe],
                   exact: bool = False) -> tuple[Path, Recipe]:
    """The newest resumable run of `name` whose recipe is the one this command asks for (`wanted(run's recipe)`:
    the run's recipe with the command's explicit options applied), and the recipe to continue it with. A resumed
    run keeps its recipe: if every candidate differs, the error names how the newest one differs."""
    candidates = resumable_runs(runs, name, exact)
    if not candidates:
        raise UserError(f"--resume: no unfinished {name} run with a checkpoint under {runs}; start one without "
                        "--resume")
    first_diff = unreadable = ""
    for path in candidates:
        try:
            have = run_recipe(path)
        except UserError as exc:  # a damaged recipe.json: not this run, maybe an older one
            unreadable = unreadable or str(exc)
            continue
        want = wanted(have)
        diffs = recipe_diff(have, want, RESUME_FREE)
        if diffs:
            first_diff = first_diff or (f"{path.name} has another recipe than the one asked for "
                                        f"({describe_diff(diffs, other='the run has')})")
            continue
        if RunLock.held(path):
            raise UserError(f"--resume: {path} is being run by another sslbench process; wait for it to end")
        return path, want
    if not first_diff:
        raise UserError(f"--resume: {unreadable}")
    raise UserError(f"--resume: {first_diff}; a run continues with its own recipe: resume it without those "
                    "options, or start a new run without --resume")
