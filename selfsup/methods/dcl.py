"""DCL and DCLW (Yeh et al., 2021): decoupled contrastive learning.

SimCLR's NT-Xent with the positive pair removed from the denominator, which removes the
"negative-positive coupling" that makes InfoNCE need large batches; DCLW also weights the
positive term with a von Mises-Fisher weight, :math:`w_i = 2 - \\exp(s_i/\\sigma)/\\mathbb{E}_k
\\exp(s_k/\\sigma)` (:func:`selfsup.losses.dcl`), over the global batch.

Recipe defaults (paper, ImageNet, on SimCLR's setup): ResNet-50, projector 2048-128, temperature
0.1, sigma 0.5 (DCLW), LARS lr 0.3 x batch/256 (SimCLR's), weight decay 1e-6, batch 256 (the
paper's point: DCL works with small batches), SimCLR's augmentations.
"""

from __future__ import annotations

from typing import Literal

import torch.nn as nn
from pydantic import Field

from selfsup.losses import dcl
from selfsup.methods.base import MethodConfig, ProjectedViewsMethod
from selfsup.nets import mlp


class DCLConfig(MethodConfig):
    name: Literal["dcl"] = "dcl"
    temperature: float = Field(0.1, gt=0, description="temperature tau of the decoupled contrastive loss")
    projector: str = Field("2048-128", description="projection head widths, hidden-...-output (selfsup.nets.mlp)")


class DCLWConfig(DCLConfig):
    name: Literal["dclw"] = "dclw"  # type: ignore[assignment]
    sigma: float = Field(0.5, gt=0, description="von Mises-Fisher weighting temperature")


class DCL(ProjectedViewsMethod):
    Config = DCLConfig
    default_views = "simclr"
    accumulation = "exact"  # in-batch negatives: gradient caching

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: DCLConfig, epochs: int = 100) -> None:
        super().__init__(backbone, feat_dim, cfg, epochs)
        self.projector = mlp(feat_dim, cfg.projector)

    def objective(self, z, labels=None):
        return {"loss": dcl(z[0], z[1], self.cfg.temperature, getattr(self.cfg, "sigma", None))}


class DCLW(DCL):
    Config = DCLWConfig
