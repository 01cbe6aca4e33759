"""Completing damaged jigsaw puzzles, CDJP (Kim, Cho, Yoo, Kweon, WACV 2018).

A jigsaw puzzle (Noroozi & Favaro 2016, see jigsaw.py) damaged twice: one of the 9 tiles is removed and the
other 8 lose their colour (the network sees only the L channel of CIE Lab). The network recovers all three:
- the permutation of the remaining tiles (classification over the Hamming permutation set; the 8 tiles
  fix the 9-permutation, the empty slot stays empty);
- the missing tile, in colour, from the concatenated fc6 features (a small decoder; L2 or L1 loss);
- the colour of the 8 gray tiles: their ab channels, from each tower's conv5 map (L2 loss on ab).
The three losses are summed with the recipe's weights. The empty slot is really absent: no tower runs on
it and its fc6 block in the concatenation is zero, so the network learns where it is but not what it held.
Head shapes and loss forms here are this suite's (small decoders, regression losses); the paper's own are
not restated, see recipes/damaged-jigsaw/paper.toml for which values are the paper's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslbench.backbones.base import Backbone
from sslbench.errors import UserError
from sslbench.registry import register_task
from sslbench.tasks.base import PretextTask, accuracy
from sslbench.tasks.jigsaw import (
    TILES, Selection, check_puzzle, cut_tiles, fc_head, hamming_permutation_set, require_tile_trunk,
    shuffle_tiles, standardize_, tile_corners,
)

AB_SCALE = 110.0  # |a|, |b| of sRGB colours stay below ~110: targets of order 1
# sRGB (D65) -> CIE XYZ and the D65 white point, as OpenCV's and skimage's rgb2lab
RGB_TO_XYZ = torch.tensor([[0.412453, 0.357580, 0.180423],
                           [0.212671, 0.715160, 0.072169],
                           [0.019334, 0.119193, 0.950227]])
WHITE = torch.tensor([0.950456, 1.0, 1.088754])


@dataclass(frozen=True)
class DamagedJigsawConfig:
    num_permutations: int = 1000  # permutation classes (the Jigsaw set, as CDJP builds on Noroozi & Favaro)
    selection: Selection = "max-mean"  # greedy rule of the set (Jigsaw's Algorithm 1)
    permutation_seed: int = 0  # draws the set's first permutation
    cell: int = 75  # side of each of the 3x3 cells (Jigsaw: 225 px crop, 75 px cells)
    tile: int = 64  # side of the tile cut inside each cell (Jigsaw: 64 px)
    random_offsets: bool = True  # tile at a random offset inside its cell; false = centred
    tile_norm: bool = True  # normalise each gray tile by its own mean and std (Jigsaw's guard)
    fc7_dim: int = 4096  # width of fc7 of the permutation head
    head_bn: bool = True  # BatchNorm in fc7 (the PyTorch Jigsaw ports needed it)
    dropout: float = 0.5  # dropout before fc8
    perm_weight: float = 1.0  # weight of the permutation cross-entropy
    inpaint_weight: float = 1.0  # weight of the missing-tile reconstruction loss
    color_weight: float = 1.0  # weight of the ab colourisation loss
    inpaint_loss: Literal["l2", "l1"] = "l2"  # reconstruction loss of the missing tile (Context Encoders: L2)
    decoder_channels: int = 64  # width of the inpainting and colourisation decoders

    def __post_init__(self) -> None:
        check_puzzle(self.cell, self.tile, self.num_permutations)
        if min(self.perm_weight, self.inpaint_weight, self.color_weight) < 0:
            raise UserError("task.perm_weight / inpaint_weight / color_weight must be >= 0 (0 turns a loss off)")


def srgb_to_linear(rgb: Tensor) -> Tensor:
    """sRGB in [0,1] -> linear RGB (the sRGB transfer curve undone)."""
    return torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)


SRGB8_TO_LINEAR = srgb_to_linear(torch.arange(256, dtype=torch.float64) / 255.0).float()  # one value per uint8 level
XYZ_TO_WHITE = (RGB_TO_XYZ.double() / WHITE.double()[:, None]).float()  # RGB -> XYZ relative to the D65 white
F_TO_LAB = torch.tensor([[0.0, 116.0, 0.0], [500.0, -500.0, 0.0], [0.0, 200.0, -200.0]])  # (fx, fy, fz) -> L+16, a, b


def _channel_matmul(m: Tensor, x: Tensor, out: Tensor | None = None) -> Tensor:
    """[3,3] matrix applied to the channel dim (-3) of x [...,3,H,W]: one broadcast matmul, no permuted copies."""
    flat = x.reshape(-1, 3, x.shape[-2] * x.shape[-1])
    if out is None:
        return (m.to(x.dtype) @ flat).view(x.shape)
    torch.matmul(m.to(x.dtype), flat, out=out.view(flat.shape))
    return out


def _linear_to_lab(linear: Tensor, out: Tensor | None = None) -> Tensor:
    xyz = _channel_matmul(XYZ_TO_WHITE, linear)
    f = torch.where(xyz > 0.008856, xyz.clamp_min(1e-12).pow_(1 / 3), xyz * 7.787 + 16 / 116)
    lab = _channel_matmul(F_TO_LAB, f, out)
    lab.select(-3, 0).sub_(16.0)
    return lab


def rgb_to_lab(rgb: Tensor) -> Tensor:
    """sRGB in [0,1], channels at dim -3 -> CIE Lab (D65): L in [0,100], a and b roughly in [-110,110]."""
    return _linear_to_lab(srgb_to_linear(rgb))


LAB_CHUNK = 1 << 17  # values per chunk of rgb8_to_lab: its ~10 temporaries stay in the CPU's L2 cache


def rgb8_to_lab(rgb8: Tensor) -> Tensor:
    """uint8 sRGB [...,3,H,W] -> Lab as `rgb_to_lab(rgb8 / 255)`.

    The transfer curve is a 256-entry table lookup (its pow 2.4 was a third of a Damaged-Jigsaw batch), and
    the images go through in chunks of about LAB_CHUNK values: a whole batch's temporaries (57 MB each at
    128 x 9 tiles of 64 px) stream through memory once per elementwise op, a chunk's stay in cache (2.5x).
    """
    flat = rgb8.reshape(-1, *rgb8.shape[-3:])
    out = torch.empty(flat.shape, dtype=torch.float32, device=rgb8.device)
    rows = max(1, LAB_CHUNK // flat[0].numel()) if rgb8.device.type == "cpu" else len(flat)
    table = SRGB8_TO_LINEAR.to(rgb8.device)
    for start in range(0, len(flat), rows):
        part = flat[start : start + rows]
        _linear_to_lab(table.index_select(0, part.flatten().long()).view(part.shape), out[start : start + rows])
    return out.view(rgb8.shape)


def inpaint_decoder(in_dim: int, tile: int, channels: int) -> nn.Sequential:
    """fc features -> a [3, tile, tile] image: 4x4 seed, x2 up-convolutions up to <= tile, resized to the tile."""
    ups = max(1, math.floor(math.log2(tile / 4)))
    layers: list[nn.Module] = [nn.Linear(in_dim, channels * 16), nn.ReLU(inplace=True),
                               nn.Unflatten(1, (channels, 4, 4))]
    for _ in range(ups):
        layers += [nn.ConvTranspose2d(channels, channels, 4, 2, 1), nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
    layers += [zero_conv(channels, 3), nn.Upsample(size=(tile, tile), mode="bilinear", align_corners=False)]
    return nn.Sequential(*layers)


def color_decoder(in_channels: int, channels: int) -> nn.Sequential:
    """A tower's conv5 map -> ab at twice its resolution."""
    return nn.Sequential(
        nn.Conv2d(in_channels, channels, 3, 1, 1), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), zero_conv(channels, 2),
    )


