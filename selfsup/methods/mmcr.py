"""MMCR, Maximum Manifold Capacity Representations (Yerxa et al., 2023, "Learning Efficient Coding of Natural
Images with Maximum Manifold Capacity Representations", NeurIPS): K views of each image, the nuclear norm of
the matrix of their (unit-norm) centroids maximised (:func:`selfsup.losses.mmcr_loss`).

With ``momentum_encoder`` (the official ImageNet default, ``--objective MMCR_Momentum``) an EMA copy of
backbone + projector embeds the same K views and each centroid is the mean of the online and momentum
centroids (official ``MMCR_Momentum_Loss``: ``(mean(z) + mean(z_m)) / 2``); the optional per-image term
:math:`\\lambda \\frac1N \\sum_i \\lVert Z_i \\rVert_*` uses the online views only, as there. The EMA momentum is
constant (official ``MomentumUpdate(tau=0.99)``, every step).

Recipe defaults (official ``pretrain_imagenet.py`` and ``mmcr/imagenet/train.py``): ResNet-50, projector
8192-8192-512 without biases, 8 views (Barlow Twins' two transforms, alternating), lambda 0, tau 0.99, LARS
lr 0.8 x batch/256 with batch 2048, weight decay 1e-6, 10 warmup epochs, cosine to 0.001 x, 100 epochs.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from selfsup.losses import mmcr_loss
from selfsup.methods.base import Method, MethodConfig, encode_views
from selfsup.nets import EMA, mlp


class MMCRConfig(MethodConfig):
    name: Literal["mmcr"] = "mmcr"
    projector: str = Field("8192-8192-512", description="projection head widths, hidden-...-output (selfsup.nets.mlp)")
    lambda_: float = Field(0.0, ge=0, description="weight of the per-image nuclear norm (official --lmbda 0)")
    momentum_encoder: bool = Field(True, description="centroids also from an EMA of backbone + projector")
    tau: float = Field(0.99, ge=0, le=1, description="constant EMA momentum of the momentum encoder")


class MMCR(Method):
    Config = MMCRConfig
    default_views = "multicrop"  # the recipes set n_global (K) and n_local 0
    teacher_attr = "teacher"  # evaluated: the online encoder
    regularizable = True  # method.regularizers act on every view's online projection (CO2: views 0 and 1)
    no_accumulation_reason = ("the nuclear norm of the centroids is not a sum over images and the momentum views "
                              "carry no gradient; there is no embed/objective split")

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: MMCRConfig, epochs: int = 100) -> None:
        super().__init__(backbone, feat_dim, cfg, epochs)
        self.projector = mlp(feat_dim, cfg.projector, last_bias=False)
        self.teacher = EMA(nn.Sequential(self.backbone, self.projector)) if cfg.momentum_encoder else None

    def forward(self, views, progress=0.0, labels=None):
        if len(views) < 2:
            raise ValueError(f"mmcr needs at least 2 views of each image, got {len(views)}; set views.params.n_global")
        h = encode_views(self.backbone, views)
        z = torch.stack([self.projector(x) for x in h], 1)  # [N, K, D]
        if self.teacher is None:
            loss = mmcr_loss(z, self.cfg.lambda_)
        else:
            with torch.no_grad():
                zm = torch.stack(encode_views(self.teacher, views), 1)
            loss = mmcr_loss(torch.cat([z, zm], 1))  # centroid = (online mean + momentum mean) / 2
            if self.cfg.lambda_:
                loss = loss + self.cfg.lambda_ * torch.linalg.svdvals(F.normalize(z.float(), dim=-1)).sum(-1).mean()
        return self.regularize({"loss": loss, "feats": h[0].detach(), "emb": z[:, 0].detach()}, list(z.unbind(1)))

    @torch.no_grad()
    def after_step(self, progress: float) -> dict[str, float]:
        if self.teacher is None:
            return {}
        self.teacher.update(nn.Sequential(self.backbone, self.projector), self.cfg.tau)
        return {"momentum": self.cfg.tau}
