"""VICRegL (Bardes, Ponce & LeCun, 2022, "VICRegL: Self-Supervised Learning of Local Visual Features",
NeurIPS): VICReg on global embeddings plus VICReg on matched local embeddings of the feature maps, the local
matches made both by location (the crops' geometry) and by embedding distance (:func:`selfsup.losses.vicregl_loss`).

Geometry. Location matching needs each feature cell's position in the image, so this method cuts its crops
itself: the trainer's views are the two *uncropped* photometric views (the recipes set ``views.kind: byol`` with
``views.params: {scale: [1, 1], ratio: [1, 1], flip_p: 0}``; with cropped views the location matches would be
wrong), and :meth:`make_masks` draws, in the main process from the trainer's per-step generator, each crop's box
(fractions of the image) and flip (:func:`selfsup.views.regions.sample_crops`). Global crop ``i`` is cut from view
``i`` at its full size, local crop ``j`` from view ``j mod 2`` at ``local_size`` of it. A cell's centre maps to
image coordinates through its crop box (:func:`selfsup.losses.cell_centres`). The photometric augmentation is
thus applied before the crop (blur at the full image's scale), a documented difference from the paper's pipeline.

Heads: the global expander on the pooled features (as VICReg) and a local expander applied at every cell of the
feature map (:func:`selfsup.nets.dense.feature_map`). Loss: alpha * global + (1 - alpha) * (location + feature),
top-gamma pairs (20 from a global view, 4 from a local one: the paper; ``matches_by: order`` is the official
code's 20-then-4). ``cov_mean: true`` is the official code's halved covariance (lightly's VICRegLLoss).

Recipe (paper, ResNet-50 on ImageNet, Sec. 4 / App.): alpha 0.75, lambda = mu = 25, nu = 1, gamma 20 / 4, 2 global
crops + 6 local crops of 96/224 px (scale 0.2-1 and 0.05-0.2, lightly's VICRegLTransform); the optimisation is
VICReg's (LARS, lr 0.2 x batch/256, weight decay 1e-6, 10 warm-up epochs; the recipe rows say which value is
cited from where).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
from pydantic import Field

from selfsup.losses import cell_centres, vicregl_loss
from selfsup.methods.base import Method, MethodConfig
from selfsup.nets import mlp
from selfsup.nets.dense import feature_map
from selfsup.views.regions import apply_crops, sample_crops


class VICRegLConfig(MethodConfig):
    name: Literal["vicregl"] = "vicregl"
    projector: str = Field("8192-8192-8192", description="global expander widths, hidden-...-output")
    local_projector: str = Field("512-512-512", description="local expander widths, applied at every feature cell")
    alpha: float = Field(0.75, ge=0, le=1, description="weight of the global loss; (1 - alpha) the local loss")
    lambda_: float = Field(25.0, ge=0, description="invariance coefficient")
    mu: float = Field(25.0, ge=0, description="variance coefficient")
    nu: float = Field(1.0, ge=0, description="covariance coefficient")
    num_matches: tuple[int, int] = Field((20, 4), description="top-gamma pairs kept: from a global view, a local one")
    matches_by: Literal["view", "order"] = Field("view", description="gamma by the searching view's kind (paper) "
                                                 "or 20 then 4 by search order (official code, lightly)")
    cov_mean: bool = Field(False, description="covariance averaged over the two branches (official code, lightly) "
                           "instead of summed (VICReg's loss, as the paper writes it)")
    crop_scale: tuple[float, float] = Field((0.2, 1.0), description="area range of the global crops")
    n_local: int = Field(6, ge=0, description="local crops per image")
    local_scale: tuple[float, float] = Field((0.05, 0.2), description="area range of the local crops")
    local_size: float = Field(96 / 224, gt=0, le=1, description="local crop side, as a fraction of the view side")
    flip_p: float = Field(0.5, ge=0, le=1, description="horizontal flip probability of each crop")


class VICRegL(Method):
    Config = VICRegLConfig
    default_views = "byol"
    no_accumulation_reason = "its variance and covariance are batch statistics of matched local pairs"

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: VICRegLConfig, epochs: int = 100) -> None:
        super().__init__(backbone, feat_dim, cfg, epochs)
        self.projector = mlp(feat_dim, cfg.projector)
        self.local_projector = mlp(feat_dim, cfg.local_projector)

    def make_masks(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """Each image's crops ``[batch, 2 + n_local, 5]`` (globals first; see ``sample_crops``)."""
        c = self.cfg
        g = sample_crops(batch, 2, c.crop_scale, (3 / 4, 4 / 3), c.flip_p, generator)
        if c.n_local == 0:
            return (g,)
        return (torch.cat([g, sample_crops(batch, c.n_local, c.local_scale, (3 / 4, 4 / 3), c.flip_p, generator)], 1),)

    def forward(self, views, progress=0.0, labels=None, masks=None):
        if masks is None:
            raise ValueError("vicregl crops inside the method and needs masks= from make_masks (the trainer passes "
                             "them; in your own loop call method.make_masks(batch, generator) once per step)")
        crops = masks[0]
        size = views[0].shape[-1]
        local = max(1, round(self.cfg.local_size * size))
        z, maps, grids, pooled = [], [], [], None
        for i in range(crops.shape[1]):
            x = apply_crops(views[i % 2], crops[:, i], size if i < 2 else local)
            fmap = feature_map(self.backbone, x)
            b, ch, h, w = fmap.shape
            z.append(self.projector(fmap.mean((2, 3))))
            maps.append(self.local_projector(fmap.flatten(2).transpose(1, 2).reshape(b * h * w, ch)).view(b, h * w, -1))
            grids.append(cell_centres(crops[:, i, :4], crops[:, i, 4] > 0.5, h, w))
            pooled = fmap.mean((2, 3)) if pooled is None else pooled
        c = self.cfg
        loss = vicregl_loss(z, maps, grids, 2, c.alpha, c.lambda_, c.mu, c.nu, tuple(c.num_matches), c.matches_by,
                            c.cov_mean)
        return {"loss": loss, "feats": pooled.detach(), "emb": z[0].detach()}
