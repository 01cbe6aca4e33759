"""VOC2012 + SBD segmentation in mmsegmentation: MMSelfSup's FCN R50-D8 benchmark on an sslbench ResNet-50 trunk.

The model is mmsegmentation's, built from its registry as MMSelfSup's config builds it
(configs/benchmarks/mmsegmentation/voc12aug/fcn_r50-d8_4xb4-20k_voc12aug-512x512.py -> mmsegmentation's
fcn_r50-d8_4xb4-20k_voc12aug-512x512.py with _base_/models/fcn_r50-d8.py as MMSelfSup overrides it): an
EncoderDecoder whose backbone is mmseg's ResNet (style pytorch, torchvision's layout and names, so the trunk's
weights load by name, strictly apart from fc) dilated to stride 8 (strides 1,2,1,1, dilations 1,1,2,4), an FCNHead
on res5 (2 convs of 512, concat input, dropout 0.1) and an auxiliary FCNHead on res4 (1 conv of 256, loss weight
0.4), cross-entropy from mmseg's losses, SyncBN. Training is mmengine's Runner: SGD lr 0.01, momentum 0.9, decay
5e-4, PolyLR (power 0.9, eta_min 1e-4) over 20k iterations of 16 images (4 GPUs x 4), 512x512 crops of images
resized by 0.5-2x around (2048, 512) (RandomResize, RandomCrop with cat_max_ratio 0.75, RandomFlip, PhotoMetric
Distortion, Pad: mmseg's own transforms), on VOC2012 train + SBD (train_aug), read by sslbench's VOC and SBD
loaders; test on VOC2012 val resized to (2048, 512), keep ratio, whole-image inference.

mIoU is computed twice on the same predictions: by mmseg's IoUMetric and by sslbench.metrics (confusion_matrix,
mean_iou); the run fails if they disagree. Reports 'voc-seg-mmseg/mIoU' (percent) and 'voc-seg-mmseg/aAcc'.

mmsegmentation 1.2.2 on PyPI needs a compiled mmcv; the maintained fork onedl-mmsegmentation (import name mmseg,
with onedl-mmcv and onedl-mmengine) installs from wheels: `pip install "sslbench[mmseg]"`. It pulls opencv-python,
which can overwrite opencv-contrib-python-headless's cv2 (selective search, voc-det): `sslbench doctor` says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from sslbench.backbones.base import Backbone
from sslbench.checkpoint import Trunk, key_differences
from sslbench.config import Count, In, Recipe
from sslbench.data.classes import VOC_CLASSES
from sslbench.errors import UserError
from sslbench.metrics import confusion_matrix, mean_iou
from sslbench.protocols._engines import check_engine_trunk
from sslbench.protocols.base import EvalContext, Protocol
from sslbench.protocols.voc_seg import sbd_required, segmentation_data
from sslbench.registry import register_protocol
from sslbench.runtime import atomic_torch_save

INSTALL = 'voc-seg-mmseg needs mmsegmentation: pip install "sslbench[mmseg]" (the onedl-mmsegmentation fork)'
NUM_CLASSES = 21
IGNORE = 255
# mmseg's SegDataPreProcessor for torchvision-format weights: ImageNet statistics on the 0-255 scale, RGB
MEAN, STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]


@dataclass(frozen=True)
class VocSegMMSegConfig:
    crop: Annotated[int, In(16, 4096)] = 512  # RandomCrop / Pad / the preprocessor's size (512x512)
    scale: tuple[Annotated[int, In(16, 8192)], Annotated[int, In(16, 8192)]] = (2048, 512)  # RandomResize / Resize
    ratio_range: tuple[Annotated[float, In(0.1, 10)], Annotated[float, In(0.1, 10)]] = (0.5, 2.0)
    cat_max_ratio: Annotated[float, In(0, 1)] = 0.75  # RandomCrop: no crop made of one class beyond this share
    max_iters: Count = 20_000  # IterBasedTrainLoop (schedule_20k.py)
    lr: Annotated[float, In(0, 10, open_lo=True)] = 0.01  # SGD (schedule_20k.py)
    momentum: Annotated[float, In(0, 1)] = 0.9
    weight_decay: Annotated[float, In(0, 1)] = 5e-4
    eta_min: Annotated[float, In(0, 10)] = 1e-4  # PolyLR
    power: Annotated[float, In(0, 10)] = 0.9
    norm: Literal["SyncBN", "BN"] = "SyncBN"  # fcn_r50-d8.py's norm_cfg (SyncBN needs torchrun; BN in one process)
    sbd: str = ""  # SBD joins training (train_aug): "required" for the paper recipe, a path, or "embedded"


def mmseg() -> Any:
    try:
        import mmseg as mm
        from mmseg.utils import register_all_modules
    except ImportError:
        raise UserError(INSTALL) from None
    register_all_modules(init_default_scope=True)
    return mm


def model_config(cfg: VocSegMMSegConfig, depth: int) -> dict[str, Any]:
    """The EncoderDecoder of fcn_r50-d8.py (MMSelfSup's: torchvision-style ResNet) for VOC's 21 classes."""
    norm = {"type": cfg.norm, "requires_grad": True}

    def head(in_channels: int, in_index: int, channels: int, convs: int, concat: bool, weight: float) -> dict:
        return {"type": "FCNHead", "in_channels": in_channels, "in_index": in_index, "channels": channels,
                "num_convs": convs, "concat_input": concat, "dropout_ratio": 0.1, "num_classes": NUM_CLASSES,
                "norm_cfg": norm, "align_corners": False,
                "loss_decode": {"type": "CrossEntropyLoss", "use_sigmoid": False, "loss_weight": weight}}

    return {
        "type": "EncoderDecoder",
        "data_preprocessor": {"type": "SegDataPreProcessor", "mean": MEAN, "std": STD, "bgr_to_rgb": True,
                              "pad_val": 0, "seg_pad_val": IGNORE, "size": (cfg.crop, cfg.crop)},
        "backbone": {"type": "ResNet", "depth": depth, "num_stages": 4, "out_indices": (0, 1, 2, 3),
                     "dilations": (1, 1, 2, 4), "strides": (1, 2, 1, 1), "norm_cfg": norm, "norm_eval": False,
                     "style": "pytorch", "contract_dilation": True},
        "decode_head": head(2048, 3, 512, 2, True, 1.0),
        "auxiliary_head": head(1024, 2, 256, 1, False, 0.4),
        "train_cfg": {}, "test_cfg": {"mode": "whole"},
    }


def pipelines(cfg: VocSegMMSegConfig) -> tuple[list[dict], list[dict]]:
    """(train, test) transforms of pascal_voc12_aug.py after its loading steps (sslbench's loaders read), without
    the final PackSegInputs (MMSegPairs adds it)."""
    crop = (cfg.crop, cfg.crop)
    train = [{"type": "RandomResize", "scale": tuple(cfg.scale), "ratio_range": tuple(cfg.ratio_range),
              "keep_ratio": True},
             {"type": "RandomCrop", "crop_size": crop, "cat_max_ratio": cfg.cat_max_ratio},
             {"type": "RandomFlip", "prob": 0.5}, {"type": "PhotoMetricDistortion"}, {"type": "Pad", "size": crop}]
    test = [{"type": "Resize", "scale": tuple(cfg.scale), "keep_ratio": True}]
    return train, test


class MMSegPairs(Dataset):
    """sslbench's (uint8 image [3,H,W], mask [H,W]) pairs as mmseg's packed inputs, through mmseg's transforms.
    `mask_after`: the mask joins after the transforms, at its stored size (the test pipeline: mmseg loads the
    annotation after Resize, and scores predictions resized back to the image's original size)."""

    def __init__(self, pairs: Dataset, transforms: list[dict], mask_after: bool = False) -> None:
        from mmcv.transforms import Compose

        self.pairs, self.mask_after = pairs, mask_after
        self.transforms, self.pack = Compose(transforms), Compose([{"type": "PackSegInputs"}])

    @property
    def metainfo(self) -> dict[str, Any]:
        """What mmengine hands its evaluators (IoUMetric reads the class names)."""
        return {"classes": ("background", *VOC_CLASSES)}

    def __len__(self) -> int:
        return len(self.pairs)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> Any:
        item = self.pairs[i]
        if item is None:
            return None
        image, mask = item
        img = np.ascontiguousarray(image.permute(1, 2, 0).numpy()[:, :, ::-1])  # RGB -> BGR, as mmcv reads files
        seg = mask.numpy().astype(np.uint8)
        h, w = seg.shape
        results = {"img": img, "img_shape": (h, w), "ori_shape": (h, w), "reduce_zero_label": False,
                   "img_path": str(i), "seg_map_path": str(i), "seg_fields": []}
        if not self.mask_after:
            results |= {"gt_seg_map": seg, "seg_fields": ["gt_seg_map"]}
        results = self.transforms(results)
        if self.mask_after:
            results |= {"gt_seg_map": seg, "seg_fields": ["gt_seg_map"]}
        return self.pack(results)


def seed_worker(worker: int) -> None:
    """mmcv's transforms draw from numpy's global generator: a seed of its own in every loader worker."""
    import torch

    np.random.seed(torch.initial_seed() % 2**32)


def collate(batch: list[Any]) -> Any:
    from mmengine.dataset import pseudo_collate

    return pseudo_collate([b for b in batch if b is not None])


def sslbench_metric() -> type:
    """An mmengine metric that scores the same predictions with sslbench.metrics (registered once)."""
    from mmengine.evaluator import BaseMetric
    from mmseg.registry import METRICS

    if "SslbenchIoU" in METRICS:
        return METRICS.get("SslbenchIoU")

    class SslbenchIoU(BaseMetric):
        default_prefix = "sslbench"

        def process(self, data_batch: Any, data_samples: Any) -> None:
            for sample in data_samples:
                pred = sample["pred_sem_seg"]["data"].squeeze(0).cpu().numpy()
                gt = sample["gt_sem_seg"]["data"].squeeze(0).cpu().numpy()
                self.results.append(confusion_matrix(pred, gt, NUM_CLASSES, IGNORE))

        def compute_metrics(self, results: list) -> dict[str, float]:
            miou, _ = mean_iou(np.sum(results, axis=0))
            return {"mIoU": 100.0 * miou}

    METRICS.register_module(module=SslbenchIoU)
    return SslbenchIoU


def build_model(cfg: VocSegMMSegConfig, trunk: Trunk, work: Path) -> Any:
    """mmseg's EncoderDecoder for `cfg`, its backbone initialised from the trunk as MMSelfSup initialises it (init_cfg
    Pretrained, a file in `work`: mmengine loads it when the runner initialises the model). mmengine loads that file
    non-strictly, so the keys are checked here first."""
    from mmengine.config import ConfigDict
    from mmseg.registry import MODELS

    pretrained = work / "trunk.pth"
    atomic_torch_save(trunk.backbone.state_dict(), pretrained)
    config = model_config(cfg, trunk.backbone.cfg.depth)  # type: ignore[attr-defined]
    config["backbone"]["init_cfg"] = {"type": "Pretrained", "checkpoint": str(pretrained)}
    model = MODELS.build(ConfigDict(config))  # attribute access, as mmseg's configs give (test_cfg.mode)
    differ = key_differences(model.backbone.state_dict(), trunk.backbone.state_dict())
    if differ:
        raise UserError(f"voc-seg-mmseg: the trunk of {trunk.checkpoint} does not load into mmseg's ResNet ({differ})")
    return model


@register_protocol("voc-seg-mmseg", config=VocSegMMSegConfig)
class VocSegMMSeg(Protocol):
    """VOC2012 (+ SBD) segmentation with mmsegmentation's FCN R50-D8, MMSelfSup's benchmark."""

    name = "voc-seg-mmseg"
    metric_keys = r"mIoU|aAcc"
    stored_image_size = True  # mmseg's transforms resize and crop the photos themselves
    requires = "mmseg"
    trains_by_sgd = False  # mmengine's Runner runs the schedule (protocol.max_iters, PolyLR), not sslbench's

    def taps(self, backbone: Backbone) -> tuple[str, ...]:
        return ("res4", "res5") if backbone.name == "resnet" else ()

    def preflight(self, recipe: Recipe) -> None:
        mmseg()
        if self.cfg.sbd == "required":
            raise UserError(sbd_required().replace("voc-seg:", "voc-seg-mmseg:"))

    def run(self, trunk: Trunk, recipe: Recipe, ctx: EvalContext) -> dict[str, float]:
        try:
            return self._run(trunk, recipe, ctx)
        finally:
            (ctx.run_dir / "mmseg" / "trunk.pth").unlink(missing_ok=True)  # the run keeps no copy of the trunk

    def _run(self, trunk: Trunk, recipe: Recipe, ctx: EvalContext) -> dict[str, float]:
        mmseg()
        cfg, d = self.cfg, recipe.data
        check_engine_trunk(self.name, "mmseg's FCN R50-D8", trunk.backbone, trunk.transfer_input, trunk.checkpoint,
                           "voc-seg")
        if cfg.norm == "SyncBN" and not ctx.ddp.enabled:
            raise UserError("voc-seg-mmseg: norm SyncBN synchronises across GPUs: run under torchrun, or --set "
                            "protocol.norm=BN in one process")
        from mmengine.runner import Runner

        work = ctx.run_dir / "mmseg"
        model = build_model(cfg, trunk, work)
        train, val = segmentation_data(d, cfg.sbd, native_test=True)
        train_pipe, test_pipe = pipelines(cfg)
        sslbench_metric()
        ddp = ctx.ddp.enabled
        train_ds, test_ds = MMSegPairs(train, train_pipe), MMSegPairs(val, test_pipe, mask_after=True)
        runner = Runner(
            # mmengine keeps its logger and message hub per experiment name: one per run
            model=model, work_dir=str(work), experiment_name=f"voc-seg-mmseg-{ctx.run_dir.name}",
            train_dataloader=DataLoader(train_ds, batch_size=max(1, d.batch_size // ctx.ddp.world),
                                        shuffle=not ddp, sampler=DistributedSampler(train_ds) if ddp else None,
                                        num_workers=d.workers, collate_fn=collate, drop_last=True,
                                        worker_init_fn=seed_worker),
            train_cfg={"type": "IterBasedTrainLoop", "max_iters": cfg.max_iters, "val_interval": cfg.max_iters + 1},
            optim_wrapper={"type": "OptimWrapper", "optimizer": {"type": "SGD", "lr": cfg.lr,
                                                                 "momentum": cfg.momentum,
                                                                 "weight_decay": cfg.weight_decay}},
            param_scheduler=[{"type": "PolyLR", "eta_min": cfg.eta_min, "power": cfg.power, "begin": 0,
                              "end": cfg.max_iters, "by_epoch": False}],
            test_dataloader=DataLoader(test_ds, batch_size=1, num_workers=d.workers, collate_fn=collate,
                                       sampler=DistributedSampler(test_ds, shuffle=False) if ddp else None),
            test_cfg={"type": "TestLoop"},
            test_evaluator=[{"type": "IoUMetric", "iou_metrics": ["mIoU"], "ignore_index": IGNORE},
                            {"type": "SslbenchIoU"}],
            default_hooks={"checkpoint": None, "logger": {"type": "LoggerHook", "interval": 50}},
            randomness={"seed": recipe.seed}, launcher="pytorch" if ddp else "none", default_scope="mmseg",
        )
        runner.train()  # its first act: the backbone's init_cfg loads trunk.pth
        scores = runner.test()
        theirs, ours = float(scores["mIoU"]), float(scores["sslbench/mIoU"])
        if abs(theirs - ours) > 0.01:
            raise UserError(f"voc-seg-mmseg: mmseg's mIoU {theirs:.2f} and sslbench.metrics' {ours:.2f} disagree on "
                            "the same predictions; report this with the run directory")
        metrics = {self.key("mIoU"): ours, self.key("aAcc"): float(scores["aAcc"])}
        ctx.log.write(cfg.max_iters, {"mIoU": ours, "mmseg_mIoU": theirs, "aAcc": metrics[self.key("aAcc")]},
                      prefix="test")
        return metrics
