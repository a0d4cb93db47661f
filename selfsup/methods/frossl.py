"""FroSSL (Skean et al., 2024, "FroSSL: Frobenius Norm Minimization for Efficient Multiview Self-Supervised
Learning", ECCV): the log Frobenius norm of each view's trace-normalised covariance (a Renyi-2 entropy) plus
each view's distance to the mean view (:func:`selfsup.losses.frossl_loss`), over any number of views.

Recipe defaults (solo-learn PR #390 ``scripts/pretrain/imagenet-100/frossl.yaml``, by the first author):
ResNet-18 on ImageNet-100, projector 2048-1024, invariance weight 1, LARS lr 0.3 x batch/256 with eta 0.02,
weight decay 1e-4, batch 2 x 256, 400 epochs, SimCLR's two views, full precision (the log of a Frobenius norm
is sensitive, the config's comment says).
"""

from __future__ import annotations

from typing import Literal

import torch.nn as nn
from pydantic import Field

from selfsup.losses import frossl_loss
from selfsup.methods.base import MethodConfig, ProjectedViewsMethod
from selfsup.nets import mlp


class FroSSLConfig(MethodConfig):
    name: Literal["frossl"] = "frossl"
    projector: str = Field("2048-1024", description="projection head widths, hidden-...-output (selfsup.nets.mlp)")
    invariance_weight: float = Field(1.0, ge=0, description="weight of the distance to the mean view")


class FroSSL(ProjectedViewsMethod):
    Config = FroSSLConfig
    default_views = "simclr"
    accumulation = "exact"  # batch covariances of every view: gradient caching
    embedded_views = None  # every view

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: FroSSLConfig, epochs: int = 100) -> None:
        super().__init__(backbone, feat_dim, cfg, epochs)
        self.projector = mlp(feat_dim, cfg.projector)

    def objective(self, z, labels=None):
        return {"loss": frossl_loss(z, self.cfg.invariance_weight)}
