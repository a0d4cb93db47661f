"""DirectCLR (Jing, Vincent, LeCun & Tian, 2022, "Understanding Dimensional Collapse in Contrastive
Self-supervised Learning", ICLR, Section 6): InfoNCE directly on the first ``dim0`` dimensions of the backbone
representation, no projector (:func:`selfsup.losses.directclr_loss`). The other dimensions get gradient only
through the shared backbone, which is what keeps the whole representation from collapsing.

Recipe defaults (official ``directclr/main.py`` and ``utils.py``, ``--mode directclr --dim 360``): ResNet-50,
d0 360, tau 0.1, symmetric cross-view InfoNCE, LARS lr 4.8 (not scaled by the batch), weight decay 1e-6,
batch 4096, 100 epochs, 10 warmup epochs, cosine to 0.001 x, BYOL's asymmetric views.
"""

from __future__ import annotations

from typing import Literal

import torch.nn as nn
from pydantic import Field

from selfsup.losses import directclr_loss
from selfsup.methods.base import Method, MethodConfig, encode_views


class DirectCLRConfig(MethodConfig):
    name: Literal["directclr"] = "directclr"
    dim0: int = Field(360, gt=0, description="number of leading representation dimensions in the loss")
    temperature: float = Field(0.1, gt=0, description="InfoNCE temperature tau")
    negatives: Literal["cross_view", "nt_xent"] = Field("cross_view", description="cross_view: the official "
                                                        "infoNCE; nt_xent: lightly's DirectCLRLoss")


class DirectCLR(Method):
    Config = DirectCLRConfig
    default_views = "byol"
    accumulation = "exact"  # InfoNCE over the whole batch: gradient caching

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: DirectCLRConfig, epochs: int = 100) -> None:
        super().__init__(backbone, feat_dim, cfg, epochs)
        if cfg.dim0 > feat_dim:
            raise ValueError(f"method.dim0={cfg.dim0} exceeds the backbone's {feat_dim} feature dimensions; set "
                             f"method.dim0 <= {feat_dim}")

    def embed(self, views):
        h = encode_views(self.backbone, views[:2])
        return h[0], h

    def objective(self, z, labels=None):
        return {"loss": directclr_loss(z[0], z[1], self.cfg.dim0, self.cfg.temperature, self.cfg.negatives)}
