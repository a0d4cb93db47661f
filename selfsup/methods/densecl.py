"""DenseCL (Wang, Zhang, Shen, Kong & Li, 2021, "Dense Contrastive Learning for Self-Supervised Visual
Pre-Training", CVPR): MoCo v2 plus a dense contrastive loss between the two views' feature maps.

The query network has two heads on the backbone's last feature map (:func:`selfsup.nets.dense.feature_map`):
MoCo v2's global head (average pool, MLP) and a dense head (the same MLP applied at every location, i.e. two
1x1 convolutions). The key network is an EMA of backbone and both heads. Each query location is matched to the
key location whose *backbone* feature is most similar (cosine, argmax; :func:`selfsup.losses.match_by_similarity`)
and contrasted against a dense queue of pooled dense keys of past images (:func:`selfsup.losses.densecl_loss`):

    L = (1 - lambda) L_q + lambda L_r,   lambda = 0.5 (Eq. 3),

with L_q MoCo v2's InfoNCE (:func:`selfsup.losses.moco_infonce`) against the global queue. Both queues start as
random unit vectors and receive the global batch of keys after each step (:class:`selfsup.nets.MemoryBank`).

Shuffle-BN, as the MoCo v2 method emulates it on one process (see :mod:`selfsup.methods.mocov2`): queries are
encoded in ``bn_splits`` consecutive chunks, keys in ``bn_splits`` chunks of a permutation of the batch, so a
query and its key see different BN batches. The permutation is ``argsort`` of per-image uniforms drawn by
:meth:`DenseCL.make_masks` in the main process (the trainer's per-step generator), not from torch's global RNG.

Recipe defaults (paper, Sec. 4, "following MoCo v2"): ResNet-50, heads 2048-128 (no BN), temperature 0.2, queues
65536, momentum 0.999, SGD lr 0.03 x batch/256 (batch 256), weight decay 1e-4, cosine schedule, 200 epochs, MoCo
v2's views, 8 shuffle-BN groups (8 GPUs). The official code computes the loss for view 1 as query only
(asymmetric), as here.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from selfsup.losses import densecl_loss, match_by_similarity, moco_infonce
from selfsup.methods.base import Method, MethodConfig
from selfsup.methods.mocov2 import random_unit_queue
from selfsup.nets import EMA, MemoryBank, mlp, out_dim
from selfsup.nets.dense import feature_map


class DenseCLConfig(MethodConfig):
    name: Literal["densecl"] = "densecl"
    temperature: float = Field(0.2, gt=0, description="InfoNCE temperature tau (global and dense)")
    queue_size: int = Field(65536, gt=0, description="negative keys kept in each queue (global and dense)")
    momentum: float = Field(0.999, ge=0, le=1, description="key encoder EMA momentum m (constant)")
    projector: str = Field("2048-128", description="global and dense head widths, hidden-...-output")
    projector_norm: Literal["none", "bn"] = Field("none", description="hidden-layer norm of both heads (paper: none)")
    loss_lambda: float = Field(0.5, ge=0, le=1, description="weight lambda of the dense loss; (1 - lambda) global")
    bn_splits: int = Field(8, ge=1, description="shuffle-BN groups per process (8 GPUs in the paper); 1: off")


def chunked(fn, x: torch.Tensor, splits: int, perm: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
    """``fn`` (returning a tuple of per-row tensors) over ``splits`` chunks of ``x`` (each with its own BN
    statistics), taken in the order ``perm`` when given; rows come back in the original order."""
    if splits > 1 and x.shape[0] < 2 * splits:
        raise ValueError(f"shuffle-BN with bn_splits={splits} needs at least {2 * splits} images per process, got "
                         f"{x.shape[0]}; lower method.bn_splits")
    xs = x if perm is None else x[perm]
    parts = [fn(c) for c in xs.chunk(splits)] if splits > 1 else [fn(xs)]
    out = tuple(torch.cat(t) for t in zip(*parts))
    return out if perm is None else tuple(t[torch.argsort(perm)] for t in out)


class DenseHeads(nn.Module):
    """The global head (pool, MLP) and the dense head (MLP per location) on a feature map ``[B, C, h, w]``."""

    def __init__(self, feat_dim: int, spec: str, norm: str) -> None:
        super().__init__()
        self.global_head = mlp(feat_dim, spec, norm=norm)
        self.dense_head = mlp(feat_dim, spec, norm=norm)

    def forward(self, fmap: torch.Tensor) -> torch.Tensor:
        """The global embedding ``[B, D]`` of a feature map, or of pooled features ``[B, C]`` (``backbone(x)``)."""
        return self.global_head(fmap.mean((2, 3)) if fmap.dim() == 4 else fmap)

    def dense(self, fmap: torch.Tensor) -> torch.Tensor:
        """Per-location embeddings ``[B, h*w, D]``."""
        b, c, h, w = fmap.shape
        return self.dense_head(fmap.flatten(2).transpose(1, 2).reshape(b * h * w, c)).view(b, h * w, -1)


class DenseCL(Method):
    Config = DenseCLConfig
    no_accumulation_reason = "each step enqueues the keys of its one forward"
    default_views = "mocov2"
    teacher_attr = "key_encoder"  # evaluated: the query encoder, as MoCo v2

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: DenseCLConfig, epochs: int = 100) -> None:
        super().__init__(backbone, feat_dim, cfg, epochs)
        self.projector = DenseHeads(feat_dim, cfg.projector, cfg.projector_norm)
        self.key_encoder = EMA(nn.Sequential(self.backbone, self.projector))
        d = out_dim(cfg.projector)
        self.queue = MemoryBank(cfg.queue_size, d)
        self.dense_queue = MemoryBank(cfg.queue_size, d)
        random_unit_queue(self.queue)
        random_unit_queue(self.dense_queue)
        self._keys: tuple[torch.Tensor, torch.Tensor] | None = None

    def make_masks(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """Per-image uniforms ``[batch]``; each process's shuffle-BN order for the keys is their ``argsort``."""
        return (torch.rand(batch, generator=generator, dtype=torch.float64),)

    def _encode(self, backbone: nn.Module, heads: DenseHeads, x: torch.Tensor):
        fmap = feature_map(backbone, x)
        return fmap, heads(fmap), heads.dense(fmap)

    def forward(self, views, progress=0.0, labels=None, masks=None):
        splits = self.cfg.bn_splits
        if masks is None and splits > 1:
            raise ValueError("densecl's shuffle-BN order comes from make_masks (the trainer passes masks=; in your own "
                             "loop call method.make_masks(batch, generator) once per step), or set bn_splits=1")
        fq, q, q_dense = chunked(lambda v: self._encode(self.backbone, self.projector, v), views[0], splits)
        with torch.no_grad():
            key_backbone, key_heads = self.key_encoder.module
            perm = torch.argsort(masks[0]).to(views[1].device) if splits > 1 else None
            fk, k, k_dense = chunked(lambda v: self._encode(key_backbone, key_heads, v), views[1], splits, perm)
            k = F.normalize(k, dim=1)
            match = match_by_similarity(fq.flatten(2).transpose(1, 2), fk.flatten(2).transpose(1, 2))
        loss_global = moco_infonce(q, k, self.queue.get(), self.cfg.temperature)
        loss_dense = densecl_loss(q_dense, k_dense, match, self.dense_queue.get(), self.cfg.temperature)
        lam = self.cfg.loss_lambda
        self._keys = (k.detach(), F.normalize(k_dense.mean(1), dim=1).detach())
        return {"loss": (1 - lam) * loss_global + lam * loss_dense, "loss_global": loss_global.detach(),
                "loss_dense": loss_dense.detach(), "feats": fq.mean((2, 3)).detach(), "emb": q.detach()}

    def param_groups(self) -> list[dict]:
        """One group with every trainable parameter (the official code, as MoCo v2, decays biases and BN too)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    @torch.no_grad()
    def after_step(self, progress: float) -> dict[str, float]:
        self.key_encoder.update(nn.Sequential(self.backbone, self.projector), self.cfg.momentum)
        if self._keys is not None:
            self.queue.enqueue(self._keys[0])
            self.dense_queue.enqueue(self._keys[1])
            self._keys = None
        return {"momentum": self.cfg.momentum}
