"""MoCo v2 (Chen, Fan, Girshick & He, 2020): momentum key encoder and a queue of negative keys.

The query encoder (backbone + MLP projector) is trained with InfoNCE against its momentum key
(positive) and a FIFO queue of past keys (negatives), :func:`selfsup.losses.moco_infonce`.
The key encoder is an EMA of the query encoder with a constant momentum ``m``; the queue starts
with random unit vectors (as in the authors' code) and receives the global batch of keys after each
step (:class:`selfsup.nets.MemoryBank`, part of the checkpoint).

Shuffle-BN. With a queue, BatchNorm lets the model "cheat": the positive key is the only key
computed in the same batch as the query, so batch statistics alone can single it out. MoCo shuffles
the key batch across GPUs so that a query and its key see different BN batches. Here every process
emulates it, as the authors' single-GPU CIFAR demo does with a split BatchNorm: the query batch is
encoded in ``bn_splits`` consecutive chunks and the key batch in ``bn_splits`` chunks of a random
permutation (then un-permuted), so each chunk has its own BN statistics and a key's chunk differs
from its query's. This works with or without SyncBatchNorm (then a chunk's statistics span that
chunk on every rank). ``bn_splits: 1`` turns it off.

The paper's MLP head has no BatchNorm. On small data a randomly initialised head without BN maps all
images to nearly one direction (mean cosine 0.8 on digits vs 0.26 with BN) and training collapsed
(RankMe 3 after 17 digits epochs), so ``projector_norm: bn`` is offered and used by ``mocov2_digits``.

Recipe defaults (paper, ImageNet): ResNet-50, projector 2048-128 (no BN), temperature 0.2,
queue 65536, m = 0.999, SGD lr 0.03 x batch/256 (batch 256), weight decay 1e-4, momentum 0.9,
cosine schedule, 200 epochs (Table 1), the ``aug+`` views (``views.kind: mocov2``: crop scale 0.2-1,
jitter 0.4/0.4/0.4/0.1 p 0.8, grayscale 0.2, blur p 0.5). The loss is asymmetric (query from view 1,
key from view 2); ``symmetric: true`` also uses the swapped pair. Linear evaluation uses the query
encoder, as the official ``main_lincls.py``.

Weight decay. The official code hands every parameter to SGD with weight decay 1e-4, biases and
BatchNorm included; ``decay_all: true`` (the default) does the same. ``decay_all: false`` uses
selfsup's usual split (no decay, and no LARS adaptation, for parameters with ndim <= 1).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from selfsup.losses import moco_infonce
from selfsup.methods.base import Method, MethodConfig
from selfsup.nets import EMA, MemoryBank, mlp, out_dim


class MoCoV2Config(MethodConfig):
    name: Literal["mocov2"] = "mocov2"
    temperature: float = Field(0.2, gt=0, description="InfoNCE temperature tau")
    queue_size: int = Field(65536, gt=0, description="negative keys kept in the queue (K)")
    momentum: float = Field(0.999, ge=0, le=1, description="key encoder EMA momentum m (constant)")
    projector: str = Field("2048-128", description="projection head widths, hidden-...-output (selfsup.nets.mlp)")
    projector_norm: Literal["none", "bn"] = Field("none", description="hidden-layer norm of the MLP (paper: none)")
    symmetric: bool = Field(False, description="also the swapped pair (view 2 as the query)")
    bn_splits: int = Field(8, ge=1, description="shuffle-BN groups per process (8 GPUs in the paper); 1: off")
    decay_all: bool = Field(True, description="weight decay on every parameter, biases and BN included (official "
                            "code); false: none on parameters with ndim <= 1")


def split_forward(encoder: nn.Module, x: torch.Tensor, splits: int, shuffle: bool) -> torch.Tensor:
    """``encoder`` over ``splits`` chunks of ``x`` (each chunk with its own BN statistics), in a random
    order of the rows when ``shuffle`` (MoCo's shuffle-BN on one device); rows come back in order."""
    if splits == 1:
        return encoder(x)
    if x.shape[0] < 2 * splits:
        raise ValueError(f"shuffle-BN with bn_splits={splits} needs at least {2 * splits} images per process, got "
                         f"{x.shape[0]}; lower method.bn_splits")
    perm = torch.randperm(x.shape[0], device=x.device) if shuffle else None
    out = torch.cat([encoder(c) for c in (x[perm] if shuffle else x).chunk(splits)])
    return out[torch.argsort(perm)] if shuffle else out


def random_unit_queue(bank: MemoryBank) -> None:
    """Fill ``bank`` with random unit vectors and mark it full (MoCo's initial queue)."""
    with torch.no_grad():
        bank.bank.copy_(F.normalize(torch.randn_like(bank.bank), dim=1))
        bank.ptr.zero_()
        bank.count.fill_(bank.size)


class MoCoV2(Method):
    Config = MoCoV2Config
    no_accumulation_reason = "each step enqueues the keys of its one forward"
    default_views = "mocov2"
    teacher_attr = "key_encoder"  # evaluated: the query encoder (official main_lincls.py loads encoder_q)
    regularizable = True  # method.regularizers act on the queries q (asymmetric: q and its key, CO2's two views)

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: MoCoV2Config, epochs: int = 100) -> None:
        super().__init__(backbone, feat_dim, cfg, epochs)
        self.projector = mlp(feat_dim, cfg.projector, norm=cfg.projector_norm)
        self.key_encoder = EMA(nn.Sequential(self.backbone, self.projector))
        self.queue = MemoryBank(cfg.queue_size, out_dim(cfg.projector))
        random_unit_queue(self.queue)
        self._keys: torch.Tensor | None = None

    def forward(self, views, progress=0.0, labels=None):
        query_views = views[:2] if self.cfg.symmetric else views[:1]
        key_views = [views[1], views[0]] if self.cfg.symmetric else views[1:2]
        splits = self.cfg.bn_splits
        h = [split_forward(self.backbone, v, splits, shuffle=False) for v in query_views]
        q = [F.normalize(split_forward(self.projector, x, splits, shuffle=False), dim=1) for x in h]
        with torch.no_grad():
            k = [F.normalize(split_forward(self.key_encoder, v, splits, shuffle=True), dim=1) for v in key_views]
        queue = self.queue.get()
        loss = sum(moco_infonce(qi, ki, queue, self.cfg.temperature) for qi, ki in zip(q, k)) / len(q)
        self._keys = torch.cat(k, 0).detach()
        z = q if len(q) == 2 else [q[0], k[0]]  # the key has no gradient: KoLeo skips it, CO2 compares to it
        return self.regularize({"loss": loss, "feats": h[0].detach(), "emb": q[0].detach()}, z)

    def param_groups(self) -> list[dict]:
        """One group with every trainable parameter (the official code's SGD decays biases and BN too);
        with ``decay_all: false``, the base split that exempts parameters with ndim <= 1."""
        if not self.cfg.decay_all:
            return super().param_groups()
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    @torch.no_grad()
    def after_step(self, progress: float) -> dict[str, float]:
        self.key_encoder.update(nn.Sequential(self.backbone, self.projector), self.cfg.momentum)
        if self._keys is not None:
            self.queue.enqueue(self._keys)
            self._keys = None
        return {"momentum": self.cfg.momentum}
