"""Context Prediction (Doersch, Gupta, Efros, ICCV 2015): where is the second patch relative to the first?

Following the released code (github.com/cdoersch/deepcontext, train.py): patches of the backbone's input
size are cut on a grid with `gap` pixels between neighbours, each moved by up to +-`jitter` pixels; every
ordered pair of neighbouring grid cells is one example, labelled by the second patch's position among the
first patch's 8 neighbours (in reading order, the code's `pos2lbl`):

    0 1 2
    3 . 4
    5 6 7

Here the grid is 3x3 and floats at a random place in each image. Guards against trivial solutions, all
from the paper (Sec. 3) / released code: the gap and jitter (no edge continuity, no exact alignment); 1/3 of
the patches downsampled and upsampled again (low-level detail is not reliable); chromatic aberration, which
reveals where a patch sat in the lens field, handled by `aberration` = "projection" (every pixel multiplied
by A = I - B^T B / (B B^T), B = [-1, 2, -1], the green-magenta axis) or "color-dropping" (one random channel
kept, the two others replaced by Gaussian noise of ~1/100 its standard deviation); then each patch is
normalised to zero mean per channel and unit variance ("so that gradients are a less useful cue").

Network: late fusion. The backbone runs once over all patches up to its fuse tap (AlexNet / VGG: fc6); the
two vectors of a pair are concatenated and go through the task's own fc7 -> fc8 -> 8-way classifier
(released code: fc7 4096 with BatchNorm, fc8 4096, fc9 8). The backbone's stages after the fuse tap are not
used (and frozen, so that DDP sees no unused trainable parameter).

Transfer input ("imagenet"): the plain ImageNet normalisation; like the per-patch normalisation it feeds
zero-mean, unit-scale inputs, without per-image statistics the protocols do not compute.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslbench.backbones.base import Backbone
from sslbench.config import In, Pixels, Rate, Weight
from sslbench.errors import UserError
from sslbench.registry import register_task
from sslbench.tasks.base import PretextTask, TinySetup, accuracy
from sslbench.transforms import GRID, cut_windows, lab_l_of_rgb01

# (dx, dy) of the second patch relative to the first for labels 0..7 (x right, y down): reading order.
NEIGHBOURS = ((-1, -1), (0, -1), (1, -1), (-1, 0), (1, 0), (-1, 1), (0, 1), (1, 1))
GREEN_MAGENTA = torch.tensor([-1.0, 2.0, -1.0]) / math.sqrt(6.0)  # the paper's B, unit length


@dataclass(frozen=True)
class ContextConfig:
    gap: Pixels = 48  # px between neighbouring patches before jitter (paper and released code: 48)
    jitter: Pixels = 7  # each patch moves by up to +-jitter px in x and y (released code: noise = 7)
    pairs: Literal["all", "center"] = "all"  # all 40 ordered neighbour pairs (released code) or the 8 around the centre
    aberration: Literal["projection", "color-dropping", "none"] = "color-dropping"  # released code: color-dropping
    noise_ratio: Weight = 0.01  # dropped channels: Gaussian noise std / kept channel's std (paper: ~1/100)
    # the dropped channels' noise: "gaussian" (the paper's text, noise_ratio x the kept channel's std) or "uniform"
    # (the released code, cdoersch/deepcontext train.py l.98-105: U(0, 1) - 0.5 in pixel units)
    drop_noise: Literal["gaussian", "uniform"] = "gaussian"
    downsample_prob: Rate = 1 / 3  # share of patches downsampled and upsampled back (released code: 0.33)
    # smallest side they are downsampled to (released code: 10..95 px at 96 px patches)
    downsample_min: Annotated[int, In(1, 4096)] = 10
    # width of the fusion layers fc7, fc8; 0 = the fused vector's (AlexNet: fc6; released code 4096)
    head_dim: Annotated[int, In(0, 65536)] = 0
    # fc7's BatchNorm with scale/shift; false = deepcontext's bn7 (train.py l.78-81: BatchNorm without them)
    head_bn_affine: bool = True


def neighbour_pairs(mode: str) -> tuple[Tensor, Tensor, Tensor]:
    """Cell indices (first, second) and labels of the pairs in one 3x3 grid: 40 for 'all', 8 for 'center'."""
    firsts = range(GRID * GRID) if mode == "all" else (GRID * GRID // 2,)
    first, second, labels = [], [], []
    for cell in firsts:
        row, col = divmod(cell, GRID)
        for label, (dx, dy) in enumerate(NEIGHBOURS):
            if 0 <= row + dy < GRID and 0 <= col + dx < GRID:
                first.append(cell)
                second.append((row + dy) * GRID + col + dx)
                labels.append(label)
    return torch.tensor(first), torch.tensor(second), torch.tensor(labels)


def grid_extent(patch: int, gap: int, jitter: int) -> int:
    """Side of the image region a jittered 3x3 grid of `patch` px cells can touch."""
    return GRID * patch + (GRID - 1) * gap + 2 * jitter


def grid_positions(
    n: int, height: int, width: int, patch: int, gap: int, jitter: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """Top-left corners (ys, xs), each [n, 9], of the jittered 3x3 grid cells in reading order.

    The grid's origin is uniform over every place where all jittered cells stay inside the image.
    """
    extent = grid_extent(patch, gap, jitter)
    if extent > min(height, width):
        raise UserError(
            f"context: a 3x3 grid of {patch} px patches with gap {gap} and jitter {jitter} needs images of at "
            f"least {extent} px, found {height}x{width}; raise data.image_size or lower task.gap / "
            "task.jitter / backbone.image_size (the patch side)"
        )
    on = generator.device
    oy = jitter + torch.randint(0, height - extent + 1, (n, 1), generator=generator, device=on)
    ox = jitter + torch.randint(0, width - extent + 1, (n, 1), generator=generator, device=on)
    cells, step = torch.arange(GRID * GRID, device=on), patch + gap
    ys = oy + (cells // GRID) * step + torch.randint(-jitter, jitter + 1, (n, GRID * GRID), generator=generator,
                                                     device=on)
    xs = ox + (cells % GRID) * step + torch.randint(-jitter, jitter + 1, (n, GRID * GRID), generator=generator,
                                                    device=on)
    return ys, xs


def downsample_sides(n: int, patch: int, smallest: int, prob: float, generator: torch.Generator) -> Tensor:
    """[n] side each patch is downsampled to, 0 = kept as is; the area is uniform (released code)."""
    on = generator.device
    chosen = torch.rand(n, generator=generator, device=on) < prob
    area = torch.rand(n, generator=generator, device=on) * ((patch - 1) ** 2 - smallest**2) + smallest**2
    return torch.where(chosen, area.sqrt().long(), torch.zeros(n, dtype=torch.long, device=on))


def downsample(patches: Tensor, sides: Tensor) -> Tensor:
    """Patches [M,C,P,P] float: those with sides[i] > 0 resized to that side and back up.

    Bilinear without anti-aliasing both ways, as skimage's resize (which the released code calls as
    caffe.io.resize, order 1) did then: the low-resolution patches keep their aliasing.
    """
    out = patches.clone()
    size = patches.shape[-1]
    for side in sides.unique().tolist():
        if side <= 0 or side >= size:
            continue
        idx = (sides == side).nonzero().squeeze(1)
        small = F.interpolate(patches[idx], size=(side, side), mode="bilinear", align_corners=False)
        out[idx] = F.interpolate(small, size=(size, size), mode="bilinear", align_corners=False)
    return out


def project_out_green_magenta(patches: Tensor) -> Tensor:
    """[M,3,H,W] -> every pixel times A = I - b b^T (b = (-1, 2, -1)/sqrt 6): no green-magenta component."""
    b = GREEN_MAGENTA.to(patches)
    a = torch.eye(3, dtype=patches.dtype, device=patches.device) - torch.outer(b, b)
    return (a @ patches.flatten(2)).view_as(patches)  # [3,3] @ [M,3,HW]: one batched matrix product


def drop_colors(kept: Tensor, keep: Tensor, noise_ratio: float, generator: torch.Generator,
                noise: str = "gaussian") -> Tensor:
    """Kept channels [M,1,H,W] (pixel units, 0..255), keep [M] -> [M,3,H,W]: channel keep[i] is kept[i], the two
    others noise: Gaussian of noise_ratio x its std, or uniform in [-0.5, 0.5) pixel units (the released code).
    The dropped channels are never read, so they need not be cut."""
    dev, on = kept.device, generator.device
    m, rows = kept.shape[0], torch.arange(kept.shape[0], device=dev)
    keep = keep.to(dev)
    dropped = (keep[:, None] + torch.tensor([1, 2], device=dev)) % 3  # [M,2]: the two other channels
    out = torch.empty((m, 3, *kept.shape[2:]), dtype=kept.dtype, device=dev)
    out[rows, keep] = kept[:, 0]
    if noise == "uniform":
        values = torch.rand((m, 2, *kept.shape[2:]), generator=generator, device=on).to(dev).sub_(0.5)
    else:
        std = row_std(kept.flatten(1)).clamp_min(1e-6).view(m, 1, 1, 1)
        values = torch.randn((m, 2, *kept.shape[2:]), generator=generator, device=on).to(dev).mul_(noise_ratio * std)
    out[rows[:, None], dropped] = values
    return out


def row_std(x: Tensor) -> Tensor:
    """[M, K] -> [M] unbiased standard deviation of each row, as Tensor.std(1); two plain passes are ~20x
    faster than torch's std kernel on the CPU for rows this long."""
    centred = x - x.mean(1, keepdim=True)
    return (centred.pow_(2).sum(1) / (x.shape[1] - 1)).sqrt_()


