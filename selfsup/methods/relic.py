"""ReLIC (Mitrovic et al., 2021): instance discrimination plus an explicit invariance penalty.

The contrastive term classifies each image among the global batch; the invariance term is the KL
divergence between the similarity distributions an image induces under the two augmentation
orders, :math:`p^{12}` and :math:`p^{21}` (:func:`selfsup.losses.relic_terms`); the loss is
``ctr + alpha * inv``. Similarities are cosine / temperature between online projections and the
target network's projections (EMA of backbone + projector, momentum ``tau_base`` -> 1 cosine);
``tau_base: null`` uses the online network itself as the target (:math:`h = f`).

Recipe defaults: the paper builds on BYOL's ImageNet setup (ResNet-50, projector 4096-256,
EMA target 0.996, LARS, batch 4096, 1000 epochs, BYOL's augmentations) and does not list alpha
and the temperature in the main text; the recipe uses alpha = 1 and temperature 0.1 (our choice,
documented as such).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
from pydantic import Field

from selfsup.losses import relic_terms
from selfsup.methods.base import Method, MethodConfig, encode_views
from selfsup.nets import EMA, cosine_momentum, mlp


class ReLICConfig(MethodConfig):
    name: Literal["relic"] = "relic"
    temperature: float = Field(0.1, gt=0, description="InfoNCE temperature tau")
    alpha: float = Field(1.0, ge=0, description="weight of the KL invariance term")
    projector: str = Field("4096-256", description="projection head widths, hidden-...-output (selfsup.nets.mlp)")
    tau_base: float | None = Field(0.996, ge=0, le=1, description="target EMA momentum (cosine to 1); null: h = f")


class ReLIC(Method):
    Config = ReLICConfig
    default_views = "byol"
    teacher_attr = "target"  # None when tau_base is null; evaluated: the online encoder, as BYOL

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: ReLICConfig, epochs: int = 100) -> None:
        super().__init__(backbone, feat_dim, cfg, epochs)
        self.projector = mlp(feat_dim, cfg.projector)
        self.target = EMA(nn.Sequential(self.backbone, self.projector)) if cfg.tau_base is not None else None

    def forward(self, views, progress=0.0, labels=None):
        h = encode_views(self.backbone, views[:2])
        z = [self.projector(x) for x in h]
        if self.target is not None:
            with torch.no_grad():
                t = encode_views(self.target, views[:2])
        else:
            t = z
        ctr, inv = relic_terms(z[0], z[1], t[0], t[1], self.cfg.temperature)
        loss = ctr + self.cfg.alpha * inv
        return {"loss": loss, "feats": h[0].detach(), "emb": z[0].detach(), "ctr": ctr.detach(),
                "inv": inv.detach()}

    @torch.no_grad()
    def after_step(self, progress: float) -> dict[str, float]:
        if self.target is None:
            return {}
        tau = cosine_momentum(self.cfg.tau_base, progress)
        self.target.update(nn.Sequential(self.backbone, self.projector), tau)
        return {"momentum": tau}
