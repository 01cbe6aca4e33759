"""`sslbench import --from SOURCE PATH OUT.pt`: the authors' released weights as an sslbench checkpoint.

The result is a finished pretraining checkpoint of the matching task, recipe and backbone (every protocol takes it
with `--checkpoint OUT.pt`; its rows say where it came from), written only when every key of the source maps. What
the release does not hold (VISSL's trunks end at pool5, so fc6 / fc7 and the task's head) stays at sslbench's
initialisation and is listed under the checkpoint's `imported_from.initialised`.

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
- `jigsaw-pytorch`: bbrattoli/JigsawPuzzlePytorch's context-free network (JigsawNetwork.py `Network`, saved by its
  `save` as a bare state dict, JigsawTrain.py's jps_<epoch>_<step>.pth.tar): `conv.conv{1..5}_s1` (Conv2d with
  bias; conv1 11x11 stride 2 pad 0, conv2/4/5 in 2 groups), Caffe's LRN after pool1 / pool2 (Utils/Layers.py: x /
  (1 + alpha * mean of x^2 over 5 channels)^beta, torch's LocalResponseNorm(5, 1e-4, 0.75)), no BatchNorm,
  `fc6.fc6_s1` 2304 -> 1024 on its 75 px tiles (pool5 3x3), then `fc7.fc7` over the 9 concatenated fc6 outputs and
  `classifier.fc8` over the permutations. sslbench's is jigsaw/paper.toml with the port's trunk (bn false, lrn true,
  conv1 pad 0, 75 px tiles in 85 px cells of a 255 px crop: JigsawImageLoader.py); fc7 becomes the task head's
  first layer. fc8's classes are the order of the release's permutations_<N>.npy, so fc8 is imported only with
  that file (`--permutations`, 0- or 1-based as the port accepts), which then becomes the task's permutation set;
  without it fc8 stays initialised and the set is sslbench's.
- `vissl`: a VISSL checkpoint or model-zoo file ({'classy_state_dict': {'base_model': {'model': {'trunk': ...}}}},
  or the bare trunk state dict), trunk keys under `_feature_blocks.`. vissl/models/trunks/alexnet_rotnet.py
  (RotNet's AlexNet without fc_block: rotation/paper-alexnet, biases folded as above), alexnet_jigsaw.py (the
  Jigsaw AlexNet: conv1 / conv2 with bias and LRN, BatchNorm with biases folded on conv3..conv5, conv1 stride 2:
  jigsaw/paper.toml with bn_layers conv3+, evaluated at stride 2 as VISSL does, transfer_stride 0), and
  resnext.py's ResNet-50 / ResNet-101 (torchvision's layout: sslbench's ResNet v1, four stages; depth, width and
  input channels read from the shapes). A ResNet's file does not say which pretext task trained it: `--task` names
  it: rotation (rotation/paper-alexnet.toml's ImageNet setting with this trunk) or supervised (supervised/paper.toml's).
  VISSL models configured with INPUT_TYPE bgr expect BGR input; their conv1 is imported as it is, so feed such a
  model BGR or reverse conv1's input channels.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sslbench.backbones.base import build_backbone
from sslbench.checkpoint import key_list, load_state_strict, pretrain_state
from sslbench.config import Recipe, recipe_from_dict
from sslbench.errors import UserError
from sslbench.plugins import load_all
from sslbench.recipes import load_recipe, recipe_path, tomllib
from sslbench.registry import TASKS
from sslbench.runtime import atomic_torch_save, load_weights_only

SOURCES = ("rotnet", "jigsaw-pytorch", "vissl")

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
ROTNET_HEAD = {"_feature_blocks.9.0": "fc"}  # the rotation classifier: the rotation task's head.fc
CONV_BN = [(f"_feature_blocks.{i}.0", f"_feature_blocks.{i}.1") for i in (0, 2, 4, 5, 6)]
# VISSL's AlexNets are the same _feature_blocks without fc_block and classifier (alexnet_rotnet.py,
# alexnet_jigsaw.py; the Jigsaw one has no BatchNorm at .0.1 / .2.1, so those keys simply do not occur)
VISSL_ALEXNET = {k: v for k, v in ROTNET_ALEXNET.items() if not k.startswith("_feature_blocks.8.")}
# JigsawPuzzlePytorch module -> sslbench (jigsaw's AlexNet without BatchNorm: conv<i>.0, fc6.1; the CFN head
# fc_head is Linear, ReLU, Dropout, Linear: head.0 = fc7, head.3 = fc8)
JIGSAW_PORT = {**{f"conv.conv{i}_s1": f"conv{i}.0" for i in range(1, 6)}, "fc6.fc6_s1": "fc6.1"}
JIGSAW_PORT_HEAD = {"fc7.fc7": "0", "classifier.fc8": "3"}
# the port's trunk on jigsaw/paper.toml: no BatchNorm, LRN, conv1 pad 0, 75 px tiles cut in 85 px cells of the
# 255 px crop (JigsawImageLoader.py: CenterCrop(255), cells of 85, tiles resized to 75); fc7 without BatchNorm
JIGSAW_PORT_SET = ["backbone.bn=false", "backbone.lrn=true", "backbone.conv1_pad=0", "backbone.image_size=75",
                   "task.tile=75", "task.cell=85", "task.head_bn=false"]
# VISSL's alexnet_jigsaw: BatchNorm on conv3..conv5 only, LRN, conv1 pad 0; VISSL evaluates it at stride 2
VISSL_LACKS = ("fc6.", "fc7.", "head.")  # VISSL's AlexNet trunks end at pool5
VISSL_JIGSAW_SET = ["backbone.bn_layers=conv3+", "backbone.lrn=true", "backbone.conv1_pad=0",
                    "backbone.transfer_stride=0"]
# --task of a VISSL ResNet: the tasks whose ImageNet recipe takes a ResNet-50 / 101 v1 trunk on RGB images, each
# with the recipe flavour it is built from (RotNet's ImageNet one: paper.toml is its CIFAR NIN)
RESNET_TASKS = {"rotation": "alexnet", "supervised": ""}


def import_released(source: str, path: Path, out: Path, task: str | None = None,
                    permutations: Path | None = None) -> Path:
    """Convert the released checkpoint at `path` (from `source`) and write it to `out` as an sslbench checkpoint.
    `task`: the pretext task of a VISSL ResNet trunk; `permutations`: JigsawPuzzlePytorch's permutations_<N>.npy."""
    load_all()
    path, out = Path(path), Path(out)
    if source not in SOURCES:
        raise UserError(f"unknown --from {source!r}; valid: {', '.join(SOURCES)}")
    if out.suffix not in (".pt", ".pth"):
        raise UserError(f"import {out}: expected a file name ending in .pt, found {out.suffix or 'no extension'}; "
                        f"e.g. {out.with_suffix('.pt')}")
    if not path.is_file():
        raise UserError(f"import: {path} not found; pass the released checkpoint file")
    if task is not None and source != "vissl":
        raise UserError(f"import: --task names the pretext task of a VISSL ResNet trunk; a {source} release says "
                        "its own task, drop --task")
    if permutations is not None and source != "jigsaw-pytorch":
        raise UserError("import: --permutations is JigsawPuzzlePytorch's permutations_<N>.npy; use it with "
                        "--from jigsaw-pytorch")
    perms = _permutation_file(permutations) if permutations is not None else None
    raw = load_weights_only(path)
    if source == "rotnet":
        weights = _tensors(raw.get("network", raw) if isinstance(raw, dict) else None, path,
                           "RotNet's checkpoint ({'epoch', 'network': state_dict}) or a state dict")
        epoch = raw.get("epoch")
        nin = any(".Block1_ConvB1." in k for k in weights)
        state = _rotnet_nin(weights, path, epoch) if nin else _rotnet_alexnet(weights, path, epoch)
    elif source == "jigsaw-pytorch":
        weights = _tensors(raw, path, "JigsawPuzzlePytorch's saved state dict (Network.save)")
        state = _jigsaw_port(weights, path, perms)
    else:
        state = _vissl(_vissl_trunk(raw, path), path, task)
    atomic_torch_save(state, out)
    return out


