"""What the third-party engines' protocols (voc-det-d2: detectron2, voc-seg-mmseg: mmsegmentation) share."""

from __future__ import annotations

from sslbench.backbones.base import Backbone
from sslbench.backbones.resnet import layout_differences
from sslbench.errors import UserError


def check_engine_trunk(protocol: str, engine: str, backbone: Backbone, transfer_input: str, checkpoint: str,
                       instead: str) -> None:
    """`engine`'s ResNet holds torchvision's layout (ResNet v1, four stages, width 1, RGB) and reads ImageNet-
    normalised RGB (its pixel mean / std); anything else is one line. `instead`: sslbench's own protocol for the
    AlexNet-family trunks."""
    if backbone.name != "resnet":
        raise UserError(f"{protocol}: {checkpoint} has a {backbone.name} trunk; {engine} takes ResNet-50 / 101 trunks "
                        f"(use --protocol {instead} for AlexNet-family trunks)")
    differs = layout_differences(backbone.cfg)  # type: ignore[arg-type]
    if differs:
        raise UserError(f"{protocol}: {engine}'s ResNet cannot hold the trunk of {checkpoint}: {'; '.join(differs)}")
    if transfer_input != "imagenet":
        raise UserError(f"{protocol}: the trunk of {checkpoint} reads {transfer_input!r} input, {engine} ImageNet-"
                        "normalised RGB; pass --input imagenet to evaluate it that way anyway")
