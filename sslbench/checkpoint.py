"""Loading a trunk for transfer: from an sslbench checkpoint, a plain state dict, or random init.

What `--checkpoint` names is a `TrunkSpec`: a checkpoint file; `random`, the protocol recipe's backbone
freshly initialised; or `random:CKPT`, CKPT's architecture as it transfers (at the protocol's size, with its
task's input transform) freshly initialised, the like-for-like baseline of a trunk whose shape differs from
the protocol recipe's. The input transform a trunk expects is the name its checkpoint records
(sslbench.transforms.TRANSFER_INPUTS): loading a trunk imports no task.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from sslbench.backbones.base import Backbone, backbone_label, build_backbone, upgrade_fc_layout
from sslbench.config import Named, recipe_from_json
from sslbench.data.build import dataset_label
from sslbench.errors import UserError
from sslbench.runs import CHECKPOINT
from sslbench.runtime import code_version, load_weights_only
from sslbench.transforms import TRANSFER_EXTENDS, TRANSFER_INPUTS, TRANSFER_LABELS, default_transfer_input

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
    unfinished: str = ""  # where an unfinished pretraining stopped ('step 2 of 80'; --allow-unfinished)
    pretrain_recipe: str = ""  # the pretraining's recipe (JSON) of a checkpoint's trunk, or of random:CKPT's

    @property
    def prepare(self) -> Callable[[Tensor], Tensor]:
        """uint8 images -> the trunk's input (the pretext task's own transform)."""
        return TRANSFER_INPUTS.get(self.transfer_input)


def with_transfer_input(trunk: Trunk, name: str) -> Trunk:
    """`trunk` fed with the transfer input `name` instead of the one its pretraining recorded: the same one, or one
    that extends it (TRANSFER_EXTENDS: Colorization's "lab" adds a and b to "lab-l"), conv1 widened by filters for
    the new channels that start at zero (the released colorization segmentation test's conv1_ab), so the network
    computes what it did until fine-tuning moves them. The row's variant names the input ('gray' -> 'color')."""
    TRANSFER_INPUTS.get(name)  # an unknown name: the registry's one-line error with the valid names
    if name == trunk.transfer_input:
        return trunk
    if TRANSFER_EXTENDS.get(name) != trunk.transfer_input:
        takes = [k for k, v in TRANSFER_EXTENDS.items() if v == trunk.transfer_input]
        raise UserError(f"--input {name}: this trunk was pretrained on {trunk.transfer_input!r}, which {name!r} does "
                        f"not extend; valid: {', '.join([trunk.transfer_input, *takes])}")
    backbone = copy.deepcopy(trunk.backbone)  # the trunk given stays as it was
    channels = TRANSFER_INPUTS.get(name)(torch.zeros(1, 3, 8, 8, dtype=torch.uint8)).shape[1]
    parent, attr, conv = first_conv(backbone)
    if conv.groups != 1:
        raise UserError(f"--input {name}: the trunk's first convolution is grouped ({conv.groups}); cannot widen it")
    wide = torch.nn.Conv2d(channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                           conv.groups, conv.bias is not None).to(conv.weight.device)
    with torch.no_grad():
        wide.weight.zero_()
        wide.weight[:, : conv.in_channels] = conv.weight
        if conv.bias is not None:
            wide.bias.copy_(conv.bias)
    setattr(parent, attr, wide)
    backbone.in_channels = channels
    if hasattr(backbone, "cfg") and hasattr(backbone.cfg, "in_channels"):
        backbone.cfg = dataclasses.replace(backbone.cfg, in_channels=channels)
    old, new = TRANSFER_LABELS.get(trunk.transfer_input, trunk.transfer_input), TRANSFER_LABELS.get(name, name)
    parts = trunk.variant.split("-") if trunk.variant else []
    variant = "-".join(new if p == old else p for p in parts) if old in parts else "+".join(p for p in (trunk.variant,
                                                                                                       new) if p)
    label = backbone_label(backbone.name, backbone.cfg) if hasattr(backbone, "cfg") else trunk.label
    return dataclasses.replace(trunk, backbone=backbone, transfer_input=name, variant=variant, label=label)


def first_conv(module: torch.nn.Module) -> tuple[torch.nn.Module, str, torch.nn.Conv2d]:
    """(parent, attribute, conv) of the first convolution of `module`, the one that reads the input."""
    for parent in module.modules():
        for attr, child in parent.named_children():
            if isinstance(child, torch.nn.Conv2d):
                return parent, attr, child
    raise UserError(f"{type(module).__name__} has no convolution to widen for another transfer input")


def at_protocol_size(trained: Named, protocol: Named) -> Named:
    """The trained backbone's config at the input size the protocol's recipe declares for this backbone
    (unchanged when the names differ or a size is missing)."""
    size_old = getattr(trained.cfg, "image_size", None)
    size_new = getattr(protocol.cfg, "image_size", None)
    if trained.name != protocol.name or size_old is None or size_new is None or size_old == size_new:
        return trained
    changes: dict[str, Any] = {"image_size": size_new}
    if getattr(trained.cfg, "transfer_stride", 0):  # the stride the trunk transfers at (Jigsaw: 2 on tiles, 4 here)
        changes["conv1_stride"] = trained.cfg.transfer_stride
    for field, target in (("transfer_conv1_pad", "conv1_pad"), ("transfer_pool_pad", "pool_pad")):
        if getattr(trained.cfg, field, -1) >= 0:  # the padding it transfers at (Colorization: Caffe's AlexNet)
            changes[target] = getattr(trained.cfg, field)
    return Named(trained.name, dataclasses.replace(trained.cfg, **changes))


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


def load_trunk(spec: TrunkSpec, fallback: Named, allow_unfinished: bool = False) -> Trunk:
    """The trunk `spec` names; `fallback` is the protocol recipe's backbone (random init, plain state dicts,
    and the size a pretrained trunk is rebuilt at). An unfinished pretraining's checkpoint is refused unless
    `allow_unfinished`; weights that are not finite or have blown up are refused always."""
    if spec.kind == "random":
        backbone = build_backbone(fallback.name, fallback.cfg)
        return Trunk(backbone=backbone, method="random", label=backbone_label(fallback.name, fallback.cfg),
                     checkpoint=str(spec), transfer_input=default_transfer_input(backbone.in_channels))
    if spec.kind == "random-like":
        return _random_like(spec, fallback)
    return _from_file(Path(spec.path), fallback, spec, allow_unfinished)


def read_checkpoint(path: Path) -> Any:
    """A checkpoint file's contents, read with torch.load(weights_only=True): loading never runs code."""
    if str(path) in ("", "."):
        raise UserError("--checkpoint is empty; pass a runs/<task>-*/checkpoint.pt, a state dict file or 'random'")
    if path.is_dir():
        inside = path / CHECKPOINT
        hint = f"; its checkpoint is {inside}" if inside.is_file() else ""
        raise UserError(f"--checkpoint {path} is a directory, not a checkpoint file{hint}")
    if not path.is_file():
        raise UserError(f"checkpoint not found: {path}; pass a runs/<task>-*/checkpoint.pt or 'random'")
    state = load_weights_only(path)
    if is_pretrain(state):
        _check_pretrain_state(state, path)
    return state


def _check_pretrain_state(state: dict[str, Any], path: Path) -> None:
    """The fields every use of a pretraining checkpoint reads, with the right types (a forged or damaged file
    is one line, not a KeyError)."""
    needs = {"task": str, "recipe": str, "backbone": dict, "backbone_state": dict, "model": dict}
    for key, kind in needs.items():
        if not isinstance(state.get(key), kind):
            raise UserError(f"{path}: not a valid sslbench checkpoint ({key!r} missing or not a {kind.__name__}); "
                            "was it written by sslbench pretrain?")
    try:
        recipe_from_json(state["recipe"])
    except (ValueError, KeyError, TypeError, UserError) as exc:
        raise UserError(f"{path}: its recipe cannot be read ({type(exc).__name__}: {exc})") from None


SANE_WEIGHT = 1e6  # |w| above this in a trained network is a diverged run, not a result


def insane_weights(weights: dict[str, Any]) -> str:
    """Why these weights are not a usable network ('' if they are): non-finite values, or magnitudes above
    SANE_WEIGHT (a run whose loss stayed finite while its weights blew up)."""
    for name, t in weights.items():
        if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.numel() == 0:
            continue
        if not bool(torch.isfinite(t).all()):
            return f"non-finite values in {name}"
        peak = float(t.abs().max())
        if peak > SANE_WEIGHT:
            return f"|w| up to {peak:.1e} in {name} (more than {SANE_WEIGHT:.0e})"
    return ""


def progress_of(state: dict[str, Any]) -> str:
    """'' for a finished pretraining, else where it stopped: 'step 2 of 80'."""
    if state.get("finished", True):
        return ""
    fit = state.get("fit") or state
    total = state.get("total")
    return f"step {fit.get('step', '?')}" + (f" of {total}" if total else "")


def pretrain_state(recipe: Any, task: Any, *, finished: bool, total: int = 0, wall_time: float = 0.0,
                   setup: dict[str, Any] | None = None, fit: dict[str, Any] | None = None,
                   rng: list[dict[str, Any]] | None = None, unreadable: dict[str, Any] | None = None,
                   **extra: Any) -> dict[str, Any]:
    """A pretraining checkpoint's layout (FORMAT) for `task` (a PretextTask) trained by `recipe`: what the engine
    saves and `sslbench import` writes; `extra` adds keys (an import's provenance)."""
    b = recipe.backbone
    return {
        "format": FORMAT, "task": recipe.name, "variant": task.variant(), "transfer_input": task.transfer_input(),
        "backbone": {"name": b.name, "label": backbone_label(b.name, b.cfg)}, "recipe": recipe.to_json(),
        "version": code_version(), "finished": finished, "total": total, "wall_time": wall_time,
        "model": task.state_dict(), "backbone_state": task.backbone.state_dict(), "setup": setup or {},
        "fit": fit or {},
        "rng": rng or [],  # every rank's RNG state: its dropout stream continues exactly on resume
        "unreadable": unreadable or {}, **extra,
    }


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
                 transfer_input=recorded_transfer_input(state), pretrain_recipe=state["recipe"])


def _from_file(path: Path, fallback: Named, spec: TrunkSpec, allow_unfinished: bool) -> Trunk:
    state = read_checkpoint(path)
    if is_pretrain(state):
        unfinished = progress_of(state)
        if unfinished and not allow_unfinished:
            raise UserError(f"{path}: its pretraining is unfinished (stopped at {unfinished}); evaluate a finished "
                            "run's checkpoint, or pass --allow-unfinished (the rows are then labelled unfinished)")
        bad = insane_weights(state["backbone_state"])
        if bad:
            raise UserError(f"{path}: not a usable trunk: {bad}; its pretraining diverged")
        recipe = recipe_from_json(state["recipe"])
        backbone = build_backbone(recipe.backbone.name, recipe.backbone.cfg)
        load_state_strict(backbone, state["backbone_state"], path)
        backbone, reinit = resize_trunk(backbone, recipe.backbone, fallback)
        target = at_protocol_size(recipe.backbone, fallback)
        label = state["backbone"]["label"] if target is recipe.backbone else backbone_label(target.name, target.cfg)
        return Trunk(backbone=backbone, method=state["task"], variant=state.get("variant", ""),
                     label=label, checkpoint=str(spec),
                     transfer_input=recorded_transfer_input(state), pretrain_dataset=dataset_label(recipe.data),
                     pretrain_run=path.parent.name, reinitialised=reinit, unfinished=unfinished,
                     pretrain_recipe=state["recipe"])
    # A plain state dict (e.g. weights converted from the authors' Caffe models): load into the recipe's backbone.
    weights = state.get("state_dict", state) if isinstance(state, dict) else None
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        raise UserError(f"{path}: expected an sslbench checkpoint or a state dict of tensors")
    bad = insane_weights(weights)
    if bad:
        raise UserError(f"{path}: not a usable trunk: {bad}")
    backbone = build_backbone(fallback.name, fallback.cfg)
    load_state_strict(backbone, weights, path)
    return Trunk(backbone=backbone, method=path.stem, label=backbone_label(fallback.name, fallback.cfg),
                 checkpoint=str(spec), transfer_input=default_transfer_input(backbone.in_channels))


def load_state_strict(module: torch.nn.Module, weights: dict[str, Any], source: Path) -> None:
    """Load or explain which keys differ (missing, unexpected, wrong shape) in one line."""
    weights = upgrade_fc_layout(weights)
    differ = key_differences(module.state_dict(), weights)
    if differ:
        raise UserError(
            f"{source} does not match backbone {type(module).__name__} ({differ}); "
            "is it a checkpoint of another architecture? set --set backbone.name=... to match it"
        )
    module.load_state_dict(weights)


def key_differences(expected: dict[str, Any], weights: dict[str, Any], unexpected: str = "unexpected") -> str:
    """How `weights` differs from the state dict `expected` ('' if it does not): 'missing: a, b; unexpected: c;
    wrong shape: d', each list cut after four keys."""
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    shapes = sorted(k for k in set(expected) & set(weights) if tuple(expected[k].shape) != tuple(weights[k].shape))
    return "; ".join(f"{what}: {key_list(keys)}" for what, keys in
                     (("missing", missing), (unexpected, extra), ("wrong shape", shapes)) if keys)


def key_list(keys: list[str], most: int = 4) -> str:
    """'a, b, c, d (+3 more)'."""
    return ", ".join(keys[:most]) + (f" (+{len(keys) - most} more)" if len(keys) > most else "")


def require_taps(trunk: Trunk, taps: tuple[str, ...]) -> None:
    missing = [t for t in taps if t not in trunk.backbone.feature_info]
    if missing:
        raise UserError(
            f"{trunk.checkpoint} ({trunk.label}) has no tap {missing[0]!r} that this protocol needs; "
            f"its taps are {', '.join(trunk.backbone.feature_info)}"
        )
