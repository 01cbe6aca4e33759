"""The protocol contract and the one function that runs any protocol on any trunk.

A Protocol names the taps it needs and turns a frozen or fine-tuned trunk into metric values keyed by
the table column they fill ('linear/conv3'). `evaluate` does the rest the same way for every protocol:
load the trunk (checkpoint or random), make the run directory, time it, and write the results store.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sslbench.checkpoint import Trunk, load_trunk
from sslbench.config import Recipe
from sslbench.data.build import dataset_label
from sslbench.engine import new_run_dir, record_run
from sslbench.errors import UserError
from sslbench.progress import console
from sslbench.registry import PROTOCOLS
from sslbench.results import Provenance, default_store
from sslbench.runlog import MetricLogger
from sslbench.runtime import code_version, resolve_device, seed_everything, write_json


@dataclass
class EvalContext:
    device: torch.device
    seed: int
    progress: bool
    run_dir: Path
    log: MetricLogger


class Protocol:
    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    def taps(self) -> tuple[str, ...]:
        """Taps this protocol reads; a trunk lacking one is refused before any work."""
        raise NotImplementedError

    def run(self, trunk: Trunk, recipe: Recipe, ctx: EvalContext) -> dict[str, float]:
        raise NotImplementedError


@dataclass
class EvalOutcome:
    run_dir: Path
    metrics: dict[str, float]
    wall_time: float
    provenance: Provenance


def evaluate(
    recipe: Recipe,
    checkpoint: str,
    runs: Path,
    device: str = "auto",
    progress: bool = True,
    argv: list[str] | None = None,
    store: bool = True,
) -> EvalOutcome:
    protocol: Protocol = PROTOCOLS.get(recipe.name)(recipe.method.cfg)
    dev = resolve_device(device)
    seed_everything(recipe.seed)  # before the trunk: `random` init must be the same draw every time
    trunk = load_trunk(checkpoint, recipe.backbone, protocol.taps())
    run_dir = new_run_dir(runs, f"eval-{recipe.name}")
    record_run(run_dir, recipe, argv)
    log = MetricLogger(run_dir)
    start = time.time()
    try:
        metrics = protocol.run(trunk, recipe, EvalContext(dev, recipe.seed, progress, run_dir, log))
    except UserError:
        log.close()
        shutil.rmtree(run_dir, ignore_errors=True)  # e.g. missing data: nothing was measured, leave nothing
        raise
    log.close()
    wall = time.time() - start
    prov = Provenance(
        run_id=run_dir.name, method=trunk.method, variant=trunk.variant, backbone=trunk.label,
        dataset=dataset_label(recipe.data), pretrain_dataset=trunk.pretrain_dataset, scale=recipe.scale,
        init="random" if checkpoint == "random" else "checkpoint", seed=recipe.seed, version=code_version(),
        checkpoint=trunk.checkpoint, pretrain_run=trunk.pretrain_run, recipe=recipe.to_json(),
    )
    write_json(run_dir / "result.json", {"metrics": metrics, "wall_time": wall, "provenance": prov.__dict__})
    if store:
        default_store(runs).add_results(recipe.name, metrics, prov, wall)
    if progress:
        console.print(f"[dim]{run_dir}[/dim]")
    return EvalOutcome(run_dir, metrics, wall, prov)
