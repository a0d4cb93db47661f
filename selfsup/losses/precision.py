"""Numerical precision shared by the losses."""

from __future__ import annotations

import torch


def upcast(x: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 -> fp32 for softmaxes, covariances and Sinkhorn under autocast; fp32/fp64 unchanged
    (so the float64 reference tests stay in float64)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x
