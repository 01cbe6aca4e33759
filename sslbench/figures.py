"""The deck's figures as pure functions of tensors: attention maps, nearest neighbours, what a pretext task's
make_batch produced, and the labelled sheet they are drawn on. `sslbench show` (sslbench.show) loads the checkpoints
and images and calls these; nothing here reads a file.

- Attention (Gidaris et al., ICLR 2018, Fig. 3: AlexNet, supervised against RotNet, at conv1 27x27, conv3 13x13,
  conv5 6x6): a tap's map is the sum over channels of |activation|^p at each position, normalised per map to
  [0, 1]. Defaults p = 1, 2, 4 at conv1, conv3, conv5 (2 at any other tap): the powers the paper's Fig. 3 caption
  gives for its three layers, as recalled; the paper's text is not in the reference library here, so this was not
  checked against it (`--power` sets any p). The map is upsampled bilinearly to the image and drawn over it.
- Neighbours (Doersch et al., ICCV 2015, Fig. 4: "Input / Random Initialization / ImageNet AlexNet / Ours"): the
  k nearest candidates of each query by cosine similarity of one tap's flattened features (the paper's fc6, pool5
  where a trunk has no trained fc6), every query against every candidate in one matrix product.
- Pretext: panels drawn from the tensors make_batch returned, captioned with the labels in that batch, so a wrong
  label shows as a wrong caption or a wrongly reassembled picture.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import Tensor

from sslbench.errors import UserError
from sslbench.tasks.context import NEIGHBOURS
from sslbench.transforms import GRID, lab_to_rgb

Panel = tuple[str, Tensor]  # caption, uint8 [3, h, w]
Row = tuple[str, list[Panel]]  # a title over the row ("" for none), its panels left to right
Sheet = list[Row]
GAP = 2  # px of white between panels and rows
CAPTION = 12  # px of the caption strip above each panel
CHAR = 6  # px per character of PIL's default font
POWERS = {"conv1": 1.0, "conv3": 2.0, "conv5": 4.0}  # RotNet Fig. 3: p = 1, 2, 4 for its three layers
DEFAULT_POWER = 2.0
POSITIONS = ("up-left", "up", "up-right", "left", "right", "down-left", "down", "down-right")  # context's 8 labels


# ---------------------------------------------------------------- the sheet


def grid(panels: list[tuple[str, Tensor]]) -> Image.Image:
    """Named panels [N,3,h,w] -> one image: a row per image, a labelled column per panel, white gaps (a task's
    example grid: the names once, over the columns)."""
    n = panels[0][1].shape[0]
    h = max(p.shape[2] for _, p in panels)
    widths = [p.shape[3] for _, p in panels]
    canvas = Image.new("RGB", (sum(widths) + GAP * (len(panels) - 1), CAPTION + n * (h + GAP) - GAP), "white")
    draw = ImageDraw.Draw(canvas)
    x = 0
    for (name, panel), w in zip(panels, widths):
        draw.text((x + 1, 0), name[: max(1, w // CHAR)], fill="black")
        for i in range(n):
            canvas.paste(Image.fromarray(panel[i].permute(1, 2, 0).numpy()), (x, CAPTION + i * (h + GAP)))
        x += w + GAP
    return canvas


def row_size(row: Row) -> tuple[int, int]:
    """(width, height) of a row: its title strip if any, the caption strip, the tallest panel."""
    title, panels = row
    return (sum(p.shape[2] for _, p in panels) + GAP * (len(panels) - 1),
            (CAPTION if title else 0) + CAPTION + max(p.shape[1] for _, p in panels))


def sheet_size(sheet: Sheet) -> tuple[int, int]:
    """(width, height) of the rendered sheet: the widest row, the rows GAP px apart."""
    sizes = [row_size(row) for row in sheet]
    return max(w for w, _ in sizes), sum(h for _, h in sizes) + GAP * (len(sheet) - 1)


def render(sheet: Sheet) -> Image.Image:
    """Rows of captioned panels on white: a row's title above it, each panel under its caption strip, GAP px
    apart."""
    if not sheet or not all(panels for _, panels in sheet):
        raise UserError("a figure needs at least one panel in every row")
    canvas = Image.new("RGB", sheet_size(sheet), "white")
    draw = ImageDraw.Draw(canvas)
    y = 0
    for title, row in sheet:
        width, height = row_size((title, row))
        if title:
            draw.text((1, y), title[: max(1, width // CHAR)], fill="black")
        top, x = y + (CAPTION if title else 0), 0
        for caption, panel in row:
            w = panel.shape[2]
            draw.text((x + 1, top), caption[: max(1, w // CHAR)], fill="black")
            canvas.paste(Image.fromarray(panel.permute(1, 2, 0).contiguous().numpy()), (x, top + CAPTION))
            x += w + GAP
        y += height + GAP
    return canvas


def panel_count(sheet: Sheet) -> int:
    return sum(len(panels) for _, panels in sheet)


def to_rgb8(x: Tensor) -> Tensor:
    """A float picture [C,h,w] in any scale (normalised inputs, standardised tiles) -> uint8 RGB [3,h,w], stretched
    to 0..255 on its own range; one channel becomes gray."""
    x = x.detach().float().cpu()
    lo, hi = x.min(), x.max()
    x = (x - lo) / (hi - lo).clamp_min(1e-12)
    x = x.expand(3, -1, -1) if x.shape[0] == 1 else x[:3]
    return (x * 255).round().to(torch.uint8)


def resize_rgb8(images: Tensor, size: int) -> Tensor:
    """uint8 [N,3,H,W] -> uint8 [N,3,size,size] (antialiased bilinear), the images a trunk of that size sees."""
    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return out.round().clamp(0, 255).to(torch.uint8)


# ---------------------------------------------------------------- attention


def attention_map(features: Tensor, power: float) -> Tensor:
    """features [N,C,h,w] -> [N,h,w]: sum over channels of |a|^p, each map min-max normalised to [0, 1] (a constant
    map is all zero)."""
    if features.dim() != 4:
        raise UserError(f"attention needs a spatial tap ([N,C,h,w]); found a tensor of shape {tuple(features.shape)}")
    maps = features.abs().pow(power).sum(1)
    flat = maps.flatten(1)
    lo, hi = flat.min(1).values.view(-1, 1, 1), flat.max(1).values.view(-1, 1, 1)
    return (maps - lo) / (hi - lo).clamp_min(1e-12)


def power_of(tap: str, power: float | None) -> float:
    return power if power is not None else POWERS.get(tap, DEFAULT_POWER)


def jet(values: Tensor) -> Tensor:
    """[h,w] in [0, 1] -> float RGB [3,h,w]: matplotlib's jet colormap."""
    import matplotlib

    rgba = matplotlib.colormaps["jet"](values.detach().float().clamp(0, 1).cpu().numpy())
    return torch.from_numpy(rgba[..., :3]).permute(2, 0, 1).float()