def zero_conv(cin: int, cout: int) -> nn.Conv2d:
    """The decoders' last layer starts at zero: a mid-gray tile / no colour, so their first gradients stay small."""
    conv = nn.Conv2d(cin, cout, 3, 1, 1)
    nn.init.zeros_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


@register_task("damaged-jigsaw", config=DamagedJigsawConfig)
class DamagedJigsaw(PretextTask):
    """CDJP: solve a gray jigsaw puzzle with one tile missing, inpaint the missing tile, colourise the rest."""

    def __init__(self, cfg: DamagedJigsawConfig, backbone: Backbone) -> None:
        super().__init__(cfg, backbone)
        require_tile_trunk(backbone, cfg.tile, "damaged-jigsaw")
        if backbone.in_channels != 1:
            raise UserError(f"damaged-jigsaw: the towers see gray (L channel) tiles, but backbone.in_channels is "
                            f"{backbone.in_channels}; set backbone.in_channels=1")
        perms = hamming_permutation_set(cfg.num_permutations, TILES, cfg.permutation_seed, cfg.selection)
        self.register_buffer("permutations", torch.from_numpy(perms))  # [P, 9], saved in the state dict
        concat = TILES * backbone.feature_info["fc6"].channels
        self.perm_head = fc_head(concat, cfg.fc7_dim, cfg.num_permutations, cfg.head_bn, cfg.dropout)
        self.inpaint_head = inpaint_decoder(concat, cfg.tile, cfg.decoder_channels)
        self.color_head = color_decoder(backbone.feature_info["conv5"].channels, cfg.decoder_channels)

    def make_batch(self, images: Tensor, generator: torch.Generator) -> dict[str, Tensor]:
        """uint8 [N,3,H,W] -> gray tiles [N,9,1,t,t] in slot order with the missing slot zero, and the targets.

        labels [N]: permutation index; missing [N]: the removed tile's cell (row-major); missing_slot [N]: its
        slot in the input; target_tile [N,3,t,t]: the removed tile, RGB in [-1,1]; target_ab [N,9,2,t,t]: ab/110
        of every slot (the missing slot's is never scored).
        """
        cfg = self.cfg
        n, c, h, w = images.shape
        perms = self.permutations.cpu()
        labels = torch.randint(0, len(perms), (n,), generator=generator)
        order = perms[labels]  # [N,9]: slot s shows cell order[:, s]
        corners = tile_corners(n, c, h, w, cfg.cell, cfg.tile, cfg.random_offsets, 0, generator)
        rgb8 = cut_tiles(images, shuffle_tiles(corners, order), cfg.tile)  # uint8 [N,9,3,t,t], slot order
        lab = rgb8_to_lab(rgb8)
        missing_slot = torch.randint(0, TILES, (n,), generator=generator)
        rows = torch.arange(n)
        gray = lab[:, :, :1].contiguous()
        if cfg.tile_norm:
            standardize_(gray, (2, 3, 4))
        else:
            gray.div_(50.0).sub_(1.0)
        gray[rows, missing_slot] = 0.0
        return {
            "tiles": gray, "labels": labels, "missing": order[rows, missing_slot], "missing_slot": missing_slot,
            "target_tile": rgb8[rows, missing_slot].float() / 127.5 - 1.0, "target_ab": lab[:, :, 1:].div_(AB_SCALE),
        }

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        tiles = batch["tiles"]  # [N,9,1,t,t]
        n = tiles.shape[0]
        present = torch.ones(n, TILES, dtype=torch.bool, device=tiles.device)
        present[torch.arange(n, device=tiles.device), batch["missing_slot"]] = False
        maps = self.backbone(tiles[present], taps=("conv5", "fc6"))  # towers on the 8N present tiles only
        fc6 = maps["fc6"].new_zeros(n, TILES, maps["fc6"].shape[1])
        fc6[present] = maps["fc6"]
        features = fc6.flatten(1)  # [N, 9*D], the empty slot's block zero
        logits = self.perm_head(features)
        perm = F.cross_entropy(logits, batch["labels"])
        recon = self.inpaint_head(features)  # [N,3,t,t]
        distance = F.mse_loss if self.cfg.inpaint_loss == "l2" else F.l1_loss
        inpaint = distance(recon, batch["target_tile"])
        ab = self.color_head(maps["conv5"])  # [8N,2,s,s]
        color = F.mse_loss(ab, F.adaptive_avg_pool2d(batch["target_ab"][present], ab.shape[-2:]))
        cfg = self.cfg
        total = cfg.perm_weight * perm + cfg.inpaint_weight * inpaint + cfg.color_weight * color
        return {"loss": total, "acc": accuracy(logits, batch["labels"]), "perm_loss": perm,
                "inpaint_loss": inpaint, "color_loss": color}

    @staticmethod
    def trunk_input(images: Tensor) -> Tensor:
        """Transfer sees what a tower saw: the L channel, normalised by the image's own mean and std."""
        lab = rgb8_to_lab(images) if images.dtype == torch.uint8 else rgb_to_lab(images.float() / 255.0)
        lightness = lab[:, :1]
        return standardize_(lightness.contiguous(), (1, 2, 3))

    @staticmethod
    def variant(cfg: DamagedJigsawConfig) -> str:
        """Tables tell apart runs with a loss switched off (e.g. 'no-inpaint')."""
        off = [name for name, w in (("perm", cfg.perm_weight), ("inpaint", cfg.inpaint_weight),
                                    ("color", cfg.color_weight)) if w == 0]
        return "no-" + "-".join(off) if off else ""
