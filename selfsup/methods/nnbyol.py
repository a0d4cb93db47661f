"""NNBYOL (solo-learn's ``nnbyol.py``, after NNCLR, Dwibedi et al., 2021): BYOL whose targets are replaced by
their nearest neighbours in a support set of past target projections (:func:`selfsup.losses.nn_byol_loss`).

The online network (backbone, projector, predictor) and the EMA target (backbone + projector, BYOL's cosine
schedule from ``tau_base`` to 1) are :class:`selfsup.methods.byol.BYOL`'s. The support set is NNCLR's FIFO
:class:`selfsup.nets.MemoryBank` (in the checkpoint); it receives the global batch of normalised view-1 target
projections after each step (solo-learn enqueues the momentum projections). At the first step it is empty and
each target is its own neighbour (BYOL); ``nn_start`` (selfsup's option, default 0 as solo-learn) keeps BYOL's own
targets for that fraction of training while the support set fills (nnbyol_digits.yaml says why). With labels,
``nn_acc`` logs how often the neighbour has the anchor's label.

Recipe defaults (solo-learn ``scripts/pretrain/cifar/nnbyol.yaml``; no paper gives an NNBYOL recipe): ResNet-18
on CIFAR-10 at 32 px, projector and predictor 4096-256 (BN), support set 65536, momentum 0.99 -> 1, LARS lr 1.0
(x batch/256) with eta 0.02, weight decay 1e-5, batch 256, 1000 epochs, the asymmetric BYOL views without blur.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from selfsup.losses import nearest_neighbour, nn_byol_loss
from selfsup.methods.base import encode_views
from selfsup.methods.byol import BYOL, BYOLConfig
from selfsup.nets import MemoryBank, out_dim


class NNBYOLConfig(BYOLConfig):
    name: Literal["nnbyol"] = "nnbyol"  # type: ignore[assignment]
    tau_base: float = Field(0.99, ge=0, le=1, description="EMA momentum of the target at the start, cosine to 1 "
                            "(solo-learn 0.99)")
    queue_size: int = Field(65536, gt=0, description="support set size (past target projections)")
    nn_start: float = Field(0.0, ge=0, lt=1, description="fraction of training during which each target is its own "
                            "neighbour (BYOL's target) while the support set fills; 0: solo-learn's, neighbours from "
                            "the second step on")


class NNBYOL(BYOL):
    Config = NNBYOLConfig
    accumulation = None
    no_accumulation_reason = "each step enqueues the support set of its one forward"
    regularizable = True  # method.regularizers act on the online projections, as BYOL's

    def __init__(self, backbone, feat_dim: int, cfg: NNBYOLConfig, epochs: int = 100) -> None:
        super().__init__(backbone, feat_dim, cfg, epochs)
        self.support = MemoryBank(cfg.queue_size, out_dim(cfg.projector), with_labels=True)
        self._pending: tuple[torch.Tensor, torch.Tensor | None] | None = None

    def forward(self, views, progress=0.0, labels=None):
        h = encode_views(self.backbone, views[:2])
        online = [self.projector(x) for x in h]
        p = [self.predictor(x) for x in online]
        with torch.no_grad():
            t = [F.normalize(x, dim=1) for x in encode_views(self.teacher, views[:2])]
        out = {}
        if int(self.support.count) == 0 or progress < self.cfg.nn_start:  # cold start: own target (BYOL)
            loss = nn_byol_loss(p[0], p[1], t[0], t[1], torch.cat(t))
        else:
            support = self.support.get()
            loss = nn_byol_loss(p[0], p[1], t[0], t[1], support)
            if labels is not None:
                _, idx = nearest_neighbour(t[0], support, return_index=True)
                out["nn_acc"] = (self.support.get_labels()[idx] == labels).float().mean()
        self._pending = (t[0], labels)
        return self.regularize({"loss": loss, "feats": h[0].detach(), "emb": p[0].detach(), **out}, online)

    @torch.no_grad()
    def after_step(self, progress: float) -> dict[str, float]:
        if self._pending is not None:
            self.support.enqueue(*self._pending)
            self._pending = None
        return super().after_step(progress)
