"""The pretext-task contract.

A PretextTask owns its config dataclass, an optional data-dependent `setup` (run once before training, its
state saved with the checkpoint and restored on resume), its batch construction (`make_batch`: pure, images
+ targets + generator in, tensors out, no model), its heads, its parameter groups and its loss. Its trunk's
input at transfer time is a *named* transform (sslbench.transforms.TRANSFER_INPUTS) recorded in the
checkpoint. The engine calls `setup` once, then `make_batch` and `forward` (= `loss`) per step, and never
branches on a task's name; a new task is one file in tasks/ plus its recipes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from sslbench.backbones.base import Backbone

SetupState = dict[str, Tensor]
ParamGroups = list[dict[str, Any]]  # [{"params": [...], "lr_scale": x (default 1)}, ...], as sslbench.training takes


@dataclass(frozen=True)
class TinySetup:
    """The smallest geometry a task accepts, for the tests that exercise every registered task."""

    backbone: str
    backbone_cfg: dict[str, Any]
    image_size: int  # side of the uint8 images make_batch is given
    cfg: dict[str, Any] = field(default_factory=dict)
    targets: dict[str, Any] = field(default_factory=dict)  # targets make_batch needs beyond "index" (4 images')


class PretextTask(nn.Module):
    display_name: ClassVar[str] = ""  # the method's name in tables ("RotNet", "Context Encoders")
    # Input harmonisation (Doersch & Zisserman 2017): the transfer inputs this task can feed the trunk instead of its
    # own when a multi-task composite sets `harmonize` to one of them, so that every sub-task's input looks alike.
    harmonizable: ClassVar[tuple[str, ...]] = ()
    harmonize: str = ""

    def __init__(self, cfg: Any, backbone: Backbone) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = backbone

    def setup(self, dataset: Dataset, generator: torch.Generator) -> SetupState:
        """Statistics of the training set the task needs before its first batch (an ab prior, seed patches),
        computed once; the engine saves the returned state with the checkpoint and passes it to `restore`."""
        return {}

    def restore(self, state: SetupState) -> None:
        """Install the state `setup` returned (fresh run) or the checkpoint holds (resume, transfer)."""
        if state:
            raise ValueError(f"{type(self).__name__} has no setup state, found {sorted(state)}")

    def make_batch(self, images: Tensor, targets: dict[str, Any], generator: torch.Generator) -> dict[str, Tensor]:
        """uint8 images [N,3,H,W] and their targets (sslbench.data.datasets: labels, boxes, masks, ... and
        `index`, each item's place in the data set) -> the pretext inputs and labels (pure; runs on the CPU)."""
        raise NotImplementedError

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """-> {'loss': scalar to minimise, other entries: scalars to log (e.g. 'acc')}."""
        raise NotImplementedError

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return self.loss(batch)

    def param_groups(self) -> ParamGroups:
        """The optimizer's parameter groups, each {"params": [...], "lr_scale": x} (default: one group of
        every trainable parameter at the recipe's rate)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def transfer_input(self) -> str:
        """Name of the transform (TRANSFER_INPUTS) that gives the trunk what it saw in pretraining."""
        return "imagenet"

    def variant(self) -> str:
        """Label distinguishing recipe variants in tables (e.g. 'color-dropping'); '' if none."""
        return ""

    def examples(self, images: Tensor, generator: torch.Generator) -> list[tuple[str, Tensor]]:
        """What the pretext task does to uint8 images [N,3,H,W], as named panels of uint8 images [N,3,h,w] for
        `sslbench show <task>` (e.g. masked input / completion / original); tasks with a picture override it."""
        raise NotImplementedError

    @classmethod
    def tiny(cls) -> TinySetup:
        raise NotImplementedError


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
