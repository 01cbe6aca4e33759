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
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sslbench.backbones.base import Backbone
from sslbench.config import In, Weight
from sslbench.errors import UserError
from sslbench.registry import register_task
from sslbench.tasks.base import PretextTask, TinySetup, accuracy
from sslbench.tasks.jigsaw import (
    TILES,
    PuzzleConfig,
    check_puzzle,
    fc_head,
    hamming_permutation_set,
    shuffle_tiles,
    tile_corners,
    tile_towers,
)
from sslbench.transforms import cut_windows, rgb8_to_lab, standardize_

AB_SCALE = 110.0  # |a|, |b| of sRGB colours stay below ~110: targets of order 1


@dataclass(frozen=True)
class DamagedJigsawConfig(PuzzleConfig):
    """Jigsaw's puzzle (PuzzleConfig: the permutation set of Noroozi & Favaro, 3x3 cells of 75 px, 64 px tiles,
    each gray tile normalised by its own mean and std) plus the three losses' weights and heads."""

    perm_weight: Weight = 1.0  # weight of the permutation cross-entropy
    inpaint_weight: Weight = 1.0  # weight of the missing-tile reconstruction loss
    color_weight: Weight = 1.0  # weight of the ab colourisation loss
    inpaint_loss: Literal["l2", "l1"] = "l2"  # reconstruction loss of the missing tile (Context Encoders: L2)
    decoder_channels: Annotated[int, In(1, 4096)] = 64  # width of the inpainting and colourisation decoders

    def __post_init__(self) -> None:
        check_puzzle(self.cell, self.tile, self.num_permutations)
        if min(self.perm_weight, self.inpaint_weight, self.color_weight) < 0:
            raise UserError("task.perm_weight / inpaint_weight / color_weight must be >= 0 (0 turns a loss off)")


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

    display_name = "CDJP"

    def __init__(self, cfg: DamagedJigsawConfig, backbone: Backbone) -> None:
        super().__init__(cfg, backbone)
        concat = tile_towers(backbone, cfg.tile, "damaged-jigsaw")
        self.color_tap = backbone.role("dense_tap", "damaged-jigsaw (its colouriser reads each tower's last conv map)")
        if backbone.in_channels != 1:
            raise UserError(f"damaged-jigsaw: the towers see gray (L channel) tiles, but backbone.in_channels is "
                            f"{backbone.in_channels}; set backbone.in_channels=1")
        perms = hamming_permutation_set(cfg.num_permutations, TILES, cfg.permutation_seed, cfg.selection)
        self.register_buffer("permutations", torch.from_numpy(perms))  # [P, 9], saved in the state dict
        self.perm_head = fc_head(concat, cfg.fc7_dim, cfg.num_permutations, cfg.head_bn, cfg.dropout)
        self.inpaint_head = inpaint_decoder(concat, cfg.tile, cfg.decoder_channels)
        self.color_head = color_decoder(backbone.feature_info[self.color_tap].channels, cfg.decoder_channels)

    def make_batch(self, images: Tensor, targets: dict[str, Any], generator: torch.Generator) -> dict[str, Tensor]:
        """uint8 [N,3,H,W] -> gray tiles [N,9,1,t,t] in slot order with the missing slot zero, and the targets.

        labels [N]: permutation index; missing [N]: the removed tile's cell (row-major); missing_slot [N]: its
        slot in the input; target_tile [N,3,t,t]: the removed tile, RGB in [-1,1]; target_ab [N,9,2,t,t]: ab/110
        of every slot (the missing slot's is never scored).
        """
        cfg, on, dev = self.cfg, generator.device, images.device
        n, c, h, w = images.shape
        perms = self.permutations.to(on)
        labels = torch.randint(0, len(perms), (n,), generator=generator, device=on)
        order = perms[labels]  # [N,9]: slot s shows cell order[:, s]
        corners = tile_corners(n, c, h, w, cfg.cell, cfg.tile, cfg.random_offsets, 0, generator)
        corners = shuffle_tiles(corners, order).to(dev)
        rgb8 = cut_windows(images, corners[..., 0], corners[..., 1], cfg.tile)  # uint8 [N,9,3,t,t], slot order
        lab = rgb8_to_lab(rgb8)
        missing_slot = torch.randint(0, TILES, (n,), generator=generator, device=on).to(dev)
        labels, order, rows = labels.to(dev), order.to(dev), torch.arange(n, device=dev)
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
        fuse = self.backbone.fuse_tap
        maps = self.backbone(tiles[present], taps=(self.color_tap, fuse))  # towers on the 8N present tiles only
        vectors = maps[fuse].new_zeros(n, TILES, maps[fuse].shape[1])
        vectors[present] = maps[fuse]
        features = vectors.flatten(1)  # [N, 9*D], the empty slot's block zero
        logits = self.perm_head(features)
        perm = F.cross_entropy(logits, batch["labels"])
        recon = self.inpaint_head(features)  # [N,3,t,t]
        distance = F.mse_loss if self.cfg.inpaint_loss == "l2" else F.l1_loss
        inpaint = distance(recon, batch["target_tile"])
        ab = self.color_head(maps[self.color_tap])  # [8N,2,s,s]
        color = F.mse_loss(ab, F.adaptive_avg_pool2d(batch["target_ab"][present], ab.shape[-2:]))
        cfg = self.cfg
        total = cfg.perm_weight * perm + cfg.inpaint_weight * inpaint + cfg.color_weight * color
        return {"loss": total, "acc": accuracy(logits, batch["labels"]), "perm_loss": perm,
                "inpaint_loss": inpaint, "color_loss": color}

    def transfer_input(self) -> str:
        """Transfer sees what a tower saw: the L channel, normalised by the image's own mean and std."""
        return "lab-l-std"

    def variant(self) -> str:
        """Tables tell apart runs with a loss switched off (e.g. 'no-inpaint')."""
        cfg = self.cfg
        off = [name for name, w in (("perm", cfg.perm_weight), ("inpaint", cfg.inpaint_weight),
                                    ("color", cfg.color_weight)) if w == 0]
        return "no-" + "-".join(off) if off else ""

    @classmethod
    def tiny(cls) -> TinySetup:
        return TinySetup("alexnet", {"width": 0.125, "fc_dim": 32, "image_size": 36, "conv1_stride": 2,
                                     "in_channels": 1}, 120,
                         {"num_permutations": 10, "cell": 40, "tile": 36, "fc7_dim": 32, "decoder_channels": 8})
