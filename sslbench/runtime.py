"""Process-level facts: device choice, torchrun / DDP detection, seeding, code version, the cache and
repository folders, and the one atomic write."""

from __future__ import annotations

import functools
import json
import os
import random
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

import sslbench
from sslbench.errors import UserError


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owned: bool = False  # this process created the process group, so it tears it down (close_distributed)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_distributed(device_type: str) -> Dist:
    """Join the torchrun process group if this process was started by torchrun (WORLD_SIZE > 1)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), owned)


def close_distributed(ddp: Dist) -> None:
    """Destroy the process group init_distributed created. Left to interpreter exit, gloo's threads can be
    torn down mid-use and abort the process ("terminate called without an active exception")."""
    if ddp.owned and dist.is_initialized():
        dist.destroy_process_group()


def resolve_device(name: str, ddp: Dist | None = None) -> torch.device:
    if name not in ("auto", "cpu", "cuda"):
        raise UserError(f"--device expects auto, cpu or cuda, found {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but torch sees no CUDA device; use --device cpu")
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    return torch.device("cuda", ddp.local_rank if ddp else 0)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def step_generator(seed: int, step: int, rank: int) -> torch.Generator:
    """A generator that depends only on (seed, step, rank): batch randomness needs no saved state to resume."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 1009 + rank)


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch `epoch`'s data order (and of its loader workers): a pure function of (seed, epoch)."""
    return seed * 7919 + epoch


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """'0.1.0+g<commit>' (or '+unknown' outside a git checkout), recorded with every result."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=Path(sslbench.__file__).parent,
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = "unknown"
    return f"{sslbench.__version__}+g{commit}"


def repo_root() -> Path:
    """The checkout holding sslbench/, recipes/ and tables/ (an editable install)."""
    return Path(__file__).resolve().parent.parent


def cache_dir() -> Path:
    """Where rendered embedded data, written layouts and region proposals are cached (SSLBENCH_CACHE moves it)."""
    return Path(os.environ.get("SSLBENCH_CACHE", Path.home() / ".cache" / "sslbench"))


@contextmanager
def atomic(target: Path) -> Iterator[Path]:
    """The one atomic write: yields a temporary path next to `target` for the caller to write (a file, or a
    folder it creates); on success it replaces `target`, on any failure it is removed. Readers see the old
    `target` or the whole new one, never half of it. The temporary name keeps `target`'s suffix (np.savez
    and matplotlib choose their format by it)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.stem}.{os.getpid()}-{secrets.token_hex(4)}.tmp{target.suffix}")
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if tmp.is_dir() and target.exists():  # a folder cannot be renamed over another: move the old one aside
        old = target.with_name(f".{target.name}.{os.getpid()}-{secrets.token_hex(4)}.old")
        os.replace(target, old)
        os.replace(tmp, target)
        _remove(old)
    else:
        os.replace(tmp, target)


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (created if missing) between processes: DDP ranks or parallel runs that would
    write the same cache entry take turns, the later ones finding it written."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def atomic_write_text(path: Path, text: str) -> None:
    with atomic(path) as tmp:
        tmp.write_text(text)


def atomic_torch_save(obj: Any, path: Path) -> None:
    with atomic(path) as tmp:
        torch.save(obj, tmp)


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