def normalize_patches(patches: Tensor, eps: float = 1e-6) -> Tensor:
    """Per patch: subtract each channel's mean, then divide by the root mean square over all its values."""
    return normalize_patches_(patches.clone(), eps)


def normalize_patches_(patches: Tensor, eps: float = 1e-6) -> Tensor:
    """`normalize_patches` in place (make_batch's own temporary: no new 4-byte-per-value buffer to fault in)."""
    patches.sub_(patches.mean(dim=(2, 3), keepdim=True))
    rms = torch.linalg.vector_norm(patches.flatten(1), dim=1) / math.sqrt(patches[0].numel())
    return patches.div_(rms.view(-1, 1, 1, 1) + eps)


@register_task("context", config=ContextConfig)
class ContextPrediction(PretextTask):
    """Context Prediction: 8-way relative position of two patches, late-fusion siamese network."""

    display_name = "Context"
    harmonizable = ("lab-l",)  # in a Task Ensemble: L - 50 patches (no chromatic aberration left to handle)

    def __init__(self, cfg: ContextConfig, backbone: Backbone) -> None:
        super().__init__(cfg, backbone)
        self.fuse = backbone.role("fuse_tap", "context (the two patches fuse there)")
        if cfg.gap < 2 * cfg.jitter:
            raise UserError(
                f"context: gap {cfg.gap} < 2 x jitter {cfg.jitter} would let neighbouring patches overlap; "
                "raise task.gap or lower task.jitter"
            )
        self.patch = backbone.image_size  # the network sees patches at its own input size
        if not 0 < cfg.downsample_min < self.patch:
            raise UserError(
                f"context: downsample_min {cfg.downsample_min} must be in 1..{self.patch - 1} (below the patch side)"
            )
        backbone.freeze_after(self.fuse)  # the trunk's fc7: the head replaces it
        dim = backbone.feature_info[self.fuse].channels
        hidden = cfg.head_dim or dim
        self.head = nn.Sequential(
            nn.Linear(2 * dim, hidden, bias=False), nn.BatchNorm1d(hidden, affine=cfg.head_bn_affine),  # fc7
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True),  # fc8
            nn.Linear(hidden, len(NEIGHBOURS)),  # fc9: the 8-way classifier
        )
        self.pairs = neighbour_pairs(cfg.pairs)  # plain tensors, not buffers: make_batch runs on the CPU

    def make_batch(self, images: Tensor, targets: dict[str, Any], generator: torch.Generator) -> dict[str, Tensor]:
        """uint8 [N,3,H,W] -> patches [9N,3,P,P], pair indices first/second [K*N] into them, labels [K*N]."""
        cfg, n, dev = self.cfg, images.shape[0], images.device
        ys, xs = grid_positions(n, images.shape[2], images.shape[3], self.patch, cfg.gap, cfg.jitter, generator)
        ys, xs, m = ys.to(dev), xs.to(dev), n * GRID * GRID
        sides = downsample_sides(m, self.patch, cfg.downsample_min, cfg.downsample_prob, generator).to(dev)
        if self.harmonize == "lab-l":  # Colorization's preprocessing (the Task Ensemble's harmonisation)
            rgb = downsample(cut_windows(images, ys, xs, self.patch).flatten(0, 1).float() / 255.0, sides)
            patches = lab_l_of_rgb01(rgb)
        elif cfg.aberration == "color-dropping":  # only the kept channel is cut and resized: a third of the work
            keep = torch.randint(0, 3, (m,), generator=generator, device=generator.device).to(dev)
            kept = downsample(cut_windows(images, ys, xs, self.patch, keep.view(n, -1)).flatten(0, 1).float(), sides)
            patches = drop_colors(kept, keep, cfg.noise_ratio, generator, cfg.drop_noise)
        else:  # float 0..255: every step below is scale-free
            patches = downsample(cut_windows(images, ys, xs, self.patch).flatten(0, 1).float(), sides)  # [9N,3,P,P]
            if cfg.aberration == "projection":
                patches = project_out_green_magenta(patches)
        first, second, labels = (t.to(dev) for t in self.pairs)
        base = (torch.arange(n, device=dev) * GRID * GRID)[:, None]  # image i's cells start at row 9i
        return {
            "patches": patches if self.harmonize else normalize_patches_(patches),
            "first": (base + first).flatten(),
            "second": (base + second).flatten(),
            "labels": labels.repeat(n),
        }

    def logits(self, batch: dict[str, Tensor]) -> Tensor:
        fused = self.backbone(batch["patches"], taps=(self.fuse,))[self.fuse]  # [9N, D]: each patch once
        pairs = torch.cat([fused[batch["first"]], fused[batch["second"]]], dim=1)  # [K*N, 2D]
        return self.head(pairs)

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        logits = self.logits(batch)
        return {"loss": F.cross_entropy(logits, batch["labels"]), "acc": accuracy(logits, batch["labels"])}

    def variant(self) -> str:
        return self.cfg.aberration

    def transfer_input(self) -> str:
        return self.harmonize or "imagenet"

    @classmethod
    def tiny(cls) -> TinySetup:
        return TinySetup("alexnet", {"width": 0.125, "fc_dim": 32, "image_size": 32, "conv1_stride": 1}, 112,
                         {"gap": 4, "jitter": 1, "head_dim": 32})
