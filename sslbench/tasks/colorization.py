"""Colorization (Zhang, Isola, Efros, ECCV 2016): predict the distribution of a pixel's ab colour from L.

The network sees the lightness L of CIE Lab (centred, L - 50) and classifies every cell of its output grid
into one of Q ab bins: the ab plane on a grid of `grid` (paper: 10) units, kept where the sRGB gamut is
(`ab_gamut_bins`: 313 bins at grid 10, the paper's Q). Its target is the soft-encoding of the true ab: the
`neighbours` nearest bins weighted by a Gaussian kernel of width `sigma` (paper Sec. 2.1: 5 and 5; the
released caffe_traininglayers.py NNEncLayer uses 10 neighbours). The multinomial cross-entropy is weighted per
pixel by the rebalancing weight of the true colour's nearest bin (paper Eq. 2-4):
w ~ ((1 - lambda) p~ + lambda / Q)^-1, E_p~[w] = 1, where p~ is the empirical ab distribution of the
pretraining images smoothed by a Gaussian (sigma 5), computed once in `setup` and saved with the checkpoint.
Images whose ab stays within `gray_threshold` of gray everywhere carry no loss (the released NonGrayMaskLayer).

Network (richzhang/colorization train_alexnet/train_val.prototxt): the trunk's conv5 map through pool5 at
stride 1 and fc6 / fc7 as convolutions (fc6 dilated by pool5's stride, `FcTrunk.dense_fc_head`: the trunk's
own fc6 / fc7 weights), then a 1x1 Q-way classifier (fc8_313); the logits are resized to the target grid, the
ab image point-subsampled every `target_stride` pixels (data_ab_ss, a stride-8 1x1 convolution there; 0 = the
output grid). Decoding for pictures: the annealed mean at temperature T = 0.38 (`annealed_mean`), never used
for features. Transfer input: "lab-l" (gray, the L channel as in pretraining); the "color" transfer variant
adds ab channels to conv1 (zero-initialised, the released segmentation test's conv1_ab).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from sslbench.backbones.base import Backbone, FcnHead
from sslbench.config import In, Positive, Rate
from sslbench.errors import UserError
from sslbench.registry import register_task
from sslbench.tasks.base import PretextTask, SetupState, TinySetup
from sslbench.transforms import L_CENTRE, lab_to_rgb, mirror, random_flips, rgb8_to_lab

# ---------------------------------------------------------------- the ab bins


@functools.lru_cache(maxsize=4)
def ab_gamut_bins(grid: int = 10) -> Tensor:
    """[Q, 2] ab bin centres (a, b multiples of `grid`, sorted by a then b) in the sRGB gamut.

    The rule (the release ships the 313 points, pts_in_hull.npy, without the code that made them): the ab values
    of every sRGB colour (the 8-bit levels of the RGB cube's faces, whose image bounds the gamut's), their convex
    hull grown by one grid step in a and in b (the Minkowski sum with the square [-grid, grid]^2), and every grid
    point inside it. At grid 10 this gives exactly the published 313 points in the published order; without the
    hull (bins an sRGB colour rounds to) it would be 261, without the growth 233.
    """
    from scipy.spatial import ConvexHull

    levels = torch.arange(256, dtype=torch.uint8)
    u, v = (t.reshape(-1) for t in torch.meshgrid(levels, levels, indexing="ij"))
    faces = []
    for axis in range(3):
        for end in (0, 255):
            face = torch.empty(3, u.numel(), dtype=torch.uint8)
            face[axis] = end
            others = [c for c in range(3) if c != axis]
            face[others[0]], face[others[1]] = u, v
            faces.append(face)
    ab = rgb8_to_lab(torch.cat(faces, 1).view(1, 3, 1, -1))[0, 1:, 0].T.double().numpy()
    hull = ab[ConvexHull(ab).vertices]
    grown = np.concatenate([hull + np.array([dx, dy]) for dx in (-grid, grid) for dy in (-grid, grid)])
    eq = ConvexHull(grown).equations  # rows (n_a, n_b, c): inside where n . x + c <= 0
    lo, hi = math.floor(grown.min() / grid) * grid, math.ceil(grown.max() / grid) * grid
    axis_values = np.arange(lo, hi + grid, grid, dtype=np.float64)
    a, b = np.meshgrid(axis_values, axis_values, indexing="ij")
    points = np.stack([a.ravel(), b.ravel()], 1)
    inside = (points @ eq[:, :2].T + eq[:, 2]).max(1) <= 1e-9
    return torch.from_numpy(points[inside]).float()


# ---------------------------------------------------------------- soft-encoding, prior, decoding


def soft_encode(ab: Tensor, bins: Tensor, k: int, sigma: float, grid: float = 0.0) -> tuple[Tensor, Tensor]:
    """ab [N,2,H,W] -> (index [N,k,H,W] of the k nearest bins, nearest first; weight [N,k,H,W], a Gaussian of the
    distance, normalised over the k). The dense [N,Q,H,W] encoding (`dense_encoding`) is never formed.

    `grid` > 0 says the bins lie on a lattice of that step (ab_gamut_bins): the k <= 10 nearest of a point are then
    among the 4 x 4 lattice points around its cell, and only those 16 are compared (`_lattice_nearest`); pixels
    where that is not certain (near the gamut's edge) fall back to all bins. The weights are computed from the
    k distances again, directly (not from the expansion the ranking used)."""
    n, _, h, w = ab.shape
    x = ab.permute(0, 2, 3, 1).reshape(-1, 2).float()
    index = _lattice_nearest(x, bins, k, grid) if grid > 0 and k <= 10 else _brute_nearest(x, bins, k)
    # [P, k] squared distances in float64 (far points keep 1e-7), a and b gathered apart: no [P, k, 2] tensor
    c = bins.to(device=x.device, dtype=torch.float64)
    xd = x.double()
    da = c[:, 0].contiguous().take(index).sub_(xd[:, :1])
    db = c[:, 1].contiguous().take(index).sub_(xd[:, 1:])
    near = da.mul_(da).addcmul_(db, db)
    weight = near.sub_(near[:, :1].clone()).mul_(-0.5 / sigma**2).exp_()  # shifted by the nearest: no 0/0
    weight = weight.div_(weight.sum(1, keepdim=True)).float()
    shape = (n, h, w, k)
    return index.view(shape).permute(0, 3, 1, 2), weight.view(shape).permute(0, 3, 1, 2)


def _brute_nearest(x: Tensor, bins: Tensor, k: int) -> Tensor:
    """[P, k] indices of the k nearest bins of points x [P, 2]: distances to every bin, top-k."""
    c = bins.to(x)
    d2 = torch.addmm(c.square().sum(1), x, c.T, alpha=-2).add_(x.square().sum(1, keepdim=True))  # [P, Q]
    return torch.topk(d2, k, dim=1, largest=False, sorted=True).indices


_BLOCK = torch.stack(torch.meshgrid(torch.arange(-1, 3), torch.arange(-1, 3), indexing="ij")).reshape(2, -1)
LUT_SIDE = 128  # sub-squares per cell side of the nearest-set table (even: none straddles the cell's midlines)


@functools.lru_cache(maxsize=16)
def _block_table(k: int, side: int = LUT_SIDE) -> tuple[Tensor, Tensor]:
    """For each of side x side sub-squares of the unit cell: which k of the 4 x 4 block points (indices into
    _BLOCK) are the k nearest of every point of the sub-square, the cell corner nearest first; and whether that
    is certain. It is where the k nearest at the sub-square's 4 corners are the same set S, all closer than 2:
    d_i^2 - d_j^2 is affine in the point, so i in S nearer than j outside S at the corners holds over the
    square, and every lattice point outside the block is >= 2 away. -> (members [side^2, k], certain [side^2])."""
    t = torch.arange(side + 1, dtype=torch.float64) / side
    pu, pv = (c.reshape(-1, 1) for c in torch.meshgrid(t, t, indexing="ij"))
    oa, ob = _BLOCK.double()
    d2 = (pu - oa).square() + (pv - ob).square()  # [(side+1)^2, 16]
    near, idx = torch.topk(d2, k, dim=1, largest=False)
    mask = (torch.ones(len(d2), k, dtype=torch.long) << idx).sum(1).view(side + 1, side + 1)
    far = near[:, -1].view(side + 1, side + 1)
    corners = [mask[:-1, :-1], mask[1:, :-1], mask[:-1, 1:], mask[1:, 1:]]
    same = (corners[0] == corners[1]) & (corners[0] == corners[2]) & (corners[0] == corners[3])
    close = torch.stack([far[:-1, :-1], far[1:, :-1], far[:-1, 1:], far[1:, 1:]]).amax(0) < 4.0
    centre = (torch.arange(side, dtype=torch.float64) + 0.5) / side
    cu, cv = (c.reshape(-1, 1) for c in torch.meshgrid(centre, centre, indexing="ij"))
    members = torch.topk((cu - oa).square() + (cv - ob).square(), k, dim=1, largest=False, sorted=True).indices
    return members, (same & close).reshape(-1)


def _lattice_nearest(x: Tensor, bins: Tensor, k: int, grid: float) -> Tensor:
    """`_brute_nearest` for bins on a lattice of step `grid` (index[:, 0] the nearest, the others in no particular
    order). A point in the cell [0, 1)^2 (grid units) has every lattice point outside the 4 x 4 block of offsets
    -1..2 at a distance >= 2. Where the point's sub-square of the cell has a certain nearest set (`_block_table`)
    and all 16 block points are bins, that set is the answer, read from the table; elsewhere the block's 16
    distances are ranked, and where even that is not certain (bins missing at the gamut's edge) all bins are."""
    lo = bins.min(0).values - 2 * grid
    side = int(torch.round((bins.max() - bins.min()) / grid)) + 5
    slot = torch.full((side, side), -1, dtype=torch.long, device=x.device)
    ij = torch.round((bins.to(x) - lo.to(x)) / grid).long()
    slot[ij[:, 0], ij[:, 1]] = torch.arange(len(bins), device=x.device)
    present = (slot >= 0).float()[None, None]
    whole = F.conv2d(present, torch.ones(1, 1, 4, 4, device=x.device))[0, 0] == 16  # the block of cell (i+1, j+1)
    whole = F.pad(whole, (1, 2, 1, 2)).reshape(-1)
    u = (x - lo.to(x)).mul_(1 / grid)
    base = u.floor().clamp_(1, side - 3)
    u -= base  # position in the cell, grid units ([0, 1)^2 inside the lattice's range)
    flat = base[:, 0].long() * side + base[:, 1].long()
    oa, ob = _BLOCK.to(x.device)
    step = oa * side + ob  # the block's points as offsets in the flat lattice
    members, certain = (t.to(x.device) for t in _block_table(k))
    sub = (u * LUT_SIDE).long().clamp_(0, LUT_SIDE - 1)
    row = sub[:, 0] * LUT_SIDE + sub[:, 1]
    # take / index_select, not advanced indexing: the same gathers, several times faster on the CPU
    index = slot.view(-1).take(step[members].index_select(0, row).add_(flat[:, None]))
    inside = ((u >= 0) & (u < 1)).all(1)
    todo = ~(certain.take(row) & whole.take(flat) & inside)
    if bool(todo.any()):
        index[todo] = _ranked_block(x[todo], u[todo], flat[todo], slot, step, bins, k)
    return index


def _ranked_block(x: Tensor, u: Tensor, flat: Tensor, slot: Tensor, step: Tensor, bins: Tensor, k: int) -> Tensor:
    """The k nearest among the 4 x 4 block's bins by their 16 distances; all bins where that is not certain."""
    oa, ob = _BLOCK.to(x.device)
    d2 = (u[:, :1] - oa).square_().add_((u[:, 1:] - ob).square_())  # [P, 16]
    cand = slot.view(-1).take(flat[:, None] + step)
    d2.masked_fill_(cand < 0, float("inf"))
    near, j = torch.topk(d2, k, dim=1, largest=False, sorted=True)
    index = cand.gather(1, j)
    unsure = ~(near[:, -1] < 4.0) | (u < 0).any(1) | (u >= 1).any(1)
    if bool(unsure.any()):
        index[unsure] = _brute_nearest(x[unsure], bins, k)
    return index


def dense_encoding(index: Tensor, weight: Tensor, q: int) -> Tensor:
    """The soft-encoding as a distribution over all Q bins: [N,Q,H,W] (tests, benchmarks)."""
    n, _, h, w = index.shape
    return torch.zeros(n, q, h, w, dtype=weight.dtype, device=weight.device).scatter_(1, index, weight)


def smoothed_prior(counts: Tensor, bins: Tensor, sigma: float) -> Tensor:
    """Bin counts [Q] -> the empirical ab distribution smoothed by a Gaussian of `sigma` ab units over the bin
    centres (the maintainer, richzhang/colorization issue 47: "smoothed with the same Gaussian used to compute
    soft targets"), summing to 1."""
    p = counts.double() / counts.sum().clamp_min(1)
    c = bins.double()
    kernel = torch.exp(-torch.cdist(c, c).square() / (2 * sigma**2))
    smooth = kernel @ p
    return (smooth / smooth.sum()).float()


def rebalance_weights(prior: Tensor, lam: float) -> Tensor:
    """w_q ~ ((1 - lambda) p_q + lambda / Q)^-1, scaled so that sum_q p_q w_q = 1 (paper Eq. 4; released
    PriorBoostLayer: gamma = 0.5, alpha = 1)."""
    mix = (1 - lam) * prior.double() + lam / prior.numel()
    w = 1.0 / mix
    return (w / (prior.double() * w).sum()).float()


def annealed_mean(logits: Tensor, bins: Tensor, temperature: float) -> Tensor:
    """Logits [N,Q,H,W] -> ab [N,2,H,W]: the mean of f_T(z) = exp(log z / T) / sum_q exp(log z_q / T) (paper
    Eq. 5; T -> 0 the mode, T = 1 the mean; the deploy net's Scale 2.606 = 1 / 0.38 before its Softmax)."""
    probs = torch.softmax(logits.float() / temperature, dim=1)
    return torch.einsum("nqhw,qc->nchw", probs, bins.to(probs))


# ---------------------------------------------------------------- the task


@dataclass(frozen=True)
class ColorizationConfig:
    grid: Annotated[int, In(2, 50)] = 10  # ab bin size (paper Sec. 2.1: grid size 10 -> Q = 313)
    neighbours: Annotated[int, In(1, 32)] = 5  # soft-encoding: nearest bins (paper: 5; released NNEncLayer: 10)
    sigma: Positive = 5.0  # soft-encoding Gaussian (paper / released: 5)
    rebalance: bool = True  # class rebalancing (the release also has a model without: *_norebal)
    lam: Rate = 0.5  # lambda: mix of the prior with the uniform distribution (paper / released gamma: 0.5)
    prior_sigma: Positive = 5.0  # Gaussian that smooths the empirical ab prior (paper: 5)
    prior_images: Annotated[int, In(0, 10**8)] = 0  # images that estimate the prior in setup (0 = all)
    target_stride: Annotated[int, In(0, 64)] = 0  # ab subsampled every n px for the targets (0: the output grid)
    gray_threshold: Annotated[float, In(0, 128)] = 5.0  # images with |a|, |b| <= this everywhere: no loss (0: off)
    temperature: Annotated[float, In(0.01, 10)] = 0.38  # annealed mean, for pictures only (paper: 0.38)
    flip: bool = True  # random horizontal mirror (train_val.prototxt: mirror 1)


@register_task("colorization", config=ColorizationConfig)
class Colorization(PretextTask):
    """Per-pixel classification of ab into in-gamut bins from L, soft-encoded targets, class rebalancing."""

    display_name = "Colorization"
    harmonizable = ("lab-l",)  # its own input: L - 50

    def __init__(self, cfg: ColorizationConfig, backbone: Backbone) -> None:
        super().__init__(cfg, backbone)
        if backbone.in_channels != 1:
            raise UserError(f"colorization: the network sees the L channel only, but backbone.in_channels is "
                            f"{backbone.in_channels}; set backbone.in_channels=1")
        dense = getattr(backbone, "dense_fc_head", None)
        if dense is not None:  # AlexNet / VGG: fc6, fc7 run densely on conv5, as the release
            fcn = dense()
        else:  # a fully convolutional trunk (ResNet): the classifier reads its dense tap directly
            tap = backbone.role("dense_tap", "colorization (its per-pixel classifier reads it)")
            fcn = FcnHead(tap, nn.Identity(), backbone.feature_info[tap].channels)
        self.tap, self.head = fcn.tap, fcn.head
        bins = ab_gamut_bins(cfg.grid)
        if cfg.neighbours > len(bins):
            raise UserError(f"colorization: task.neighbours {cfg.neighbours} exceeds the {len(bins)} bins")
        self.register_buffer("bins", bins)
        self.classifier = nn.Conv2d(fcn.dim, len(bins), 1)  # fc8_313: no filler in the prototxt -> Caffe's zeros
        nn.init.zeros_(self.classifier.weight)
        nn.init.zeros_(self.classifier.bias)
        # the prior lives in the set-up state (saved with the checkpoint, read back by restore) and the weights are
        # derived from it: neither is part of the model's state dict, which would overwrite them on a resume
        self.register_buffer("prior", torch.full((len(bins),), 1.0 / len(bins)), persistent=False)
        self.register_buffer("weights", torch.ones(len(bins)), persistent=False)

    # -- the prior (setup)

    def bin_counts(self, images: Tensor) -> Tensor:
        """uint8 [N,3,H,W] -> [Q] counts of the target pixels' nearest bins (what the prior is made of)."""
        ab = self._targets_ab(rgb8_to_lab(images)[:, 1:])
        index, _ = soft_encode(ab, self.bins, 1, self.cfg.sigma, self.cfg.grid)
        return torch.bincount(index.flatten(), minlength=len(self.bins)).double()

    def setup(self, dataset: Dataset, generator: torch.Generator) -> SetupState:
        n = len(dataset)  # type: ignore[arg-type]
        take = n if self.cfg.prior_images <= 0 else min(n, self.cfg.prior_images)
        order = torch.randperm(n, generator=generator)[:take].tolist()
        counts = torch.zeros(len(self.bins), dtype=torch.float64)
        chunk: list[Tensor] = []
        for pos, i in enumerate(order):
            item = dataset[i]
            if item is not None:
                chunk.append(item[0])
            if chunk and (len(chunk) == 64 or pos == len(order) - 1):
                counts += self.bin_counts(torch.stack(chunk).to(self.bins.device)).cpu()
                chunk = []
        if counts.sum() == 0:
            raise UserError("colorization: no readable image to estimate the ab prior from")
        return {"prior": smoothed_prior(counts, self.bins.cpu(), self.cfg.prior_sigma)}

    def restore(self, state: SetupState) -> None:
        if not state:
            return
        if set(state) != {"prior"} or state["prior"].shape != self.prior.shape:
            raise ValueError(f"colorization: setup state {sorted(state)} does not hold a [{len(self.bins)}] prior")
        self.prior.copy_(state["prior"])
        self.weights.copy_(rebalance_weights(self.prior, self.cfg.lam))

    # -- batches and loss

    def _targets_ab(self, ab: Tensor) -> Tensor:
        """ab on the target grid: every target_stride-th pixel (data_ab_ss), or averaged over each cell of the
        logits' own grid (target_stride 0)."""
        s = self.cfg.target_stride
        if s:
            return ab[..., ::s, ::s]
        return F.adaptive_avg_pool2d(ab, self.output_size(ab.shape[-2], ab.shape[-1]))

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        """The logits' grid for an h x w input: the trunk's layers up to the dense tap, then the dense head's
        size-keeping stride-1 layers."""
        for k, st, p in self.backbone.tap_geometry(self.tap):
            h, w = (h + 2 * p - k) // st + 1, (w + 2 * p - k) // st + 1
        return h, w

    def make_batch(self, images: Tensor, targets: dict[str, Any], generator: torch.Generator) -> dict[str, Tensor]:
        """uint8 [N,3,H,W] -> input L - 50 [N,1,H,W]; bins / weights [N,k,h,w], the soft-encoded targets on the
        target grid; nongray [N]: 1 where some target pixel has |a| or |b| above gray_threshold."""
        cfg = self.cfg
        if cfg.flip:
            flips = random_flips(images.shape[0], generator, images.device)
            images = mirror(images, flips)
        lab = rgb8_to_lab(images)
        ab = self._targets_ab(lab[:, 1:])
        index, weight = soft_encode(ab, self.bins, cfg.neighbours, cfg.sigma, cfg.grid)
        nongray = ab.abs().flatten(1).amax(1) > cfg.gray_threshold if cfg.gray_threshold > 0 else \
            torch.ones(images.shape[0], dtype=torch.bool, device=images.device)
        return {"input": lab[:, :1] - L_CENTRE, "bins": index, "weights": weight, "nongray": nongray.float()}

    def logits(self, x: Tensor) -> Tensor:
        """L - 50 [N,1,H,W] -> logits [N,Q,h,w] at the trunk's dense output stride."""
        return self.classifier(self.head(self.backbone(x, taps=(self.tap,))[self.tap]))

    def loss(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        index, weight = batch["bins"], batch["weights"]
        logits = self.logits(batch["input"])
        if logits.shape[-2:] != index.shape[-2:]:  # train_val.prototxt fc8_upsample: Resize to the target grid
            logits = F.interpolate(logits, size=index.shape[-2:], mode="bilinear", align_corners=False)
        logp = torch.log_softmax(logits.float(), dim=1)
        ce = -(weight * logp.gather(1, index)).sum(1)  # [N,h,w]: cross-entropy with the soft target
        pixel = batch["nongray"].view(-1, 1, 1).expand_as(ce)
        if self.cfg.rebalance:
            pixel = pixel * self.weights[index[:, 0]]  # the nearest bin's weight (= argmax of the soft target)
        loss = (pixel * ce).sum() / ce.numel()
        hit = (logits.argmax(1) == index[:, 0]).float().mean()
        return {"loss": loss, "ce": ce.mean(), "acc": hit}

    def transfer_input(self) -> str:
        """Transfer sees what pretraining saw: L - 50, one channel ("gray")."""
        return "lab-l"

    def variant(self) -> str:
        """'gray': the trunk transfers on L alone (the deck's "Ours (gray)"); '-no-rebalance' without eq. 4."""
        return "gray" + ("" if self.cfg.rebalance else "-no-rebalance")

    def examples(self, images: Tensor, generator: torch.Generator) -> list[tuple[str, Tensor]]:
        """Gray input, the annealed-mean colourisation, the ground truth (uint8 RGB panels)."""
        lab = rgb8_to_lab(images)
        with torch.no_grad():
            ab = annealed_mean(self.logits(lab[:, :1] - L_CENTRE), self.bins, self.cfg.temperature)
        ab = F.interpolate(ab, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return [("input (L)", _to_rgb8(torch.cat([lab[:, :1], torch.zeros_like(ab)], 1))),
                ("colourised", _to_rgb8(torch.cat([lab[:, :1], ab], 1))), ("original", images)]

    @classmethod
    def tiny(cls) -> TinySetup:
        return TinySetup("alexnet", {"width": 0.125, "fc_dim": 32, "image_size": 32, "conv1_stride": 2,
                                     "in_channels": 1, "dropout": 0.0, "pool_pad": 1}, 32, {})


def _to_rgb8(lab: Tensor) -> Tensor:
    return (lab_to_rgb(lab) * 255).round().clamp(0, 255).to(torch.uint8)