def _tensors(weights: Any, path: Path, expected: str) -> dict[str, torch.Tensor]:
    if not isinstance(weights, dict) or not weights or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise UserError(f"{path}: expected {expected}, a dict of tensors; found {type(weights).__name__}")
    return dict(weights)


def _fold_biases(weights: dict[str, torch.Tensor], pairs: list[tuple[str, str]]) -> None:
    """Fold each conv bias into its BatchNorm's running mean, where the conv has a BatchNorm after it."""
    for conv, bn in pairs:
        if f"{bn}.running_mean" in weights and f"{conv}.bias" in weights:
            weights[f"{bn}.running_mean"] = weights[f"{bn}.running_mean"] - weights.pop(f"{conv}.bias")


def _mapped(weights: dict[str, torch.Tensor], *tables: dict[str, str]) -> tuple[list[dict[str, torch.Tensor]],
                                                                               list[str]]:
    """Each key renamed by the table its module is in ('module.leaf' -> 'table[module].leaf'), one dict per table,
    and the keys of no table."""
    out: list[dict[str, torch.Tensor]] = [{} for _ in tables]
    unmapped = []
    for key, value in weights.items():
        module, _, leaf = key.rpartition(".")
        for table, into in zip(tables, out):
            if module in table:
                into[f"{table[module]}.{leaf}"] = value
                break
        else:
            unmapped.append(key)
    return out, unmapped


