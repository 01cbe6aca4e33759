"""VOC07+12 detection in detectron2: Faster R-CNN R50-C4 fine-tuned end to end, as MoCo and VISSL report it.

The trunk (a ResNet-50 / 101 v1 with four stages, width 1, RGB, ImageNet-normalised input: what torchvision and
detectron2 hold) is converted to detectron2's weight format (sslbench.backbones.resnet.detectron2_weights, the
file `sslbench export detectron2` writes) and trained with detectron2's own DefaultTrainer from the shipped config
(d2configs/pascal_voc_R_50_C4_24k.yaml: MoCo's three detection configs in one), on VOC2007 + VOC2012 trainval
registered through detectron2's register_pascal_voc, and tested by its PascalVOCDetectionEvaluator on VOC2007 test.
Reports 'voc-det-d2/AP50' (VOC07's 11-point metric at IoU 0.5, the column MoCo's tables lead with), '/AP' (the
mean over IoU 0.5:0.95) and '/AP75', in percent as detectron2 computes them.

detectron2 is not on PyPI for this torch: the protocol says how to install it, in one line, before any work. MoCo's
box head puts a norm after res5 (its train_net.py Res5ROIHeadsExtraNorm); sslbench registers an equivalent head
under the same name. One process: detectron2 trains its 16-image batches on one device here (its naiveSyncBN is
BatchNorm then); a multi-GPU run is detectron2's own launcher on the exported weights and the config file.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from sslbench.backbones.base import Backbone
from sslbench.backbones.resnet import detectron2_weights, layout_differences
from sslbench.checkpoint import Trunk
from sslbench.config import Count, In, Recipe
from sslbench.data.build import embedded_root
from sslbench.data.layouts.voc import voc_folder
from sslbench.errors import UserError
from sslbench.protocols._engines import check_engine_trunk
from sslbench.protocols.base import EvalContext, Protocol
from sslbench.registry import register_protocol
from sslbench.runtime import atomic_pickle

CONFIG = "pascal_voc_R_50_C4_24k.yaml"
INSTALL = ("detectron2 is not installed (no PyPI wheel for this torch); install it from source: "
           "git clone https://github.com/facebookresearch/detectron2.git && "
           "pip install --no-build-isolation -e detectron2")
SPLITS = {2007: ("trainval", "test"), 2012: ("trainval", "")}  # VOC2012's test annotations are not public


@dataclass(frozen=True)
class VOCDetD2Config:
    config: str = CONFIG  # a file of sslbench/protocols/d2configs, or a path to another detectron2 config
    years: tuple[Literal[2007, 2012], ...] = (2007, 2012)  # trainval of these years (VOC07+12); test: VOC2007's
    # 0 / () / "" keep the config file's value; the mini recipe shrinks them
    max_iter: Count = 0  # SOLVER.MAX_ITER (24000)
    steps: tuple[Annotated[int, In(1, 100_000_000)], ...] = ()  # SOLVER.STEPS (18000, 22000)
    ims_per_batch: Count = 0  # SOLVER.IMS_PER_BATCH (16)
    base_lr: Annotated[float, In(0, 10)] = 0.0  # SOLVER.BASE_LR (0.02)
    warmup_iters: Count = 0  # SOLVER.WARMUP_ITERS (100)
    min_size_train: tuple[Annotated[int, In(1, 4096)], ...] = ()  # INPUT.MIN_SIZE_TRAIN (480..800 by 32)
    min_size_test: Count = 0  # INPUT.MIN_SIZE_TEST (800)
    max_size: Count = 0  # INPUT.MAX_SIZE_TRAIN and _TEST (detectron2's 1333)
    norm: Literal["", "naiveSyncBN", "SyncBN", "BN", "FrozenBN"] = ""  # MODEL.RESNETS.NORM (naiveSyncBN)
    precise_bn: bool = True  # TEST.PRECISE_BN.ENABLED (MoCo: on)
    workers: Count = 0  # DATALOADER.NUM_WORKERS (0: data.workers)


def config_file(name: str) -> Path:
    """The detectron2 config `name`: one shipped with sslbench, or a path."""
    shipped = resources.files("sslbench.protocols") / "d2configs" / name
    path = Path(str(shipped)) if shipped.is_file() else Path(name)
    if not path.is_file():
        raise UserError(f"voc-det-d2: protocol.config {name!r} is neither a shipped config ({CONFIG}) nor a file")
    return path


def settings(cfg: VOCDetD2Config, recipe: Recipe, weights: Path, out: Path, device: str, depth: int = 50,
             datasets: tuple[tuple[str, ...], str] | None = None) -> list[Any]:
    """detectron2's KEY, VALUE pairs (merge_from_list) that this recipe sets over the config file: the weights,
    the data sets sslbench registers (`datasets`: their names, from _register), the output folder, the device,
    the seed and the recipe's shrunk values."""
    train, test = datasets or (tuple(f"sslbench_voc_{y}_trainval" for y in cfg.years), "sslbench_voc_2007_test")
    pairs: dict[str, Any] = {
        "MODEL.WEIGHTS": str(weights), "MODEL.DEVICE": device, "OUTPUT_DIR": str(out), "SEED": recipe.seed,
        "DATASETS.TRAIN": train, "DATASETS.TEST": (test,),
        "DATALOADER.NUM_WORKERS": cfg.workers or recipe.data.workers, "TEST.PRECISE_BN.ENABLED": cfg.precise_bn,
        "MODEL.RESNETS.DEPTH": depth,
    }
    shrunk = {"SOLVER.MAX_ITER": cfg.max_iter, "SOLVER.STEPS": tuple(cfg.steps), "SOLVER.IMS_PER_BATCH":
              cfg.ims_per_batch, "SOLVER.BASE_LR": cfg.base_lr, "SOLVER.WARMUP_ITERS": cfg.warmup_iters,
              "INPUT.MIN_SIZE_TRAIN": tuple(cfg.min_size_train), "INPUT.MIN_SIZE_TEST": cfg.min_size_test,
              "INPUT.MAX_SIZE_TRAIN": cfg.max_size, "INPUT.MAX_SIZE_TEST": cfg.max_size, "MODEL.RESNETS.NORM": cfg.norm}
    pairs.update({k: v for k, v in shrunk.items() if v not in (0, 0.0, (), "")})
    return [x for kv in pairs.items() for x in kv]


