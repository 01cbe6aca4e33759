"""The protocol contract and the one function that runs any protocol on any trunk.

A Protocol names the taps it needs and turns a frozen or fine-tuned trunk into metric values keyed by
the table column they fill ('linear/conv3'). `evaluate` does the rest the same way for every protocol:
load the trunk (checkpoint or random), make the run directory, time it, and write the results store.
"""

from __future__ import annotations

import dataclasses
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sslbench.checkpoint import RANDOM_LIKE, Trunk, load_trunk
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


INITS = ("default", "rescale")


def evaluate(
    recipe: Recipe,
    checkpoint: str,
    runs: Path,
    device: str = "auto",
    progress: bool = True,
    argv: list[str] | None = None,
    store: bool = True,
    init: str = "default",
) -> EvalOutcome:
    """Run `recipe`'s protocol on a checkpoint (or 'random'); `init='rescale'` first applies Kraehenbuehl
    et al.'s data-dependent rescaling (the tables' "-rescale" and "Random rescaled" rows)."""
    if init not in INITS:
        raise UserError(f"--init expects {' or '.join(INITS)}, found {init!r}")
    protocol: Protocol = PROTOCOLS.get(recipe.name)(recipe.method.cfg)
    dev = resolve_device(device)
    if recipe.engine.threads:
        torch.set_num_threads(recipe.engine.threads)
    seed_everything(recipe.seed)  # before the trunk: `random` init must be the same draw every time
    trunk = load_trunk(checkpoint, recipe.backbone, protocol.taps())
    if init == "rescale":
        trunk = rescaled(trunk, recipe)
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
        init=("random" if checkpoint == "random" or checkpoint.startswith(RANDOM_LIKE) else "checkpoint") + ("+rescale" if init == "rescale" else ""),
        seed=recipe.seed, version=code_version(), checkpoint=trunk.checkpoint, pretrain_run=trunk.pretrain_run,
        recipe=recipe.to_json(),
    )
    write_json(run_dir / "result.json", {"metrics": metrics, "wall_time": wall, "provenance": prov.__dict__,
                                         "reinitialised": list(trunk.reinitialised)})
    if store:
        default_store(runs).add_results(recipe.name, metrics, prov, wall)
    if progress:
        note = f" (re-initialised at the protocol's size: {', '.join(trunk.reinitialised)})" if trunk.reinitialised else ""
        console.print(f"[dim]{run_dir}{note}[/dim]")
    return EvalOutcome(run_dir, metrics, wall, prov)


RESCALE_IMAGES = 32  # images of the protocol's training split the rescaling statistics are measured on


def rescaled(trunk: Trunk, recipe: Recipe) -> Trunk:
    """The trunk after data-dependent rescaling on the protocol's own training images."""
    import torchvision.transforms.v2.functional as TF

    from sslbench.data.build import build_dataset, collate_skip_corrupt
    from sslbench.rescale import rescale

    ds = build_dataset(recipe.data, recipe.data.train_split, RESCALE_IMAGES)
    images, _ = collate_skip_corrupt([ds[i] for i in range(min(len(ds), RESCALE_IMAGES))])
    # The trunk runs up to fc6/fc7, whose input size is fixed by the backbone's side: the protocol's images
    # (VOC at their loaded size, 128 px at mini) are resized and centre-cropped to it, as the paper fed crops.
    side = trunk.backbone.cfg.image_size
    images = TF.center_crop(TF.resize(images, [side], antialias=True), [side, side])
    rescale(trunk.backbone, trunk.prepare(images), tuple(trunk.backbone.feature_info))
    if trunk.method == "random":
        return dataclasses.replace(trunk, method="random-rescaled")
    return dataclasses.replace(trunk, variant="+".join(v for v in (trunk.variant, "rescale") if v))
