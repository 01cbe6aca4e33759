"""Per-run metrics: metrics.jsonl (one JSON object per logged step) and TensorBoard scalars."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


class MetricLogger:
    def __init__(self, run_dir: Path, enabled: bool = True, purge_step: int | None = None) -> None:
        self.enabled = enabled
        if not enabled:
            return
        self.path = run_dir / "metrics.jsonl"
        if purge_step is not None and self.path.exists():  # resumed: drop lines past the checkpoint
            kept = [line for line, step in _steps(self.path) if step is not None and step <= purge_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        self.file = self.path.open("a")
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=purge_step or None)

    def write(self, step: int, values: dict[str, Any], prefix: str = "train") -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps({"step": step, "time": time.time(), **values}) + "\n")
        self.file.flush()
        for key, value in values.items():
            self.tb.add_scalar(f"{prefix}/{key}", value, step)

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            self.tb.close()


def _steps(path: Path) -> list[tuple[str, int | None]]:
    """(line, its step) of metrics.jsonl; a line that is not a JSON object with a step (the partial last line of
    a process killed while writing, a disk that filled up) has step None and is dropped on resume."""
    out: list[tuple[str, int | None]] = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        step = record.get("step") if isinstance(record, dict) else None
        out.append((line, step if isinstance(step, int) else None))
    return out
