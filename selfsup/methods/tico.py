"""TiCo (Zhu et al., 2022, "TiCo: Transformation Invariance and Covariance Contrast for Self-Supervised Visual
Representation Learning", arXiv 2206.10698): align two views' embeddings and contrast each embedding against a
running covariance of past batches (:func:`selfsup.losses.tico_loss`), an implicit memory bank of unlimited size.

The running covariance :math:`C_t` is a buffer (``cov``, kept in checkpoints, so resume is exact); the loss
returns the step's :math:`C_t` and :meth:`TiCo.after_step` stores it, once per optimizer step. The second branch
is a momentum encoder (EMA of backbone + projector, BYOL's cosine schedule from ``tau_base`` to 1), as in
lightly's ``examples/pytorch/tico.py``; ``momentum_encoder: false`` uses the online network for both views.

Recipe defaults: projector 4096-256, beta 0.9, rho 8 (lightly's ``TiCoLoss``, whose docstring cites the paper; lightly
changed it from 20 in PR #1398 and benchmarks it on ImageNet; not checked against the paper's text here),
BYOL's ImageNet optimisation and views as lightly's TiCo benchmark (benchmarks/imagenet/resnet50/tico.py: LARS
0.2 x B/256, wd 1.5e-6, 10 warm-up epochs, BYOLTransform); BYOL's batch 4096 and 1000 epochs are selfsup's choice
(the recipe's provenance rows say which is which).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
from pydantic import Field

from selfsup.losses import tico_loss
from selfsup.methods.base import Method, MethodConfig, encode_views
from selfsup.nets import EMA, cosine_momentum, mlp, out_dim


class TiCoConfig(MethodConfig):
    name: Literal["tico"] = "tico"
    projector: str = Field("4096-256", description="projection head widths, hidden-...-output (selfsup.nets.mlp)")
    beta: float = Field(0.9, ge=0, lt=1, description="decay of the running covariance C_t")
    rho: float = Field(8.0, ge=0, description="weight of the covariance-contrast term")
    momentum_encoder: bool = Field(True, description="second view through an EMA of backbone + projector")
    tau_base: float = Field(0.996, ge=0, le=1, description="initial EMA momentum, raised to 1 (cosine)")


class TiCo(Method):
    Config = TiCoConfig
    default_views = "byol"
    teacher_attr = "teacher"  # evaluated: the online encoder
    regularizable = True  # method.regularizers act on z1, z2 (z2 without gradient behind a momentum encoder)
    no_accumulation_reason = ("its target embeddings come from the momentum encoder without gradient and its running "
                              "covariance moves once per step; there is no embed/objective split")

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: TiCoConfig, epochs: int = 100) -> None:
        super().__init__(backbone, feat_dim, cfg, epochs)
        self.projector = mlp(feat_dim, cfg.projector)
        d = out_dim(cfg.projector)
        self.register_buffer("cov", torch.zeros(d, d))
        self._next_cov: torch.Tensor | None = None
        self.teacher = EMA(nn.Sequential(self.backbone, self.projector)) if cfg.momentum_encoder else None

    def forward(self, views, progress=0.0, labels=None):
        if self.teacher is None:
            h = encode_views(self.backbone, views[:2])
            z1, z2 = self.projector(h[0]), self.projector(h[1])
        else:
            h = [self.backbone(views[0])]
            z1 = self.projector(h[0])
            with torch.no_grad():
                z2 = self.teacher(views[1])
        loss, self._next_cov = tico_loss(z1, z2, self.cov, self.cfg.beta, self.cfg.rho)
        return self.regularize({"loss": loss, "feats": h[0].detach(), "emb": z1.detach()}, [z1, z2])

    @torch.no_grad()
    def after_step(self, progress: float) -> dict[str, float]:
        if self._next_cov is not None:
            self.cov.copy_(self._next_cov)
            self._next_cov = None
        if self.teacher is None:
            return {}
        tau = cosine_momentum(self.cfg.tau_base, progress)
        self.teacher.update(nn.Sequential(self.backbone, self.projector), tau)
        return {"momentum": tau}
