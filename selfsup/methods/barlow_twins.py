"""Barlow Twins (Zbontar et al., 2021): redundancy reduction through the cross-correlation matrix
of two views' embeddings, driven towards the identity.

Recipe defaults (paper, ImageNet): LARS (trust coefficient 0.001; biases and BatchNorm parameters
excluded from weight decay and from the adaptation), batch 2048, 1000 epochs, 10 warmup epochs then
cosine decay to 0.001 x the peak, learning rate 0.2 x batch/256 for the weights and 0.0048 x
batch/256 for biases and BN parameters, weight decay 1.5e-6, projector 8192-8192-8192 (BN + ReLU
between layers, last layer without bias), lambda = 5e-3 (0.0051 in the official code), BYOL's
asymmetric augmentations. The embeddings are standardised over the global batch inside the loss
(the paper's final ``BatchNorm1d(affine=False)``).
"""

from __future__ import annotations

from typing import Literal

import torch.nn as nn
from pydantic import Field

from selfsup.losses.correlation import barlow_twins_loss
from selfsup.methods.base import MethodConfig, ProjectedViewsMethod
from selfsup.nets import mlp


class BarlowTwinsConfig(MethodConfig):
    name: Literal["barlow_twins"] = "barlow_twins"
    projector: str = Field("8192-8192-8192", description="projection head widths, hidden-...-output (selfsup.nets.mlp)")
    lambda_: float = Field(5e-3, ge=0, description="weight of the off-diagonal (redundancy reduction) term")
    bias_lr_scale: float = Field(0.024, gt=0, description="lr of biases and BN parameters relative to the "
                                 "weights (paper: 0.0048 / 0.2)")


class BarlowTwins(ProjectedViewsMethod):
    Config = BarlowTwinsConfig
    default_views = "byol"
    accumulation = "exact"  # the batch's cross-correlation matrix: gradient caching

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: BarlowTwinsConfig, epochs: int = 100) -> None:
        super().__init__(backbone, feat_dim, cfg, epochs)
        self.projector = mlp(feat_dim, cfg.projector, last_bias=False)

    def objective(self, z, labels=None):
        return {"loss": barlow_twins_loss(z[0], z[1], self.cfg.lambda_)}

    def param_groups(self) -> list[dict]:
        """Weights at the scheduled lr; biases and BN parameters (the ``no_decay`` group: no weight decay,
        no LARS adaptation) at ``bias_lr_scale`` x that lr, as the paper's 0.2 / 0.0048."""
        groups = super().param_groups()
        for g in groups:
            if g.get("no_decay"):
                g["lr_scale"] = self.cfg.bias_lr_scale
        return groups
