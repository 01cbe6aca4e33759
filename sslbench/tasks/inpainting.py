"""Context Encoders (Pathak, Kraehenbuehl, Donahue, Darrell, Efros, CVPR 2016): inpaint a removed region.

The trunk (AlexNet up to pool5) reads the image with a region removed and filled with the mean pixel (0 after
ImageNet normalisation, so the transfer protocols feed the trunk exactly as in pretraining); a channel-wise
fully connected layer lets every decoder unit see the whole image; up-convolutions decode the region.

Masks (`mask`), each covering `coverage` (1/4) of the image as in the paper:
- "central": the centred square. As in the released train.lua the network predicts the whole square and the
  hole is the square minus a band of `overlap` px, which stays visible and is predicted too.
- "random-blocks": a union of random rectangles (sides 1/8..1/4 of the image), as many as fit under `coverage`.
- "random-regions": arbitrary shapes. The paper pastes deformed PASCAL segmentation masks at random places;
  `regions = "silhouettes"` does that with the embedded generator's 20 class silhouettes under a random
  rotation, stretch, mirror and translation; `regions = "blobs"` is the released train_random.lua's
  thresholded smooth noise (there cut from one 10000 px pattern, here drawn per image at the same scale).
For random masks the network predicts the whole image and the band is the visible pixels within `overlap` px
of the hole (the released train_random.lua weights all of the context 10x instead).

Loss: L = lambda_rec * L_rec + lambda_adv * L_adv, L_rec = the L2 error over the hole (weight 1) and the band
(weight `overlap_weight` = 10, the released code's overlapL2Weight), normalised by the total weight.

One loss, one optimizer, two players (the engine calls loss(batch) and steps one optimizer): with
`adversarial`, the returned loss is L_G + L_D where
- L_D = BCE(D(real), 1) + BCE(D(pred.detach()), 0): the prediction is detached, so L_D reaches only D;
- L_G's adversarial term BCE(D'(pred), 1) runs through D' = D with detached parameters
  (torch.func.functional_call), so it reaches only the generator.
Each player's gradient is thus exactly its own loss's, and both take a simultaneous Adam step on the same
batch, in two parameter groups: the generator (encoder + decoder) at `generator_lr_mult` = 10 times the
recipe's rate, D at the rate itself, as the released train.lua sets optimStateG's learning rate to 10 x
opt.lr whenever the joint loss is used (0 < wtl2 < 1). The released code alternates a D step and a G step;
here they are simultaneous (Adam's per-parameter normalisation makes the scale of L_D irrelevant to D's step).

A PNG of masked inputs, completions and originals from a checkpoint: `sslbench show inpainting CKPT OUT.png`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import ConvexHull
from torch import Tensor, nn
from torch.func import functional_call

from sslbench.backbones.base import Backbone
from sslbench.config import In, Pixels, Positive, Weight
from sslbench.data.classes import VOC_CLASSES
from sslbench.data.synthetic import SHAPES, part_mask
from sslbench.errors import UserError
from sslbench.registry import register_task
from sslbench.tasks.base import ParamGroups, PretextTask, TinySetup
from sslbench.transforms import MEAN, MEAN_PIXEL, STD, cache_chunks, mirror, random_flips

MAX_BLOCKS = 16  # candidate rectangles per image: enough that the union nearly always reaches `coverage`


@dataclass(frozen=True)
class InpaintingConfig:
    mask: Literal["central", "random-blocks", "random-regions"] = "random-regions"  # paper's feature-learning mask
    regions: Literal["silhouettes", "blobs"] = "silhouettes"  # random-region shapes: paper-like / released code's
    # fraction of the image a mask removes (paper: a quarter)
    coverage: Annotated[float, In(0, 1, open_lo=True, open_hi=True)] = 0.25
    overlap: Pixels = 2  # px of visible context around the hole predicted too (released code: 4 at 128 px)
    overlap_weight: Weight = 10.0  # L2 weight of that band relative to the hole (released code: 10)
    adversarial: bool = False  # add the adversarial loss; False = L_rec only (the released feature-learning weights)
    lambda_rec: Weight = 0.999  # paper: lambda_rec = 0.999
    lambda_adv: Weight = 0.001  # paper: lambda_adv = 0.001
    generator_lr_mult: Positive = 10.0  # with `adversarial`: G's rate / D's (released train.lua: opt.lr*10 for G)
    # channels of the last hidden up-conv, doubled per earlier layer (released ngf: 64)
    decoder_width: Annotated[int, In(1, 4096)] = 64
    # channels of the discriminator's first conv, doubled per layer up to 8x (released ndf: 64)
    disc_width: Annotated[int, In(1, 4096)] = 64
    flip: bool = True  # random horizontal flip (the released data loader flips)


# ---------------------------------------------------------------- masks (pure)


def central_square(size: int, coverage: float) -> tuple[int, int]:
    """(top, side) of the centred square covering `coverage` of a size x size image."""
    side = int(round(size * math.sqrt(coverage)))
    return (size - side) // 2, side


def central_holes(n: int, size: int, coverage: float, overlap: int, device: torch.device | None = None) -> Tensor:
    """[N,S,S] bool: the centred square minus its `overlap` px rim (the rim is the visible band)."""
    top, side = central_square(size, coverage)
    hole = torch.zeros(n, size, size, dtype=torch.bool, device=device)
    hole[:, top + overlap : top + side - overlap, top + overlap : top + side - overlap] = True
    return hole


def block_boxes(n: int, size: int, generator: torch.Generator) -> Tensor:
    """[N, MAX_BLOCKS, 4] int64 boxes (y0, x0, y1, x1), half-open, sides 1/8..1/4 of the image, inside it."""
    lo, hi, on = max(1, size // 8), max(1, size // 4), generator.device
    hw = torch.randint(lo, hi + 1, (n, MAX_BLOCKS, 2), generator=generator, device=on)
    yx = (torch.rand(n, MAX_BLOCKS, 2, generator=generator, device=on) * (size - hw + 1)).long()
    return torch.cat([yx, yx + hw], dim=2)


def boxes_to_holes(boxes: Tensor, size: int, coverage: float) -> Tensor:
    """[N,K,4] boxes -> [N,S,S] bool: the union of the longest prefix of boxes covering at most `coverage`."""
    (n, k), dev = boxes.shape[:2], boxes.device
    r = torch.arange(size, device=dev)[:, None]  # [S,1]
    order = torch.arange(k, dtype=torch.uint8, device=dev)
    # Box j covers (y, x) iff it spans row y and column x: with "j where it spans, k elsewhere" per row and per
    # column, the first box covering a pixel is min_j max(row value, column value); k = uncovered.
    in_rows = torch.where((r >= boxes[:, None, :, 0]) & (r < boxes[:, None, :, 2]), order, k)  # [N,S,K]
    in_cols = torch.where((r >= boxes[:, None, :, 1]) & (r < boxes[:, None, :, 3]), order, k)  # [N,S,K]
    in_rows, in_cols = in_rows.permute(2, 0, 1).contiguous(), in_cols.permute(2, 0, 1).contiguous()  # [K,N,S]
    first = torch.full((n, size, size), k, dtype=torch.uint8, device=dev)
    for j in range(k):  # K in-place steps over the whole batch: cheaper than one [N,S,S,K] min
        torch.minimum(first, torch.maximum(in_rows[j, :, :, None], in_cols[j, :, None, :]), out=first)
    bins = first.flatten(1).long() + (torch.arange(n, device=dev) * (k + 1))[:, None]
    counts = torch.bincount(bins.flatten(), minlength=n * (k + 1)).view(n, k + 1)  # pixels first covered by box j
    cover = counts[:, :k].cumsum(1) / (size * size)  # [N,K]: coverage of the first 1..K boxes
    last = ((cover <= coverage).sum(1) - 1).clamp_min(0)  # at least one box (one covers at most 1/16)
    return first <= last[:, None, None]


@functools.lru_cache(maxsize=1)
def silhouette_bank(res: int = 128) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The embedded generator's 20 class silhouettes on a [-1.7, 1.7]^2 frame, in the frame's [-1, 1] grid
    coordinates: masks [20,1,R,R] float, area fractions [20], centroids [20,2] (x, y) and outlines [20,M,2]
    (convex hull vertices relative to the centroid, padded by repetition): what a warp needs to keep a shape inside."""
    c = (np.arange(res, dtype=np.float32) + 0.5) / res * 3.4 - 1.7
    v, u = np.meshgrid(c, c, indexing="ij")
    masks = np.stack([np.any([part_mask(p, u, v) for p in SHAPES[name]], axis=0) for name in VOC_CLASSES])
    grid = (np.arange(res, dtype=np.float32) + 0.5) / res * 2 - 1
    ys, xs = np.meshgrid(grid, grid, indexing="ij")
    centroids = np.stack([(masks * xs).sum((1, 2)), (masks * ys).sum((1, 2))], 1) / masks.sum((1, 2))[:, None]
    hulls = [ConvexHull(np.stack([xs[m], ys[m]], 1)) for m in masks]  # extents of a shape = of its hull
    edges = [h.points[h.vertices] - c for h, c in zip(hulls, centroids)]
    longest = max(len(e) for e in edges)
    outlines = np.stack([np.concatenate([e, np.repeat(e[:1], longest - len(e), 0)]) for e in edges])
    t = lambda a: torch.from_numpy(np.asarray(a, np.float32))  # noqa: E731
    return t(masks)[:, None], t(masks.mean((1, 2))), t(centroids), t(outlines)


