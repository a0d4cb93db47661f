"""EMA teacher with the DINO/BYOL momentum convention (tau close to 1)."""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn


def cosine_momentum(tau_base: float, progress: float, tau_final: float = 1.0) -> float:
    r"""BYOL's schedule :math:`\tau = 1 - (1-\tau_{base})(\cos(\pi p)+1)/2` for progress p in [0, 1]."""
    return tau_final - (tau_final - tau_base) * (math.cos(math.pi * min(max(progress, 0.0), 1.0)) + 1) / 2


class EMA(nn.Module):
    r"""A frozen copy of ``module`` updated as :math:`\xi \leftarrow \tau\xi + (1-\tau)\theta`.

    Buffers (BN running statistics) are copied from the student at each update.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = copy.deepcopy(module)
        for p in self.module.parameters():
            p.requires_grad_(False)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    @torch.no_grad()
    def update(self, student: nn.Module, tau: float) -> None:
        """One EMA step towards ``student`` (a module with the same structure)."""
        t = list(self.module.parameters())
        s = [p.detach() for p in student.parameters()]
        if len(t) != len(s):
            raise ValueError("EMA.update: student and teacher have different parameters")
        torch._foreach_lerp_(t, s, 1.0 - tau)
        for bt, bs in zip(self.module.buffers(), student.buffers()):
            bt.copy_(bs)
