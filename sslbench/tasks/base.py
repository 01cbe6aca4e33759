"""The pretext-task contract.

A PretextTask owns its config dataclass, its batch construction (pure: images + generator in, tensors
out, no model), its heads and its loss. The engine calls `make_batch` then `forward` (= `loss`) and
never branches on a task's name; a new task is one file in tasks/ plus its recipes.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslbench.backbones.base import Backbone

# ImageNet statistics: the papers' trunks were all trained on ImageNet-normalised inputs.
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


class PretextTask(nn.Module):
    def __init__(self, cfg: Any, backbone: Backbone) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone

    def make_batch(self, images: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """uint8 images [N,3,H,W] -> the pretext inputs and labels (pure; runs on the CPU)."""
        raise NotImplementedError

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """-> {'loss': scalar to minimise, other entries: scalars to log (e.g. 'acc')}."""
        raise NotImplementedError

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return self.loss(batch)

    @staticmethod
    def trunk_input(images: Tensor) -> Tensor:
        """uint8 images -> what the trunk saw in pretraining; transfer protocols feed it the same way."""
        return normalize(images)

    @staticmethod
    def gray_input(images: Tensor) -> Tensor:
        """uint8 RGB -> one normalised luminance channel, for 1-channel trunks of unknown origin."""
        gray = (images.float() / 255.0 * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
        return (gray - 0.45) / 0.25

    @staticmethod
    def variant(cfg: Any) -> str:
        """Label distinguishing recipe variants in tables (e.g. 'color-dropping'); '' if none."""
        return ""


def normalize(images: Tensor) -> Tensor:
    """uint8 [N,3,H,W] -> float, ImageNet mean/std normalised."""
    return (images.float() / 255.0 - MEAN) / STD


def random_crop_flip(images: Tensor, pad: int, flip: bool, generator: torch.Generator) -> Tensor:
    """Per-image random crop after zero-padding by `pad`, and a random horizontal flip (CIFAR style)."""
    n, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad)) if pad else images
    ys = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    xs = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    flips = (torch.rand(n, generator=generator) < 0.5) & flip
    out = torch.empty_like(images)
    for i in range(n):
        crop = padded[i, :, ys[i] : ys[i] + h, xs[i] : xs[i] + w]
        out[i] = crop.flip(-1) if flips[i] else crop
    return out


class TapHead(nn.Module):
    """A linear classifier on one backbone tap; spatial taps are global-average-pooled first."""

    def __init__(self, backbone: Backbone, tap: str, num_outputs: int) -> None:
        super().__init__()
        self.tap = tap
        info = backbone.feature_info[tap]
        self.pool = nn.AdaptiveAvgPool2d(1) if info.stride else nn.Identity()
        self.fc = nn.Linear(info.channels, num_outputs)

    def forward(self, features: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.pool(features), 1))


def accuracy(logits: Tensor, labels: Tensor) -> Tensor:
    return (logits.argmax(1) == labels).float().mean()
