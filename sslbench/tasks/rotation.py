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
from sslbench.transforms import (
    CIFAR_MEAN,
    CIFAR_STD,
    MEAN,
    STD,
    cache_chunks,
    crop_flip,
    crop_flip_draws,
    mirror,
    normalize_,
)


@dataclass(frozen=True)
class RotationConfig:
    crop_pad: Pixels = 4  # random-crop padding before rotating (RotNet CIFAR: 4 px); 0 = no crop
    flip: bool = True  # random horizontal flip (kept: a flip does not change the rotation label)
    # input statistics: ImageNet's, or CIFAR-10's as RotNet's CIFAR code (dataloader.py l.144-145); the transfer
    # input the checkpoint records follows
    normalize: Literal["imagenet", "cifar"] = "imagenet"


def write_rotations(out: Tensor, images: Tensor) -> Tensor:
    """out [N,4,C,H,W] (any dtype) <- square images [N,C,H,W] rotated by 0, 90, 180, 270 degrees counter-clockwise
    (as torch.rot90): rot90 by k is a transpose for odd k and a flip of both axes for k = 2, views copied once."""
    out[:, 0].copy_(images)
    out[:, 1].copy_(images.transpose(2, 3).flip(2))  # rot90 k=1: (i, j) <- (j, w-1-i)
    out[:, 2].copy_(images.flip((2, 3)))
    out[:, 3].copy_(images.transpose(2, 3).flip(3))  # k=3: (i, j) <- (h-1-j, i)
    return out


@register_task("rotation", config=RotationConfig)
class Rotation(PretextTask):
    """RotNet: 4-way rotation classification with all four rotations of every image in the batch."""

    display_name = "RotNet"

    def __init__(self, cfg: RotationConfig, backbone: Backbone) -> None:
        super().__init__(cfg, backbone)
        self.head = TapHead(backbone, backbone.head_tap, 4)

    def make_batch(self, images: Tensor, targets: dict[str, Any], generator: torch.Generator) -> dict[str, Tensor]:
        """uint8 [N,3,H,W] -> inputs [4N,3,H,W] (normalised), labels [4N]: image i at rows 4i..4i+3, rotated by 0,
        90, 180, 270 degrees (`write_rotations`).

        A few images at a time, from the CPU's cache: each (flipped) image is normalised once ((x / 255 - mean) /
        std, the steps of `normalize`: the same bits), then its four rotations are written as views straight into
        their float slots. At the paper's 192 x 224 px the output is 462 MB, written once."""
        cfg, (n, c, h, w), dev = self.cfg, images.shape, images.device
        if h != w:
            raise ValueError(f"rotation: the four rotations of a batch need square images, found {h}x{w}")
        flips = None
        if cfg.crop_pad or cfg.flip:
            ys, xs, flips = crop_flip_draws(n, cfg.crop_pad, cfg.flip, generator, dev)
            if cfg.crop_pad:  # CIFAR's padded crops: one gather over the (small) batch first
                images, flips = crop_flip(images, ys, xs, flips, cfg.crop_pad), None
        mean, std = (CIFAR_MEAN, CIFAR_STD) if cfg.normalize == "cifar" else (MEAN, STD)
        inputs = torch.empty((n, 4, c, h, w), device=dev)
        for part in cache_chunks(n, 4 * inputs[0].numel(), dev):
            chunk = images[part] if flips is None else mirror(images[part], flips[part])
            # normalised once per image, then its four rotations copied: the same values as normalising the
            # four copies (each pixel's value does not depend on where it lands), a quarter of the arithmetic
            write_rotations(inputs[part], normalize_(chunk.to(torch.float32, copy=True), mean, std))
        return {"inputs": inputs.flatten(0, 1), "labels": torch.arange(4, device=dev).repeat(n)}

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        features = self.backbone(batch["inputs"], taps=(self.head.tap,))[self.head.tap]
        logits = self.head(features)  # [4N, 4]
        return {"loss": F.cross_entropy(logits, batch["labels"]), "acc": accuracy(logits, batch["labels"])}

    def transfer_input(self) -> str:
        return self.cfg.normalize

    @classmethod
    def tiny(cls) -> TinySetup:
        return TinySetup("nin", {"blocks": 3, "width": 0.1, "image_size": 32}, 32)
