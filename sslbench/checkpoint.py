"""Loading a trunk for transfer: from an sslbench checkpoint, a plain state dict, or random init."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from sslbench.backbones.base import Backbone, backbone_label, build_backbone
from sslbench.config import Named, recipe_from_json
from sslbench.data.build import dataset_label
from sslbench.errors import UserError


@dataclass(frozen=True)
class Trunk:
    backbone: Backbone
    method: str  # pretext task that trained it, or 'random'
    variant: str
    label: str  # backbone label for tables
    pretrain_dataset: str
    pretrain_run: str
    checkpoint: str
    prepare: Callable[[Tensor], Tensor]  # uint8 images -> the trunk's input (the pretext task's own transform)
    reinitialised: tuple[str, ...] = ()  # weights re-initialised because the trunk was rebuilt at another size


def at_protocol_size(trained: Named, protocol: Named) -> Named:
    """The trained backbone's config at the input size the protocol's recipe declares for this backbone
    (unchanged when the names differ or a size is missing)."""
    size_old = getattr(trained.cfg, "image_size", None)
    size_new = getattr(protocol.cfg, "image_size", None)
    if trained.name != protocol.name or size_old is None or size_new is None or size_old == size_new:
        return trained
    return Named(trained.name, dataclasses.replace(trained.cfg, image_size=size_new))


def resize_trunk(backbone: Backbone, trained: Named, protocol: Named) -> tuple[Backbone, tuple[str, ...]]:
    """A trunk pretrained at another input size (a Jigsaw tile tower, a Context patch net) rebuilt at the size
    the protocol's recipe declares for this backbone; convolutions carry over, a weight whose shape depends on
    the size (fc6, after pool5) is re-initialised, as the papers did when transferring such trunks."""
    target = at_protocol_size(trained, protocol)
    if target is trained:
        return backbone, ()
    resized = build_backbone(target.name, target.cfg)
    own, old = resized.state_dict(), backbone.state_dict()
    keep = {k: v for k, v in old.items() if k in own and own[k].shape == v.shape}
    resized.load_state_dict(keep, strict=False)
    return resized, tuple(sorted(set(own) - set(keep)))


RANDOM_LIKE = "random:"  # --checkpoint random:CKPT = random init of CKPT's architecture


def load_trunk(checkpoint: str, fallback: Named, taps: Sequence[str]) -> Trunk:
    """'random' -> `fallback` freshly initialised; 'random:CKPT' -> CKPT's architecture (as transferred: at
    the protocol's size, with its input transform) freshly initialised, the like-for-like baseline of a trunk
    whose shape differs from the protocol's; a path -> the backbone its checkpoint describes."""
    if checkpoint == "random":
        backbone = build_backbone(fallback.name, fallback.cfg)
        trunk = Trunk(backbone, "random", "", backbone_label(fallback.name, fallback.cfg), "", "", "random",
                      trunk_input(None, backbone))
    elif checkpoint.startswith(RANDOM_LIKE):
        trunk = _random_like(Path(checkpoint[len(RANDOM_LIKE):]), fallback, checkpoint)
    else:
        trunk = _from_file(Path(checkpoint), fallback)
    _require_taps(trunk, taps)
    return trunk


def _read(path: Path) -> Any:
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}; pass a runs/<task>-*/checkpoint.pt or 'random'")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for a damaged file
        raise UserError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {exc})") from None


def _is_pretrain(state: Any) -> bool:
    return isinstance(state, dict) and state.get("format", "").startswith("sslbench-pretrain")


def _random_like(path: Path, fallback: Named, checkpoint: str) -> Trunk:
    state = _read(path)
    if not _is_pretrain(state):
        raise UserError(f"{checkpoint}: {path} is not an sslbench pretraining checkpoint, so its architecture is "
                        "unknown; use 'random' (the protocol recipe's backbone) or set --set backbone.*")
    recipe = recipe_from_json(state["recipe"])
    target = at_protocol_size(recipe.backbone, fallback)
    backbone = build_backbone(target.name, target.cfg)
    return Trunk(backbone, "random", f"{state['task']} trunk", backbone_label(target.name, target.cfg), "", "",
                 checkpoint, trunk_input(state["task"], backbone))


def _from_file(path: Path, fallback: Named) -> Trunk:
    state = _read(path)
    if _is_pretrain(state):
        recipe = recipe_from_json(state["recipe"])
        backbone = build_backbone(recipe.backbone.name, recipe.backbone.cfg)
        load_state_strict(backbone, state["backbone_state"], path)
        backbone, reinit = resize_trunk(backbone, recipe.backbone, fallback)
        return Trunk(backbone, state["task"], state.get("variant", ""), state["backbone"]["label"],
                     dataset_label(recipe.data), path.parent.name, str(path), trunk_input(state["task"], backbone),
                     reinit)
    # A plain state dict (e.g. weights converted from the authors' Caffe models): load into the recipe's backbone.
    weights = state.get("state_dict", state) if isinstance(state, dict) else None
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise UserError(f"{path}: expected an sslbench checkpoint or a state dict of tensors")
    backbone = build_backbone(fallback.name, fallback.cfg)
    load_state_strict(backbone, weights, path)
    return Trunk(backbone, path.stem, "", backbone_label(fallback.name, fallback.cfg), "", "", str(path),
                 trunk_input(None, backbone))


def load_state_strict(module: torch.nn.Module, weights: dict[str, Any], source: Path) -> None:
    """Load or explain which keys differ (missing, unexpected, wrong shape) in one line."""
    own = module.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    shapes = sorted(k for k in set(own) & set(weights) if tuple(own[k].shape) != tuple(weights[k].shape))
    if missing or unexpected or shapes:
        parts = []
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
            if keys:
                parts.append(f"{what}: {', '.join(keys[:4])}" + (f" (+{len(keys) - 4} more)" if len(keys) > 4 else ""))
        raise UserError(
            f"{source} does not match backbone {type(module).__name__} ({'; '.join(parts)}); "
            "is it a checkpoint of another architecture? set --set backbone.name=... to match it"
        )
    module.load_state_dict(weights)


def trunk_input(task: str | None, backbone: Backbone) -> Callable[[Tensor], Tensor]:
    """The input transform the trunk was trained with: its pretext task's, else by input channels."""
    from sslbench.registry import TASKS
    from sslbench.tasks.base import PretextTask

    if task in TASKS:
        return TASKS.get(task).trunk_input
    return PretextTask.trunk_input if backbone.in_channels == 3 else PretextTask.gray_input


def _require_taps(trunk: Trunk, taps: Sequence[str]) -> None:
    missing = [t for t in taps if t not in trunk.backbone.feature_info]
    if missing:
        raise UserError(
            f"{trunk.checkpoint} ({trunk.label}) has no tap {missing[0]!r} that this protocol needs; "
            f"its taps are {', '.join(trunk.backbone.feature_info)}"
        )
