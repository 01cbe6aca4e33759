"""Exemplar-CNN (Dosovitskiy, Springenberg, Riedmiller, Brox, NIPS 2014): every training image is a class.

`setup` picks one 32 x 32 seed patch per training image, at a place of high gradient (a position drawn with
probability proportional to the mean squared gradient magnitude under the patch), and the principal components
of the seed patches' pixel colours; both are saved with the checkpoint. A training sample of class i is a random
transformation of image i's seed (`transform_patches`, a pure function of the images, the seeds and a generator):
translation, scaling and rotation of the window the patch is read from, then colour: each pixel's projections on
the principal components multiplied by a factor per component ("contrast 1"), saturation and value raised to a
power, multiplied by a factor and shifted ("contrast 2"), the hue shifted ("color"). Every visit of an image draws
`views` new samples, so a class has views x epochs samples in all (the paper's K). The network (ExemplarNet:
64c5-128c5-256c5-512f and the table's two others) ends in a softmax over the N classes, with dropout on its
fully connected layer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from sslbench.backbones.base import Backbone
from sslbench.config import Dropout, In, Rate
from sslbench.errors import UserError
from sslbench.registry import register_task
from sslbench.tasks.base import PretextTask, SetupState, TinySetup, accuracy
from sslbench.transforms import MEAN, STD, lab_l_of_rgb01, luma


@dataclass(frozen=True)
class ExemplarConfig:
    num_classes: Annotated[int, In(2, 10**6)] = 16000  # N surrogate classes = training images (data.num_images)
    patch: Annotated[int, In(8, 256)] = 32  # seed patch side (paper: 32 x 32)
    views: Annotated[int, In(1, 1024)] = 1  # transformed samples of a class per visit of its image
    # the paper's ranges (NIPS 2014 Sec. 2); the released Matlab (code/make_data/augment_patches_distr.m) draws
    # translation in +-0.25, scale uniform in [1/sqrt2, sqrt2], the PCA factor as 2^N(0, c): set them here
    translate: Rate = 0.2  # translation up to this fraction of the patch side, in x and y
    scale_min: Annotated[float, In(0.05, 20)] = 0.7  # scaling by a factor uniform in [scale_min, scale_max]
    scale_max: Annotated[float, In(0.05, 20)] = 1.4
    rotate: Annotated[float, In(0, 180)] = 20.0  # rotation up to +-degrees
    pca_power: Annotated[float, In(0, 4)] = 1.0  # contrast 1: principal-component factor 2^U(-p, p): 0.5 .. 2
    sv_power: Annotated[float, In(0, 4)] = 2.0  # contrast 2: saturation / value ^ 2^U(-p, p): 0.25 .. 4
    sv_factor: Annotated[float, In(0, 4)] = 0.5  # ... times 2^U(-f, f): 0.71 .. 1.41
    sv_shift: Annotated[float, In(0, 1)] = 0.1  # ... plus U(-a, a)
    hue_shift: Annotated[float, In(0, 0.5)] = 0.1  # color: hue + U(-h, h) (hue in [0, 1))
    dropout: Dropout = 0.5  # dropout on the fully connected layer

    def __post_init__(self) -> None:
        if self.scale_min > self.scale_max:
            raise UserError(f"task.scale_min {self.scale_min} exceeds task.scale_max {self.scale_max}")


# ---------------------------------------------------------------- seeds


def gradient_energy(images: Tensor, patch: int) -> Tensor:
    """uint8 [N,3,H,W] -> [N, H-patch+1, W-patch+1]: the mean squared gradient magnitude of the gray image under
    the patch whose top-left corner is at each position (central differences)."""
    gray = luma(images.float() / 255.0)  # [N,1,H,W]
    gy = F.pad(gray[..., 2:, :] - gray[..., :-2, :], (0, 0, 1, 1)) / 2
    gx = F.pad(gray[..., :, 2:] - gray[..., :, :-2], (1, 1, 0, 0)) / 2
    return F.avg_pool2d(gx.square() + gy.square(), patch, stride=1)[:, 0]


def choose_seeds(images: Tensor, patch: int, generator: torch.Generator) -> Tensor:
    """uint8 [N,3,H,W] -> [N, 2] seed patch centres (y, x) in pixels: per image, a position drawn with probability
    proportional to its gradient energy (uniform on an image without any gradient)."""
    energy = gradient_energy(images, patch).flatten(1).double()  # [N, positions]
    flat = energy + (energy.sum(1, keepdim=True) == 0)  # a flat image: every position alike
    pick = torch.multinomial(flat, 1, generator=generator)[:, 0]
    side = images.shape[-1] - patch + 1
    return torch.stack([pick // side, pick % side], 1).float() + patch / 2


# ---------------------------------------------------------------- transformations


def rgb_to_hsv(rgb: Tensor) -> Tensor:
    """[...,3,H,W] in [0,1] -> HSV, each in [0,1] (hue as a fraction of the circle)."""
    r, g, b = rgb.unbind(-3)
    v, arg = rgb.max(-3)
    c = v - rgb.min(-3).values
    safe = c.clamp_min(1e-8)
    h = torch.where(arg == 0, ((g - b) / safe) % 6, torch.where(arg == 1, (b - r) / safe + 2, (r - g) / safe + 4))
    h = torch.where(c > 0, h / 6, torch.zeros_like(h))
    s = torch.where(v > 0, c / v.clamp_min(1e-8), torch.zeros_like(v))
    return torch.stack([h % 1.0, s, v], -3)


def hsv_to_rgb(hsv: Tensor) -> Tensor:
    """Inverse of rgb_to_hsv."""
    h, s, v = hsv.unbind(-3)
    k = torch.stack([(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6], -3)
    return v.unsqueeze(-3) - (v * s).unsqueeze(-3) * (torch.minimum(k, 4 - k).clamp(0, 1))


def identity_transform(patch: int) -> ExemplarConfig:
    """The transformation settings that read the seed patch as it is (every family off)."""
    return ExemplarConfig(patch=patch, translate=0, scale_min=1, scale_max=1, rotate=0, pca_power=0, sv_power=0,
                          sv_factor=0, sv_shift=0, hue_shift=0)


def _uniform(n: int, bound: float, generator: torch.Generator) -> Tensor:
    return (torch.rand(n, generator=generator, device=generator.device) * 2 - 1) * bound


def transform_patches(images: Tensor, centres: Tensor, cfg: ExemplarConfig, pca: Tensor, generator: torch.Generator
                      ) -> Tensor:
    """uint8 images [B,3,H,W] and their seed centres [B,2] (y, x) -> [B, 3, p, p] float patches in [0,1], each a
    random transformation of its seed: the window (translated by up to translate x p, its side multiplied by a
    factor uniform in [scale_min, scale_max], so the content scales by its inverse; rotated by up to +-rotate
    degrees) read bilinearly, reflecting at the image border; then the colour
    transformations. `pca` [4,3]: the pixel mean, then the principal components as rows."""
    b, _, h, w = images.shape
    p = cfg.patch
    shift = _uniform(2 * b, cfg.translate * p, generator).view(b, 2)
    zoom = cfg.scale_min + torch.rand(b, generator=generator, device=generator.device) * (cfg.scale_max - cfg.scale_min)
    angle = _uniform(b, math.radians(cfg.rotate), generator)
    cy, cx = (centres.to(shift.device) + shift).unbind(1)
    cos, sin = torch.cos(angle) * zoom, torch.sin(angle) * zoom
    # rows: an x offset normalised by w, a y offset by h (columns would shear a rotation on an H != W image)
    theta = torch.stack([torch.stack([cos * p / w, -sin * p / w, (2 * cx) / w - 1], 1),
                         torch.stack([sin * p / h, cos * p / h, (2 * cy) / h - 1], 1)], 1)
    grid = F.affine_grid(theta.to(images.device), [b, 3, p, p], align_corners=False)
    x = F.grid_sample(images.float() / 255.0, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    # contrast 1: the projections on the principal components scaled, one factor per component and patch
    mean, comps = pca[0].to(x), pca[1:].to(x)
    factor = torch.exp2(_uniform(3 * b, cfg.pca_power, generator)).view(b, 3, 1).to(x)
    centred = (x - mean.view(1, 3, 1, 1)).flatten(2)  # [B,3,pp]
    proj = comps @ centred  # [B,3,pp]
    x = (comps.T @ (proj * factor)).view_as(x) + mean.view(1, 3, 1, 1)
    # contrast 2 and color, in HSV
    hsv = rgb_to_hsv(x.clamp(0, 1))
    power = torch.exp2(_uniform(2 * b, cfg.sv_power, generator)).view(b, 2, 1, 1).to(x)
    gain = torch.exp2(_uniform(2 * b, cfg.sv_factor, generator)).view(b, 2, 1, 1).to(x)
    add = _uniform(2 * b, cfg.sv_shift, generator).view(b, 2, 1, 1).to(x)
    sv = (hsv[:, 1:].pow(power) * gain + add).clamp(0, 1)
    hue = (hsv[:, :1] + _uniform(b, cfg.hue_shift, generator).view(b, 1, 1, 1).to(x)) % 1.0
    return hsv_to_rgb(torch.cat([hue, sv], 1)).clamp(0, 1)


# ---------------------------------------------------------------- the task


@register_task("exemplar", config=ExemplarConfig)
class Exemplar(PretextTask):
    """Classify random transformations of seed patches by the image they come from (N surrogate classes)."""

    display_name = "Exemplar-CNN"
    harmonizable = ("lab-l",)  # in a Task Ensemble: the transformed patches' L - 50

    def __init__(self, cfg: ExemplarConfig, backbone: Backbone) -> None:
        super().__init__(cfg, backbone)
        if backbone.image_size != cfg.patch:
            raise UserError(f"exemplar: the network is built for {backbone.image_size} px inputs but the patches are "
                            f"{cfg.patch} px; set backbone.image_size = task.patch")
        self.tap = backbone.head_tap
        classifier = nn.Linear(backbone.feature_info[self.tap].channels, cfg.num_classes)
        nn.init.normal_(classifier.weight, std=0.005)  # released train.prototxt: the softmax layer ~ N(0, 0.005),
        nn.init.zeros_(classifier.bias)  # bias 0 (so the first steps start near the uniform prediction)
        self.head = nn.Sequential(nn.Flatten(1), nn.Dropout(cfg.dropout), classifier)
        self.register_buffer("centres", torch.zeros(cfg.num_classes, 2))
        self.register_buffer("pca", torch.cat([torch.full((1, 3), 0.5), torch.eye(3)]))

    def setup(self, dataset: Dataset, generator: torch.Generator) -> SetupState:
        n = len(dataset)  # type: ignore[arg-type]
        if n != self.cfg.num_classes:
            raise UserError(f"exemplar: task.num_classes is {self.cfg.num_classes} but the training split has {n} "
                            f"images (one class each); set data.num_images = {self.cfg.num_classes} or "
                            f"task.num_classes = {n}")
        centres, pixels = [], []
        for start in range(0, n, 256):
            items = [dataset[i] for i in range(start, min(n, start + 256))]
            if any(item is None for item in items):
                raise UserError("exemplar: an unreadable training image has no seed; remove it from the data set")
            images = torch.stack([item[0] for item in items])
            if min(images.shape[-2:]) < self.cfg.patch:
                raise UserError(f"exemplar: images of {tuple(images.shape[-2:])} px are smaller than the "
                                f"{self.cfg.patch} px seed patch; raise data.image_size")
            c = choose_seeds(images, self.cfg.patch, generator)
            centres.append(c)
            top = (c - self.cfg.patch / 2).long()
            for img, (y, x) in zip(images, top.tolist()):
                # every 16th pixel of each seed patch (the paper: "the set of all pixels"; a sample keeps it cheap)
                pixels.append(img[:, y : y + self.cfg.patch, x : x + self.cfg.patch].reshape(3, -1)[:, ::16])
        colours = torch.cat(pixels, 1).T.double() / 255.0  # [M, 3]
        mean = colours.mean(0)
        _, vecs = torch.linalg.eigh(torch.cov((colours - mean).T))
        return {"centres": torch.cat(centres), "pca": torch.cat([mean[None], vecs.T.flip(0)]).float()}

    def restore(self, state: SetupState) -> None:
        if not state:
            return
        if set(state) != {"centres", "pca"} or state["centres"].shape != self.centres.shape or \
                state["pca"].shape != self.pca.shape:
            raise ValueError(f"exemplar: setup state {sorted(state)} does not hold {len(self.centres)} seeds")
        self.centres.copy_(state["centres"])
        self.pca.copy_(state["pca"])

    def make_batch(self, images: Tensor, targets: dict[str, Any], generator: torch.Generator) -> dict[str, Tensor]:
        """uint8 [B,3,H,W] + targets["index"] (the images' classes) -> B x views transformed patches, normalised
        as the ImageNet statistics do, and their labels."""
        index = targets["index"].long().to(self.centres.device)
        v = self.cfg.views
        rep = images.repeat_interleave(v, 0) if v > 1 else images
        centres = self.centres[index].repeat_interleave(v, 0)
        x = transform_patches(rep, centres, self.cfg, self.pca, generator)
        x = lab_l_of_rgb01(x) if self.harmonize == "lab-l" else (x - MEAN.to(x.device)) / STD.to(x.device)
        return {"input": x, "labels": index.repeat_interleave(v, 0).to(images.device)}

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        logits = self.head(self.backbone(batch["input"], taps=(self.tap,))[self.tap])
        return {"loss": F.cross_entropy(logits, batch["labels"]), "acc": accuracy(logits, batch["labels"])}

    def transfer_input(self) -> str:
        return self.harmonize or "imagenet"

    def examples(self, images: Tensor, generator: torch.Generator) -> list[tuple[str, Tensor]]:
        """A seed chosen now in each image (the stored ones belong to the training images) and four samples of it."""
        centres = choose_seeds(images, self.cfg.patch, generator)
        plain = identity_transform(self.cfg.patch)
        panels = [("seed", transform_patches(images, centres, plain, self.pca.cpu(), generator))]
        panels += [(f"sample {i + 1}", transform_patches(images, centres, self.cfg, self.pca.cpu(), generator))
                   for i in range(4)]
        return [(name, (x * 255).round().to(torch.uint8)) for name, x in panels]

    @classmethod
    def tiny(cls) -> TinySetup:
        return TinySetup("exemplar-net", {"convs": (8, 8), "fc": 16, "image_size": 16}, 24,
                         {"num_classes": 4, "patch": 16, "views": 2})
