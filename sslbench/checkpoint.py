"""Loading a trunk for transfer: from an sslbench checkpoint, a plain state dict, or random init.

What `--checkpoint` names is a `TrunkSpec`: a checkpoint file; `random`, the protocol recipe's backbone
freshly initialised; or `random:CKPT`, CKPT's architecture as it transfers (at the protocol's size, with its
task's input transform) freshly initialised, the like-for-like baseline of a trunk whose shape differs from
the protocol recipe's. The input transform a trunk expects is the name its checkpoint records
(sslbench.transforms.TRANSFER_INPUTS): loading a trunk imports no task.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from sslbench.backbones.base import Backbone, backbone_label, build_backbone
from sslbench.config import Named, recipe_from_json
from sslbench.data.build import dataset_label
from sslbench.errors import UserError
from sslbench.transforms import TRANSFER_INPUTS, default_transfer_input

FORMAT = "sslbench-pretrain-2"  # 2: records the transfer input and the task's setup state
# Checkpoints of format 1 recorded no transfer input; theirs followed from the task (the only two that differed).
FORMAT1_TRANSFER_INPUTS = {"jigsaw": "per-image-std", "damaged-jigsaw": "lab-l-std"}


@dataclass(frozen=True)
class TrunkSpec:
    """A `--checkpoint` value: 'random', 'random:CKPT', or a checkpoint / state-dict file."""

    kind: Literal["file", "random", "random-like"]
    path: str = ""

    RANDOM_LIKE = "random:"

    @classmethod
    def parse(cls, text: str) -> TrunkSpec:
        if text == "random":
            return cls("random")
        if text.startswith(cls.RANDOM_LIKE):
            if not text[len(cls.RANDOM_LIKE):]:
                raise UserError("--checkpoint random: needs a checkpoint after the colon "
                                "(random:runs/<task>-*/checkpoint.pt)")
            return cls("random-like", text[len(cls.RANDOM_LIKE):])
        return cls("file", text)

    @classmethod
    def like(cls, checkpoint: str | Path) -> TrunkSpec:
        return cls("random-like", str(checkpoint))

    @property
    def is_random(self) -> bool:
        return self.kind != "file"

    def __str__(self) -> str:
        return {"random": "random", "random-like": self.RANDOM_LIKE + self.path, "file": self.path}[self.kind]


@dataclass(frozen=True)
class Trunk:
    backbone: Backbone
    method: str  # pretext task that trained it, or 'random'
    label: str  # backbone label for tables
    checkpoint: str  # the TrunkSpec it was loaded from, as text
    transfer_input: str  # name of the transform (TRANSFER_INPUTS) from uint8 images to the trunk's input
    variant: str = ""
    pretrain_dataset: str = ""
    pretrain_run: str = ""
    reinitialised: tuple[str, ...] = ()  # weights re-initialised because the trunk was rebuilt at another size

    @property
    def prepare(self) -> Callable[[Tensor], Tensor]:
        """uint8 images -> the trunk's input (the pretext task's own transform)."""
        return TRANSFER_INPUTS.get(self.transfer_input)


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


def load_trunk(spec: TrunkSpec, fallback: Named) -> Trunk:
    """The trunk `spec` names; `fallback` is the protocol recipe's backbone (random init, plain state dicts,
    and the size a pretrained trunk is rebuilt at)."""
    if spec.kind == "random":
        backbone = build_backbone(fallback.name, fallback.cfg)
        return Trunk(backbone=backbone, method="random", label=backbone_label(fallback.name, fallback.cfg),
                     checkpoint=str(spec), transfer_input=default_transfer_input(backbone.in_channels))
    if spec.kind == "random-like":
        return _random_like(spec, fallback)
    return _from_file(Path(spec.path), fallback, spec)


def read_checkpoint(path: Path) -> Any:
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}; pass a runs/<task>-*/checkpoint.pt or 'random'")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for a damaged file
        raise UserError(f"{path}: not a readable torch checkpoint ({type(exc).__name__}: {exc})") from None


def is_pretrain(state: Any) -> bool:
    return isinstance(state, dict) and str(state.get("format", "")).startswith("sslbench-pretrain")


def recorded_transfer_input(state: dict[str, Any]) -> str:
    """The transfer input a pretraining checkpoint records (format 1: derived from its task)."""
    return state.get("transfer_input") or FORMAT1_TRANSFER_INPUTS.get(state["task"], "imagenet")


def _random_like(spec: TrunkSpec, fallback: Named) -> Trunk:
    path = Path(spec.path)
    state = read_checkpoint(path)
    if not is_pretrain(state):
        raise UserError(f"{spec}: {path} is not an sslbench pretraining checkpoint, so its architecture is "
                        "unknown; use 'random' (the protocol recipe's backbone) or set --set backbone.*")
    recipe = recipe_from_json(state["recipe"])
    target = at_protocol_size(recipe.backbone, fallback)
    return Trunk(backbone=build_backbone(target.name, target.cfg), method="random", variant=f"{state['task']} trunk",
                 label=backbone_label(target.name, target.cfg), checkpoint=str(spec),
                 transfer_input=recorded_transfer_input(state))


def _from_file(path: Path, fallback: Named, spec: TrunkSpec) -> Trunk:
    state = read_checkpoint(path)
    if is_pretrain(state):
        recipe = recipe_from_json(state["recipe"])
        backbone = build_backbone(recipe.backbone.name, recipe.backbone.cfg)
        load_state_strict(backbone, state["backbone_state"], path)
        backbone, reinit = resize_trunk(backbone, recipe.backbone, fallback)
        return Trunk(backbone=backbone, method=state["task"], variant=state.get("variant", ""),
                     label=state["backbone"]["label"], checkpoint=str(spec),
                     transfer_input=recorded_transfer_input(state), pretrain_dataset=dataset_label(recipe.data),
                     pretrain_run=path.parent.name, reinitialised=reinit)
    # A plain state dict (e.g. weights converted from the authors' Caffe models): load into the recipe's backbone.
    weights = state.get("state_dict", state) if isinstance(state, dict) else None
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise UserError(f"{path}: expected an sslbench checkpoint or a state dict of tensors")
    backbone = build_backbone(fallback.name, fallback.cfg)
    load_state_strict(backbone, weights, path)
    return Trunk(backbone=backbone, method=path.stem, label=backbone_label(fallback.name, fallback.cfg),
                 checkpoint=str(spec), transfer_input=default_transfer_input(backbone.in_channels))


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


def require_taps(trunk: Trunk, taps: tuple[str, ...]) -> None:
    missing = [t for t in taps if t not in trunk.backbone.feature_info]
    if missing:
        raise UserError(
            f"{trunk.checkpoint} ({trunk.label}) has no tap {missing[0]!r} that this protocol needs; "
            f"its taps are {', '.join(trunk.backbone.feature_info)}"
        )
