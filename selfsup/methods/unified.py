"""Unified contrastive loss (Tian, 2022): one method for a whole family of contrastive losses.

Tian ("Understanding Deep Contrastive Learning via Coordinate-wise Optimization", Eq. 1 and
Table 1) writes InfoNCE, MINE, the triplet, soft-triplet, N+1-tuplet and lifted-structured losses
as :math:`\\sum_i \\phi(\\sum_{j \\ne i} \\psi(d_i^2 - d_{ij}^2))`
(:func:`selfsup.losses.unified_contrastive`). ``preset`` picks a row of Table 1, ``tau`` and
``eps`` its parameters (``eps: null``: the preset's default, see
:data:`selfsup.losses.UNIFIED_PRESETS`). In Python, pass any ``phi``/``psi`` callables to
``Unified(..., phi_psi=PhiPsi(phi, psi))`` or call the loss in your own loop.

Recipe defaults: SimCLR's architecture and ImageNet setup (the paper's experiments are on
CIFAR/STL), projector 2048-128, squared distances of L2-normalised embeddings, ``tau = 0.2``
(InfoNCE with tau on squared distances = cosine temperature tau / 2 = 0.1, SimCLR's), negatives
from both views of the other images.
"""

from __future__ import annotations

from typing import Literal

import torch.nn as nn
from pydantic import Field

from selfsup.losses import PhiPsi, unified_contrastive, unified_preset
from selfsup.methods.base import Method, MethodConfig, encode_views
from selfsup.nets import mlp


class UnifiedConfig(MethodConfig):
    name: Literal["unified"] = "unified"
    preset: Literal["infonce", "mine", "triplet", "soft_triplet", "tuplet", "lifted"] = Field(
        "infonce", description="the loss: a row of Tian (2022) Table 1")
    tau: float = Field(0.2, gt=0, description="temperature on squared distances (infonce, soft_triplet)")
    eps: float | None = Field(None, description="the preset's epsilon / margin; null: its default")
    negatives: Literal["other", "all"] = Field("all", description="other images' second views, or both views")
    normalize: bool = Field(True, description="L2-normalise the embeddings before the distances")
    symmetric: bool = Field(True, description="average the loss over both views as anchors")
    projector: str = Field("2048-128", description="projection head widths, hidden-...-output (selfsup.nets.mlp)")


class Unified(Method):
    Config = UnifiedConfig
    default_views = "simclr"

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: UnifiedConfig, epochs: int = 100,
                 phi_psi: PhiPsi | None = None) -> None:
        super().__init__(backbone, feat_dim, cfg, epochs)
        self.projector = mlp(feat_dim, cfg.projector)
        self.phi_psi = phi_psi or unified_preset(cfg.preset, cfg.tau, cfg.eps)

    def forward(self, views, progress=0.0, labels=None):
        h = encode_views(self.backbone, views[:2])
        z = [self.projector(x) for x in h]
        loss = unified_contrastive(z[0], z[1], self.phi_psi, negatives=self.cfg.negatives,
                                   normalize=self.cfg.normalize, symmetric=self.cfg.symmetric)
        return {"loss": loss, "feats": h[0].detach(), "emb": z[0].detach()}
