"""NNSiam (solo-learn's ``nnsiam.py``, after NNCLR, Dwibedi et al., 2021): SimSiam whose stop-gradient targets
are replaced by their nearest neighbours in a support set of past projections
(:func:`selfsup.losses.nn_simsiam_loss`).

The projector, predictor and parameter groups (the predictor keeps the peak lr) are
:class:`selfsup.methods.simsiam.SimSiam`'s. The support set is NNCLR's FIFO :class:`selfsup.nets.MemoryBank`
(in the checkpoint); it receives the global batch of normalised view-1 projections after each step. At the first
step it is empty and each projection is its own neighbour (SimSiam); ``nn_start`` (selfsup's option, default 0 as
solo-learn, as NNBYOL's) keeps SimSiam's own targets for that fraction of training while the support set fills.
With labels, ``nn_acc`` logs how often the neighbour has the anchor's label.

Recipe defaults (solo-learn ``scripts/pretrain/cifar/nnsiam.yaml``; no paper gives an NNSiam recipe): ResNet-18
on CIFAR-10 at 32 px, projector 2048-2048-2048 (BN, the last without affine), predictor 4096-2048, support set
65536, SGD lr 0.5 (x batch/256), weight decay 1e-5, batch 256, 1000 epochs, the asymmetric BYOL views without
blur. solo-learn's SGD decays every parameter, as SimSiam's.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from selfsup.losses import nearest_neighbour, nn_simsiam_loss
from selfsup.methods.base import encode_views
from selfsup.methods.simsiam import SimSiam, SimSiamConfig
from selfsup.nets import MemoryBank, out_dim


class NNSiamConfig(SimSiamConfig):
    name: Literal["nnsiam"] = "nnsiam"  # type: ignore[assignment]
    predictor: str = Field("4096-2048", description="predictor head widths, hidden-...-output (solo-learn 4096)")
    queue_size: int = Field(65536, gt=0, description="support set size (past projections)")
    nn_start: float = Field(0.0, ge=0, lt=1, description="fraction of training during which each projection is its "
                            "own neighbour (SimSiam's target) while the support set fills; 0: solo-learn's, neighbours "
                            "from the second step on")


class NNSiam(SimSiam):
    Config = NNSiamConfig
    accumulation = None
    no_accumulation_reason = "each step enqueues the support set of its one forward"
    regularizable = True  # method.regularizers act on the projections z, as SimSiam's
    default_views = "byol"

    def __init__(self, backbone, feat_dim: int, cfg: NNSiamConfig, epochs: int = 100) -> None:
        super().__init__(backbone, feat_dim, cfg, epochs)
        self.support = MemoryBank(cfg.queue_size, out_dim(cfg.projector), with_labels=True)
        self._pending: tuple[torch.Tensor, torch.Tensor | None] | None = None

    def forward(self, views, progress=0.0, labels=None):
        h = encode_views(self.backbone, views[:2])
        z = [self.projector(x) for x in h]
        p = [self.predictor(x) for x in z]
        zn = [F.normalize(x.detach(), dim=1) for x in z]
        out = {}
        if int(self.support.count) == 0 or progress < self.cfg.nn_start:  # cold start: own projection (SimSiam)
            loss = nn_simsiam_loss(p[0], p[1], zn[0], zn[1], torch.cat(zn))
        else:
            support = self.support.get()
            loss = nn_simsiam_loss(p[0], p[1], zn[0], zn[1], support)
            if labels is not None:
                _, idx = nearest_neighbour(zn[0], support, return_index=True)
                out["nn_acc"] = (self.support.get_labels()[idx] == labels).float().mean()
        self._pending = (zn[0], labels)
        return self.regularize({"loss": loss, "feats": h[0].detach(), "emb": z[0].detach(), **out}, z)

    @torch.no_grad()
    def after_step(self, progress: float) -> dict[str, float]:
        if self._pending is not None:
            self.support.enqueue(*self._pending)
            self._pending = None
        return {}
