"""The protocol contract and the one function that runs any protocol on any trunk.

A Protocol names the taps it reads (from its config or from the trunk's roles) and turns a frozen or
fine-tuned trunk into metric values keyed by the table column they fill ('linear/conv3'); it trains on the
fit loop (sslbench.training). `evaluate` does the rest the same way for every protocol, under torchrun too:
load the trunk (checkpoint or random), make the run directory, time it, and write the results store (rank 0).
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.distributed as dist

from sslbench.backbones.base import Backbone
from sslbench.checkpoint import Trunk, TrunkSpec, load_trunk, require_taps
from sslbench.config import Recipe
from sslbench.data.build import build_dataset, dataset_label
from sslbench.data.datasets import collate_skip_corrupt
from sslbench.errors import UserError
from sslbench.progress import console
from sslbench.registry import PROTOCOLS
from sslbench.rescale import rescale
from sslbench.results import Provenance, default_store
from sslbench.runlog import MetricLogger
from sslbench.runs import record_run, shared_run_dir
from sslbench.runtime import (
    close_distributed,
    code_version,
    init_distributed,
    resolve_device,
    seed_everything,
    write_json,
)
from sslbench.training import Context


@dataclass
class EvalContext(Context):
    seed: int = 0
    run_dir: Path = Path(".")


class Protocol:
    name: ClassVar[str] = ""  # the registered name: every metric key starts with it
    metric_keys: ClassVar[str] = ""  # regex of the keys after '<name>/' run() returns (table files are checked by it)

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    def taps(self, backbone: Backbone) -> tuple[str, ...]:
        """Taps this protocol reads from `backbone`; a trunk lacking one is refused before any work."""
        raise NotImplementedError

    def run(self, trunk: Trunk, recipe: Recipe, ctx: EvalContext) -> dict[str, float]:
        raise NotImplementedError

    def key(self, *parts: str) -> str:
        """'<protocol>/<part>/...': the metric key of a table column."""
        return "/".join((self.name, *parts))

    @classmethod
    def fills(cls, key: str) -> bool:
        """Whether `key` is one this protocol can report."""
        return re.fullmatch(f"{re.escape(cls.name)}/(?:{cls.metric_keys})", key) is not None


@dataclass
class EvalOutcome:
    run_dir: Path
    metrics: dict[str, float]
    wall_time: float
    provenance: Provenance


INITS = ("default", "rescale")


def evaluate(
    recipe: Recipe,
    checkpoint: str | TrunkSpec,
    runs: Path,
    device: str = "auto",
    progress: bool = True,
    argv: list[str] | None = None,
    store: bool = True,
    init: str = "default",
) -> EvalOutcome:
    """Run `recipe`'s protocol on a checkpoint (or 'random'); `init='rescale'` first applies Kraehenbuehl
    et al.'s data-dependent rescaling (the tables' "-rescale" and "Random rescaled" rows). Under torchrun every
    rank evaluates its share and rank 0 writes the run directory and the store."""
    if init not in INITS:
        raise UserError(f"--init expects {' or '.join(INITS)}, found {init!r}")
    spec = checkpoint if isinstance(checkpoint, TrunkSpec) else TrunkSpec.parse(checkpoint)
    ddp = init_distributed("cuda" if device != "cpu" and torch.cuda.is_available() else "cpu")
    try:
        return _evaluate(recipe, spec, runs, device, progress, argv, store, init, ddp)
    finally:
        close_distributed(ddp)


def _evaluate(recipe: Recipe, spec: TrunkSpec, runs: Path, device: str, progress: bool, argv: list[str] | None,
              store: bool, init: str, ddp: Any) -> EvalOutcome:
    protocol: Protocol = PROTOCOLS.get(recipe.name)(recipe.component.cfg)
    dev = resolve_device(device, ddp)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)  # NCCL's collectives use the current device
    if recipe.engine.threads:
        torch.set_num_threads(recipe.engine.threads)
    seed_everything(recipe.seed)  # before the trunk: `random` init must be the same draw every time (and rank)
    trunk = load_trunk(spec, recipe.backbone)
    require_taps(trunk, protocol.taps(trunk.backbone))
    if init == "rescale":
        rescaled(trunk, recipe)
    run_dir = shared_run_dir(runs, f"eval-{recipe.name}", ddp)
    if ddp.is_main:
        record_run(run_dir, recipe, argv)
    log = MetricLogger(run_dir, enabled=ddp.is_main)
    ctx = EvalContext(dev, ddp, log, progress, seed=recipe.seed, run_dir=run_dir)
    start = time.time()
    try:
        metrics = protocol.run(trunk, recipe, ctx)
    except UserError:
        log.close()
        if ddp.is_main:
            shutil.rmtree(run_dir, ignore_errors=True)  # e.g. missing data: nothing was measured, leave nothing
        raise
    log.close()
    wall = time.time() - start
    prov = Provenance(
        run_id=run_dir.name, method=trunk.method, variant=trunk.variant, backbone=trunk.label,
        dataset=dataset_label(recipe.data), pretrain_dataset=trunk.pretrain_dataset, scale=recipe.scale,
        init=("random" if spec.is_random else "checkpoint") + ("+rescale" if init == "rescale" else ""),
        seed=recipe.seed, version=code_version(), checkpoint=trunk.checkpoint, pretrain_run=trunk.pretrain_run,
        recipe=recipe.to_json(),
    )
    if ddp.is_main:
        write_json(run_dir / "result.json", {"metrics": metrics, "wall_time": wall, "provenance": prov.__dict__,
                                             "reinitialised": list(trunk.reinitialised)})
        if store:
            default_store(runs).add_results(recipe.name, metrics, prov, wall)
        if progress:
            reinit = ", ".join(trunk.reinitialised)
            note = f" (re-initialised at the protocol's size: {reinit})" if reinit else ""
            console.print(f"[dim]{run_dir}{note}[/dim]")
    if ddp.enabled:
        dist.barrier()
    return EvalOutcome(run_dir, metrics, wall, prov)


RESCALE_IMAGES = 32  # images of the protocol's training split the rescaling statistics are measured on


def rescaled(trunk: Trunk, recipe: Recipe) -> None:
    """Data-dependent rescaling of the trunk, in place, on the protocol's own training images."""
    import torchvision.transforms.v2.functional as TF

    ds = build_dataset(recipe.data, recipe.data.train_split, RESCALE_IMAGES)
    images, _ = collate_skip_corrupt([ds[i] for i in range(min(len(ds), RESCALE_IMAGES))])
    # The trunk runs up to its last tap, whose input size is fixed by the backbone's side: the protocol's images
    # (VOC at their loaded size, 128 px at mini) are resized and centre-cropped to it, as the paper fed crops.
    side = trunk.backbone.image_size
    images = TF.center_crop(TF.resize(images, [side], antialias=True), [side, side])
    rescale(trunk.backbone, trunk.prepare(images), tuple(trunk.backbone.feature_info))