def _rotnet_alexnet(weights: dict[str, torch.Tensor], path: Path, epoch: Any) -> dict[str, Any]:
    first = weights.get("_feature_blocks.0.0.weight")
    if first is None or tuple(first.shape) != (64, 3, 11, 11):
        found = ", ".join(sorted(weights)[:3])
        raise UserError(f"{path}: neither RotNet's ImageNet AlexNet (_feature_blocks.0.0.weight of shape "
                        f"[64, 3, 11, 11]) nor its CIFAR NIN (_feature_blocks.0.Block1_ConvB1...); found keys {found}, "
                        "...")
    _fold_biases(weights, CONV_BN)
    (trunk, head), unmapped = _mapped(weights, ROTNET_ALEXNET, ROTNET_HEAD)
    _refuse_unmapped(unmapped, path, "the RotNet AlexNet")
    recipe = load_recipe("pretrain", "rotation", "paper", flavour="alexnet")
    return _checkpoint(recipe, trunk, head, {"source": "rotnet", "path": str(path), "epoch": epoch})


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
    _refuse_unmapped(unmapped, path, "the RotNet NIN")
    recipe = load_recipe("pretrain", "rotation", "paper", [f"backbone.blocks={stages}"])
    return _checkpoint(recipe, trunk, head, {"source": "rotnet", "path": str(path), "epoch": epoch})


def _permutation_file(path: Path) -> torch.Tensor:
    """JigsawPuzzlePytorch's permutations_<N>.npy: [N, 9], each row a permutation of 0..8 (or 1..9: the port
    subtracts 1 when the minimum is 1, JigsawImageLoader.py)."""
    path = Path(path)
    try:
        perms = np.load(path)
    except (OSError, ValueError) as exc:
        raise UserError(f"--permutations {path}: not a readable .npy file ({exc})") from None
    if perms.ndim != 2 or perms.shape[1] != 9:
        raise UserError(f"--permutations {path}: expected an [N, 9] array of permutations, found shape "
                        f"{list(perms.shape)}")
    perms = perms.astype(np.int64) - (1 if perms.min() == 1 else 0)
    if not (np.sort(perms, axis=1) == np.arange(9)).all():
        raise UserError(f"--permutations {path}: a row is not a permutation of the 9 tiles (0..8 or 1..9)")
    return torch.from_numpy(perms)


