"""All4One (Estepa et al., 2023, "All4One: Symbiotic Neighbour Contrastive Learning via Self-Attention and
Redundancy Reduction", ICCV): NNCLR-style contrast with three symbiotic terms (:func:`selfsup.losses.all4one_loss`):

- *centroid*: the k = 5 nearest neighbours of each view's momentum embedding in a support queue, plus a fixed
  slot encoding (:func:`selfsup.losses.slot_position_encoding`), go through a 3-layer transformer whose first
  output token is the neighbourhood's centroid; it is contrasted with the centroid of the other view's sequence
  in which a second predictor's output is shifted in front of its first 4 neighbours;
- *neighbour*: NNCLR's contrast of the nearest neighbour with the other view's prediction;
- *feature*: a redundancy-reduction contrast of the feature columns of momentum and online embeddings.

As the official implementation (solo-learn ``solo/methods/all4one.py`` and ``scripts/pretrain/cifar/all4one.yaml``,
by the paper's authors; the paper's text could not be opened here): projector 2048-2048-256 ending in an affine
BatchNorm, two predictors 4096-256, a momentum encoder (BYOL's cosine 0.99 -> 1), a queue of 98,304 L2-normalised
momentum embeddings of view 1 (initialised with random unit vectors, as the code), temperature 0.2 for the
neighbour term and 0.1 for the centroid term, feature term x10, all three weighted 0.5; the transformer (8 heads,
feed-forward 2 x 256, dropout 0.1) at a tenth of the lr (the code's absolute lr 0.1 beside the recipe's 1.0).
Differences: the feature contrast uses the global batch under DDP (the code: each GPU's), so two processes equal
one; the queue is a :class:`selfsup.nets.MemoryBank` (a ring buffer of any size, the code's needs a multiple of
the batch).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from selfsup.losses import all4one_loss, slot_position_encoding
from selfsup.methods.base import Method, MethodConfig, encode_views
from selfsup.nets import EMA, MemoryBank, cosine_momentum, mlp, out_dim


class All4OneConfig(MethodConfig):
    name: Literal["all4one"] = "all4one"
    projector: str = Field("2048-2048-256", description="projection head widths (hidden BN-ReLU, then an affine "
                                                        "BatchNorm on the output, as the official code)")
    predictor: str = Field("4096-256", description="widths of each of the two predictors, hidden-...-output")
    temperature: float = Field(0.2, gt=0, description="temperature of the neighbour (NNCLR) contrast")
    centroid_temperature: float = Field(0.1, gt=0, description="temperature of the centroid contrast (the code "
                                                               "calls nnclr_loss_func with its default 0.1)")
    feature_weight: float = Field(10.0, ge=0, description="multiplier of the feature contrast inside its term")
    weights: tuple[float, float, float] = Field((0.5, 0.5, 0.5), description="weights of the centroid, neighbour "
                                                                             "and feature terms")
    queue_size: int = Field(98304, gt=0, description="support queue of momentum embeddings")
    neighbors: int = Field(5, ge=2, description="neighbours k in each transformer sequence")
    transformer_layers: int = Field(3, ge=1, description="transformer encoder layers")
    transformer_heads: int = Field(8, ge=1, description="attention heads (must divide the projector's output width)")
    transformer_dropout: float = Field(0.1, ge=0, lt=1, description="dropout inside the transformer layers")
    transformer_lr_scale: float = Field(0.1, gt=0, description="the transformer's lr as a fraction of the peak lr")
    tau_base: float = Field(0.99, ge=0, le=1, description="initial momentum of the momentum encoder, cosine to 1")


class All4One(Method):
    Config = All4OneConfig
    default_views = "byol"
    teacher_attr = "teacher"  # evaluated: the online backbone
    regularizable = True  # method.regularizers act on the online projections z
    no_accumulation_reason = "each step enqueues its momentum embeddings into the support queue of its one forward"

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: All4OneConfig, epochs: int = 100) -> None:
        super().__init__(backbone, feat_dim, cfg, epochs)
        d = out_dim(cfg.projector)
        if out_dim(cfg.predictor) != d or d % cfg.transformer_heads:
            raise ValueError(f"all4one: the predictor must end with the projector's width {d}, and "
                             f"transformer_heads={cfg.transformer_heads} must divide it")
        self.projector = nn.Sequential(*mlp(feat_dim, cfg.projector), nn.BatchNorm1d(d))
        self.predictor = mlp(d, cfg.predictor)
        self.predictor2 = mlp(d, cfg.predictor)
        layer = nn.TransformerEncoderLayer(d, cfg.transformer_heads, dim_feedforward=2 * d,
                                           dropout=cfg.transformer_dropout, batch_first=True)
        self.transformer = nn.TransformerEncoder(layer, cfg.transformer_layers, enable_nested_tensor=False)
        self.register_buffer("slots", slot_position_encoding(cfg.neighbors, d), persistent=False)
        self.teacher = EMA(nn.Sequential(self.backbone, self.projector))
        self.support = MemoryBank(cfg.queue_size, d, with_labels=True)
        self.support.bank.copy_(F.normalize(torch.randn(cfg.queue_size, d), dim=1))  # the code's random start
        self.support.count.fill_(cfg.queue_size)
        self._pending: tuple[torch.Tensor, torch.Tensor | None] | None = None

    def _centroid(self, seq: torch.Tensor) -> torch.Tensor:
        return self.transformer(seq + self.slots)[:, 0]

    def forward(self, views, progress=0.0, labels=None):
        h = encode_views(self.backbone, views[:2])
        z = [self.projector(x) for x in h]
        p = [self.predictor(x) for x in z]
        p2 = [self.predictor2(x) for x in z]
        with torch.no_grad():
            m = [F.normalize(x, dim=-1) for x in encode_views(self.teacher, views[:2])]
            queue = self.support.get()
            top = [(x @ queue.T).topk(self.cfg.neighbors, dim=1).indices for x in m]
            nn_ = [queue[i] for i in top]  # [B, k, D], nearest first
        rich = [self._centroid(s) for s in nn_]
        mixed = [self._centroid(torch.cat([q.unsqueeze(1), s[:, :-1]], 1)) for q, s in zip(p2, nn_)]
        cfg = self.cfg
        out = all4one_loss((rich[0], rich[1]), (mixed[0], mixed[1]), (nn_[0][:, 0], nn_[1][:, 0]), (p[0], p[1]),
                           (m[0], m[1]), (z[0], z[1]), cfg.temperature, cfg.centroid_temperature, cfg.feature_weight,
                           cfg.weights)
        if labels is not None:
            out["nn_acc"] = (self.support.get_labels()[top[0][:, 0]] == labels).float().mean()
        self._pending = (m[0], labels)
        return self.regularize({**{k: v if k == "loss" else v.detach() for k, v in out.items()},
                                "feats": h[0].detach(), "emb": z[0].detach()}, z)

    @torch.no_grad()
    def after_step(self, progress: float) -> dict[str, float]:
        if self._pending is not None:
            self.support.enqueue(*self._pending)
            self._pending = None
        tau = cosine_momentum(self.cfg.tau_base, progress)
        self.teacher.update(nn.Sequential(self.backbone, self.projector), tau)
        return {"momentum": tau}

    def param_groups(self) -> list[dict]:
        """The default groups, with the transformer's parameters split into groups of their own at
        ``transformer_lr_scale`` of the lr (the official code's lr 0.1 beside the recipe's 1.0)."""
        mine = {id(q) for q in self.transformer.parameters()}
        groups = []
        for g in super().param_groups():
            rest = [q for q in g["params"] if id(q) not in mine]
            tr = [q for q in g["params"] if id(q) in mine]
            groups.append({**g, "params": rest})
            if tr:
                groups.append({**g, "params": tr, "lr_scale": self.cfg.transformer_lr_scale})
        return groups