def silhouette_holes(n: int, size: int, coverage: float, generator: torch.Generator, tries: int = 16) -> Tensor:
    """[N,S,S] bool: a class silhouette per image, rotated, stretched (aspect e^[-0.5,0.5]), mirrored, scaled
    to `coverage` of the image and placed at random where it fits. Of `tries` random poses the first that fits
    in the image is used; when none does, the first is shrunk until it fits (it then covers less)."""
    on = generator.device
    bank, area, centroid, outline = (t.to(on) for t in silhouette_bank())
    pick = torch.randint(len(bank), (n, tries), generator=generator, device=on)
    theta = torch.rand(n, tries, generator=generator, device=on) * 2 * math.pi
    stretch = torch.exp(torch.rand(n, tries, generator=generator, device=on) - 0.5)
    mirror = torch.where(torch.rand(n, tries, generator=generator, device=on) < 0.5, -1.0, 1.0)
    # affine_grid maps output to bank coordinates, A = R(theta) diag(sx, sy): |det A| = bank area / output area.
    sigma = torch.sqrt(area[pick] / coverage)
    sx, sy = sigma * stretch * mirror, sigma / stretch
    cos, sin = torch.cos(theta), torch.sin(theta)
    a = torch.stack([torch.stack([cos * sx, -sin * sy], -1), torch.stack([sin * sx, cos * sy], -1)], -2)  # [N,T,2,2]
    shape = outline[pick] @ torch.linalg.inv(a).transpose(-1, -2)  # [N,T,M,2] the hull in output coordinates
    lo, hi = shape.amin(2), shape.amax(2)  # [N,T,2]
    fits = ((hi - lo) <= 2).all(-1)  # [N,T]
    choice = (fits.float() + torch.linspace(0.5, 0, tries, device=on)).argmax(1)  # the first that fits, else first
    rows = torch.arange(n, device=on)
    a, lo, hi, pick = a[rows, choice], lo[rows, choice], hi[rows, choice], pick[rows, choice]
    shrink = ((hi - lo).amax(1) / 2).clamp_min(1.0)  # [N]
    a, lo, hi = a * shrink[:, None, None], lo / shrink[:, None], hi / shrink[:, None]
    centre = -1 - lo + torch.rand(n, 2, generator=generator, device=on) * (2 - (hi - lo))  # [N,2]: the centroid's
    offset = centroid[pick] - (a @ centre[:, :, None])[..., 0]
    grid = affine_grid(torch.cat([a, offset[:, :, None]], 2), size)
    return F.grid_sample(bank[pick], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0] > 0.5


