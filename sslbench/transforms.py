"""Image transforms shared by the tasks and the protocols: normalisation, gray, sRGB <-> CIE Lab, crops, and
cutting windows (patches, tiles) out of a batch.

Every function takes and returns batched tensors ([N,C,H,W], uint8 or float) and draws its randomness from
the generator it is given. The transforms a trunk can expect at transfer time are *named*
(`TRANSFER_INPUTS`): a checkpoint records the name its pretext task fed the trunk with, and a protocol
resolves it here, without importing the task.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from sslbench.registry import Registry

# ImageNet statistics: the papers' trunks were all trained on ImageNet-normalised inputs.
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
MEAN_PIXEL = (MEAN.view(3) * 255.0).round().to(torch.uint8)  # the mean colour: 0 after normalisation
# CIFAR-10 statistics, what RotNet's CIFAR code normalises with (gidariss/FeatureLearningRotNet dataloader.py l.144-145:
# mean (125.3, 123.0, 113.9) / 255, std (63.0, 62.1, 66.7) / 255)
CIFAR_MEAN = (torch.tensor([125.3, 123.0, 113.9]) / 255.0).view(1, 3, 1, 1)
CIFAR_STD = (torch.tensor([63.0, 62.1, 66.7]) / 255.0).view(1, 3, 1, 1)
LUMA = torch.tensor([0.299, 0.587, 0.114])  # ITU-R 601 luma, what PIL's convert('L') uses
GRID = 3  # the 3x3 grid of Context Prediction's patches and of Jigsaw's tiles; cell c at row c // 3, column c % 3


# ---------------------------------------------------------------- normalisation, gray


def normalize(images: Tensor) -> Tensor:
    """uint8 [N,3,H,W] -> float, ImageNet mean/std normalised."""
    return normalize_with(images, MEAN, STD)


def normalize_cifar(images: Tensor) -> Tensor:
    """uint8 [N,3,H,W] -> float, CIFAR-10 mean/std normalised (RotNet's CIFAR experiments)."""
    return normalize_with(images, CIFAR_MEAN, CIFAR_STD)


def normalize_with(images: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """uint8 [..., 3, H, W] -> float (x / 255 - mean) / std per channel: one conversion into a fresh tensor, then the
    three steps in place, instead of four passes each allocating its own result (at the paper's batch sizes the page
    faults of every fresh buffer cost as much as the arithmetic). The same operations in the same order: the same
    bits as the four-step formula."""
    return normalize_(images.to(torch.float32, copy=True), mean, std)  # a copy even of float input: the caller's
    # tensor is not modified


def normalize_(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """In place: float pixel values x [..., 3, H, W] in 0..255 -> (x / 255 - mean) / std, the three steps in this
    order (normalize_with's bits)."""
    return x.div_(255.0).sub_(mean.to(x.device).view(3, 1, 1)).div_(std.to(x.device).view(3, 1, 1))


def luma(rgb: Tensor) -> Tensor:
    """RGB [...,3,H,W] (any scale) -> luma [...,1,H,W] in the same scale."""
    return (rgb * LUMA.to(rgb.device, rgb.dtype).view(3, 1, 1)).sum(-3, keepdim=True)


def gray_input(images: Tensor) -> Tensor:
    """uint8 RGB [N,3,H,W] -> one normalised luminance channel [N,1,H,W], for 1-channel trunks of unknown origin."""
    return (luma(images.float() / 255.0) - 0.45) / 0.25


def standardize_(x: Tensor, dims: tuple[int, ...]) -> Tensor:
    """In place: zero mean, unit std over `dims` (a constant region stays at zero instead of dividing by zero).

    In place because a batch of 64 px tiles is ~100 MB: a fresh tensor per step costs more than the math."""
    x.sub_(x.mean(dims, keepdim=True))
    count = math.prod(x.shape[d] for d in dims)
    std = torch.linalg.vector_norm(x, dim=dims, keepdim=True) / math.sqrt(max(1, count - 1))
    return x.div_(std.clamp_min_(1e-3))


# ---------------------------------------------------------------- crops and windows

CACHE_BYTES = 2 << 20  # the float working set make_batch keeps per chunk on the CPU: about one core's L2 cache


def cache_chunks(n: int, bytes_per_item: int, device: torch.device) -> list[slice]:
    """Slices of range(n) whose float outputs fit CACHE_BYTES on the CPU (at least one item each), so that a
    pipeline of per-item steps reads each chunk from the cache instead of the memory; one slice elsewhere (a GPU
    streams the whole batch at once)."""
    per = n if device.type != "cpu" else max(1, CACHE_BYTES // max(1, bytes_per_item))
    return [slice(start, min(n, start + per)) for start in range(0, n, per)]


def random_flips(n: int, generator: torch.Generator, device: torch.device) -> Tensor:
    """[n] bool on `device`: which images to mirror, each with probability 1/2, drawn on the generator's device."""
    return (torch.rand(n, generator=generator, device=generator.device) < 0.5).to(device)


def mirror(x: Tensor, flips: Tensor) -> Tensor:
    """x [N, ..., W] with the rows where flips [N] is true mirrored left-right (a new tensor)."""
    return torch.where(flips.view(-1, *(1,) * (x.dim() - 1)), x.flip(-1), x)


def random_crop_flip(images: Tensor, pad: int, flip: bool, generator: torch.Generator) -> Tensor:
    """Per-image random crop after zero-padding by `pad`, and a random horizontal flip (CIFAR style).

    The draws (rows, then columns, then flips, on `generator`'s device) are those of a per-image loop; the crop is
    one gather on the images' device instead: every output pixel read once from the padded batch."""
    return crop_flip(images, *crop_flip_draws(images.shape[0], pad, flip, generator, images.device), pad)


def crop_flip_draws(n: int, pad: int, flip: bool, generator: torch.Generator,
                    device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """random_crop_flip's draws, on `device`: the crops' rows and columns [N] in 0..2 pad, which images flip [N]."""
    on = generator.device
    ys = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=on).to(device)
    xs = torch.randint(0, 2 * pad + 1, (n,), generator=generator, device=on).to(device)
    return ys, xs, random_flips(n, generator, device) & flip


def crop_flip(images: Tensor, ys: Tensor, xs: Tensor, flips: Tensor, pad: int) -> Tensor:
    """random_crop_flip with its draws given."""
    n, c, h, w = images.shape
    if not pad:  # a flip only: the flipped images copied over, the rest kept
        out = images.clone()
        out[flips] = images[flips].flip(-1)
        return out
    padded = F.pad(images, (pad, pad, pad, pad))
    rows = ys[:, None] + torch.arange(h, device=images.device)  # [N, h]
    cols = xs[:, None] + torch.arange(w, device=images.device)  # [N, w]
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    chans = torch.arange(c, device=images.device)[None, :, None, None]
    return padded[batch, chans, rows[:, None, :, None], cols[:, None, None, :]]


def random_area_size(width: int, height: int, area: tuple[int, int], side: int,
                     generator: torch.Generator) -> tuple[int, int]:
    """(w, h) of an image rescaled, aspect kept, to a total pixel count drawn uniformly from the integers of `area`
    (deepcontext train.py: `gri_targpixels = random.randint(150000, 450000)`); where that leaves the shorter side
    under `side`, the scale is raised until it is `side`, so that a `side` x `side` square fits (the released
    code instead skips images too small for its grid and sizes the grid to the image)."""
    target = int(torch.randint(area[0], area[1] + 1, (), generator=generator))
    scale = max(math.sqrt(target / (width * height)), side / min(width, height))
    return max(side, round(width * scale)), max(side, round(height * scale))


def random_resized_box(width: int, height: int, generator: torch.Generator, scale: tuple[float, float] = (0.08, 1.0),
                       ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random-resized crop: area fraction ~ U(scale), aspect ratio w/h log-uniform in
    `ratio`, at a uniform position, up to 10 tries; else the centre crop of the largest allowed ratio (the rule of
    torchvision's RandomResizedCrop, which RotNet's RandomSizedCrop(224) is, drawn from `generator`)."""
    area = width * height
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * (scale[0] + (scale[1] - scale[0]) * torch.rand((), generator=generator).item())
        aspect = math.exp(log_lo + (log_hi - log_lo) * torch.rand((), generator=generator).item())
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (), generator=generator))
            left = int(torch.randint(0, width - w + 1, (), generator=generator))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        w, h = round(height * ratio[1]), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def cut_windows(images: Tensor, rows: Tensor, cols: Tensor, size: int, channels: Tensor | None = None) -> Tensor:
    """Square `size` px windows of images [N,C,H,W] with top-left corners (rows, cols):

    - rows, cols [N,K]: every channel of window k of image n -> [N,K,C,size,size];
    - rows, cols [N,K,C]: channel c of window k at its own corner (per-channel jitter) -> [N,K,C,size,size];
    - rows, cols [N,K] and channels [N,K]: only that channel of each window -> [N,K,1,size,size].

    One gather over the view of every window (no copy): N*K (or N*K*C) indices, each taking a whole
    window, instead of one index per pixel.
    """
    n, c = images.shape[:2]
    windows = images.unfold(2, size, 1).unfold(3, size, 1)  # [N, C, H-s+1, W-s+1, s, s], a view
    if images.device.type == "cpu" and rows.device.type == "cpu" and not images.requires_grad:  # numpy: ~4.5x torch
        return torch.from_numpy(_cut_numpy(windows.numpy(), rows.numpy(), cols.numpy(),
                                           None if channels is None else channels.numpy()))
    image = torch.arange(n, device=images.device).view(n, 1)
    if channels is not None:
        return windows[image, channels, rows, cols][:, :, None]
    if rows.dim() == 2:
        return windows[image, :, rows, cols]  # advanced indices around a slice: [N, K, C, s, s]
    channel = torch.arange(c, device=images.device).view(1, 1, c)
    return windows[image[..., None], channel, rows, cols]


def _cut_numpy(windows: np.ndarray, rows: np.ndarray, cols: np.ndarray, channels: np.ndarray | None) -> np.ndarray:
    """cut_windows' gather on the CPU, the same three cases. numpy copies each indexed [s, s] window as a block
    (its advanced indexing iterates the indices once per window), where torch's index kernel computes an offset per
    pixel: 8 ms instead of 38 for Jigsaw's 256 x 9 x 3 tiles of 64 px, the same bytes."""
    n, c = windows.shape[:2]
    image = np.arange(n).reshape(n, 1)
    if channels is not None:
        return windows[image, channels, rows, cols][:, :, None]
    if rows.ndim == 2:
        return windows[image, :, rows, cols]
    return windows[image[..., None], np.arange(c).reshape(1, 1, c), rows, cols]


# ---------------------------------------------------------------- sRGB <-> CIE Lab (D65)

# sRGB (D65) -> CIE XYZ and the D65 white point, as OpenCV's and skimage's rgb2lab
RGB_TO_XYZ = torch.tensor([[0.412453, 0.357580, 0.180423],
                           [0.212671, 0.715160, 0.072169],
                           [0.019334, 0.119193, 0.950227]])
WHITE = torch.tensor([0.950456, 1.0, 1.088754])
_EPSILON, _KAPPA = 0.008856, 7.787  # CIE's (6/29)^3 and 1/3 (29/6)^2, as OpenCV / skimage round them


def srgb_to_linear(rgb: Tensor) -> Tensor:
    """sRGB in [0,1] -> linear RGB (the sRGB transfer curve undone)."""
    return torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(linear: Tensor) -> Tensor:
    """Linear RGB -> sRGB in [0,1] (the transfer curve applied; out-of-gamut values clipped)."""
    x = linear.clamp(0.0, 1.0)
    return torch.where(x <= 0.0031308, x * 12.92, 1.055 * x.pow(1 / 2.4) - 0.055)


SRGB8_TO_LINEAR = srgb_to_linear(torch.arange(256, dtype=torch.float64) / 255.0).float()  # one value per uint8 level
XYZ_TO_WHITE = (RGB_TO_XYZ.double() / WHITE.double()[:, None]).float()  # RGB -> XYZ relative to the D65 white
F_TO_LAB = torch.tensor([[0.0, 116.0, 0.0], [500.0, -500.0, 0.0], [0.0, 200.0, -200.0]])  # (fx, fy, fz) -> L+16, a, b


def _channel_matmul(m: Tensor, x: Tensor, out: Tensor | None = None) -> Tensor:
    """[3,3] matrix applied to the channel dim (-3) of x [...,3,H,W]: one broadcast matmul, no permuted copies."""
    flat = x.reshape(-1, 3, x.shape[-2] * x.shape[-1])
    if out is None:
        return (m.to(x.device, x.dtype) @ flat).view(x.shape)
    torch.matmul(m.to(x.device, x.dtype), flat, out=out.view(flat.shape))
    return out


def _linear_to_lab(linear: Tensor, out: Tensor | None = None) -> Tensor:
    xyz = _channel_matmul(XYZ_TO_WHITE, linear)
    f = torch.where(xyz > _EPSILON, xyz.clamp_min(1e-12).pow_(1 / 3), xyz * _KAPPA + 16 / 116)
    lab = _channel_matmul(F_TO_LAB, f, out)
    lab.select(-3, 0).sub_(16.0)
    return lab


def rgb_to_lab(rgb: Tensor) -> Tensor:
    """sRGB in [0,1], channels at dim -3 -> CIE Lab (D65): L in [0,100], a and b roughly in [-110,110]."""
    return _linear_to_lab(srgb_to_linear(rgb))


def lab_to_rgb(lab: Tensor) -> Tensor:
    """CIE Lab (D65), channels at dim -3 -> sRGB in [0,1] (the inverse of rgb_to_lab; out of gamut clipped)."""
    lightness, a, b = lab.unbind(-3)
    fy = (lightness + 16.0) / 116.0
    f = torch.stack([fy + a / 500.0, fy, fy - b / 200.0], dim=-3)
    xyz = torch.where(f > _EPSILON ** (1 / 3), f.pow(3), (f - 16 / 116) / _KAPPA)
    linear = _channel_matmul(torch.linalg.inv(XYZ_TO_WHITE.double()).float(), xyz)
    return linear_to_srgb(linear)


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


# ---------------------------------------------------------------- named transfer inputs

TransferInput = Callable[[Tensor], Tensor]  # uint8 images [N,3,H,W] -> the trunk's float input
TRANSFER_INPUTS: Registry[TransferInput] = Registry(
    "transfer input",
    "uint8 RGB images [N,3,H,W] -> what a trunk saw in pretraining; a checkpoint records the name.",
)


@TRANSFER_INPUTS.register("imagenet")
def imagenet_input(images: Tensor) -> Tensor:
    """ImageNet mean/std normalisation of the RGB image (RotNet, Context, Context Encoders, random init)."""
    return normalize(images)


@TRANSFER_INPUTS.register("cifar")
def cifar_input(images: Tensor) -> Tensor:
    """CIFAR-10 mean/std normalisation of the RGB image (RotNet's NIN on CIFAR-10)."""
    return normalize_cifar(images)


@TRANSFER_INPUTS.register("per-image-std")
def per_image_std_input(images: Tensor) -> Tensor:
    """RGB in [0,1] normalised by the image's own mean and std (Jigsaw's per-tile normalisation, per image)."""
    return standardize_(images.float().div_(255.0), (1, 2, 3))


@TRANSFER_INPUTS.register("per-channel-std")
def per_channel_std_input(images: Tensor) -> Tensor:
    """RGB in [0,1], each channel normalised by the image's own mean and std of that channel (Jigsaw's per-tile,
    per-channel normalisation of the PyTorch port, per image)."""
    return standardize_(images.float().div_(255.0), (2, 3))


@TRANSFER_INPUTS.register("lab-l-std")
def lab_lightness_input(images: Tensor) -> Tensor:
    """The L channel of CIE Lab, normalised by the image's own mean and std (Damaged Jigsaw's gray tiles)."""
    return standardize_(_lab(images)[:, :1].contiguous(), (1, 2, 3))


L_CENTRE = 50.0  # Colorization's centred lightness: the released nets' data_l layer, L - 50 (weight 1, bias -50)


def _lab(images: Tensor) -> Tensor:
    return rgb8_to_lab(images) if images.dtype == torch.uint8 else rgb_to_lab(images.float() / 255.0)


@TRANSFER_INPUTS.register("lab-l")
def lab_l_input(images: Tensor) -> Tensor:
    """L - 50 of CIE Lab, one channel (Colorization's input; the deck's "gray" transfer)."""
    return _lab(images)[:, :1] - L_CENTRE


def lab_l_of_rgb8(images: Tensor) -> Tensor:
    """uint8 RGB [N,3,H,W] -> L - 50 [N,1,H,W] (the harmonised input of the Task Ensemble's sub-tasks)."""
    return rgb8_to_lab(images)[:, :1] - L_CENTRE


def lab_l_of_rgb01(rgb: Tensor) -> Tensor:
    """float RGB in [0, 1] [N,3,H,W] -> L - 50 [N,1,H,W]."""
    return rgb_to_lab(rgb.clamp(0.0, 1.0))[:, :1] - L_CENTRE


@TRANSFER_INPUTS.register("lab")
def lab_input(images: Tensor) -> Tensor:
    """L - 50, a, b: three channels (Colorization's "color" transfer: conv1 also reads ab)."""
    lab = _lab(images)
    lab[:, :1] -= L_CENTRE
    return lab


@TRANSFER_INPUTS.register("gray")
def gray_transfer_input(images: Tensor) -> Tensor:
    """Normalised luma, one channel (a 1-channel trunk whose pretext task is unknown)."""
    return gray_input(images)


# A transfer input that extends another: its leading channels are the other's, the rest are new (a trunk trained
# on the other takes it with conv1 widened, the new channels' filters starting at zero), and its row label.
TRANSFER_EXTENDS = {"lab": "lab-l"}  # Colorization's "color" transfer: L - 50 as in pretraining, plus a and b
TRANSFER_LABELS = {"lab-l": "gray", "lab": "color"}  # how the deck's rows name them ("Ours (gray)", "(color)")


def default_transfer_input(in_channels: int) -> str:
    """The transform of a trunk with no recorded one (random init, a plain state dict): by its input channels."""
    return "imagenet" if in_channels == 3 else "gray"
