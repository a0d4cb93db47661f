"""MoCo v2 (Chen, Fan, Girshick & He, 2020): momentum key encoder and a queue of negative keys.

The query encoder (backbone + MLP projector) is trained with InfoNCE against its momentum key
(positive) and a FIFO queue of past keys (negatives), :func:`selfsup.losses.moco_infonce`.
The key encoder is an EMA of the query encoder with a constant momentum ``m``; the queue starts
with random unit vectors (as in the authors' code) and receives the global batch of keys after each
step (:class:`selfsup.nets.MemoryBank`, part of the checkpoint).

Shuffle-BN is not implemented: under DDP on CUDA the trainer converts BatchNorm to SyncBatchNorm,
so the key encoder's BN sees the global batch (MoCo v3's choice) and shuffling would change nothing;
on one device the batch statistics are those of the whole batch, like SimCLR's.

Recipe defaults (paper, ImageNet): ResNet-50, projector 2048-128 (no BN), temperature 0.2,
queue 65536, m = 0.999, SGD lr 0.03 x batch/256 (batch 256), weight decay 1e-4, momentum 0.9,
cosine schedule, 200 epochs, SimCLR-style augmentation with blur. The loss is asymmetric
(query from view 1, key from view 2); ``symmetric: true`` also uses the swapped pair.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from selfsup.losses import moco_infonce
from selfsup.methods.base import Method, MethodConfig, encode_views
from selfsup.nets import EMA, MemoryBank, mlp, out_dim


class MoCoV2Config(MethodConfig):
    name: Literal["mocov2"] = "mocov2"
    temperature: float = Field(0.2, gt=0)
    queue_size: int = Field(65536, gt=0)
    momentum: float = Field(0.999, ge=0, le=1, description="key encoder EMA momentum m (constant)")
    projector: str = "2048-128"
    symmetric: bool = False


def random_unit_queue(bank: MemoryBank) -> None:
    """Fill ``bank`` with random unit vectors and mark it full (MoCo's initial queue)."""
    with torch.no_grad():
        bank.bank.copy_(F.normalize(torch.randn_like(bank.bank), dim=1))
        bank.ptr.zero_()
        bank.count.fill_(bank.size)


class MoCoV2(Method):
    Config = MoCoV2Config
    default_views = "simclr"

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: MoCoV2Config, epochs: int = 100) -> None:
        super().__init__(backbone, feat_dim, cfg, epochs)
        self.projector = mlp(feat_dim, cfg.projector, norm="none")
        self.key_encoder = EMA(nn.Sequential(self.backbone, self.projector))
        self.queue = MemoryBank(cfg.queue_size, out_dim(cfg.projector))
        random_unit_queue(self.queue)
        self._keys: torch.Tensor | None = None

    def forward(self, views, progress=0.0, labels=None):
        query_views = views[:2] if self.cfg.symmetric else views[:1]
        key_views = [views[1], views[0]] if self.cfg.symmetric else views[1:2]
        h = encode_views(self.backbone, query_views)
        q = [F.normalize(self.projector(x), dim=1) for x in h]
        with torch.no_grad():
            k = [F.normalize(x, dim=1) for x in encode_views(self.key_encoder, key_views)]
        queue = self.queue.get()
        loss = sum(moco_infonce(qi, ki, queue, self.cfg.temperature) for qi, ki in zip(q, k)) / len(q)
        self._keys = torch.cat(k, 0).detach()
        return {"loss": loss, "feats": h[0].detach(), "emb": q[0].detach()}

    @torch.no_grad()
    def after_step(self, progress: float) -> dict[str, float]:
        self.key_encoder.update(nn.Sequential(self.backbone, self.projector), self.cfg.momentum)
        if self._keys is not None:
            self.queue.enqueue(self._keys)
            self._keys = None
        return {"momentum": self.cfg.momentum}