def affine_grid(theta: Tensor, size: int) -> Tensor:
    """F.affine_grid(theta [N,2,3], [N,1,S,S], align_corners=False), the same bits: the same batched product of
    the base grid [S*S, 3] with each theta^T, but the base grid built once per size and shared by the batch (torch
    writes it out N times per call: two thirds of its time)."""
    n = theta.shape[0]
    base = base_grid(size, theta.dtype, theta.device).expand(n, size * size, 3)
    return base.bmm(theta.transpose(1, 2)).view(n, size, size, 2)


@functools.lru_cache(maxsize=8)
def base_grid(size: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """[1, S*S, 3]: (x, y, 1) of every output pixel's centre in [-1, 1], rows y, as torch's affine_grid builds it."""
    line = torch.linspace(-1, 1, size, dtype=dtype, device=device) * (size - 1) / size
    grid = torch.empty(1, size, size, 3, dtype=dtype, device=device)
    grid[..., 0].copy_(line)
    grid[..., 1].copy_(line.unsqueeze(-1))
    grid[..., 2].fill_(1)
    return grid.view(1, size * size, 3)


def blob_holes(n: int, size: int, coverage: float, generator: torch.Generator) -> Tensor:
    """[N,S,S] bool: the lowest `coverage` quantile of bicubically upsampled 8x8 uniform noise (released
    train_random.lua: res 0.06 on its 10000 px pattern = 7.7 noise cells across a 128 px crop)."""
    up = bicubic_matrix(8, size).to(generator.device)  # [S,8]
    smooth = (up @ torch.rand(n, 8, 8, generator=generator, device=generator.device) @ up.T).flatten(1)  # [N,S*S]
    k = max(1, int(round(coverage * size * size)))
    threshold = smooth.kthvalue(k, dim=1, keepdim=True).values
    return (smooth <= threshold).view(n, size, size)


@functools.lru_cache(maxsize=8)
def bicubic_matrix(src: int, dst: int) -> Tensor:
    """[dst, src]: F.interpolate's bicubic upsampling of one axis as a matrix (separable, so U X U^T in 2-D)."""
    basis = torch.eye(src).view(src, 1, src, 1)
    return F.interpolate(basis, size=(dst, 1), mode="bicubic", align_corners=False)[:, 0, :, 0].T.contiguous()


def make_holes(cfg: InpaintingConfig, n: int, size: int, generator: torch.Generator) -> Tensor:
    """[N,S,S] bool, True where pixels are removed."""
    if cfg.mask == "central":
        return central_holes(n, size, cfg.coverage, cfg.overlap, generator.device)
    if cfg.mask == "random-blocks":
        return boxes_to_holes(block_boxes(n, size, generator), size, cfg.coverage)
    if cfg.regions == "silhouettes":
        return silhouette_holes(n, size, cfg.coverage, generator)
    return blob_holes(n, size, cfg.coverage, generator)


def overlap_band(holes: Tensor, overlap: int) -> Tensor:
    """[N,S,S] bool: visible pixels within `overlap` px (chessboard distance) of the hole."""
    padded = F.pad(holes, (overlap, overlap, overlap, overlap))
    # A square dilation is a row dilation then a column one; OR-ing shifted views beats max_pool2d on the CPU.
    return grow(grow(padded, 2 * overlap + 1, -1), 2 * overlap + 1, -2) & ~holes


def grow(x: Tensor, width: int, dim: int) -> Tensor:
    """bool x -> y, shorter by width - 1 along `dim`, y[i] = x[i] | ... | x[i + width - 1]: the OR of `width`
    shifted views by doubling (runs of 1, 2, 4, ... then one last shift), log2(width) + 1 ORs instead of width."""
    run, span = x, 1
    while 2 * span <= width:
        n = run.shape[dim] - span
        run, span = run.narrow(dim, 0, n) | run.narrow(dim, span, n), 2 * span
    if span < width:  # two runs of `span` overlapping to cover `width`
        n = run.shape[dim] - (width - span)
        run = run.narrow(dim, 0, n) | run.narrow(dim, width - span, n)
    return run


def loss_weights(holes: Tensor, overlap: int, overlap_weight: float) -> Tensor:
    """[N,1,S,S] float: 1 in the hole, `overlap_weight` in the band, 0 elsewhere."""
    return overlap_band(holes, overlap).float().mul_(overlap_weight).masked_fill_(holes, 1.0)[:, None]


def masked_l2(pred: Tensor, target: Tensor, weights: Tensor) -> Tensor:
    """sum w (pred - target)^2 / (C sum w): the weighted mean squared error over the weighted pixels."""
    return (weights * (pred - target).pow(2)).sum() / (weights.sum() * pred.shape[1]).clamp_min(1e-12)


# ---------------------------------------------------------------- networks


class ChannelwiseFC(nn.Module):
    """A fully connected layer per channel over its n x n positions, none across channels (paper Sec. 3.1):
    m n^4 weights instead of the m^2 n^4 of a full layer."""

    def __init__(self, channels: int, size: int) -> None:
        super().__init__()
        p = size * size
        self.weight = nn.Parameter(torch.empty(channels, p, p).uniform_(-1 / math.sqrt(p), 1 / math.sqrt(p)))
        self.bias = nn.Parameter(torch.zeros(channels, p))

    def forward(self, x: Tensor) -> Tensor:
        y = torch.einsum("ncp,cqp->ncq", x.flatten(2), self.weight) + self.bias  # [N,C,n*n]
        return y.view_as(x)


def dcgan_init(module: nn.Module) -> None:
    """N(0, 0.02) conv weights and N(1, 0.02) BN scales: the released code's weights_init."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class Decoder(nn.Module):
    """pool5 [N,C,n,n] -> channel-wise FC -> 1x1 conv (mixes channels) -> stride-2 up-convs -> tanh [N,3,out,out].

    ceil(log2(out / n)) up-convolutions (five for 2 -> 64 px, the paper's count), each but the last with BN + ReLU;
    a final area-antialiased resize when out / n is not a power of two."""

    def __init__(self, channels: int, size: int, out: int, width: int) -> None:
        super().__init__()
        self.out = out
        ups = max(1, math.ceil(math.log2(out / size) - 1e-9))
        widths = [width * 2 ** (ups - 2 - i) for i in range(ups - 1)] + [3]
        layers: list[nn.Module] = [ChannelwiseFC(channels, size), nn.Conv2d(channels, channels, 1, bias=False),
                                   nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
        cin = channels
        for i, cout in enumerate(widths):
            layers.append(nn.ConvTranspose2d(cin, cout, 4, 2, 1, bias=i == len(widths) - 1))
            if i < len(widths) - 1:
                layers += [nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]
            cin = cout
        self.net = nn.Sequential(*layers, nn.Tanh())
        dcgan_init(self)

    def forward(self, x: Tensor) -> Tensor:
        y = self.net(x)
        if y.shape[-1] != self.out:
            y = F.interpolate(y, size=(self.out, self.out), mode="bilinear", align_corners=False, antialias=True)
        return y


class Discriminator(nn.Module):
    """The released code's DCGAN discriminator on the predicted region: stride-2 4x4 convs (BN + LeakyReLU 0.2
    after all but the first) down to <= 4 px, then one conv to a single real/fake logit."""

    def __init__(self, size: int, width: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin, cout = 3, width
        while size > 4:
            layers.append(nn.Conv2d(cin, cout, 4, 2, 1, bias=cin == 3))
            layers += [nn.BatchNorm2d(cout)] if cin != 3 else []
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            size, cin, cout = size // 2, cout, min(cout * 2, width * 8)
        self.net = nn.Sequential(*layers, nn.Conv2d(cin, 1, size), nn.Flatten(0))
        dcgan_init(self)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)  # [N] logits


# ---------------------------------------------------------------- the task


@register_task("inpainting", config=InpaintingConfig)
class Inpainting(PretextTask):
    """Context Encoders: reconstruct a removed region (L2 with an overlap band, optionally + adversarial)."""

    display_name = "Context Encoders"

    def __init__(self, cfg: InpaintingConfig, backbone: Backbone) -> None:
        super().__init__(cfg, backbone)
        if not 0 < cfg.coverage < 1:
            raise UserError(f"inpainting: task.coverage is the fraction of the image removed, in (0, 1); "
                            f"found {cfg.coverage}")
        self.code = backbone.role("spatial_tap", "inpainting (the encoder ends at the trunk's last map)")
        self.size = backbone.image_size
        top, side = central_square(self.size, cfg.coverage) if cfg.mask == "central" else (0, self.size)
        if cfg.mask == "central" and side <= 2 * cfg.overlap:
            raise UserError(f"inpainting: the central square ({side} px) leaves no hole inside an overlap band of "
                            f"{cfg.overlap} px; lower task.overlap or raise task.coverage")
        self.top, self.side = top, side
        code = backbone.feature_info[self.code]
        self.decoder = Decoder(code.channels, code.size, side, cfg.decoder_width)
        self.disc = Discriminator(side, cfg.disc_width) if cfg.adversarial else None
        backbone.freeze_after(self.code)

    def region(self, x: Tensor) -> Tensor:
        """The part of an image [..., S, S] the network predicts: the central square, or all of it."""
        return x[..., self.top : self.top + self.side, self.top : self.top + self.side]

    def make_batch(self, images: Tensor, targets: dict[str, Any], generator: torch.Generator) -> dict[str, Tensor]:
        """uint8 [N,3,S,S] -> inputs [N,3,S,S] (normalised, hole = 0 = mean pixel), target [N,3,s,s] in [-1,1],
        weights [N,1,s,s] (hole 1, band overlap_weight), holes [N,S,S]; s = the predicted region's side."""
        n, _, h, w = images.shape
        if h != self.size or w != self.size:
            raise UserError(f"inpainting: images are {h}x{w} px but the encoder was built for {self.size} px; "
                            "set data.image_size equal to backbone.image_size")
        flips = random_flips(n, generator, images.device) if self.cfg.flip else None
        holes = make_holes(self.cfg, n, self.size, generator).to(images.device)
        weights = loss_weights(holes, self.cfg.overlap, self.cfg.overlap_weight)
        dev = images.device
        shift, scale = (-MEAN / STD).to(dev), (1 / (255 * STD)).to(dev)
        inputs = torch.empty(images.shape, device=dev)
        target = torch.empty((n, 3, self.side, self.side), device=dev)
        for part in cache_chunks(n, 4 * images[0].numel(), dev):  # a few images at a time, from the CPU's cache
            chunk = images[part]
            if flips is not None:  # a random horizontal flip of each image
                chunk = mirror(chunk, flips[part])
            pixels = chunk.float()
            # = normalize(images), the hole at 0 = the mean colour
            torch.addcmul(shift, pixels, scale, out=inputs[part]).masked_fill_(holes[part, None], 0.0)
            torch.div(self.region(pixels), 127.5, out=target[part]).sub_(1.0)
        return {"inputs": inputs, "target": target, "weights": self.region(weights), "holes": holes}

    def generate(self, inputs: Tensor) -> Tensor:
        """Normalised masked images [N,3,S,S] -> the predicted region [N,3,s,s] in [-1, 1]."""
        return self.decoder(self.backbone(inputs, taps=(self.code,))[self.code])

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        pred = self.generate(batch["inputs"])
        rec = masked_l2(pred, batch["target"], batch["weights"])
        hole = self.region(batch["holes"][:, None]).float()
        logs = {"rec": rec.detach(), "hole_l2": masked_l2(pred.detach(), batch["target"], hole)}
        if self.disc is None:
            return {"loss": rec, **logs}
        frozen = {k: p.detach() for k, p in self.disc.named_parameters()}
        adv = bce(functional_call(self.disc, frozen, (pred,)), 1.0)  # reaches the generator only
        disc = bce(self.disc(batch["target"]), 1.0) + bce(self.disc(pred.detach()), 0.0)  # reaches D only
        gen = self.cfg.lambda_rec * rec + self.cfg.lambda_adv * adv
        return {"loss": gen + disc, "gen": gen, "disc": disc, "adv": adv.detach(), **logs}

    @torch.no_grad()
    def examples(self, images: Tensor, generator: torch.Generator) -> list[tuple[str, Tensor]]:
        """Masked input (the hole in the mean colour), the completion (the prediction in the hole), the original."""
        batch = self.make_batch(images, {}, generator)
        pred = self.generate(batch["inputs"])  # [N,3,s,s] in [-1, 1]
        holes = batch["holes"][:, None]
        masked = torch.where(holes, MEAN_PIXEL.view(1, 3, 1, 1), images)
        filled = ((pred + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
        completed = images.clone()
        self.region(completed).copy_(torch.where(self.region(holes), filled, self.region(images)))
        return [("masked input", masked), ("completion", completed), ("original", images)]

    def param_groups(self) -> ParamGroups:
        """One group, or with the adversarial loss the generator at generator_lr_mult x D's rate (released code)."""
        if self.disc is None:
            return super().param_groups()
        disc = {id(p) for p in self.disc.parameters()}
        generator = [p for p in self.parameters() if p.requires_grad and id(p) not in disc]
        return [{"params": generator, "lr_scale": self.cfg.generator_lr_mult}, {"params": list(self.disc.parameters())}]

    def variant(self) -> str:
        cfg = self.cfg
        mask = f"random-regions-{cfg.regions}" if cfg.mask == "random-regions" else cfg.mask
        return f"{'rec+adv' if cfg.adversarial else 'rec'}, {mask}"

    @classmethod
    def tiny(cls) -> TinySetup:
        return TinySetup("alexnet", {"image_size": 64, "width": 0.125, "conv1_stride": 2, "fc_dim": 32}, 64,
                         {"decoder_width": 8, "disc_width": 8, "adversarial": True})


def bce(logits: Tensor, label: float) -> Tensor:
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, label))
