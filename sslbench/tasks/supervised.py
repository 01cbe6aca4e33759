"""Supervised pretraining on the pretraining split's own labels: the "INet Labels" row of the Task Ensemble's table
(Doersch & Zisserman 2017 compare with the same ResNet-101 trained on ImageNet's labels), and the upper reference of
every other table that has one.

A linear classifier on the trunk's head tap (ResNet: the pooled vector), cross-entropy on targets["label"], random
horizontal flips. Items without a label (-1) are refused: this task needs a labelled data set (at mini scale the
embedded data, whose label is the main object's class; at paper scale ImageNet's train split).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from sslbench.backbones.base import Backbone
from sslbench.config import In
from sslbench.errors import UserError
from sslbench.registry import register_task
from sslbench.tasks.base import PretextTask, TapHead, TinySetup, accuracy
from sslbench.transforms import lab_l_of_rgb8, mirror, normalize, random_flips


@dataclass(frozen=True)
class SupervisedConfig:
    num_classes: Annotated[int, In(2, 100_000)] = 20  # the labels' classes (embedded / VOC: 20, ImageNet: 1000)
    flip: bool = True  # random horizontal mirror
    input: Literal["imagenet", "lab-l"] = "imagenet"  # RGB as supervised nets are trained, or L - 50 (one channel)


@register_task("supervised", config=SupervisedConfig)
class Supervised(PretextTask):
    """Classification of the training images' labels: the supervised reference trunk."""

    display_name = "Supervised"
    harmonizable = ("lab-l",)

    def __init__(self, cfg: SupervisedConfig, backbone: Backbone) -> None:
        super().__init__(cfg, backbone)
        want = 1 if cfg.input == "lab-l" else 3
        if backbone.in_channels != want:
            raise UserError(f"supervised: task.input = {cfg.input!r} feeds {want} channel(s), but backbone.in_channels "
                            f"is {backbone.in_channels}; set backbone.in_channels = {want}")
        self.head = TapHead(backbone, backbone.head_tap, cfg.num_classes)

    def _input(self, images: Tensor) -> Tensor:
        return lab_l_of_rgb8(images) if (self.harmonize or self.cfg.input) == "lab-l" else normalize(images)

    def make_batch(self, images: Tensor, targets: dict[str, Any], generator: torch.Generator) -> dict[str, Tensor]:
        labels = targets.get("label")
        if labels is None or bool((labels < 0).any()) or bool((labels >= self.cfg.num_classes).any()):
            found = "none" if labels is None else f"{int(labels.min())}..{int(labels.max())}"
            raise UserError(f"supervised needs every image's class in 0..{self.cfg.num_classes - 1}; found {found}: "
                            "train on a labelled data set (the embedded data, imagenet) or set task.num_classes")
        if self.cfg.flip:
            flips = random_flips(images.shape[0], generator, images.device)
            images = mirror(images, flips)
        return {"input": self._input(images), "labels": labels.long()}

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        logits = self.head(self.backbone(batch["input"], taps=(self.head.tap,))[self.head.tap])
        return {"loss": F.cross_entropy(logits, batch["labels"]), "acc": accuracy(logits, batch["labels"])}

    def transfer_input(self) -> str:
        return self.harmonize or self.cfg.input

    @classmethod
    def tiny(cls) -> TinySetup:
        return TinySetup("resnet", {"depth": 50, "width": 0.0625, "image_size": 64, "stages": 3}, 64,
                         {"num_classes": 4}, {"label": torch.tensor([0, 1, 2, 3])})
