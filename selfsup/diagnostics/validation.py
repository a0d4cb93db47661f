"""Validation of embedding matrices, shared by the training diagnostics and the evaluators
(one-line errors that name the fix)."""

from __future__ import annotations

import torch
from torch import Tensor


def check_features(x: object, name: str = "features") -> Tensor:
    """Return ``x`` if it is a finite 2-D floating tensor ``[N, D]`` with N >= 1, else raise."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape [N, D], got {type(x).__name__}")
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D [N, D], got shape {tuple(x.shape)}; flatten or pool features first")
    if not x.is_floating_point():
        raise ValueError(f"{name} must be a floating tensor, got {x.dtype}; call .float() first")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}); pass at least one row and one column")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or Inf; check the backbone output (e.g. fp16 overflow)")
    return x