def overlay(image: Tensor, amap: Tensor, alpha: float = 0.5) -> Tensor:
    """uint8 image [3,H,W] and a map [h,w] in [0, 1] -> uint8 [3,H,W]: the map upsampled, coloured, blended over."""
    up = F.interpolate(amap[None, None].float().cpu(), size=image.shape[-2:], mode="bilinear",
                       align_corners=False)[0, 0]
    mixed = (1 - alpha) * image.float().cpu() / 255.0 + alpha * jet(up)
    return (mixed * 255).round().clamp(0, 255).to(torch.uint8)


def attention_sheet(images: Tensor, models: Sequence[tuple[str, Sequence[tuple[str, Tensor]]]]) -> Sheet:
    """images uint8 [N,3,H,W]; models: (label, [(tap, attention [N,h,w]), ...]) -> per model one row per image (the
    model's label over its first): the input, then its map at each tap over it, captioned 'tap hxw' (the deck's
    '(a) supervised / (b) self-supervised' blocks)."""
    rows: Sheet = []
    for label, maps in models:
        for i in range(images.shape[0]):
            panels = [("input", images[i])]
            panels += [(map_caption(tap, m, images.shape[-1]), overlay(images[i], m[i])) for tap, m in maps]
            rows.append((label if i == 0 else "", panels))
    return rows


def map_caption(tap: str, amap: Tensor, width: int) -> str:
    """'conv1 27x27', or 'conv1 27' where the panel is too narrow for the whole."""
    full = f"{tap} {amap.shape[1]}x{amap.shape[2]}"
    return full if len(full) * CHAR <= width else f"{tap} {amap.shape[1]}"


# ---------------------------------------------------------------- neighbours


