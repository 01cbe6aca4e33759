"""Benchmark (issue 18, part 4): would torchvision's JPEG decoder speed up the ImageFolder loader on the CPU?

The loader's item today: PIL decodes the file, PIL's RandomResizedCrop to 224 px (imagenet layout, train crop
"random_resized"). The candidate: torchvision.io.decode_jpeg on the file's bytes, then the same crop by PIL (which
resizes faster than torch on the CPU) or by torchvision on the tensor. Measured on the embedded data written in
the ImageNet layout at 384 px, as written (JPEG quality 95, 4:4:4) and re-encoded the way most ImageNet files are
(quality 90, 4:2:0 chroma); one thread, the time a loader worker spends per image, best of 3. The PIL-crop
candidate's items are checked identical to today's (both decoders are libjpeg-turbo).

The last column is sslbench's own data.decode = "device" path run on the CPU: what a loader worker still does per
item (the header, the bytes, the crop drawn) and what the main process then does per item (one batched decode_jpeg
call over the batch, each image's crop by torch: sslbench.data.decode). On a GPU the second part is nvJPEG's
(`bench_gpu_step.py`'s feed ratio); here it shows the workers' share that the option moves off them.

Last line: `decode ratio R` (today's ms per item / the faster candidate's, the 4:2:0 files). A ratio below 1 says
the CPU path is not worth changing; decode_jpeg pays off batched on a GPU (nvjpeg), which needs the loader to hand
the fit loop encoded bytes (data.decode = "device").
Run:  python benchmarks/bench_decode.py [--images 64]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision.transforms.functional as TF
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg, read_file

from sslbench.data.layouts.imagenet import write_imagenet
from sslbench.transforms import random_resized_box

SIDE = 224


def today(path: Path, generator: torch.Generator) -> torch.Tensor:
    with Image.open(path) as im:
        img = im.convert("RGB")
    top, left, h, w = random_resized_box(img.width, img.height, generator)
    return TF.pil_to_tensor(TF.resized_crop(img, top, left, h, w, [SIDE, SIDE]))


def decode_then_pil(path: Path, generator: torch.Generator) -> torch.Tensor:
    pixels = decode_jpeg(read_file(str(path)), mode=ImageReadMode.RGB)
    img = Image.fromarray(pixels.permute(1, 2, 0).numpy())
    top, left, h, w = random_resized_box(img.width, img.height, generator)
    return TF.pil_to_tensor(TF.resized_crop(img, top, left, h, w, [SIDE, SIDE]))


def decode_then_torch(path: Path, generator: torch.Generator) -> torch.Tensor:
    pixels = decode_jpeg(read_file(str(path)), mode=ImageReadMode.RGB)
    top, left, h, w = random_resized_box(pixels.shape[2], pixels.shape[1], generator)
    return TF.resized_crop(pixels, top, left, h, w, [SIDE, SIDE], antialias=True)


def deferred_ms(files: list[Path]) -> tuple[float, float]:
    """sslbench's data.decode = "device" on the CPU: (a loader worker's ms per item: the header and the bytes, the
    crop drawn; the main process's ms per item: one batched decode_jpeg and each image's crop, sslbench.data.decode),
    best of 3 each."""
    from sslbench.data.decode import EncodedBatch, decode_batch, encoded

    def item(path: Path, generator: torch.Generator):  # noqa: ANN202
        with Image.open(path) as im:
            return encoded(str(path), [("resized_crop", *random_resized_box(*im.size, generator), [SIDE, SIDE])])

    worker = per_item_ms(item, files)
    batch = EncodedBatch(item(path, torch.Generator().manual_seed(i)) for i, path in enumerate(files))
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        decode_batch(batch, torch.device("cpu"))
        best = min(best, time.perf_counter() - start)
    return worker, 1000 * best / len(files)


def per_item_ms(item: Callable[[Path, torch.Generator], torch.Tensor], files: list[Path]) -> float:
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for i, path in enumerate(files):
            item(path, torch.Generator().manual_seed(i))
        best = min(best, time.perf_counter() - start)
    return 1000 * best / len(files)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        write_imagenet(Path(tmp), args.images, 4, 384, 0)
        files = sorted(p for p in Path(tmp).rglob("*") if p.suffix.lower() in (".jpeg", ".jpg"))
        for encoding in ("q95 4:4:4 (as written)", "q90 4:2:0 (ImageNet-like)"):
            if encoding.startswith("q90"):
                for path in files:
                    with Image.open(path) as im:
                        im.convert("RGB").save(path, format="JPEG", quality=90, subsampling=2)
            for i, path in enumerate(files):
                same = torch.equal(today(path, torch.Generator().manual_seed(i)),
                                   decode_then_pil(path, torch.Generator().manual_seed(i)))
                assert same, (encoding, path)
            rows.append((encoding, *(per_item_ms(f, files) for f in (today, decode_then_pil, decode_then_torch)),
                         *deferred_ms(files)))
    print(f"ImageFolder items, {len(files)} JPEGs of 384 px, RandomResizedCrop to {SIDE} px, 1 thread (best of 3)")
    print("| files | PIL decode + PIL crop (today, ms) | decode_jpeg + PIL crop (ms) | decode_jpeg + torch crop (ms) "
          "| data.decode=device: worker + main process (ms) |")
    print("|---|---|---|---|---|")
    for encoding, old, pil, tv, worker, main in rows:
        print(f"| {encoding} | {old:.2f} | {pil:.2f} ({old / pil:.2f}x) | {tv:.2f} ({old / tv:.2f}x) "
              f"| {worker:.3f} + {main:.2f} |")
    _, old, pil, tv, _, _ = rows[-1]
    print(f"decode ratio {old / min(pil, tv):.2f}")


if __name__ == "__main__":
    main()
