"""`sslbench import --from SOURCE PATH OUT.pt`: the authors' released weights as an sslbench checkpoint.

The result is a finished pretraining checkpoint of the matching task, recipe and backbone (every protocol takes it
with `--checkpoint OUT.pt`; its rows say where it came from), written only when every key of the source maps.

Sources:
- `rotnet`: gidariss/FeatureLearningRotNet's ImageNet AlexNet (architectures/AlexNet.py; a checkpoint written by
  algorithms/Algorithm.py save_network, {'epoch', 'network': state_dict}, or the bare state dict). Its
  `_feature_blocks` are conv1, pool1, conv2, pool2, conv3, conv4, conv5, pool5, fc_block, classifier: each conv a
  Sequential(Conv2d with bias, BatchNorm2d, ReLU), fc_block Sequential(Flatten, Linear without bias, BatchNorm1d,
  ReLU, Linear, BatchNorm1d, ReLU), the classifier one Linear (4 rotations). sslbench's is rotation/paper-alexnet's
  trunk, whose convolutions have no bias before BatchNorm: each released bias is folded into its BatchNorm's
  running mean (BN(x + b) with mean m is BN(x) with mean m - b; in training BatchNorm removes a bias anyway), so
  the imported trunk computes what the released one does.
  And its CIFAR Network-in-Network (architectures/NetworkInNetwork.py): `_feature_blocks.<s>.Block<s+1>_ConvB<j>`
  (`.layers.Conv` without bias, `.layers.BatchNorm`) for 3-5 stages, then `Classifier`; sslbench's is
  rotation/paper.toml's NIN with as many blocks. RotNet's CIFAR configs build it with use_avg_on_conv3 = False
  (no pooling after block 3), as sslbench's NIN is; a model trained with True has the same weights but pools there,
  which no key shows, so sslbench's trunk would not compute what it did.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from sslbench.backbones.base import backbone_label, build_backbone
from sslbench.checkpoint import FORMAT, key_list, load_state_strict
from sslbench.errors import UserError
from sslbench.plugins import load_all
from sslbench.recipes import load_recipe
from sslbench.registry import TASKS
from sslbench.runtime import atomic_torch_save, code_version, load_weights_only

SOURCES = ("rotnet",)

# RotNet AlexNet module -> sslbench AlexNet module (rotation/paper-alexnet.toml's trunk)
ROTNET_ALEXNET = {
    "_feature_blocks.0.0": "conv1.0", "_feature_blocks.0.1": "conv1.1",
    "_feature_blocks.2.0": "conv2.0", "_feature_blocks.2.1": "conv2.1",
    "_feature_blocks.4.0": "conv3.0", "_feature_blocks.4.1": "conv3.1",
    "_feature_blocks.5.0": "conv4.0", "_feature_blocks.5.1": "conv4.1",
    "_feature_blocks.6.0": "conv5.0", "_feature_blocks.6.1": "conv5.1",
    "_feature_blocks.8.1": "fc6.1", "_feature_blocks.8.2": "fc6.2",
    "_feature_blocks.8.4": "fc7.1", "_feature_blocks.8.5": "fc7.2",
}
ROTNET_HEAD = "_feature_blocks.9.0"  # the rotation classifier: the rotation task's head.fc
CONV_BN = [(f"_feature_blocks.{i}.0", f"_feature_blocks.{i}.1") for i in (0, 2, 4, 5, 6)]


def import_released(source: str, path: Path, out: Path) -> Path:
    """Convert the released checkpoint at `path` (from `source`) and write it to `out` as an sslbench checkpoint."""
    load_all()
    path, out = Path(path), Path(out)
    if source not in SOURCES:
        raise UserError(f"unknown --from {source!r}; valid: {', '.join(SOURCES)}")
    if out.suffix not in (".pt", ".pth"):
        raise UserError(f"import {out}: expected a file name ending in .pt, found {out.suffix or 'no extension'}; "
                        f"e.g. {out.with_suffix('.pt')}")
    if not path.is_file():
        raise UserError(f"import: {path} not found; pass the released checkpoint file")
    raw = load_weights_only(path)
    weights = raw.get("network", raw) if isinstance(raw, dict) else None
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise UserError(f"{path}: expected RotNet's checkpoint ({{'epoch', 'network': state_dict}}) or a state dict "
                        "of tensors")
    epoch = raw.get("epoch") if isinstance(raw, dict) else None
    nin = any(".Block1_ConvB1." in k for k in weights)
    state = _rotnet_nin(weights, path, epoch) if nin else _rotnet_alexnet(weights, path, epoch)
    atomic_torch_save(state, out)
    return out


def _rotnet_alexnet(weights: dict[str, torch.Tensor], path: Path, epoch: Any) -> dict[str, Any]:
    first = weights.get("_feature_blocks.0.0.weight")
    if first is None or tuple(first.shape) != (64, 3, 11, 11):
        found = ", ".join(sorted(weights)[:3])
        raise UserError(f"{path}: neither RotNet's ImageNet AlexNet (_feature_blocks.0.0.weight of shape "
                        f"[64, 3, 11, 11]) nor its CIFAR NIN (_feature_blocks.0.Block1_ConvB1...); found keys {found}, "
                        "...")
    weights = dict(weights)
    for conv, bn in CONV_BN:  # fold each conv bias into its BatchNorm's running mean
        bias = weights.pop(f"{conv}.bias", None)
        if bias is not None and f"{bn}.running_mean" in weights:
            weights[f"{bn}.running_mean"] = weights[f"{bn}.running_mean"] - bias
    trunk, head, unmapped = {}, {}, []
    for key, value in weights.items():
        module, _, leaf = key.rpartition(".")
        if module in ROTNET_ALEXNET:
            trunk[f"{ROTNET_ALEXNET[module]}.{leaf}"] = value
        elif module == ROTNET_HEAD:
            head[f"fc.{leaf}"] = value
        else:
            unmapped.append(key)
    _refuse_unmapped(unmapped, path, "AlexNet")
    return _checkpoint(load_recipe("pretrain", "rotation", "paper", flavour="alexnet"), trunk, head, path, epoch)


NIN_KEY = re.compile(r"_feature_blocks\.(\d+)\.Block(\d+)_ConvB([123])\.layers\.(Conv|BatchNorm)\.(\w+)")


def _rotnet_nin(weights: dict[str, torch.Tensor], path: Path, epoch: Any) -> dict[str, Any]:
    stages = 1 + max((int(m.group(1)) for k in weights if (m := NIN_KEY.fullmatch(k))), default=-1)
    if not 3 <= stages <= 5:
        raise UserError(f"{path}: a RotNet NIN with {stages} stages; sslbench's NIN has 3, 4 or 5 blocks")
    trunk, head, unmapped = {}, {}, []
    for key, value in weights.items():
        m = NIN_KEY.fullmatch(key)
        if m and int(m.group(2)) == int(m.group(1)) + 1:
            stage, layer = int(m.group(1)), int(m.group(3)) - 1
            block = f"block{stage + 1}" if stage < 2 else f"extra.{stage - 2}"
            trunk[f"{block}.{layer}.{0 if m.group(4) == 'Conv' else 1}.{m.group(5)}"] = value
        elif key.startswith(f"_feature_blocks.{stages}.Classifier."):
            head[f"fc.{key.rsplit('.', 1)[1]}"] = value
        else:
            unmapped.append(key)
    _refuse_unmapped(unmapped, path, "NIN")
    recipe = load_recipe("pretrain", "rotation", "paper", [f"backbone.blocks={stages}"])
    return _checkpoint(recipe, trunk, head, path, epoch)


def _refuse_unmapped(unmapped: list[str], path: Path, net: str) -> None:
    if unmapped:
        raise UserError(f"{path}: keys with no place in the RotNet {net} mapping: {key_list(unmapped)}")


def _checkpoint(recipe: Any, trunk: dict[str, torch.Tensor], head: dict[str, torch.Tensor], path: Path,
                epoch: Any) -> dict[str, Any]:
    """A finished rotation checkpoint of `recipe` holding the mapped trunk (and head, if the release has it)."""
    task = TASKS.get("rotation")(recipe.component.cfg, build_backbone(recipe.backbone.name, recipe.backbone.cfg))
    load_state_strict(task.backbone, trunk, path)
    if head:
        load_state_strict(task.head, head, path)
    b = recipe.backbone
    return {
        "format": FORMAT, "task": recipe.name, "variant": task.variant(), "transfer_input": task.transfer_input(),
        "backbone": {"name": b.name, "label": backbone_label(b.name, b.cfg)}, "recipe": recipe.to_json(),
        "version": code_version(), "finished": True, "total": 0, "wall_time": 0.0,
        "model": task.state_dict(), "backbone_state": task.backbone.state_dict(), "setup": {}, "fit": {}, "rng": [],
        "unreadable": {}, "imported_from": {"source": "rotnet", "path": str(path), "epoch": epoch,
                                            "head": bool(head)},
    }
