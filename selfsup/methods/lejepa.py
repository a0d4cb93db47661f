"""LeJEPA (Balestriero & LeCun, 2025, "LeJEPA: Provable and Scalable Self-Supervised Learning Without the
Heuristics", arXiv 2511.08544): every view, global and local, is pulled to the mean of its image's global
views, and SIGReg (an Epps-Pulley test along random 1-D projections) drives the embeddings towards an isotropic
Gaussian (:func:`selfsup.losses.lejepa_loss`). No teacher, no stop-gradient, one hyperparameter (lambda).

The random projections ("slices") are fresh each step and drawn on the CPU from an explicit generator seeded by
``slice_seed`` (drawn once at construction, so every process holds the same one) and the step count ``step``;
both are buffers, kept in checkpoints, so resume draws the same slices and every rank tests the same directions
(the DDP statistic equals the single-process one on the global batch). ``step`` moves in :meth:`after_step`.

Recipe defaults (official ``MINIMAL.md``, ViT-S/8 on Imagenette at 128 px): projector 2048-2048-16 (BN),
lambda 0.02, 256 slices (the paper's defaults, this class's: lambda 0.05, 1024 slices; 17 knots, t_max 3),
4 views of SimCLR-strength colour with solarize 0.2, AdamW lr 2e-3 with weight decay 0.05, batch 256, 800 epochs.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
from pydantic import Field

from selfsup.losses import lejepa_loss, multiview_invariance, random_slices, sigreg
from selfsup.methods.base import Method, MethodConfig, encode_views, n_global_views
from selfsup.nets import mlp, out_dim


class LeJEPAConfig(MethodConfig):
    name: Literal["lejepa"] = "lejepa"
    projector: str = Field("2048-2048-16", description="projection head widths, hidden-...-output (selfsup.nets.mlp)")
    lambda_: float = Field(0.05, ge=0, le=1, description="SIGReg weight; the prediction loss has 1 - lambda")
    num_slices: int = Field(1024, gt=0, description="random 1-D projections per step")
    knots: int = Field(17, ge=2, description="quadrature points of the Epps-Pulley integral on [0, t_max]")
    t_max: float = Field(3.0, gt=0, description="upper end of the Epps-Pulley integration range [0, t_max]")


class LeJEPA(Method):
    Config = LeJEPAConfig
    default_views = "multicrop"
    accumulation = "exact"  # SIGReg's characteristic function is a batch statistic: gradient caching

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: LeJEPAConfig, epochs: int = 100) -> None:
        super().__init__(backbone, feat_dim, cfg, epochs)
        self.projector = mlp(feat_dim, cfg.projector)
        self.register_buffer("slice_seed", torch.randint(0, 2**62, (), dtype=torch.int64))
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        self._n_global = 2

    def slices(self) -> torch.Tensor:
        """This step's ``[D, num_slices]`` unit directions, the same on every process and on resume."""
        g = torch.Generator().manual_seed(int(self.slice_seed) ^ (int(self.step) * 0x9E3779B97F4A7C15 % 2**62))
        return random_slices(out_dim(self.cfg.projector), self.cfg.num_slices, g, device=self.slice_seed.device)

    def embed(self, views):
        self._n_global = n_global_views(views)
        h = encode_views(self.backbone, views)
        return h[0], [self.projector(x) for x in h]

    def objective(self, z, labels=None):
        g, local = torch.stack(z[:self._n_global]), z[self._n_global:]
        loc = torch.stack(local) if local else None
        slices = self.slices()
        cfg = self.cfg
        loss = lejepa_loss(g, loc, slices, cfg.lambda_, cfg.knots, cfg.t_max)
        with torch.no_grad():
            views = g if loc is None else torch.cat([g, loc])
            reg = sigreg(views, slices, cfg.knots, cfg.t_max)
            inv = multiview_invariance(g, loc)
        return {"loss": loss, "sigreg": reg, "inv": inv}

    @torch.no_grad()
    def after_step(self, progress: float) -> dict[str, float]:
        self.step += 1
        return {}