def _jigsaw_port(weights: dict[str, torch.Tensor], path: Path, perms: torch.Tensor | None) -> dict[str, Any]:
    needed = ("conv.conv1_s1.weight", "fc7.fc7.weight", "classifier.fc8.weight")
    if any(k not in weights for k in needed):
        raise UserError(f"{path}: not JigsawPuzzlePytorch's Network (it has {', '.join(needed)}); found keys "
                        f"{key_list(sorted(weights))}")
    (trunk, head), unmapped = _mapped(weights, JIGSAW_PORT, JIGSAW_PORT_HEAD)
    _refuse_unmapped(unmapped, path, "the JigsawPuzzlePytorch")
    classes, fc7 = len(weights["classifier.fc8.weight"]), len(weights["fc7.fc7.weight"])
    if perms is not None and len(perms) != classes:
        raise UserError(f"--permutations holds {len(perms)} permutations but the release's fc8 has {classes} classes;"
                        f" pass its permutations_{classes}.npy")
    recipe = load_recipe("pretrain", "jigsaw", "paper", [*JIGSAW_PORT_SET, f"task.num_permutations={classes}",
                                                          f"task.fc7_dim={fc7}"])
    if perms is None:  # fc8's class order is the release's permutation file, which is not here
        head = {k: v for k, v in head.items() if not k.startswith("3.")}
    # the trunk's own fc7 is not the CFN's (the head's is): it stays sslbench's, as in a jigsaw pretraining
    lacks = ("fc7.",) if perms is not None else ("fc7.", "head.3.")
    return _checkpoint(recipe, trunk, head, {"source": "jigsaw-pytorch", "path": str(path)}, perms, lacks)


def _vissl_trunk(raw: Any, path: Path) -> dict[str, torch.Tensor]:
    trunk = raw
    for key in ("classy_state_dict", "base_model", "model", "trunk"):
        if isinstance(trunk, dict) and key in trunk:
            trunk = trunk[key]
    trunk = _tensors(trunk, path, "a VISSL checkpoint ({'classy_state_dict': {'base_model': {'model': {'trunk': "
                                  "...}}}}) or its trunk's state dict")
    if not all(k.startswith("_feature_blocks.") for k in trunk):
        odd = [k for k in trunk if not k.startswith("_feature_blocks.")]
        raise UserError(f"{path}: VISSL trunk keys start with _feature_blocks.; found {key_list(sorted(odd))}")
    return trunk


def _vissl(weights: dict[str, torch.Tensor], path: Path, task: str | None) -> dict[str, Any]:
    meta = {"source": "vissl", "path": str(path)}
    if "_feature_blocks.conv1.weight" in weights:
        return _vissl_resnet(weights, path, task, meta)
    if task is not None:
        raise UserError("import: --task is for VISSL's ResNet trunks; an AlexNet's layout says its task, drop --task")
    first = weights.get("_feature_blocks.0.0.weight")
    shape = tuple(first.shape) if first is not None else None
    _fold_biases(weights, CONV_BN)
    (trunk,), unmapped = _mapped(weights, VISSL_ALEXNET)
    if shape == (64, 3, 11, 11):  # alexnet_rotnet
        _refuse_unmapped(unmapped, path, "VISSL's alexnet_rotnet")
        return _checkpoint(load_recipe("pretrain", "rotation", "paper", flavour="alexnet"), trunk, {}, meta,
                           lacks=VISSL_LACKS)
    if shape == (96, 3, 11, 11) and "_feature_blocks.4.1.running_mean" in weights:  # alexnet_jigsaw
        _refuse_unmapped(unmapped, path, "VISSL's alexnet_jigsaw")
        return _checkpoint(load_recipe("pretrain", "jigsaw", "paper", VISSL_JIGSAW_SET), trunk, {}, meta,
                           lacks=VISSL_LACKS)
    raise UserError(f"{path}: a VISSL trunk sslbench does not map (conv1 {list(shape) if shape else 'absent'}); "
                    "it takes alexnet_rotnet, alexnet_jigsaw and resnet (ResNet-50 / 101) trunks")


