"""Data-dependent rescaling (Krähenbühl, Doersch, Donahue, Darrell, ICLR 2016): `--init rescale`.

Before transfer, every conv / linear layer of a trunk is rescaled on real images:

1. within-layer (random trunks only; the paper's Algorithm 1 applied to given weights): layer by layer, in
   forward order, each output channel's pre-activation is made zero-mean, unit-variance over the batch:
   W_c <- W_c / sigma_c, b_c <- (b_c - mu_c) / sigma_c (beta = 0);
2. between-layer (Algorithm 2): the change rates C_k = E||dL/dW_k||^2 / ||W_k||^2 under random
   losses are equalised by scaling layer k by r_k = (C_k / mean C)^(alpha / 2), iterated. For a ReLU
   network without normalisation, scaling a layer scales everything after it, so the biases downstream
   are scaled along and the last layer divides by the product: the function is unchanged; only the
   parametrisation, and so the effective per-layer learning rate of fine-tuning, changes.

The "Random rescaled" rows of the deck's tables are a random init put through this procedure; the
"-rescale" rows a pretrained trunk. Layers followed by BatchNorm are scale-invariant, so for BN trunks
the within-layer step only moves their biases and the between-layer step only their learning rates.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from sslbench.backbones.base import Backbone


def scaled_layers(backbone: Backbone, taps: tuple[str, ...]) -> list[tuple[nn.Module, nn.Module | None]]:
    """(conv / linear layer, the BatchNorm right after it or None) that run for these taps, in forward order."""
    last = max((i for i, (name, _) in enumerate(backbone.stages()) if name in taps), default=-1)
    out: list[tuple[nn.Module, nn.Module | None]] = []
    for _, stage in backbone.stages()[: last + 1]:
        for module in stage.modules():
            children = list(module.children())
            for i, child in enumerate(children):
                if isinstance(child, (nn.Conv2d, nn.Linear)):
                    nxt = children[i + 1] if i + 1 < len(children) else None
                    out.append((child, nxt if isinstance(nxt, (nn.BatchNorm1d, nn.BatchNorm2d)) else None))
    return out


@torch.no_grad()
def _scale_output(layer: nn.Module, bn: nn.Module | None, weight_factor: Tensor, out_factor: Tensor) -> None:
    """Weights times `weight_factor`; the layer's output (bias included) then scales by `out_factor` (its
    input may be scaled already); a following BatchNorm's running statistics move with the output, so in
    eval mode the BN output, and everything after it, is unchanged."""
    shape = (-1,) + (1,) * (layer.weight.dim() - 1)
    layer.weight.mul_(weight_factor.view(shape) if weight_factor.dim() else weight_factor)
    if layer.bias is not None:
        layer.bias.mul_(out_factor)
    if bn is not None and bn.running_mean is not None:
        bn.running_mean.mul_(out_factor)
        bn.running_var.mul_(out_factor * out_factor)


@contextmanager
def _capture(layer: nn.Module) -> Iterator[list[Tensor]]:
    seen: list[Tensor] = []
    # clone: an in-place ReLU follows
    handle = layer.register_forward_hook(lambda _m, _i, out: seen.append(out.detach().clone()))
    try:
        yield seen
    finally:
        handle.remove()


def _channel_stats(out: Tensor) -> tuple[Tensor, Tensor]:
    dims = [0] + list(range(2, out.dim()))  # every axis but the channel
    return out.mean(dims), out.std(dims).clamp_min(1e-8)


@torch.no_grad()
def within_layer(backbone: Backbone, images: Tensor, taps: tuple[str, ...]) -> None:
    """Zero-mean, unit-variance pre-activations per output channel, one layer at a time (beta = 0)."""
    for layer, bn in scaled_layers(backbone, taps):
        with _capture(layer) as seen:
            backbone(images, taps=taps)
        mu, sd = _channel_stats(seen[0])
        if layer.bias is not None:
            layer.bias.sub_(mu)
        _scale_output(layer, bn, 1.0 / sd, 1.0 / sd)


def change_rates(backbone: Backbone, images: Tensor, taps: tuple[str, ...], samples: int = 2, seed: int = 0) -> Tensor:
    """C_k = E||dL/dW_k||^2 / ||W_k||^2 for random linear losses L on the last tap (the paper's estimate)."""
    layers = [layer for layer, _ in scaled_layers(backbone, taps)]
    gen = torch.Generator().manual_seed(seed)
    total = torch.zeros(len(layers))
    for _ in range(samples):
        backbone.zero_grad(set_to_none=True)
        out = backbone(images, taps=taps)[taps[-1]]
        direction = torch.randn(out.shape, generator=gen)
        (out * direction).sum().backward()
        total += torch.stack([m.weight.grad.pow(2).sum() / m.weight.detach().pow(2).sum() for m in layers])
    backbone.zero_grad(set_to_none=True)
    return total / samples


@torch.no_grad()
def scale_layers(backbone: Backbone, taps: tuple[str, ...], r: Tensor) -> None:
    """Scale layer k's weights by r_k without changing the network's function (ReLU is homogeneous):
    downstream biases follow the running product, a BatchNorm absorbs it, the last layer divides it out."""
    layers = scaled_layers(backbone, taps)
    carry = torch.tensor(1.0)  # how much this layer's input is scaled by the layers before it
    for k, (layer, bn) in enumerate(layers):
        out_scale = carry * r[k]
        _scale_output(layer, bn, r[k], out_scale)
        carry = torch.tensor(1.0) if bn is not None else out_scale
    if carry != 1.0:
        last, _ = layers[-1]
        last.weight.div_(carry)
        if last.bias is not None:
            last.bias.div_(carry)


def between_layer(backbone: Backbone, images: Tensor, taps: tuple[str, ...], iterations: int = 10,
                  alpha: float = 0.25) -> Tensor:
    """Equalise the layers' change rates by r_k = (C_k / mean C)^(alpha / 2), iterated; returns the final C_k."""
    for it in range(iterations):
        c = change_rates(backbone, images, taps, seed=it)
        r = (c / c[:-1].mean()).pow(alpha / 2)
        r[-1] = 1.0  # the last layer absorbs the product (function unchanged), so it is not equalised itself
        scale_layers(backbone, taps, r)
    return change_rates(backbone, images, taps, seed=iterations)


def rescale(backbone: Backbone, images: Tensor, taps: tuple[str, ...], iterations: int = 10,
            pretrained: bool = False) -> None:
    """Kraehenbuehl et al.'s data-dependent rescaling of `backbone` in place, on prepared `images`. A `pretrained`
    trunk gets the between-layer calibration only, as the released code does (philkr/magic_init magic_init.py
    `main`: magicInitialize is skipped for a loaded, non-zero network and only calibrateGradientRatio runs): the
    within-layer step would change the function a pretrained trunk computes."""
    was_training = backbone.training
    backbone.train(False)  # BatchNorm statistics are not touched
    if not pretrained:
        within_layer(backbone, images, taps)
    if iterations:
        between_layer(backbone, images, taps, iterations)
    backbone.train(was_training)