def detectron2() -> Any:
    try:
        import detectron2 as d2
    except ImportError:
        raise UserError(INSTALL) from None
    return d2


def _register(cfg: VOCDetD2Config, recipe: Recipe) -> tuple[tuple[str, ...], str]:
    """VOC<year> trainval (and 2007 test) registered with detectron2, from --data or the embedded data; the names
    carry a hash of the folder, so a second evaluation in this process on other data registers its own. Returns
    (the training sets' names, the test set's)."""
    import hashlib

    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_pascal_voc

    d, names = recipe.data, {}
    for year in sorted({*cfg.years, 2007}):
        root = d.root or str(embedded_root(d, f"voc{year}"))
        folder = voc_folder(f"voc{year}", root, str(year), ("JPEGImages", "Annotations", "ImageSets"))
        tag = hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:8]
        for split in SPLITS[year]:
            if split and (year in cfg.years or split == "test"):
                name = names[(year, split)] = f"sslbench_voc_{year}_{split}_{tag}"
                if name not in DatasetCatalog.list():
                    register_pascal_voc(name, str(folder), split, year)
    return tuple(names[(y, "trainval")] for y in cfg.years), names[(2007, "test")]


def _extra_norm_head() -> None:
    """Res5ROIHeads with a norm (MODEL.RESNETS.NORM) after res5, under MoCo's name (its detection/train_net.py)."""
    from detectron2.layers import get_norm
    from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, Res5ROIHeads

    if "Res5ROIHeadsExtraNorm" in ROI_HEADS_REGISTRY:
        return

    class Res5ROIHeadsExtraNorm(Res5ROIHeads):
        @classmethod
        def _build_res5_block(cls, cfg: Any) -> Any:
            seq, out_channels = super()._build_res5_block(cfg)
            seq.add_module("norm", get_norm(cfg.MODEL.RESNETS.NORM, out_channels))
            return seq, out_channels

    ROI_HEADS_REGISTRY.register(Res5ROIHeadsExtraNorm)


