"""RotNet (Gidaris, Singh, Komodakis, ICLR 2018): predict which of 0/90/180/270 degrees was applied.

As in the released code, every image enters the batch in all four rotations, one label each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from sslbench.backbones.base import Backbone
from sslbench.config import Pixels
from sslbench.registry import register_task
from sslbench.tasks.base import PretextTask, TapHead, TinySetup, accuracy
from sslbench.transforms import normalize, normalize_cifar, random_crop_flip


@dataclass(frozen=True)
class RotationConfig:
    crop_pad: Pixels = 4  # random-crop padding before rotating (RotNet CIFAR: 4 px); 0 = no crop
    flip: bool = True  # random horizontal flip (kept: a flip does not change the rotation label)
    # input statistics: ImageNet's, or CIFAR-10's as RotNet's CIFAR code (dataloader.py l.144-145); the transfer
    # input the checkpoint records follows
    normalize: Literal["imagenet", "cifar"] = "imagenet"


def rotate_all(images: Tensor) -> tuple[Tensor, Tensor]:
    """[N,C,H,W] (square) -> ([4N,C,H,W], [4N]): image i appears at rows 4i..4i+3 rotated by 0, 90, 180, 270 deg
    (counter-clockwise, as torch.rot90). Each rotation is written once into the output (rot90 by k is a transpose
    for odd k and a flip of both axes for k = 2: views, copied into their slot), on the images' device."""
    n, c, h, w = images.shape
    if h != w:
        raise ValueError(f"rotate_all: the four rotations of a batch need square images, found {h}x{w}")
    out = images.new_empty((n, 4, c, h, w))
    out[:, 0] = images
    out[:, 1] = images.transpose(2, 3).flip(2)  # rot90 k=1: (i, j) <- (j, w-1-i)
    out[:, 2] = images.flip((2, 3))
    out[:, 3] = images.transpose(2, 3).flip(3)  # k=3: (i, j) <- (h-1-j, i)
    labels = torch.arange(4, device=images.device).repeat(n)  # [4N]
    return out.flatten(0, 1), labels


@register_task("rotation", config=RotationConfig)
class Rotation(PretextTask):
    """RotNet: 4-way rotation classification with all four rotations of every image in the batch."""

    display_name = "RotNet"

    def __init__(self, cfg: RotationConfig, backbone: Backbone) -> None:
        super().__init__(cfg, backbone)
        self.head = TapHead(backbone, backbone.head_tap, 4)

    def make_batch(self, images: Tensor, targets: dict[str, Any], generator: torch.Generator) -> dict[str, Tensor]:
        """uint8 [N,3,H,W] -> inputs [4N,3,H,W] (normalised), labels [4N]."""
        if self.cfg.crop_pad or self.cfg.flip:
            images = random_crop_flip(images, self.cfg.crop_pad, self.cfg.flip, generator)
        rotated, labels = rotate_all(images)  # the rotations in uint8, then one normalisation of the 4N images
        inputs = (normalize_cifar if self.cfg.normalize == "cifar" else normalize)(rotated)
        return {"inputs": inputs, "labels": labels}

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        features = self.backbone(batch["inputs"], taps=(self.head.tap,))[self.head.tap]
        logits = self.head(features)  # [4N, 4]
        return {"loss": F.cross_entropy(logits, batch["labels"]), "acc": accuracy(logits, batch["labels"])}

    def transfer_input(self) -> str:
        return self.cfg.normalize

    @classmethod
    def tiny(cls) -> TinySetup:
        return TinySetup("nin", {"blocks": 3, "width": 0.1, "image_size": 32}, 32)
