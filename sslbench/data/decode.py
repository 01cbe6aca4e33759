"""JPEG decoding where the batch is built (data.decode = "device"): the loader hands over file bytes, not pixels.

With data.decode = "loader" (the default) a loader worker decodes each file with PIL and resizes / crops it there.
With "device" the worker reads only the file's header (its size: a few hundred bytes) and its bytes, draws the
same train-time crop from the same per-item generator, and returns an `Encoded` item: the bytes and the
geometry still to apply, as torchvision calls (`Op`). The main process decodes a whole batch in one
`torchvision.io.decode_jpeg` call on the batch device (nvJPEG's batched decoder on a GPU; libjpeg-turbo on the
CPU), then applies each image's resize / crop there, antialiased as PIL's, and stacks the batch.

The pixels are not PIL's bits (another IDCT, another resampling kernel: a few levels of 255 apart), so the option
is part of a recipe's identity. Files that are not baseline JPEG (ImageNet's one PNG and its CMYK JPEGs, say)
fall back one at a time: the device's decoder, then the CPU's, then PIL; a file none can read is dropped from
its batch with a warning, and the loader counts it unreadable as it does a file its workers could not open.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torch import Tensor
from torchvision.io import ImageReadMode, decode_jpeg

__all__ = ["Encoded", "EncodedBatch", "Op", "apply_ops", "decode_batch", "encoded", "resized_size"]

Op = tuple[Any, ...]  # ("resize", size) | ("center_crop", [h, w]) | ("crop", top, left, h, w) | ("resized_crop", ...)


@dataclass(frozen=True)
class Encoded:
    """One image still to decode: its file's bytes, where they came from, and the geometry to apply
    (torchvision.transforms.functional calls, in order, with the arguments the PIL path passes)."""

    data: bytes  # bytes, not a tensor: pickled inline from a loader worker (a tensor would hold a shared-memory
    # file descriptor per image until the batch is decoded: a large batch from several workers runs out of them)
    path: str
    ops: tuple[Op, ...]

    def tensor(self) -> Tensor:
        return torch.frombuffer(bytearray(self.data), dtype=torch.uint8)


class EncodedBatch(list):
    """A batch's `Encoded` items, in batch order (what collate makes of them instead of a stacked tensor)."""


def encoded(path: str, ops: Sequence[Op]) -> Encoded:
    with open(path, "rb") as f:
        return Encoded(f.read(), str(path), tuple(ops))


def resized_size(width: int, height: int, size: int | Sequence[int]) -> tuple[int, int]:
    """(w, h) after TF.resize(img, size): an int sets the shorter side, the longer one truncated as torchvision
    computes it; [h, w] is the size itself."""
    if not isinstance(size, int):
        return int(size[1]), int(size[0])
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def apply_ops(image: Any, ops: Sequence[Op]) -> Any:
    """`ops` applied in order to a PIL image or a uint8 tensor [3,H,W] (torchvision antialiases a tensor's resize
    by default, as PIL always does)."""
    for name, *args in ops:
        image = getattr(TF, name)(image, *args)
    return image


def _decode_one(item: Encoded, device: torch.device) -> Tensor | None:
    """One file through the fallbacks: the device's JPEG decoder, the CPU's, PIL (any format it reads)."""
    for on in dict.fromkeys((device, torch.device("cpu"))):
        try:
            return decode_jpeg(item.tensor(), mode=ImageReadMode.RGB, device=on).to(device)
        except RuntimeError:
            continue
    try:
        with Image.open(io.BytesIO(item.data)) as im:
            arr = torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).contiguous()
        return arr.to(device)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return None


def decode_batch(batch: EncodedBatch, device: torch.device) -> tuple[Tensor, list[int]]:
    """uint8 [N,3,S,S] on `device` of the batch's readable items, and their positions in the batch. One batched
    decode first; when it fails (a file that is not a baseline JPEG, a damaged one), each file on its own."""
    try:
        decoded: list[Tensor | None] = list(decode_jpeg([e.tensor() for e in batch], mode=ImageReadMode.RGB,
                                                        device=device))
    except RuntimeError:
        decoded = [_decode_one(e, device) for e in batch]
    kept = [i for i, image in enumerate(decoded) if image is not None]
    for i, item in enumerate(batch):
        if decoded[i] is None:
            warnings.warn(f"skipping unreadable image {item.path}: no decoder could read it", stacklevel=2)
    if not kept:
        return torch.zeros(0, dtype=torch.uint8, device=device), kept
    images = [apply_ops(decoded[i], batch[i].ops) for i in kept]  # type: ignore[arg-type]
    return torch.stack(images), kept
