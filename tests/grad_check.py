"""Central finite differences of a float64 reference loss, to check autograd gradients against the equation."""

from __future__ import annotations

from collections.abc import Callable

import torch


def numeric_grad(f: Callable[[torch.Tensor], float], x: torch.Tensor, h: float = 1e-6) -> torch.Tensor:
    """d f / d x by central differences; ``f`` maps a float64 tensor like ``x`` to a Python float."""
    g = torch.zeros_like(x)
    flat, gflat = x.detach().clone().reshape(-1), g.reshape(-1)
    for i in range(flat.numel()):
        old = flat[i].item()
        flat[i] = old + h
        up = f(flat.view_as(x))
        flat[i] = old - h
        down = f(flat.view_as(x))
        flat[i] = old
        gflat[i] = (up - down) / (2 * h)
    return g


def autograd_grad(loss_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    xg = x.detach().clone().requires_grad_()
    (g,) = torch.autograd.grad(loss_fn(xg), xg)
    return g
