"""SimCLR (Chen et al., 2020): two symmetric views, NT-Xent over the global batch.

Recipe defaults (paper, ImageNet): LARS, base lr 0.3 x batch/256 (0.075 x sqrt(batch) for
small batches), weight decay 1e-6, temperature 0.1 (0.5 for CIFAR), projector 2048-128
with BN, 10 warmup epochs then cosine.
"""

from __future__ import annotations

from typing import Literal

import torch.nn as nn
from pydantic import Field

from selfsup.losses import nt_xent
from selfsup.methods.base import MethodConfig, ProjectedViewsMethod
from selfsup.nets import mlp


class SimCLRConfig(MethodConfig):
    name: Literal["simclr"] = "simclr"
    temperature: float = Field(0.1, gt=0, description="NT-Xent temperature tau")
    projector: str = Field("2048-128", description="projection head widths, hidden-...-output (selfsup.nets.mlp)")


class SimCLR(ProjectedViewsMethod):
    Config = SimCLRConfig
    default_views = "simclr"
    accumulation = "exact"  # NT-Xent needs every negative: gradient caching (Gao et al., 2021)

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: SimCLRConfig, epochs: int = 100) -> None:
        super().__init__(backbone, feat_dim, cfg, epochs)
        self.projector = mlp(feat_dim, cfg.projector)

    def objective(self, z, labels=None):
        return {"loss": nt_xent(z[0], z[1], self.cfg.temperature)}
