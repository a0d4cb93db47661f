"""VICReg (Bardes et al., 2022): variance-invariance-covariance regularisation.

Recipe defaults (paper): LARS, base lr 0.2 x batch/256, weight decay 1e-6, expander
8192-8192-8192, lambda = mu = 25, nu = 1, 10 warmup epochs then cosine.
"""

from __future__ import annotations

from typing import Literal

import torch.nn as nn
from pydantic import Field

from selfsup.losses import vicreg_terms
from selfsup.methods.base import MethodConfig, ProjectedViewsMethod
from selfsup.nets import mlp


class VICRegConfig(MethodConfig):
    name: Literal["vicreg"] = "vicreg"
    projector: str = Field("8192-8192-8192", description="projection head widths, hidden-...-output (selfsup.nets.mlp)")
    lambda_: float = Field(25.0, ge=0, description="invariance coefficient")
    mu: float = Field(25.0, ge=0, description="variance coefficient")
    nu: float = Field(1.0, ge=0, description="covariance coefficient")
    gamma: float = Field(1.0, gt=0, description="target standard deviation")


class VICReg(ProjectedViewsMethod):
    Config = VICRegConfig
    default_views = "byol"
    accumulation = "exact"  # variance and covariance of the whole batch: gradient caching

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: VICRegConfig, epochs: int = 100) -> None:
        super().__init__(backbone, feat_dim, cfg, epochs)
        self.projector = mlp(feat_dim, cfg.projector)

    def objective(self, z, labels=None):
        inv, var, cov = vicreg_terms(z[0], z[1], gamma=self.cfg.gamma)
        loss = self.cfg.lambda_ * inv + self.cfg.mu * var + self.cfg.nu * cov
        return {"loss": loss, "inv": inv.detach(), "var": var.detach(), "cov": cov.detach()}
