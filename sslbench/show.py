"""`sslbench show KIND CKPT OUT.png`: figures from checkpoints.

KIND is a pretext task: the task of the checkpoint applied to a few held-out images, as the panels its
`examples` returns (Context Encoders: masked input, completion, original), one row per image, each column
labelled. The figure is written atomically as a PNG.
"""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image, ImageDraw
from torch import Tensor

from sslbench.backbones.base import build_backbone
from sslbench.checkpoint import is_pretrain, read_checkpoint
from sslbench.config import DataConfig, Recipe, recipe_from_json
from sslbench.data.build import build_dataset
from sslbench.errors import UserError
from sslbench.plugins import load_all
from sslbench.registry import TASKS
from sslbench.runtime import atomic
from sslbench.tasks.base import PretextTask

GAP = 2  # px of white between panels and rows
LABEL = 12  # px of the label strip above the columns


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


def show(kind: str, checkpoint: str | Path, out: str | Path, num: int = 8, split: str = "") -> Path:
    """A figure of `kind` from `checkpoint`, written to `out` (PNG); returns its path."""
    return save_png(figure(kind, checkpoint, num, split), Path(out))


def figure(kind: str, checkpoint: str | Path, num: int = 8, split: str = "") -> Image.Image:
    """The figure of `kind` from `checkpoint`: the task's example panels on `num` held-out images, one row each."""
    load_all()
    if kind not in showable():
        raise UserError(f"unknown figure {kind!r}; valid: {', '.join(showable())} (a checkpoint of that task)")
    task, recipe = load_task(Path(checkpoint))
    if recipe.name != kind:
        raise UserError(f"{checkpoint}: a {recipe.name} checkpoint, not {kind}; pass a runs/{kind}-*/checkpoint.pt")
    if num < 1:
        raise UserError(f"--num must be >= 1 (got {num})")
    images = held_out_images(recipe.data, split, num)
    with torch.no_grad():
        panels = task.examples(images, torch.Generator().manual_seed(0))
    return grid(panels)


def held_out_images(data: DataConfig, split: str, num: int) -> Tensor:
    """`num` uint8 images of `split`: by default the embedded test split, else the recipe's test or training split."""
    split = split or ("test" if data.dataset == "embedded" else data.test_split or data.train_split)
    dataset = build_dataset(data, split, num)
    items = [dataset[i] for i in range(min(num, len(dataset)))]
    return torch.stack([item[0] for item in items if item is not None])


def grid(panels: list[tuple[str, Tensor]]) -> Image.Image:
    """Named panels [N,3,h,w] -> one image: a row per image, a labelled column per panel, white gaps."""
    n = panels[0][1].shape[0]
    h = max(p.shape[2] for _, p in panels)
    widths = [p.shape[3] for _, p in panels]
    canvas = Image.new("RGB", (sum(widths) + GAP * (len(panels) - 1), LABEL + n * (h + GAP) - GAP), "white")
    draw = ImageDraw.Draw(canvas)
    x = 0
    for (name, panel), w in zip(panels, widths):
        draw.text((x + 1, 0), name[: max(1, w // 6)], fill="black")
        for i in range(n):
            canvas.paste(Image.fromarray(panel[i].permute(1, 2, 0).numpy()), (x, LABEL + i * (h + GAP)))
        x += w + GAP
    return canvas


def save_png(image: Image.Image, out: Path) -> Path:
    with atomic(out) as tmp:
        image.save(tmp, format="PNG")
    return out
