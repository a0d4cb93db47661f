"""MoCo v3 (Chen, Xie & He, 2021): symmetric InfoNCE against a momentum encoder, no queue.

Queries go through backbone -> projector -> predictor; keys through the momentum encoder
(EMA of backbone + projector, momentum rising from ``tau_base`` to 1 with a cosine schedule).
Negatives are the other keys of the global batch, and the loss is scaled by 2 tau
(:func:`selfsup.losses.moco_v3_loss`). BatchNorm in every MLP layer, including the projector's
output (BN without affine), as in the paper.

Recipe defaults (paper's ResNet-50 setup, ImageNet): projector 4096-256, predictor 4096-256,
temperature 1.0, momentum 0.99 -> 1 (cosine), LARS lr 0.3 x batch/256, weight decay 1e-6 (1.5e-6
for 1000 epochs), batch 4096, 10 warmup epochs, 300 epochs, BYOL's asymmetric augmentations with
min crop scale 0.2. (The ViT setup: AdamW lr 1.5e-4 x batch/256, wd 0.1, temperature 0.2,
3-layer projector, 40 warmup epochs.)
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
from pydantic import Field

from selfsup.losses import moco_v3_loss
from selfsup.methods.base import Method, MethodConfig, encode_views
from selfsup.nets import EMA, cosine_momentum, mlp, out_dim


class MoCoV3Config(MethodConfig):
    name: Literal["mocov3"] = "mocov3"
    temperature: float = Field(1.0, gt=0, description="InfoNCE temperature tau (MoCo v3's ViT recipe: 0.2)")
    projector: str = Field("4096-256", description="projection head widths, hidden-...-output (selfsup.nets.mlp)")
    predictor: str = Field("4096-256", description="predictor head widths, hidden-...-output")
    tau_base: float = Field(0.99, ge=0, le=1, description="initial momentum, raised to 1 (cosine)")


class MoCoV3(Method):
    Config = MoCoV3Config
    no_accumulation_reason = "its InfoNCE uses the whole batch of momentum keys and it has no embed/objective split yet"
    default_views = "byol"
    teacher_attr = "momentum_encoder"  # evaluated: the base encoder (official main_lincls.py)
    regularizable = True  # method.regularizers act on the queries q

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: MoCoV3Config, epochs: int = 100) -> None:
        super().__init__(backbone, feat_dim, cfg, epochs)
        self.projector = mlp(feat_dim, cfg.projector, last_norm=True)
        self.predictor = mlp(out_dim(cfg.projector), cfg.predictor, last_bias=False)
        self.momentum_encoder = EMA(nn.Sequential(self.backbone, self.projector))

    def forward(self, views, progress=0.0, labels=None):
        h = encode_views(self.backbone, views[:2])
        q = [self.predictor(self.projector(x)) for x in h]
        with torch.no_grad():
            k = encode_views(self.momentum_encoder, views[:2])
        loss = moco_v3_loss(q[0], q[1], k[0], k[1], self.cfg.temperature)
        return self.regularize({"loss": loss, "feats": h[0].detach(), "emb": q[0].detach()}, q)

    @torch.no_grad()
    def after_step(self, progress: float) -> dict[str, float]:
        m = cosine_momentum(self.cfg.tau_base, progress)
        self.momentum_encoder.update(nn.Sequential(self.backbone, self.projector), m)
        return {"momentum": m}
