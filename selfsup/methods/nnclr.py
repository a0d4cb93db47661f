"""NNCLR (Dwibedi et al., 2021): the nearest neighbour from a support set is the positive.

Each projection :math:`z` is replaced by its nearest neighbour in a FIFO support set of past
(normalised) projections, then contrasted with the other view's prediction over the global
batch, symmetrically (:func:`selfsup.losses.nnclr_loss`). The support set receives the global
batch of view-1 projections after each step (:class:`selfsup.nets.MemoryBank`, in the checkpoint).
At the very first step the support set is empty and each embedding is its own neighbour (SimCLR-like).
When labels are given, ``nn_acc`` logs how often the neighbour has the anchor's label.

Recipe defaults (paper, ImageNet): ResNet-50, projector 2048-2048-256 (BN), predictor 4096-256,
temperature 0.1, support set 98304, batch 4096, LARS lr 0.3 x batch/256, weight decay 1e-6,
10 warmup epochs, 1000 epochs, BYOL's augmentations.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from selfsup.losses import info_nce, nearest_neighbour
from selfsup.methods.base import Method, MethodConfig, encode_views
from selfsup.nets import MemoryBank, mlp, out_dim


class NNCLRConfig(MethodConfig):
    name: Literal["nnclr"] = "nnclr"
    temperature: float = Field(0.1, gt=0, description="NT-Xent temperature tau (nearest neighbour as the positive)")
    queue_size: int = Field(98304, gt=0, description="support set size")
    projector: str = Field("2048-2048-256", description="projection head widths, hidden-...-output (selfsup.nets.mlp)")
    predictor: str = Field("4096-256", description="predictor head widths, hidden-...-output")


class NNCLR(Method):
    Config = NNCLRConfig
    no_accumulation_reason = "each step enqueues the support set of its one forward"
    default_views = "byol"
    regularizable = True  # method.regularizers act on the projections z

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: NNCLRConfig, epochs: int = 100) -> None:
        super().__init__(backbone, feat_dim, cfg, epochs)
        self.projector = mlp(feat_dim, cfg.projector, last_norm=True)
        self.predictor = mlp(out_dim(cfg.projector), cfg.predictor)
        self.support = MemoryBank(cfg.queue_size, out_dim(cfg.projector), with_labels=True)
        self._pending: tuple[torch.Tensor, torch.Tensor | None] | None = None

    def forward(self, views, progress=0.0, labels=None):
        h = encode_views(self.backbone, views[:2])
        z = [self.projector(x) for x in h]
        p = [self.predictor(x) for x in z]
        zn = [F.normalize(x.detach(), dim=1) for x in z]
        out = {}
        if int(self.support.count) == 0:
            nn_ = zn  # cold start: nothing to look up yet
        else:
            nn_, idx = zip(*(nearest_neighbour(x, self.support.get(), return_index=True) for x in zn))
            if labels is not None:
                out["nn_acc"] = (self.support.get_labels()[idx[0]] == labels).float().mean()
        t = self.cfg.temperature
        loss = (info_nce(nn_[0], p[1], None, t) + info_nce(nn_[1], p[0], None, t)) / 2
        self._pending = (zn[0], labels)
        return self.regularize({"loss": loss, "feats": h[0].detach(), "emb": z[0].detach(), **out}, z)

    @torch.no_grad()
    def after_step(self, progress: float) -> dict[str, float]:
        if self._pending is not None:
            self.support.enqueue(*self._pending)
            self._pending = None
        return {}
