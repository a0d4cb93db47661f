"""MACL, model-aware contrastive learning (Huang et al., 2023, "Model-Aware Contrastive Learning: Towards
Escaping the Dilemmas", ICML): SimCLR whose temperature follows the batch's current alignment,
:math:`\\tau_A = \\tau_0 [1 + \\alpha (A - A_0)]`, with a gradient-balancing reweighting of each anchor
(:func:`selfsup.losses.macl_loss`).

Recipe defaults: tau_0 0.1, alpha 0.5, A_0 0 (lightly's ``MACLLoss``) on the official release's SimCLR-2048-e200 run
(chenhaoxing/MACL README and its config: ResNet-50, projector 2048-128, batch 2048, 200 epochs) with SimCLR's
optimiser, which the README says its configs follow (LARS lr 0.3 x batch/256, weight decay 1e-6); the provenance
rows cite each value.
"""

from __future__ import annotations

from typing import Literal

import torch.nn as nn
from pydantic import Field

from selfsup.losses import macl_loss
from selfsup.methods.base import MethodConfig, ProjectedViewsMethod
from selfsup.nets import mlp


class MACLConfig(MethodConfig):
    name: Literal["macl"] = "macl"
    projector: str = Field("2048-128", description="projection head widths, hidden-...-output (selfsup.nets.mlp)")
    temperature: float = Field(0.1, gt=0, description="tau_0, the temperature at alignment A_0")
    alpha: float = Field(0.5, ge=0, le=1, description="how strongly the temperature follows the alignment")
    a0: float = Field(0.0, ge=0, le=1, description="the alignment A_0 at which the temperature is tau_0")


class MACL(ProjectedViewsMethod):
    Config = MACLConfig
    default_views = "simclr"
    accumulation = "exact"  # NT-Xent over the whole batch, alignment of the whole batch: gradient caching

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: MACLConfig, epochs: int = 100) -> None:
        super().__init__(backbone, feat_dim, cfg, epochs)
        self.projector = mlp(feat_dim, cfg.projector)

    def objective(self, z, labels=None):
        return {"loss": macl_loss(z[0], z[1], self.cfg.temperature, self.cfg.alpha, self.cfg.a0)}