@register_protocol("voc-det-d2", config=VOCDetD2Config)
class VOCDetectionD2(Protocol):
    """VOC07+12 Faster R-CNN R50-C4 in detectron2 (MoCo / VISSL's detection benchmark)."""

    name = "voc-det-d2"
    metric_keys = r"AP50|AP|AP75"
    stored_image_size = True  # data.image_size = 0: detectron2 resizes the photos itself (INPUT.MIN_SIZE_*)
    requires = "detectron2"
    trains_by_sgd = False  # detectron2's solver runs the schedule (the config file's SOLVER), not sslbench's

    def taps(self, backbone: Backbone) -> tuple[str, ...]:
        return ("res4", "res5") if backbone.name == "resnet" else ()

    def preflight(self, recipe: Recipe) -> None:
        detectron2()
        config_file(self.cfg.config)
        if recipe.backbone.name == "resnet":
            differs = layout_differences(recipe.backbone.cfg)  # type: ignore[arg-type]
            if differs:
                raise UserError(f"voc-det-d2: detectron2's ResNet cannot hold backbone: {'; '.join(differs)}")

    def run(self, trunk: Trunk, recipe: Recipe, ctx: EvalContext) -> dict[str, float]:
        detectron2()
        if ctx.ddp.enabled:
            raise UserError("voc-det-d2 runs in one process (detectron2's trainer); run it without torchrun")
        check_engine_trunk(self.name, "detectron2's R-C4", trunk.backbone, trunk.transfer_input, trunk.checkpoint,
                           "voc-det")
        from detectron2.config import get_cfg
        from detectron2.engine import DefaultTrainer
        from detectron2.evaluation import PascalVOCDetectionEvaluator

        out = ctx.run_dir / "detectron2"
        weights = out / "trunk.pkl"
        atomic_pickle(detectron2_weights(trunk.backbone.state_dict(), f"sslbench {trunk.checkpoint}"), weights)
        datasets = _register(self.cfg, recipe)
        _extra_norm_head()
        node = get_cfg()
        node.merge_from_file(str(config_file(self.cfg.config)))
        depth = trunk.backbone.cfg.depth  # type: ignore[attr-defined]
        node.merge_from_list(settings(self.cfg, recipe, weights, out, str(ctx.device), depth, datasets))
        (out / "config.yaml").write_text(node.dump())

        class Trainer(DefaultTrainer):
            @classmethod
            def build_evaluator(cls, cfg: Any, dataset_name: str, output_folder: Any = None) -> Any:
                return PascalVOCDetectionEvaluator(dataset_name)

        trainer = Trainer(node)
        trainer.resume_or_load(resume=False)
        trainer.train()  # its EvalHook tests once after the last iteration: those are the results
        results = getattr(trainer, "_last_eval_results", None) or Trainer.test(node, trainer.model)
        bbox = results["bbox"]
        for weights_file in (weights, *out.glob("model_*.pth")):  # the run keeps no copy of the trunk or the model
            weights_file.unlink(missing_ok=True)
        metrics = {self.key(k): float(bbox[k]) for k in ("AP50", "AP", "AP75")}
        ctx.log.write(node.SOLVER.MAX_ITER, {k.rsplit("/", 1)[1]: v for k, v in metrics.items()}, prefix="test")
        return metrics

