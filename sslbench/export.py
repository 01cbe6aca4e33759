"""`sslbench export torchvision CKPT OUT.pth` / `export detectron2 CKPT OUT.pkl`: a pretrained ResNet trunk in the
weight format of torchvision or detectron2.

sslbench's ResNet v1 is torchvision's (its Bottleneck blocks and module names conv1, bn1, layer1..layer4), so the
export is the trunk's weights under the same names, checked against `torchvision.models.resnet50()` /
`resnet101()`: the result loads with `strict=True` apart from `fc` (the trunk ends at the global pool; a
classifier is the user's). Only trunks torchvision can hold are taken: version 1, all four stages, width 1, three
input channels; anything else is one line naming what differs, before anything is written.

detectron2 reads a pickle {'model': {name: numpy array}, '__author__', 'matching_heuristics': True} with its own
module names (sslbench.backbones.resnet.detectron2_name); the config that goes with it (RGB input, torchvision's
pixel mean / std, STRIDE_IN_1X1 False) is the voc-det-d2 protocol's, shipped as
sslbench/protocols/d2configs/pascal_voc_R_50_C4_24k.yaml.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from sslbench.backbones.resnet import detectron2_weights, layout_differences
from sslbench.checkpoint import is_pretrain, key_differences, read_checkpoint
from sslbench.config import recipe_from_json
from sslbench.errors import UserError
from sslbench.runtime import atomic_pickle, atomic_torch_save

HEAD = ("fc.weight", "fc.bias")  # torchvision's classifier: not part of a trunk


def torchvision_state(checkpoint: Path) -> tuple[dict[str, torch.Tensor], str]:
    """(the state dict, the torchvision constructor's name) of a pretraining checkpoint's ResNet trunk."""
    import torchvision

    checkpoint = Path(checkpoint)
    state = read_checkpoint(checkpoint)
    if not is_pretrain(state):
        raise UserError(f"{checkpoint}: not an sslbench pretraining checkpoint; pass a runs/<task>-*/checkpoint.pt "
                        "of a ResNet trunk")
    backbone = recipe_from_json(state["recipe"]).backbone
    if backbone.name != "resnet":
        raise UserError(f"{checkpoint}: its trunk is {backbone.name}; export torchvision takes ResNet-50 / ResNet-101 "
                        "trunks (torchvision's AlexNet and VGG have other layer shapes)")
    cfg = backbone.cfg
    differs = layout_differences(cfg)
    if differs:
        raise UserError(f"{checkpoint}: torchvision's ResNet cannot hold this trunk: {'; '.join(differs)}")
    name = f"resnet{cfg.depth}"
    expected = getattr(torchvision.models, name)(weights=None).state_dict()
    expected = {k: v for k, v in expected.items() if k not in HEAD}
    weights: dict[str, Any] = state["backbone_state"]
    differ = key_differences(expected, weights, unexpected="not in torchvision")
    if differ:
        raise UserError(f"{checkpoint}: its trunk does not map onto torchvision's {name} ({differ})")
    return {k: weights[k].detach().clone() for k in expected}, name


def _check_out(out: Path, suffixes: tuple[str, ...], example: str) -> Path:
    out = Path(out)
    if out.suffix not in suffixes:
        raise UserError(f"export {out}: expected a file name ending in {' or '.join(suffixes)}, found "
                        f"{out.suffix or 'no extension'}; e.g. {out.with_suffix(suffixes[0])}")
    if out.is_dir():
        raise UserError(f"export {out}: a directory; give a file name, e.g. {out / example}")
    return out


def export_torchvision(checkpoint: Path, out: Path) -> Path:
    """Write the trunk of `checkpoint` to `out` (.pth / .pt) as torchvision's ResNet state dict, without `fc`."""
    out = _check_out(out, (".pth", ".pt"), "resnet50.pth")
    weights, _ = torchvision_state(checkpoint)
    atomic_torch_save(weights, out)
    return out


def export_detectron2(checkpoint: Path, out: Path) -> Path:
    """Write the ResNet trunk of `checkpoint` to `out` (.pkl) in detectron2's weight format (MODEL.WEIGHTS)."""
    out = _check_out(out, (".pkl",), "r50.pkl")
    weights, _ = torchvision_state(checkpoint)
    atomic_pickle(detectron2_weights(weights, f"sslbench {Path(checkpoint)}"), out)
    return out
