"""`sslbench show KIND CKPT... OUT.png`: figures from checkpoints, written atomically as a PNG.

KIND is one of the figures of any checkpoint (sslbench.figures draws them from tensors; this module loads the
checkpoints, trunks and held-out images): `attention` (RotNet's maps at conv1 / conv3 / conv5), `neighbours`
(Context Prediction's nearest-neighbour retrievals), `pretext` (what the checkpoint's task's make_batch builds,
with its labels). Or KIND is a pretext task with example panels: the task of the checkpoint applied to a few
held-out images, as the panels its `examples` returns (Context Encoders: masked input, completion, original), one
row per image, each column labelled.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import Tensor

from sslbench.backbones.base import Backbone, build_backbone
from sslbench.checkpoint import Trunk, TrunkSpec, is_pretrain, load_trunk, read_checkpoint
from sslbench.config import DataConfig, Named, Recipe, recipe_from_json
from sslbench.data.build import build_dataset
from sslbench.data.datasets import collate_skip_corrupt
from sslbench.errors import UserError
from sslbench.figures import (
    PRETEXT,
    attention_map,
    attention_sheet,
    grid,
    nearest,
    neighbours_sheet,
    others,
    power_of,
    pretext_sheet,
    render,
    resize_rgb8,
)
from sslbench.plugins import load_all
from sslbench.registry import TASKS
from sslbench.runtime import atomic
from sslbench.tasks.base import PretextTask
from sslbench.transforms import cut_windows


def load_task(path: Path) -> tuple[PretextTask, Recipe]:
    """The pretext task of a pretraining checkpoint, with its weights and set-up state, in eval mode."""
    state = read_checkpoint(path)
    if not is_pretrain(state):
        raise UserError(f"{path}: not an sslbench pretraining checkpoint; pass a runs/<task>-*/checkpoint.pt")
    recipe = recipe_from_json(state["recipe"])
    task = TASKS.get(recipe.name)(recipe.component.cfg, build_backbone(recipe.backbone.name, recipe.backbone.cfg))
    task.restore(state.get("setup", {}))
    task.load_state_dict(state["model"])
    return task.eval(), recipe


def showable() -> list[str]:
    """The tasks that have examples to show."""
    return [n for n in TASKS.names() if TASKS.get(n).examples is not PretextTask.examples]


def pretext_kinds() -> list[str]:
    """The tasks `show pretext` draws."""
    return list(PRETEXT)


def figure_options(kind: str = "") -> dict[str, Any]:
    """The options (name -> default) the figure `kind` takes beyond checkpoints, --num and --split, read from its
    function's signature; without `kind`, every figure's."""
    import inspect

    functions = [FIGURES[kind]] if kind else list(FIGURES.values())
    return {name: p.default for fn in functions for name, p in list(inspect.signature(fn).parameters.items())[3:]}


def kinds() -> list[str]:
    """Every figure `sslbench show` draws: the three of any checkpoint, then the tasks' example grids."""
    return [*FIGURES, *showable()]


def show(kind: str, checkpoints: str | Path | list[str | Path], out: str | Path, num: int = 8, split: str = "",
         **options: Any) -> Path:
    """A figure of `kind` from `checkpoints`, written to `out` (PNG); returns its path. `options` are the figure's
    own (attention: taps, power, size; neighbours: tap, k, candidates, size, patches)."""
    return save_png(figure(kind, checkpoints, num, split, **options), Path(out))


def figure(kind: str, checkpoints: str | Path | list[str | Path], num: int = 8, split: str = "",
           **options: Any) -> Image.Image:
    """The figure of `kind`: attention / neighbours / pretext of the checkpoints, or a task's example panels on `num`
    held-out images, one row each."""
    load_all()
    paths = [checkpoints] if isinstance(checkpoints, (str, Path)) else list(checkpoints)
    if kind not in kinds():
        raise UserError(f"unknown figure {kind!r}; valid: {', '.join(kinds())} (the last ones: a checkpoint of "
                        "that task)")
    if num < 1:
        raise UserError(f"--num must be >= 1 (got {num})")
    if not paths:
        raise UserError(f"show {kind}: give at least one checkpoint before OUT.png")
    if kind in FIGURES:
        return FIGURES[kind](paths, num, split, **options)
    if len(paths) != 1:
        raise UserError(f"show {kind}: one checkpoint, found {len(paths)}")
    if options:
        raise UserError(f"show {kind}: takes no {', '.join('--' + k for k in options)}")
    task, recipe = load_task(Path(paths[0]))
    if recipe.name != kind:
        raise UserError(f"{paths[0]}: a {recipe.name} checkpoint, not {kind}; pass a runs/{kind}-*/checkpoint.pt")
    images = held_out_images(recipe.data, split, num)
    with torch.no_grad():
        panels = task.examples(images, torch.Generator().manual_seed(0))
    return grid(panels)


