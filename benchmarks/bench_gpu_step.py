"""Benchmark (issue 18, part 4): the RotNet AlexNet-BN pretraining step at 224 px on a GPU, as one prepared script.

Measures, in one run, on the first CUDA device:
1. the bf16 matmul peak (8192^3 matmuls, TFLOP/s): the yardstick;
2. the step (make_batch on the device + forward + backward + SGD) of rotation/paper-alexnet.toml's task, 192 images
   -> 768 inputs, in images/s and as % of that peak (FLOPs of a step counted by torch.utils.flop_counter):
   - baseline: fp32, eager, NCHW;
   - fast: bf16 autocast + channels_last + fused SGD, then the same with torch.compile (compile time apart);
3. the feed ratio: steps/s when every step first decodes 192 JPEGs (sslbench's data.decode = device path:
   torchvision.io.decode_jpeg on the GPU, one batched call, then each image's RandomResizedCrop there) and builds
   the batch, against the same steps on a batch already on the device.

Goals (issue 18): fast >= 25% of the bf16 peak and >= 2.5x the baseline; feed ratio >= 0.9.
Expected output on an H200 (to be filled in by the first run on one): one line per measurement, then
`gpu step ratio R` (fast / baseline images/s) and `feed ratio F`.

Run:  python benchmarks/bench_gpu_step.py [--steps 20] [--cpu-smoke]
`--cpu-smoke` runs every code path on the CPU at a tiny size (no figures worth reading) to check the script itself.
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
import torch
from PIL import Image

from sslbench.backbones.base import build_backbone
from sslbench.recipes import load_recipe
from sslbench.registry import TASKS
from sslbench.training import build_optimizer


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, n: int, reps: int) -> float:
    """bf16 matmul TFLOP/s (fp32 on the CPU smoke run)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    a @ b  # warm-up
    sync(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start) / 1e12


def build(device: torch.device, side: int, overrides: list[str]) -> tuple[torch.nn.Module, object]:
    recipe = load_recipe("pretrain", "rotation", "paper", [f"backbone.image_size={side}", *overrides],
                         flavour="alexnet")
    torch.manual_seed(0)
    task = TASKS.get("rotation")(recipe.component.cfg, build_backbone(recipe.backbone.name, recipe.backbone.cfg))
    return task.to(device), recipe


def step_rate(device: torch.device, images: torch.Tensor, steps: int, fast: bool, compiled: bool,
              side: int, overrides: list[str]) -> tuple[float, float, float]:
    """(images/s, FLOPs per step, compile seconds) of the step on uint8 images already on the device."""
    from torch.utils.flop_counter import FlopCounterMode

    task, recipe = build(device, side, overrides)
    if fast:
        task = task.to(memory_format=torch.channels_last)
    optim = build_optimizer(task.parameters(), type(recipe.optim)(**{**recipe.optim.__dict__, "fused": fast}))
    model = torch.compile(task) if compiled else task
    gen = torch.Generator(device).manual_seed(0)  # the draws on the device too, as engine.batch_on = "device"
    dtype = torch.bfloat16 if fast and device.type == "cuda" else None

    def one() -> None:
        batch = task.make_batch(images, {}, gen)
        if fast:
            batch["inputs"] = batch["inputs"].contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = model(batch)["loss"]
        optim.zero_grad(set_to_none=True)
        loss.backward()
        optim.step()

    start = time.perf_counter()
    one()  # compilation (if any) and warm-up
    sync(device)
    compile_s = time.perf_counter() - start
    with FlopCounterMode(display=False) as counter:
        one()
    flops = counter.get_total_flops()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        one()
    sync(device)
    return steps * len(images) / (time.perf_counter() - start), flops, compile_s


def jpeg_bytes(n: int, side: int) -> list[torch.Tensor]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
        out.append(torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8))
    return out


def feed_ratio(device: torch.device, n: int, side: int, steps: int, overrides: list[str]) -> float:
    """steps/s decoding JPEGs on the device every step through sslbench's data.decode = "device" path (one batched
    decode_jpeg, then each image's RandomResizedCrop there: sslbench.data.decode), over steps/s on a batch already
    resident. The files are 4/3 the crop's side, as ImageNet's are larger than 224 px."""
    from sslbench.data.decode import Encoded, EncodedBatch, decode_batch
    from sslbench.transforms import random_resized_box

    source = side * 4 // 3
    items = EncodedBatch(Encoded(data.numpy().tobytes(), f"file {i}", (("resized_crop", *random_resized_box(
        source, source, torch.Generator().manual_seed(i)), [side, side]),)) for i, data in enumerate(jpeg_bytes(
            n, source)))
    resident = decode_batch(items, device)[0]
    with_decode = []

    def decoded() -> torch.Tensor:
        return decode_batch(items, device)[0]

    for feed in (lambda: resident, decoded):
        task, recipe = build(device, side, overrides)
        optim = build_optimizer(task.parameters(), recipe.optim)
        gen = torch.Generator(device).manual_seed(0)
        dtype = torch.bfloat16 if device.type == "cuda" else None
        for i in range(steps + 1):
            if i == 1:
                sync(device)
                start = time.perf_counter()
            batch = task.make_batch(feed(), {}, gen)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = task(batch)["loss"]
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
        sync(device)
        with_decode.append(steps / (time.perf_counter() - start))
    return with_decode[1] / with_decode[0]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--cpu-smoke", action="store_true")
    args = parser.parse_args()
    if args.cpu_smoke:
        device, n, side, steps, overrides, mm = torch.device("cpu"), 4, 64, 1, ["backbone.width=0.125"], 256
    elif torch.cuda.is_available():
        device, n, side, steps, overrides, mm = torch.device("cuda"), 192, 224, args.steps, [], 8192
    else:
        raise SystemExit("bench_gpu_step.py: no CUDA device here; run it on the GPU machine (or --cpu-smoke)")
    peak = matmul_peak(device, mm, 5 if args.cpu_smoke else 50)
    print(f"device {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}; "
          f"matmul peak {peak:.1f} TFLOP/s")
    images = torch.randint(0, 256, (n, 3, side, side), dtype=torch.uint8).to(device)
    rates = {}
    for name, fast, compiled in (("fp32 eager NCHW", False, False), ("bf16 channels_last fused", True, False),
                                 ("bf16 channels_last fused compiled", True, True)):
        rate, flops, compile_s = step_rate(device, images, steps, fast, compiled, side, overrides)
        rates[name] = rate
        util = rate / n * flops / 1e12 / peak
        print(f"{name}: {rate:.0f} images/s, {flops / 1e9:.0f} GFLOP per step, {100 * util:.1f}% of the peak"
              + (f", compile {compile_s:.1f} s" if compiled else ""))
    best = max(rates["bf16 channels_last fused"], rates["bf16 channels_last fused compiled"])
    print(f"gpu step ratio {best / rates['fp32 eager NCHW']:.2f}")
    print(f"feed ratio {feed_ratio(device, n, side, steps, overrides):.2f}")


if __name__ == "__main__":
    main()