def _vissl_resnet(weights: dict[str, torch.Tensor], path: Path, task: str | None, meta: dict[str, Any]
                  ) -> dict[str, Any]:
    if task not in RESNET_TASKS:
        found = f"found --task {task}" if task else "none given"
        raise UserError(f"{path}: a VISSL ResNet trunk does not say which pretext task trained it ({found}); pass "
                        f"--task with one of {', '.join(RESNET_TASKS)} (the tasks whose ImageNet recipe takes this "
                        "trunk)")
    trunk = {k.removeprefix("_feature_blocks."): v for k, v in weights.items()}
    stage3 = {int(k.split(".")[1]) for k in trunk if k.startswith("layer3.")}
    depth = {6: 50, 23: 101}.get(len(stage3))
    if depth is None:
        raise UserError(f"{path}: a ResNet with {len(stage3)} blocks in layer3; sslbench's ResNet is 50 (6) or "
                        "101 (23)")
    conv1 = trunk["conv1.weight"]
    backbone = {"name": "resnet", "depth": depth, "version": 1, "stages": 4, "width": conv1.shape[0] / 64,
                "in_channels": conv1.shape[1], "image_size": 224}
    source = recipe_path("pretrain", task, "paper", RESNET_TASKS[task])
    raw = tomllib.loads(source.read_text())
    raw["backbone"] = backbone
    recipe = recipe_from_dict("pretrain", task, raw, f"{source} with VISSL's ResNet", "paper", (), None)
    return _checkpoint(recipe, trunk, {}, meta, lacks=("head.",))


def _refuse_unmapped(unmapped: list[str], path: Path, net: str) -> None:
    if unmapped:
        raise UserError(f"{path}: keys with no place in {net} mapping: {key_list(sorted(unmapped))}")


def _checkpoint(recipe: Recipe, trunk: dict[str, torch.Tensor], head: dict[str, torch.Tensor],
                meta: dict[str, Any], permutations: torch.Tensor | None = None,
                lacks: tuple[str, ...] = ()) -> dict[str, Any]:
    """A finished checkpoint of `recipe` holding the mapped trunk and head keys. The keys a release does not hold
    by its design (`lacks`: key prefixes, 'head.' for the task's head) keep the task's initialisation and are
    listed (by module) in imported_from.initialised; any other missing key is a damaged or foreign file, refused."""
    task = TASKS.get(recipe.name)(recipe.component.cfg, build_backbone(recipe.backbone.name, recipe.backbone.cfg))
    source = Path(meta["path"])
    initialised: list[str] = []
    parts = [(task.backbone, trunk, "")] + ([(task.head, head, "head.")] if hasattr(task, "head") else [])
    for module, weights, prefix in parts:
        own = module.state_dict()
        extra = sorted(set(weights) - set(own))
        if extra:
            raise UserError(f"{source}: keys with no place in {recipe.name}'s trunk or head: {key_list(extra)}")
        kept = sorted(k for k in own if k not in weights)
        counters = [k for k in kept if k.endswith("num_batches_tracked")]  # older torch saved none: not weights
        kept_weights = [k for k in kept if k not in counters]
        missing = [prefix + k for k in kept_weights if not (prefix + k).startswith(lacks)]
        if missing:
            raise UserError(f"{source}: the release lacks {key_list(missing)}, which its network has; is the file "
                            "truncated, or another network's?")
        initialised += sorted({prefix + k.rsplit(".", 1)[0] for k in kept_weights})
        load_state_strict(module, {**{k: own[k] for k in kept}, **weights}, source)
    if permutations is not None:
        task.permutations.copy_(permutations)
    meta = {**meta, "head": bool(head), "initialised": initialised}
    if hasattr(task, "permutations"):
        meta["permutations"] = "the release's" if permutations is not None else "sslbench's"
    return pretrain_state(recipe, task, finished=True, imported_from=meta)