def held_out_images(data: DataConfig, split: str, num: int) -> Tensor:
    """`num` uint8 images of `split`: by default the embedded test split, else the recipe's test or training split."""
    return held_out(data, split, num)[0]


def held_out(data: DataConfig, split: str, num: int) -> tuple[Tensor, dict[str, Any]]:
    """`held_out_images` with the items' targets (labels, motion masks, ...), collated as the loader does."""
    split = split or ("test" if data.dataset == "embedded" else data.test_split or data.train_split)
    dataset = build_dataset(data, split, num)
    items = [dataset[i] for i in range(min(num, len(dataset)))]
    return collate_skip_corrupt([item for item in items if item is not None])


def save_png(image: Image.Image, out: Path) -> Path:
    with atomic(out) as tmp:
        image.save(tmp, format="PNG")
    return out


# ---------------------------------------------------------------- the figures of any checkpoint


def load_trunks(specs: list[str | Path], size: int) -> tuple[list[Trunk], Recipe, int]:
    """The trunks of `specs` (checkpoints, 'random', 'random:CKPT'), all rebuilt at one input size (`size`, or 0:
    the first pretraining's), with that pretraining's recipe (its held-out data)."""
    first = next((s for s in map(str, specs) if s != "random"), None)
    if first is None:
        raise UserError("show: give at least one pretraining checkpoint besides 'random' (the figure uses its "
                        "architecture and held-out data); e.g. runs/<task>-*/checkpoint.pt random")
    path = Path(first.removeprefix(TrunkSpec.RANDOM_LIKE))
    state = read_checkpoint(path)
    if not is_pretrain(state):
        raise UserError(f"{path}: not an sslbench pretraining checkpoint; pass a runs/<task>-*/checkpoint.pt first")
    recipe = recipe_from_json(state["recipe"])
    size = size or recipe.backbone.cfg.image_size
    if size < 1:
        raise UserError(f"--size must be a side in pixels >= 1, found {size}")
    fallback = Named(recipe.backbone.name, dataclasses.replace(recipe.backbone.cfg, image_size=size))
    trunks = [load_trunk(TrunkSpec.parse(str(s)), fallback, allow_unfinished=True) for s in specs]
    names = {t.backbone.name for t in trunks}
    if len(names) > 1:  # one image size for all: a trunk of another family would not be rebuilt at it
        found = ", ".join(f"{t.checkpoint} ({t.label})" for t in trunks)
        raise UserError(f"show: the trunks compared in one figure must be of one architecture, found {found}; "
                        "draw each architecture's checkpoints in a figure of their own")
    return trunks, recipe, size


def trunk_label(trunk: Trunk) -> str:
    """How a figure names a model: its method (variant) and run."""
    name = trunk.method + (f" ({trunk.variant})" if trunk.variant else "")
    return f"{name} {trunk.pretrain_run}" if trunk.pretrain_run else name


def features(trunk: Trunk, images: Tensor, taps: tuple[str, ...]) -> dict[str, Tensor]:
    """uint8 images -> the trunk's maps at `taps`, in eval mode and without gradients."""
    backbone = trunk.backbone.eval()
    with torch.no_grad():
        return backbone(trunk.prepare(images), taps=taps)


