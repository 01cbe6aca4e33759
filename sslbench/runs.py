"""Run directories: runs/<name>-<timestamp>/ with the resolved recipe, the run's metadata, and its status."""

from __future__ import annotations

import json
import shlex
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

from sslbench.config import Recipe
from sslbench.errors import UserError
from sslbench.runtime import Dist, atomic_write_text, code_version, write_json

CHECKPOINT = "checkpoint.pt"


def new_run_dir(runs: Path, name: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for i in range(1000):
        path = runs / (f"{name}-{stamp}" + (f"-{i}" if i else ""))
        try:
            path.mkdir(parents=True)
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a run directory under {runs}")


def latest_unfinished(runs: Path, name: str) -> Path:
    candidates = sorted(p for p in runs.glob(f"{name}-*") if (p / CHECKPOINT).exists())
    for path in reversed(candidates):
        status = json.loads((path / "status.json").read_text()).get("state") if (path / "status.json").exists() else ""
        if status != "finished":
            return path
    raise UserError(
        f"--resume: no unfinished {name} run with a checkpoint under {runs}; start one without --resume"
    )


def shared_run_dir(runs: Path, name: str, ddp: Dist, resume: bool = False) -> Path:
    """The run directory of this run on every rank: rank 0 picks (or creates) it, the other ranks receive its name."""
    path: list[str | None] = [None]
    if ddp.is_main:
        path[0] = str(latest_unfinished(runs, name) if resume else new_run_dir(runs, name))
    if ddp.enabled:
        dist.broadcast_object_list(path, src=0)
    return Path(str(path[0]))


def record_run(run_dir: Path, recipe: Recipe, argv: list[str] | None) -> None:
    atomic_write_text(run_dir / "recipe.json", recipe.to_json() + "\n")
    write_json(run_dir / "meta.json", {
        "version": code_version(), "seed": recipe.seed, "scale": recipe.scale,
        "command": shlex.join(argv if argv is not None else sys.argv), "torch": torch.__version__,
    })
