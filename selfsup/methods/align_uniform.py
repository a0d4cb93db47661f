"""Alignment and uniformity on the hypersphere (Wang & Isola, 2020, "Understanding Contrastive Representation
Learning through Alignment and Uniformity on the Hypersphere", ICML): optimise the two properties directly,
:math:`\\mathcal{L}_{align} + \\lambda \\frac12 [\\mathcal{L}_{uniform}(Z) + \\mathcal{L}_{uniform}(Z')]`
(:func:`selfsup.losses.align_uniform_loss`), on L2-normalised outputs of a linear layer over the backbone.

Recipe defaults (official ``examples/stl10/main.py``): alpha 2, t 2, both weights 1, a 128-d output, batch 768,
200 epochs, SGD lr 0.12 x batch/256 with momentum 0.9 and weight decay 1e-4, 64 px crops (scale 0.08-1), flip,
colour jitter 0.4 on every channel and hue (always applied), grayscale 0.2. The official encoder is a small
AlexNet and its lr drops x0.1 at epochs 155, 170 and 185; selfsup has neither (ResNet-18, cosine schedule).
"""

from __future__ import annotations

from typing import Literal

import torch.nn as nn
from pydantic import Field

from selfsup.losses import align_uniform_loss
from selfsup.methods.base import MethodConfig, ProjectedViewsMethod
from selfsup.nets import mlp


class AlignUniformConfig(MethodConfig):
    name: Literal["align_uniform"] = "align_uniform"
    projector: str = Field("128", description="projection head widths, hidden-...-output (selfsup.nets.mlp)")
    lambda_: float = Field(1.0, ge=0, description="weight of the uniformity term (official --unif_w)")
    alpha: float = Field(2.0, gt=0, description="exponent of the alignment distance")
    t: float = Field(2.0, gt=0, description="Gaussian-potential scale of the uniformity term")


class AlignUniform(ProjectedViewsMethod):
    Config = AlignUniformConfig
    default_views = "simclr"
    accumulation = "exact"  # uniformity over all pairs of the batch: gradient caching

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: AlignUniformConfig, epochs: int = 100) -> None:
        super().__init__(backbone, feat_dim, cfg, epochs)
        self.projector = mlp(feat_dim, cfg.projector)

    def objective(self, z, labels=None):
        return {"loss": align_uniform_loss(z[0], z[1], self.cfg.lambda_, self.cfg.alpha, self.cfg.t)}