def spatial_taps(backbone: Backbone) -> tuple[str, ...]:
    """RotNet's figure's conv1 / conv3 / conv5 where the trunk has them, else the first, middle and last of its
    spatial probe taps."""
    if all(t in backbone.feature_info for t in ("conv1", "conv3", "conv5")):
        return "conv1", "conv3", "conv5"
    spatial = [t for t in backbone.default_taps if backbone.feature_info[t].stride > 0]
    return tuple(dict.fromkeys([spatial[0], spatial[len(spatial) // 2], spatial[-1]])) if spatial else ()


def attention_figure(specs: list[str | Path], num: int, split: str, taps: str = "", power: float | None = None,
                     size: int = 0) -> Image.Image:
    """`show attention`: per image, each model's attention map at each tap over it."""
    if power is not None and power <= 0:
        raise UserError(f"--power must be > 0 (the p of sum |a|^p), found {power}")
    trunks, recipe, size = load_trunks(specs, size)
    images = resize_rgb8(held_out_images(recipe.data, split, num), size)
    models = []
    for trunk in trunks:
        chosen = tuple(t for t in taps.split(",") if t) if taps else spatial_taps(trunk.backbone)
        if not chosen:
            raise UserError(f"{trunk.checkpoint}: its trunk has no spatial tap; pass --taps")
        out = features(trunk, images, chosen)
        models.append((trunk_label(trunk), [(tap, attention_map(out[tap], power_of(tap, power))) for tap in chosen]))
    return render(attention_sheet(images, models))


def neighbours_tap(trunk: Trunk) -> str:
    """The Context Prediction figure's fc6 where the trunk has a trained one, else pool5, else its last probe tap."""
    info = trunk.backbone.feature_info
    if "fc6" in info and not any(k.startswith("fc6") for k in trunk.reinitialised):
        return "fc6"
    return "pool5" if "pool5" in info else trunk.backbone.default_taps[-1]


def neighbours_figure(specs: list[str | Path], num: int, split: str, tap: str = "", k: int = 5,
                      candidates: int = 64, size: int = 0, patches: bool = False) -> Image.Image:
    """`show neighbours`: the first `num` held-out images as queries against `candidates` held-out images (the
    queries among them), their k nearest other images by cosine similarity, one row per model and query. With
    `patches`, one random patch of the trunks' size from each image instead of the image resized (Context
    Prediction's figure retrieves patches)."""
    if k < 1:
        raise UserError(f"--k must be >= 1 (neighbours per query), found {k}")
    trunks, recipe, size = load_trunks(specs, size)
    if candidates < num + 1:
        raise UserError(f"--candidates must exceed --num ({num}): the queries are among the candidates; found "
                        f"{candidates}")
    images = held_out_images(recipe.data, split, candidates)
    images = random_patches(images, size) if patches else resize_rgb8(images, size)
    if images.shape[0] <= k:
        raise UserError(f"neighbours: {images.shape[0]} held-out images, too few for --k {k}; lower --k")
    queries = list(range(min(num, images.shape[0] - 1)))
    found = []
    for trunk in trunks:
        name = tap or neighbours_tap(trunk)
        vectors = features(trunk, images, (name,))[name].flatten(1)
        idx, sim = others(*nearest(vectors[queries], vectors, k + 1), queries, k)
        found.append((f"{trunk_label(trunk)} {name}", idx, sim))
    return render(neighbours_sheet(images, queries, found))


def random_patches(images: Tensor, size: int) -> Tensor:
    """uint8 [N,3,H,W] -> one seeded random size x size patch of each [N,3,size,size]."""
    n, _, h, w = images.shape
    if min(h, w) < size:
        raise UserError(f"--patches: the held-out images are {h}x{w} px, smaller than the {size} px patches; "
                        "drop --patches or lower --size")
    g = torch.Generator().manual_seed(0)
    rows = torch.randint(0, h - size + 1, (n, 1), generator=g)
    cols = torch.randint(0, w - size + 1, (n, 1), generator=g)
    return cut_windows(images, rows, cols, size)[:, 0]


def pretext_figure(specs: list[str | Path], num: int, split: str) -> Image.Image:
    """`show pretext`: what the checkpoint's task makes of a few held-out images, drawn from its make_batch."""
    if len(specs) != 1:
        raise UserError(f"show pretext: one checkpoint, found {len(specs)}")
    task, recipe = load_task(Path(specs[0]))
    if recipe.name not in PRETEXT:
        raise UserError(f"{specs[0]}: a {recipe.name} checkpoint; show pretext draws {', '.join(PRETEXT)}")
    images, targets = held_out(recipe.data, split, num)
    targets = {**targets, "index": torch.arange(images.shape[0])}  # Exemplar's surrogate classes: the images' order
    batch = task.make_batch(images, targets, torch.Generator().manual_seed(0))
    return render(pretext_sheet(recipe.name, task, batch, num))


FIGURES: dict[str, Any] = {"attention": attention_figure, "neighbours": neighbours_figure, "pretext": pretext_figure}
