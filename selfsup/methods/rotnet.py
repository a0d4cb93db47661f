"""RotNet (Gidaris, Singh & Komodakis 2018, "Unsupervised Representation Learning by Predicting Image Rotations",
ICLR): the backbone and a small classifier name which of 0, 90, 180 or 270 degrees each input was rotated by.

Every image of the batch appears in all four rotations (:func:`selfsup.views.pretext_spatial.rotations`; the
paper's Sec. 2.2 and Table 2 find this better than one random rotation per image), so a batch of ``B`` images is
``4B`` backbone inputs; the loss is the mean cross-entropy over them (:func:`selfsup.losses.pretext_cross_entropy`,
Eq. 1-2). Nothing random is drawn: the views (a crop and flip) are the only augmentation.

Recipe defaults (official ``config/CIFAR10_RotNet_NIN4blocks.py``): SGD lr 0.1, momentum 0.9, weight decay 5e-4,
batch 128, 200 epochs (the lr steps x0.2 at 60/120/160: ``optim.lr_schedule: step``), CIFAR-10's
32 px images with a ResNet-18 for the paper's NIN (selfsup's choice, no NIN backbone).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
from pydantic import Field, field_validator

from selfsup.losses.pretext import pretext_cross_entropy
from selfsup.methods.base import Method, MethodConfig
from selfsup.nets import mlp
from selfsup.views.pretext_spatial import rotations


class RotNetConfig(MethodConfig):
    name: Literal["rotnet"] = "rotnet"
    head: str = Field("", description="hidden widths of the rotation classifier on the pooled features, e.g. '200' "
                      "(empty: one linear layer)")

    @field_validator("head", mode="before")
    @classmethod
    def _widths_as_text(cls, v: object) -> object:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v  # head=512 on the command line


class RotNet(Method):
    Config = RotNetConfig
    accumulation = "plain"  # a mean of per-input cross-entropies; the 4 rotations of an image stay together
    default_views = "crop"

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: RotNetConfig, epochs: int = 100) -> None:
        super().__init__(backbone, feat_dim, cfg, epochs)
        self.classifier = mlp(feat_dim, f"{cfg.head}-4" if cfg.head else 4)

    def forward(self, views, progress=0.0, labels=None):
        x = views[0]
        rotated, targets = rotations(x)
        feats = self.backbone(rotated)
        logits = self.classifier(feats)
        loss = pretext_cross_entropy(logits, targets)
        accuracy = (logits.detach().argmax(1) == targets).float().mean()
        upright = feats[: x.shape[0]].detach()  # rotation 0: the images as they are
        return {"loss": loss, "feats": upright, "emb": upright, "pretext_acc": accuracy}
