"""Process-level facts: device choice, torchrun / DDP detection, seeding, code version, the cache and
repository folders, the one atomic write, safe checkpoint reading, and what SIGINT / SIGTERM do."""

from __future__ import annotations

import functools
import json
import os
import pickle
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

import sslbench
from sslbench.errors import Interrupted, UserError


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
    """Every RNG's state in types torch.load(weights_only=True) reads (numpy's key as a tensor)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss))
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]  # checkpoints before weights_only loading kept the key as an ndarray
    keys = keys.numpy() if isinstance(keys, torch.Tensor) else keys
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def step_generator(seed: int, step: int, rank: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on `device` that depends only on (seed, step, rank): batch randomness needs no saved state to
    resume."""
    return torch.Generator(device).manual_seed((seed * 1_000_003 + step) * 1009 + rank)


def batch_device(batch_on: str, device: torch.device) -> torch.device:
    """Where a batch is built: the training `device` with engine.batch_on = "device" (the loader's uint8 moved there
    first), else the CPU the loader hands it on."""
    return device if batch_on == "device" else torch.device("cpu")


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A loader's CPU tensor on `device`: through pinned memory and without blocking when that is a GPU."""
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def item_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of item `index`'s random draw in epoch `epoch` (a train-time crop): one per item and epoch, the same
    whichever rank, worker or batch reads it."""
    return (epoch_seed(seed, epoch) * 1_000_003 + index) % (2**63)


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


USER_FOLDERS = {"recipes": "SSLBENCH_RECIPES", "tables": "SSLBENCH_TABLES"}  # extra folders, os.pathsep-separated


def bundled(folder: str) -> Path:
    """sslbench's own `folder` ("recipes" or "tables"): the copy inside the installed package (a wheel:
    sslbench/_data/<folder>), else the checkout's (an editable install)."""
    from importlib import resources

    packaged = Path(str(resources.files("sslbench") / "_data" / folder))
    return packaged if packaged.is_dir() else repo_root() / folder


def user_folders(folder: str) -> list[Path]:
    """The user's folders of recipes / tables ($SSLBENCH_RECIPES, $SSLBENCH_TABLES: os.pathsep-separated), searched
    before sslbench's own (`bundled`). A user folder that is not a directory is an error naming the variable."""
    variable = USER_FOLDERS[folder]
    extra = [Path(p).expanduser() for p in os.environ.get(variable, "").split(os.pathsep) if p]
    for path in extra:
        if not path.is_dir():
            raise UserError(f"${variable} names {path}, which is not a directory; point it at a folder of "
                            f"{folder} laid out as sslbench's own ({bundled(folder)})")
    return extra


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


def atomic_pickle(obj: Any, path: Path) -> None:
    """Pickle `obj` to `path` whole or not at all (detectron2's .pkl weights)."""
    import pickle

    with atomic(path) as tmp, open(tmp, "wb") as f:
        pickle.dump(obj, f, protocol=4)


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


# ---------------------------------------------------------------- reading checkpoints without running code

# Checkpoints written before sslbench stored numpy's RNG key as a tensor hold it as an ndarray: these four
# globals rebuild a plain array (torch's documented allowance for numpy); nothing else beyond tensors and
# plain values is accepted.
_NUMPY_ARRAY_GLOBALS = [(np._core if hasattr(np, "_core") else np.core).multiarray._reconstruct, np.ndarray, np.dtype,
                        type(np.dtype(np.uint32))]


def load_weights_only(path: Path) -> Any:
    """torch.load(path, weights_only=True): tensors, numbers, strings, lists, tuples and dicts only, so a crafted
    file cannot run code. A damaged file, or one that needs other types, is a one-line UserError."""
    if path.stat().st_size == 0:
        raise UserError(f"{path}: not a readable torch checkpoint: the file is empty (0 bytes)")
    try:
        with torch.serialization.safe_globals(_NUMPY_ARRAY_GLOBALS), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's "pickle protocol 4" note about a foreign file: the error says it
            return torch.load(path, map_location="cpu", weights_only=True)
    except EOFError:
        raise UserError(f"{path}: not a readable torch checkpoint: the file ends too early (a truncated "
                        "copy?)") from None
    except pickle.UnpicklingError as exc:
        text = str(exc)
        needs = re.search(r"GLOBAL:? ([\w.]+)|but got <class '([\w.]+)'>", text)
        if needs is None:  # a damaged or foreign file, not a refused type
            detail = re.search(r"WeightsUnpickler error:\s*(.*?)\s*Check the documentation", text, re.S)
            reason = " ".join((detail.group(1) if detail else text).split())
            raise UserError(f"{path}: not a readable torch checkpoint (UnpicklingError: {reason})") from None
        raise UserError(f"{path}: refused: loading it would need {needs.group(1) or needs.group(2)}, more than "
                        "tensors and plain values, and sslbench never runs code from a checkpoint; re-save its "
                        "weights as a plain state dict of tensors (torch.save(model.state_dict(), ...)) from a "
                        "source you trust") from None
    except Exception as exc:  # torch raises many types for a damaged file; their first sentence says what
        first = " ".join(str(exc).split(". ")[0].split())
        raise UserError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {first}); a truncated "
                        "or damaged copy?") from None


# ---------------------------------------------------------------- SIGINT / SIGTERM

_pending: list[int] = []  # a signal that arrived while interrupts were deferred
_deferring = [0]


_owner = [0]  # the process that installed the handlers


def _on_signal(signum: int, frame: Any) -> None:
    if os.getpid() != _owner[0]:  # a forked DataLoader worker: the main process stops the run, cleanly
        return
    if _deferring[0] and not _pending:
        _pending.append(signum)
        sys.stderr.write(f"\n{signal.Signals(signum).name}: stopping after this step (again to stop at once)\n")
        return
    raise Interrupted(signum)


def install_signal_handlers() -> None:
    """SIGINT and SIGTERM raise Interrupted (the CLI turns it into one line and exit 128 + signal); inside
    `deferred_interrupts` the first one waits for the end of the current training step."""
    _owner[0] = os.getpid()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _on_signal)


@contextmanager
def deferred_interrupts() -> Iterator[None]:
    _deferring[0] += 1
    try:
        yield
    finally:
        _deferring[0] -= 1


def stop_if_interrupted() -> None:
    """Before a new run: a signal still pending from the last one (it came during its final step) stops here."""
    signum = pending_interrupt()
    if signum is not None:
        raise Interrupted(signum)


def pending_interrupt() -> int | None:
    """The signal that arrived during a deferred step (None if none); taking it clears it."""
    return _pending.pop() if _pending else None