def nearest(queries: Tensor, candidates: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """queries [Q,D], candidates [M,D] -> (indices [Q,k], cosine similarities [Q,k]) of each query's k most similar
    candidates, most similar first: one [Q,M] matrix product for all queries."""
    if not 1 <= k <= candidates.shape[0]:
        raise UserError(f"--k must be between 1 and the {candidates.shape[0]} candidates, found {k}")
    sims = F.normalize(queries.flatten(1).float(), dim=1) @ F.normalize(candidates.flatten(1).float(), dim=1).T
    top = sims.topk(k, dim=1)
    return top.indices, top.values


def others(idx: Tensor, sim: Tensor, queries: Sequence[int], k: int) -> tuple[Tensor, Tensor]:
    """`nearest`'s k + 1 results of each query (a candidate itself) -> its k nearest other candidates: the query is
    not its own neighbour, wherever it ranks (a duplicate image may tie with it)."""
    keep = idx != torch.as_tensor(list(queries), device=idx.device)[:, None]
    return (torch.stack([row[m][:k] for row, m in zip(idx, keep)]),
            torch.stack([row[m][:k] for row, m in zip(sim, keep)]))


def neighbours_sheet(images: Tensor, queries: Sequence[int], found: Sequence[tuple[str, Tensor, Tensor]]) -> Sheet:
    """images uint8 [M,3,H,W] (the candidates); queries: their indices; found: (model label, indices [Q,k],
    similarities [Q,k]) -> per query one row per model: the query, then its neighbours with their similarity."""
    rows: Sheet = []
    for q, index in enumerate(queries):
        for label, idx, sim in found:
            panels = [("query", images[index])]
            panels += [(f"{j + 1}: {float(s):.2f}", images[int(i)]) for j, (i, s) in enumerate(zip(idx[q], sim[q]))]
            rows.append((label, panels))
    return rows


# ---------------------------------------------------------------- pretext: make_batch's output drawn


def assemble(tiles: Tensor, cells: Sequence[int | None] | None = None) -> Tensor:
    """Nine pictures [9,C,t,t] -> one uint8 3x3 puzzle [3, 3t+2g, 3t+2g]: picture s in cell cells[s] (default s);
    a cell no picture fills stays white."""
    t = tiles.shape[-1]
    side = GRID * t + (GRID - 1) * GAP
    out = torch.full((3, side, side), 255, dtype=torch.uint8)
    for s, cell in enumerate(range(len(tiles)) if cells is None else cells):
        if cell is None:
            continue
        r, c = divmod(int(cell), GRID)
        out[:, r * (t + GAP): r * (t + GAP) + t, c * (t + GAP): c * (t + GAP) + t] = to_rgb8(tiles[s])
    return out


def rotation_sheet(task: Any, batch: dict[str, Tensor], num: int) -> Sheet:
    """Each image's rotated copies, captioned with their labels (label k = k x 90 degrees counter-clockwise)."""
    inputs, labels = batch["inputs"], batch["labels"]
    per = 4  # make_batch writes each image's four rotations in a row
    n = min(num, inputs.shape[0] // per)
    return [("", [(f"{int(labels[i * per + j])}: {90 * int(labels[i * per + j])} deg", to_rgb8(inputs[i * per + j]))
                  for j in range(per)]) for i in range(n)]


def permutation_text(perm: Tensor) -> str:
    """A permutation as the deck writes it: 1-based, comma-separated (index 64 = 9,4,6,8,3,2,5,1,7)."""
    return ",".join(str(int(v) + 1) for v in perm)


def jigsaw_sheet(task: Any, batch: dict[str, Tensor], num: int) -> Sheet:
    """Per image: the tiles as the network sees them (slot order), captioned with the permutation index and the
    permutation; then the tiles put back by that permutation (slot s into cell perm[s]): the original crop."""
    rows = []
    for i in range(min(num, batch["tiles"].shape[0])):
        label = int(batch["labels"][i])
        perm = task.permutations[label].cpu()
        tiles = batch["tiles"][i]
        rows.append((f"permutation {label} = {permutation_text(perm)}",
                     [("shuffled", assemble(tiles)), ("reordered", assemble(tiles, perm.tolist()))]))
    return rows


def damaged_jigsaw_sheet(task: Any, batch: dict[str, Tensor], num: int) -> Sheet:
    """Per image: the gray shuffled puzzle with its empty slot, the puzzle put back (the missing cell white), and
    the colour tile the network must inpaint."""
    rows = []
    for i in range(min(num, batch["tiles"].shape[0])):
        label, slot = int(batch["labels"][i]), int(batch["missing_slot"][i])
        perm = task.permutations[label].cpu().tolist()
        cells: list[int | None] = [None if s == slot else c for s, c in enumerate(perm)]
        rows.append((f"permutation {label} = {permutation_text(torch.tensor(perm))}, slot {slot} empty",
                     [("shuffled", assemble(batch["tiles"][i])), ("reordered", assemble(batch["tiles"][i], cells)),
                      (f"cell {int(batch['missing'][i])}", to_rgb8(batch["target_tile"][i]))]))
    return rows


def context_sheet(task: Any, batch: dict[str, Tensor], num: int, pairs: int = 4) -> Sheet:
    """Per image, `pairs` of its patch pairs: the first patch in the centre of a 3x3 board and the second in the
    neighbour cell its label names, captioned with the label; a wrong label puts the second patch elsewhere. The
    pairs around the grid's centre cell (all 8 positions) are shown first, `pairs` of them per row in turn, so
    that the rows together show every label."""
    first, second, labels, patches = batch["first"], batch["second"], batch["labels"], batch["patches"]
    images = patches.shape[0] // (GRID * GRID)
    per_image = len(first) // max(1, images)
    rows = []
    for i in range(min(num, images)):
        own = range(i * per_image, (i + 1) * per_image)
        centred = [j for j in own if int(first[j]) % (GRID * GRID) == GRID * GRID // 2]
        order = centred + [j for j in own if j not in centred]
        start = (i * pairs) % len(centred) if centred else 0
        order = order[start:len(centred)] + order[:start] + order[len(centred):]
        row = []
        for j in order[:pairs]:
            label = int(labels[j])
            dx, dy = NEIGHBOURS[label]
            board = torch.stack([patches[first[j]], patches[second[j]]])
            row.append((f"{label}: {POSITIONS[label]}", assemble(board, [GRID * GRID // 2, (1 + dy) * GRID + 1 + dx])))
        rows.append(("second patch placed by its label", row))
    return rows


def inpainting_sheet(task: Any, batch: dict[str, Tensor], num: int) -> Sheet:
    """Per image: the masked input (the hole at the mean colour), the mask, and the region the network predicts."""
    rows = []
    for i in range(min(num, batch["inputs"].shape[0])):
        hole = batch["holes"][i].float()[None]
        share = f"hole {100 * float(hole.mean()):.0f}%"
        rows.append(("", [("input", to_rgb8(batch["inputs"][i])), (share, to_rgb8(hole)),
                          ("target", to_rgb8(batch["target"][i]))]))
    return rows


def colorization_sheet(task: Any, batch: dict[str, Tensor], num: int) -> Sheet:
    """Per image: the L input, and the colour its soft-encoded target says (the weighted mean of its k bins' ab
    centres over the input's lightness) on the target grid."""
    rows = []
    for i in range(min(num, batch["input"].shape[0])):
        weights, index = batch["weights"][i], batch["bins"][i]  # [k,h,w]
        ab = (weights[..., None] * task.bins.to(index.device)[index]).sum(0).permute(2, 0, 1)  # [2,h,w]
        light = F.adaptive_avg_pool2d(batch["input"][i:i + 1] + 50.0, ab.shape[-2:])[0]
        colour = (lab_to_rgb(torch.cat([light, ab])[None])[0] * 255).round().clamp(0, 255).to(torch.uint8)
        rows.append(("" if batch["nongray"][i] else "gray target: not scored",
                     [("input L", to_rgb8(batch["input"][i])), ("target ab", colour)]))
    return rows


def exemplar_sheet(task: Any, batch: dict[str, Tensor], num: int) -> Sheet:
    """Per image: its transformed views, captioned with their surrogate class."""
    views = task.cfg.views
    x, labels = batch["input"], batch["labels"]
    return [("", [(f"class {int(labels[i * views + j])}", to_rgb8(x[i * views + j])) for j in range(views)])
            for i in range(min(num, x.shape[0] // views))]


def multitask_sheet(task: Any, batch: dict[str, Tensor], num: int) -> Sheet:
    """The Task Ensemble: each sub-task's figure drawn from its part of the batch (keys '<sub-task>/...'), the
    sub-task named over its first row; a sub-task without a figure (motion segmentation) is left out."""
    rows: Sheet = []
    for name, sub in task.subtasks.items():
        part = {k.split("/", 1)[1]: v for k, v in batch.items() if k.startswith(f"{name}/")}
        if name not in PRETEXT or not part:
            continue
        sheet = PRETEXT[name](sub, part, num)
        rows += [(f"{name}: {title}" if i == 0 else title, panels) for i, (title, panels) in enumerate(sheet)]
    if not rows:
        raise UserError(f"multitask: none of its sub-tasks ({', '.join(task.subtasks)}) has a pretext figure")
    return rows


PRETEXT: dict[str, Callable[[Any, dict[str, Tensor], int], Sheet]] = {
    "rotation": rotation_sheet, "jigsaw": jigsaw_sheet, "damaged-jigsaw": damaged_jigsaw_sheet,
    "context": context_sheet, "inpainting": inpainting_sheet, "colorization": colorization_sheet,
    "exemplar": exemplar_sheet, "multitask": multitask_sheet,
}


def pretext_sheet(name: str, task: Any, batch: dict[str, Tensor], num: int) -> Sheet:
    if name not in PRETEXT:
        raise UserError(f"no pretext figure for {name!r}; valid: {', '.join(PRETEXT)}")
    return PRETEXT[name](task, batch, num)
