"""VIbCReg (Lee & Aune, 2021, "VIbCReg: Variance-Invariance-better-Covariance Regularization for
Self-Supervised Learning on Time Series", arXiv 2109.00783; solo-learn ``methods/vibcreg.py``): VICReg with an
IterNorm-whitened projector output and a scale-free (correlation) covariance term
(:func:`selfsup.losses.vibcreg_loss`, :func:`selfsup.losses.iter_norm`).

IterNorm whitens with the statistics of the whole (global) batch, so it runs in :meth:`objective`, on the
projector outputs of the whole batch: gradient caching stays exact. The projector's hidden layers use ReLU
(solo-learn's use GELU; ``selfsup.nets.mlp`` has ReLU only).

Recipe defaults (solo-learn ``scripts/pretrain/imagenet-100/vibcreg.yaml``): ResNet-18 on ImageNet-100,
projector 2048-2048-2048 + IterNorm (64 groups, 5 iterations), weights 25 / 25 / 200, LARS lr 0.3 x batch/256
with eta 0.02, weight decay 1e-4, batch 2 x 64, 400 epochs, symmetric views (crop 0.2-1, blur 0.5, solarize 0.1).
"""

from __future__ import annotations

from typing import Literal

import torch.nn as nn
from pydantic import Field

from selfsup.losses import iter_norm, vibcreg_loss
from selfsup.methods.base import MethodConfig, ProjectedViewsMethod
from selfsup.nets import mlp


class VIbCRegConfig(MethodConfig):
    name: Literal["vibcreg"] = "vibcreg"
    projector: str = Field("2048-2048-2048", description="projection head widths, hidden-...-output (selfsup.nets.mlp)")
    sim_weight: float = Field(25.0, ge=0, description="invariance coefficient")
    var_weight: float = Field(25.0, ge=0, description="variance coefficient")
    cov_weight: float = Field(200.0, ge=0, description="(normalised) covariance coefficient")
    iternorm: bool = Field(True, description="IterNorm whitening of the projector output")
    iternorm_groups: int = Field(64, gt=0, description="IterNorm whitening groups of the embedding dimensions")
    iternorm_iterations: int = Field(5, gt=0, le=10, description="IterNorm Newton iterations")


class VIbCReg(ProjectedViewsMethod):
    Config = VIbCRegConfig
    default_views = "byol"
    accumulation = "exact"  # IterNorm and the variance/covariance terms use the whole batch: gradient caching

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: VIbCRegConfig, epochs: int = 100) -> None:
        super().__init__(backbone, feat_dim, cfg, epochs)
        self.projector = mlp(feat_dim, cfg.projector)

    def objective(self, z, labels=None):
        if self.cfg.iternorm:
            z = [iter_norm(x, self.cfg.iternorm_groups, self.cfg.iternorm_iterations) for x in z]
        return {"loss": vibcreg_loss(z[0], z[1], self.cfg.sim_weight, self.cfg.var_weight, self.cfg.cov_weight)}
