"""Shared by the pretraining benchmarks: the images/s of full training steps, measured one way everywhere."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from sslbench.training import build_optimizer


def pretrain_rate(task: torch.nn.Module, optim_cfg, images: torch.Tensor, steps: int, warmup: int = 2,  # noqa: ANN001
                  make_batch: Callable[[torch.Tensor], dict] | None = None) -> float:
    """Images per second over `steps` optimizer steps (batch construction, forward, backward, update) of
    `task` on the fixed uint8 `images`, after `warmup` untimed steps; `make_batch` replaces the task's own
    batch construction (the naive baselines)."""
    optimizer = build_optimizer(task.parameters(), optim_cfg)
    gen = torch.Generator().manual_seed(0)
    build = make_batch or (lambda x: task.make_batch(x, {}, gen))
    for i in range(steps + warmup):
        if i == warmup:
            start = time.perf_counter()
        loss = task(build(images))["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return steps * len(images) / (time.perf_counter() - start)
