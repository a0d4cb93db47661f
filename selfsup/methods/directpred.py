r"""DirectPred (Tian, Chen & Ganguli, 2021): BYOL whose linear predictor is set, not learned.

The predictor is :math:`W_p = U\,\mathrm{diag}(p)\,U^\top` from the eigendecomposition of a running
correlation :math:`\hat F` of the online projections (Eqs. 18-19): :math:`p_j = \sqrt{s_j}/\max\sqrt{s}
+ \epsilon`, :math:`\hat F \leftarrow \rho\hat F + (1-\rho)\mathbb{E}_B[zz^\top]` over both views.
As in the official code, :math:`\hat F` takes each batch in the forward pass and :math:`W_p` is
re-set after the optimizer step every ``update_every`` steps (the first batch sets it directly).

Recipe defaults: the paper's ImageNet runs use BYOL's recipe (LARS, base lr 0.2 x batch/256,
weight decay 1.5e-6, batch 4096, projector 4096-256, EMA 0.996 -> 1, BYOL's asymmetric views)
with a linear 256 x 256 predictor, no bias; rho = 0.3, eps = 0.1, update every step.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
from pydantic import Field

from selfsup.losses import byol_loss, correlation_update, directpred_predictor
from selfsup.methods.base import Method, MethodConfig, encode_views
from selfsup.nets import EMA, cosine_momentum, mlp, out_dim


class DirectPredConfig(MethodConfig):
    name: Literal["directpred"] = "directpred"
    projector: str = Field("4096-256", description="projection head widths, hidden-...-output (selfsup.nets.mlp)")
    tau_base: float = Field(0.996, ge=0, le=1, description="EMA momentum of the target at the start, cosine to 1")
    rho: float = Field(0.3, ge=0, lt=1, description="momentum of the running correlation F")
    eps: float = Field(0.1, ge=0, description="added to every normalised predictor eigenvalue")
    update_every: int = Field(1, ge=1, description="set the predictor from F every this many steps")


class DirectPred(Method):
    Config = DirectPredConfig
    no_accumulation_reason = "its predictor comes from the batch correlation, updated inside forward"
    default_views = "byol"
    teacher_attr = "teacher"  # evaluated: the online encoder, as BYOL

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: DirectPredConfig, epochs: int = 100) -> None:
        super().__init__(backbone, feat_dim, cfg, epochs)
        self.projector = mlp(feat_dim, cfg.projector)
        self.teacher = EMA(nn.Sequential(self.backbone, self.projector))
        d = out_dim(cfg.projector)
        # buffers, not parameters: the optimizer never sees the predictor; checkpoints hold all three
        self.register_buffer("corr", torch.zeros(d, d))
        self.register_buffer("predictor", torch.eye(d))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def forward(self, views, progress=0.0, labels=None):
        h = encode_views(self.backbone, views[:2])
        z = [self.projector(x) for x in h]
        if self.training:
            first = int(self.steps) == 0
            self.corr.copy_(correlation_update(self.corr, torch.cat(z), 0.0 if first else self.cfg.rho))
            if first:
                self.predictor.copy_(directpred_predictor(self.corr, self.cfg.eps))
        p = [x @ self.predictor.to(x.dtype) for x in z]  # W_p is symmetric: z W_p = (W_p z^T)^T
        with torch.no_grad():
            t = encode_views(self.teacher, views[:2])
        loss = byol_loss(p[0], t[1]) + byol_loss(p[1], t[0])
        return {"loss": loss, "feats": h[0].detach(), "emb": p[0].detach()}

    @torch.no_grad()
    def after_step(self, progress: float) -> dict[str, float]:
        self.steps += 1
        if int(self.steps) % self.cfg.update_every == 0:
            self.predictor.copy_(directpred_predictor(self.corr, self.cfg.eps))
        tau = cosine_momentum(self.cfg.tau_base, progress)
        self.teacher.update(nn.Sequential(self.backbone, self.projector), tau)
        return {"momentum": tau}
