"""W-MSE (Ermolov et al., 2021): whiten the embeddings of each sub-batch (Cholesky), then pull the
normalised whitened positives together with an MSE; whitening scatters the batch, so there is
no collapse without negatives, predictor or momentum encoder.

Recipe defaults (official code, CIFAR-10 "W-MSE 4"): ResNet-18, Adam lr 3e-3 with 500 warmup steps,
weight decay 1e-6, batch 256, 1000 epochs, 4 positives per image, projector 1024-64 (BN + ReLU),
embedding 64, sub-batches of w_size = 128 whitened separately, w_iter = 1, no shrinkage (w_eps 0); views:
crop scale 0.2-1, jitter 0.4/0.4/0.4/0.1 p 0.8, grayscale 0.1, flip, no blur (``views.kind: mocov2`` with
``n_views: 4, gray_p: 0.1, blur_p: 0``).
Larger datasets use embedding 128 and w_size 256. Every pair of the leading same-resolution views is
a positive pair; under DDP the whitening uses the global batch.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
from pydantic import Field

from selfsup.losses.correlation import wmse_loss
from selfsup.methods.base import Method, MethodConfig, encode_views, n_global_views
from selfsup.nets import mlp


class WMSEConfig(MethodConfig):
    name: Literal["wmse"] = "wmse"
    projector: str = Field("1024-64", description="projection head widths, hidden-...-output (selfsup.nets.mlp)")
    w_size: int = Field(128, gt=1, description="sub-batch size of each whitening; must divide the batch and "
                        "exceed the embedding dimension")
    w_iter: int = Field(1, ge=1, description="random sub-batch splits per step")
    w_eps: float = Field(0.0, ge=0, lt=1, description="covariance shrinkage towards the identity")


class WMSE(Method):
    Config = WMSEConfig
    no_accumulation_reason = "it whitens the whole batch with its own covariance"
    default_views = "mocov2"  # the recipe adds W-MSE's 4 views, grayscale 0.1 and no blur

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: WMSEConfig, epochs: int = 100) -> None:
        super().__init__(backbone, feat_dim, cfg, epochs)
        self.projector = mlp(feat_dim, cfg.projector)
        # seeds the sub-batch split: the same on every rank, saved with the checkpoint
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def forward(self, views, progress=0.0, labels=None):
        n = n_global_views(views)
        if n < 2:
            raise ValueError("wmse needs at least two views at the same resolution (positives)")
        h = encode_views(self.backbone, views[:n])
        z = self.projector(torch.cat(h)).chunk(n)  # one head pass over all positives, as the official code
        gen = torch.Generator().manual_seed(int(self.step))
        loss = wmse_loss(list(z), self.cfg.w_size, self.cfg.w_iter, self.cfg.w_eps, generator=gen)
        if self.training:
            self.step += 1
        return {"loss": loss, "feats": h[0].detach(), "emb": z[0].detach()}
