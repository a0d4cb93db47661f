"""Schedules as functions of ``progress`` (fraction of training done) — never raw step counts."""

from __future__ import annotations

import math


def cosine(start: float, end: float, progress: float) -> float:
    """Half-cosine from ``start`` (progress 0) to ``end`` (progress 1)."""
    p = min(max(progress, 0.0), 1.0)
    return end + (start - end) * (1 + math.cos(math.pi * p)) / 2


def warmup_cosine(peak: float, progress: float, warmup: float, final: float = 0.0) -> float:
    """Linear warmup from 0 to ``peak`` over the first ``warmup`` fraction, then cosine to ``final``
    (Goyal et al., 2017; Loshchilov & Hutter, 2017)."""
    if warmup > 0 and progress < warmup:
        return peak * progress / warmup
    return cosine(peak, final, (progress - warmup) / max(1.0 - warmup, 1e-12))


def warmup_step(peak: float, progress: float, warmup: float, milestones: list[float], gamma: float) -> float:
    """Linear warmup from 0 to ``peak`` over the first ``warmup`` fraction, then ``peak`` multiplied by ``gamma``
    at each milestone passed: the step schedule of MoCo v1 (x0.1 at epochs 120 and 160 of 200, He et al. 2020
    Sec. 4.1) and NPID. ``milestones`` are fractions of training, so a milestone falls on the first step of its
    epoch exactly as in the official per-epoch ``adjust_learning_rate``."""
    if warmup > 0 and progress < warmup:
        return peak * progress / warmup
    return peak * gamma ** sum(progress >= m for m in milestones)


def scaled_lr(base_lr: float, batch_size: int, rule: str = "linear", reference: int | None = None) -> float:
    """Batch-size scaling of the base lr: ``linear`` = base x B/reference (reference 256 by default, Goyal et
    al., 2017; SimMIM uses 512); ``sqrt`` = base x sqrt(B/reference) (reference 1 by default: SimCLR's appendix
    B.1, base 0.075; DINOv2 uses 1024); ``none`` = base."""
    if reference is not None and reference <= 0:
        raise ValueError(f"the lr reference batch must be > 0, got {reference}")
    if rule == "linear":
        return base_lr * batch_size / (reference or 256)
    if rule == "sqrt":
        return base_lr * math.sqrt(batch_size / (reference or 1))
    if rule == "none":
        return base_lr
    raise ValueError(f"unknown lr scaling rule '{rule}'; choose linear, sqrt or none")
