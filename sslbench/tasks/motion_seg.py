"""Motion segmentation (Pathak, Girshick, Dollar, Darrell, Hariharan, "Learning Features by Watching Objects Move",
CVPR 2017; the "MS" task of Doersch & Zisserman's Task Ensemble, ICCV 2017): from a single video frame, predict
which of its pixels belong to something that moves.

The targets are masks computed offline from the frame and the ones after it (Pathak et al.: uNLC, an unsupervised
motion segmentation); the data set supplies them as targets["motion"] (the `motion` layout: 1 moving, 0 static, 255
unsure). The head is a 1 x 1 convolution on the trunk's dense tap, one logit per cell at the tap's stride (Pathak et
al. predict a coarse mask the same way); the loss is the per-pixel sigmoid cross-entropy against the mask pooled to
that grid (a cell's target: its share of moving pixels among the sure ones; cells with no sure pixel are left out).
Logged: pixel accuracy and the IoU of the moving class, on the cells.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslbench.backbones.base import Backbone
from sslbench.errors import UserError
from sslbench.registry import register_task
from sslbench.tasks.base import PretextTask, TinySetup
from sslbench.transforms import lab_l_of_rgb8, mirror, normalize, random_flips

IGNORE = 255


@dataclass(frozen=True)
class MotionSegConfig:
    flip: bool = True  # random horizontal mirror of frame and mask together


def cell_targets(mask: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """int64 masks [N,H,W] (0, 1, 255) -> (share of moving pixels among the sure ones [N,h,w], cells with a sure
    pixel [N,h,w] bool), each cell an adaptive-pooling cell of the h x w grid."""
    sure = (mask != IGNORE).float()[:, None]
    moving = (mask == 1).float()[:, None]
    sure_share = F.adaptive_avg_pool2d(sure, size)
    moving_share = F.adaptive_avg_pool2d(moving, size)
    valid = sure_share > 0
    return (moving_share / sure_share.clamp_min(1e-12)).squeeze(1), valid.squeeze(1)


@register_task("motion-seg", config=MotionSegConfig)
class MotionSegmentation(PretextTask):
    """Which pixels of a single frame move: per-cell sigmoid cross-entropy against precomputed motion masks."""

    display_name = "Motion segmentation"
    harmonizable: ClassVar[tuple[str, ...]] = ("lab-l",)

    def __init__(self, cfg: MotionSegConfig, backbone: Backbone) -> None:
        super().__init__(cfg, backbone)
        self.tap = backbone.role("dense_tap", "motion-seg (its per-pixel head reads it)")
        self.head = nn.Conv2d(backbone.feature_info[self.tap].channels, 1, 1)

    def make_batch(self, images: Tensor, targets: dict[str, Any], generator: torch.Generator) -> dict[str, Tensor]:
        """uint8 frames [N,3,H,W] + targets["motion"] [N,H,W] -> normalised input, the masks (flipped with them)."""
        if "motion" not in targets:
            raise UserError("motion-seg needs motion masks with its frames: read a data set that has them "
                            "(data.dataset = \"motion\", the frames-and-masks layout; sslbench data synth --format "
                            "motion writes the embedded one)")
        mask = targets["motion"].long()
        if self.cfg.flip:
            flips = random_flips(images.shape[0], generator, images.device)
            images = mirror(images, flips)
            mask = mirror(mask, flips)
        x = lab_l_of_rgb8(images) if self.harmonize == "lab-l" else normalize(images)
        return {"input": x, "mask": mask}

    def logits(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x, taps=(self.tap,))[self.tap]).squeeze(1)  # [N,h,w]

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        logits = self.logits(batch["input"])
        target, valid = cell_targets(batch["mask"], tuple(logits.shape[-2:]))
        if not valid.any():
            zero = logits.sum() * 0.0
            return {"loss": zero, "acc": zero.detach(), "iou": zero.detach()}
        ce = F.binary_cross_entropy_with_logits(logits.float()[valid], target[valid])
        with torch.no_grad():
            pred, truth = logits[valid] > 0, target[valid] >= 0.5
            union = (pred | truth).sum()
            iou = (pred & truth).sum() / union if union else torch.ones((), device=logits.device)
            acc = (pred == truth).float().mean()
        return {"loss": ce, "acc": acc, "iou": iou.float()}

    def transfer_input(self) -> str:
        return self.harmonize or "imagenet"

    def examples(self, images: Tensor, generator: torch.Generator) -> list[tuple[str, Tensor]]:
        """The frame and the predicted moving cells (white), upsampled to the frame."""
        with torch.no_grad():
            x = lab_l_of_rgb8(images) if self.harmonize == "lab-l" else normalize(images)
            prob = torch.sigmoid(self.logits(x))[:, None]
        prob = F.interpolate(prob, size=images.shape[-2:], mode="nearest")
        return [("frame", images), ("moving (predicted)", (prob * 255).round().to(torch.uint8).expand(-1, 3, -1, -1))]

    @classmethod
    def tiny(cls) -> TinySetup:
        masks = (torch.arange(64)[None, :, None] < torch.arange(4)[:, None, None] * 16).expand(4, 64, 64).long()
        return TinySetup("resnet", {"depth": 50, "width": 0.0625, "image_size": 64, "stages": 3}, 64, {},
                         {"motion": masks})
