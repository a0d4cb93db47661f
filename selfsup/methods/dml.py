"""Classic deep metric learning on augmented views: the margin contrastive loss (Hadsell, Chopra &
LeCun, 2006) or the triplet loss with online mining (Schroff, Kalenichenko & Philbin, 2015).

The two views of an image are the positive pair; the views of the other images of the global batch
are the negatives (:func:`selfsup.losses.batch_margin_contrastive`,
:func:`selfsup.losses.batch_triplet` with ``mining`` all / hard / semihard). These are the
cookbook's starting point of the DML family (Sec. 2.2.1), before InfoNCE; the same triplet loss
summed over all negatives is the ``triplet`` preset of the ``unified`` method.

Recipe defaults: FaceNet's triplet setting (L2-normalised embeddings, squared distances, margin 0.2,
semi-hard negatives) on SimCLR's architecture and ImageNet setup (projector 2048-128, LARS,
batch 4096), since neither paper trains on augmented views. Hadsell's loss uses ``margin`` on
(non-squared) distances; 1.0 is a sensible value on the unit sphere.
"""

from __future__ import annotations

from typing import Literal

import torch.nn as nn
from pydantic import Field

from selfsup.losses import batch_margin_contrastive, batch_triplet
from selfsup.methods.base import Method, MethodConfig, encode_views
from selfsup.nets import mlp


class DMLConfig(MethodConfig):
    name: Literal["dml"] = "dml"
    loss: Literal["triplet", "contrastive"] = Field("triplet", description="batch triplet loss or the margin "
                                                    "contrastive (pairwise) loss")
    margin: float = Field(0.2, gt=0, description="the loss's margin")
    mining: Literal["all", "hard", "semihard"] = Field("semihard", description="triplet negatives")
    normalize: bool = Field(True, description="L2-normalise the embeddings before the distances")
    projector: str = Field("2048-128", description="projection head widths, hidden-...-output (selfsup.nets.mlp)")


class DML(Method):
    Config = DMLConfig
    default_views = "simclr"

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: DMLConfig, epochs: int = 100) -> None:
        super().__init__(backbone, feat_dim, cfg, epochs)
        self.projector = mlp(feat_dim, cfg.projector)

    def forward(self, views, progress=0.0, labels=None):
        h = encode_views(self.backbone, views[:2])
        z = [self.projector(x) for x in h]
        if self.cfg.loss == "triplet":
            loss = batch_triplet(z[0], z[1], self.cfg.margin, self.cfg.mining, self.cfg.normalize)
        else:
            loss = batch_margin_contrastive(z[0], z[1], self.cfg.margin, self.cfg.normalize)
        return {"loss": loss, "feats": h[0].detach(), "emb": z[0].detach()}
