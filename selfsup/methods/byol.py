"""BYOL (Grill et al., 2020): online network + predictor regress an EMA target's projection.

Recipe defaults (paper): LARS, base lr 0.2 x batch/256, weight decay 1.5e-6, projector and
predictor 4096-256, tau_base 0.996 rising to 1 with a cosine schedule, asymmetric views.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
from pydantic import Field

from selfsup.losses import byol_loss
from selfsup.methods.base import Method, MethodConfig, encode_views
from selfsup.nets import EMA, cosine_momentum, mlp, out_dim


class BYOLConfig(MethodConfig):
    name: Literal["byol"] = "byol"
    projector: str = Field("4096-256", description="projection head widths, hidden-...-output (selfsup.nets.mlp)")
    predictor: str = Field("4096-256", description="predictor head widths, hidden-...-output")
    tau_base: float = Field(0.996, ge=0, le=1, description="EMA momentum of the target at the start, cosine to 1")


class BYOL(Method):
    Config = BYOLConfig
    accumulation = "plain"  # per-image regression to the EMA target (updated in after_step)
    default_views = "byol"
    teacher_attr = "teacher"  # evaluated: the online encoder f_theta (Sec. 3.1, "we only keep the encoder")
    regularizable = True  # method.regularizers act on the online projections

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: BYOLConfig, epochs: int = 100) -> None:
        super().__init__(backbone, feat_dim, cfg, epochs)
        self.projector = mlp(feat_dim, cfg.projector)
        self.predictor = mlp(out_dim(cfg.projector), cfg.predictor)
        self.teacher = EMA(nn.Sequential(self.backbone, self.projector))  # the target has no predictor

    def forward(self, views, progress=0.0, labels=None):
        h = encode_views(self.backbone, views[:2])
        online = [self.projector(x) for x in h]
        p = [self.predictor(x) for x in online]
        with torch.no_grad():
            z = encode_views(self.teacher, views[:2])
        loss = byol_loss(p[0], z[1]) + byol_loss(p[1], z[0])
        return self.regularize({"loss": loss, "feats": h[0].detach(), "emb": p[0].detach()}, online)

    @torch.no_grad()
    def after_step(self, progress: float) -> dict[str, float]:
        tau = cosine_momentum(self.cfg.tau_base, progress)
        self.teacher.update(nn.Sequential(self.backbone, self.projector), tau)
        return {"momentum": tau}
