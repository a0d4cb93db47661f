"""SwAV (Caron et al., 2020): swapped assignments between views, with online codes from
Sinkhorn-Knopp equipartition over learnable prototypes, and multi-crop.

Recipe defaults (paper, ImageNet, 800 epochs): batch 4096, LARS (trust coefficient 0.001) on every
parameter with weight decay 1e-6, lr 4.8 (0.3 x batch/256) with 10 warmup epochs then cosine to
0.0048; projector 2048-128 (BN + ReLU), L2-normalised output, 3000 prototypes (re-normalised before
every step, frozen during the first epoch), temperature 0.1, Sinkhorn epsilon 0.05 with 3 iterations,
multi-crop 2 x 224 (scale 0.14-1) + 6 x 96 (scale 0.05-0.14), every crop with SimCLR's colour distortion
(strength 1), blur p 0.5 and no solarization (``views.kind: swav_multicrop``), codes from the two global crops. No
queue at batch 4096; small batches use one (3840 embeddings for batch 256, from epoch 15).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from selfsup.losses.clustering import swav_loss
from selfsup.methods.base import Method, MethodConfig, encode_views, n_global_views
from selfsup.nets import MemoryBank, mlp, out_dim
from selfsup.nets.prototypes import Prototypes


class SwAVConfig(MethodConfig):
    name: Literal["swav"] = "swav"
    projector: str = Field("2048-128", description="projection head widths, hidden-...-output (selfsup.nets.mlp)")
    nmb_prototypes: int = Field(3000, gt=0, description="number of prototypes K; keep K above the projector's output "
                                "dimension, or the embeddings can escape to the prototypes' orthogonal complement "
                                "(uniform codes, loss log K)")
    temperature: float = Field(0.1, gt=0, description="softmax temperature of the prototype scores")
    epsilon: float = Field(0.05, gt=0, description="Sinkhorn entropy regularisation")
    sinkhorn_iters: int = Field(3, ge=1, description="Sinkhorn-Knopp iterations of the codes")
    n_assign: int = Field(2, ge=1, description="crops whose codes are computed: the first n_assign (global) crops")
    queue_length: int = Field(0, ge=0, description="past embeddings per assigned crop added to Sinkhorn (0: none)")
    queue_start_epochs: float = Field(15, ge=0, description="epoch at which the queue starts filling")
    freeze_prototypes_epochs: float = Field(1, ge=0, description="epochs during which the prototypes are not updated")


class SwAV(Method):
    Config = SwAVConfig
    no_accumulation_reason = "Sinkhorn-Knopp balances the codes over the whole batch"
    default_views = "swav_multicrop"

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: SwAVConfig, epochs: int = 100) -> None:
        super().__init__(backbone, feat_dim, cfg, epochs)
        self.projector = mlp(feat_dim, cfg.projector)
        dim = out_dim(cfg.projector)
        self.prototypes = Prototypes(dim, cfg.nmb_prototypes)
        self.queues = nn.ModuleList([MemoryBank(cfg.queue_length, dim) for _ in range(cfg.n_assign)]) \
            if cfg.queue_length else None

    def forward(self, views, progress=0.0, labels=None):
        """``views`` are [globals..., locals...]: codes come from the first ``n_assign`` global crops and
        every crop predicts the codes of the others."""
        n_global = n_global_views(views)
        if self.cfg.n_assign > n_global:
            raise ValueError(f"swav: n_assign={self.cfg.n_assign} exceeds the {n_global} global views; lower "
                             f"method.n_assign or raise views.params.n_global")
        if self.training:
            self.prototypes.normalize_()
        h = encode_views(self.backbone, views)
        z = F.normalize(self.projector(torch.cat(h)), dim=1)  # one head pass over all crops, as SwAV
        with torch.autocast(z.device.type, enabled=False):  # fp32 scores: Sinkhorn amplifies them by 1/epsilon
            scores = self.prototypes(z.float()).chunk(len(views))
        z = z.chunk(len(views))
        use_queue = self.queues is not None and progress * self.epochs >= self.cfg.queue_start_epochs - 1e-9
        queue_scores = None
        if use_queue:
            with torch.no_grad(), torch.autocast(z[0].device.type, enabled=False):
                queue_scores = [self.prototypes(q.get().float()) if q.full else None for q in self.queues]
        c = self.cfg
        loss = swav_loss(scores, c.n_assign, c.temperature, c.epsilon, c.sinkhorn_iters, queue_scores)
        if use_queue and self.training:
            for i, q in enumerate(self.queues):
                q.enqueue(z[i])
        return {"loss": loss, "feats": h[0].detach(), "emb": z[0].detach()}

    def on_backward(self, progress: float) -> None:
        """Prototypes stay fixed during the first ``freeze_prototypes_epochs`` (gradient dropped)."""
        if progress * self.epochs < self.cfg.freeze_prototypes_epochs - 1e-9:
            self.prototypes.weight.grad = None

    def param_groups(self) -> list[dict]:
        """One group: SwAV applies weight decay and LARS adaptation to every parameter."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]
