"""MSF, mean shift for self-supervised learning (Koohpayegani, Tejankar & Pirsiavash, 2021).

BYOL's architecture, but the query is pulled towards the ``k`` nearest neighbours of the target
embedding in a memory bank of past targets (:func:`selfsup.losses.msf_loss`); with ``k = 1`` it is
BYOL. The target encoder is an EMA of backbone + projector with a constant momentum. The bank
holds normalised targets; the current global batch of targets is searched too (the paper enqueues
it before searching), and is enqueued after the step. When labels are given, ``purity`` logs the
fraction of the neighbours that share the query's label (the paper's diagnostic).

Recipe defaults (paper, ImageNet): ResNet-50, projector and predictor 4096-512 (BN), k = 5,
memory bank 1.024M, momentum 0.99, SGD lr 0.05 (batch 256), weight decay 1e-4, cosine, 200
epochs, and the paper's weak/strong views (``views.kind: msf``): the query (view 1) gets MoCo v2's
strong augmentation, the target (view 2) crop (scale 0.2-1) and flip only; ``views.params.weak_target:
false`` gives the strong/strong ablation, and ``views.kind: byol`` BYOL's asymmetric pair.

Weight decay. The official ``train_msf.py`` hands every trainable parameter to SGD with weight decay
1e-4, biases and BatchNorm included; ``decay_all: true`` (the default) does the same, ``decay_all:
false`` exempts parameters with ndim <= 1 (and from LARS adaptation), selfsup's usual split.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from selfsup.losses.distributed import gather
from selfsup.losses.neighbors import msf_neighbours, msf_regression
from selfsup.methods.base import Method, MethodConfig, encode_views
from selfsup.nets import EMA, MemoryBank, mlp, out_dim


class MSFConfig(MethodConfig):
    name: Literal["msf"] = "msf"
    k: int = Field(5, gt=0, description="number of nearest neighbours")
    queue_size: int = Field(1_024_000, gt=0, description="memory bank size")
    momentum: float = Field(0.99, ge=0, le=1, description="target encoder EMA momentum (constant)")
    projector: str = Field("4096-512", description="projection head widths, hidden-...-output (selfsup.nets.mlp)")
    predictor: str = Field("4096-512", description="predictor head widths, hidden-...-output")
    symmetric: bool = Field(False, description="both views as query and target (the paper: view 1 query, "
                            "view 2 target)")
    decay_all: bool = Field(True, description="weight decay on every parameter, biases and BN included (official "
                            "code); false: none on parameters with ndim <= 1")


class MSF(Method):
    Config = MSFConfig
    no_accumulation_reason = "each step enqueues the targets of its one forward"
    default_views = "msf"
    teacher_attr = "target"  # evaluated: the online (query) encoder, as BYOL

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: MSFConfig, epochs: int = 100) -> None:
        super().__init__(backbone, feat_dim, cfg, epochs)
        self.projector = mlp(feat_dim, cfg.projector)
        self.predictor = mlp(out_dim(cfg.projector), cfg.predictor)
        self.target = EMA(nn.Sequential(self.backbone, self.projector))
        self.bank = MemoryBank(cfg.queue_size, out_dim(cfg.projector), with_labels=True)
        self._pending: tuple[torch.Tensor, torch.Tensor | None] | None = None

    def forward(self, views, progress=0.0, labels=None):
        sym = self.cfg.symmetric
        h = encode_views(self.backbone, views[:2] if sym else views[:1])
        u = [self.predictor(self.projector(x)) for x in h]
        with torch.no_grad():
            t = [F.normalize(x, dim=1) for x in encode_views(self.target, [views[1], views[0]] if sym else views[1:2])]
        bank = self.bank.get()  # rows are normalised targets
        loss, purity = 0.0, []
        for ui, ti in zip(u, t):
            current = gather(ti, grad=False)  # the global batch of targets is searched too
            idx = msf_neighbours(ti, bank, current, self.cfg.k)
            loss = loss + msf_regression(ui, bank, current, idx) / len(u)
            if labels is not None:
                support_labels = torch.cat([self.bank.get_labels(), gather(labels, grad=False)])
                purity.append((support_labels[idx] == labels[:, None]).float().mean())
        self._pending = (t[0], labels)
        out = {"loss": loss, "feats": h[0].detach(), "emb": u[0].detach()}
        if purity:
            out["purity"] = sum(purity) / len(purity)
        return out

    def param_groups(self) -> list[dict]:
        """One group with every trainable parameter (the official code's SGD decays biases and BN too);
        with ``decay_all: false``, the base split that exempts parameters with ndim <= 1."""
        if not self.cfg.decay_all:
            return super().param_groups()
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    @torch.no_grad()
    def after_step(self, progress: float) -> dict[str, float]:
        self.target.update(nn.Sequential(self.backbone, self.projector), self.cfg.momentum)
        if self._pending is not None:
            self.bank.enqueue(*self._pending)
            self._pending = None
        return {"momentum": self.cfg.momentum}

