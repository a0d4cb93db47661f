"""DetCon-B (Hénaff, Koppula, Alayrac, van den Oord, Vinyals & Carreira, 2021, "Efficient Visual Pretraining with
Contrastive Detection", ICCV), the BYOL variant of DetCon: an online network (backbone, projector, predictor) and
an EMA target network (backbone, projector), both mask-pooling the same sampled regions of the two views; the
online *predictions* of each region are contrasted against the target *projections* of the same region in the
other view, with every other sampled region of the (global) batch's target projections as negatives
(:func:`selfsup.losses.detcon_loss` with ``target = the target network's projections``, tau 0.1; the official
``byol_nce_detcon``). Unlike BYOL, the objective is contrastive, not a regression.

Everything but the networks is DetCon-S's (:class:`~selfsup.methods.detcon.DetCon`): the unsupervised regions
(k-means or Felzenszwalb), the crops the method cuts itself from :meth:`make_masks` (main process, the trainer's
per-step generator), the warping of each region through its view's crop onto the feature grid, and the sampling
of ``n_masks`` region ids per image. The target network sees the same cropped views and the same soft masks. The
target is BYOL's (:class:`~selfsup.nets.EMA` of ``Sequential(backbone, projector)``, momentum ``tau_base`` rising
to 1 with BYOL's cosine, :func:`~selfsup.nets.cosine_momentum`); the projector and predictor are BYOL's MLPs.

Recipe (official DetCon-B code, google-deepmind/detcon ``detcon_b_config.py``): ResNet-50, batch 4096, LARS base lr
0.2 x B/256, weight decay 1.5e-6, eta 1e-3, 10 warm-up epochs, projector and predictor 4096-256, target EMA 0.996,
tau 0.1, 16 FH masks per image (``detcon_b.py``), 1000 epochs (``main_loop.py``'s ``pretrain_epochs`` default),
crop area 0.08-1 and flip 0.5 (``utils/tf_image_ops.py``); tests/recipe_rows_dense.py cites each value.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
from pydantic import Field

from selfsup.losses import detcon_loss
from selfsup.methods.detcon import DetCon, DetConConfig
from selfsup.nets import EMA, cosine_momentum, mlp, out_dim
from selfsup.nets.dense import feature_map


class DetConBConfig(DetConConfig):
    name: Literal["detcon_b"] = "detcon_b"  # type: ignore[assignment]
    projector: str = Field("4096-256", description="projection MLP widths applied to each mask-pooled feature "
                           "(online and target)")
    predictor: str = Field("4096-256", description="online predictor MLP widths on each region's projection")
    tau_base: float = Field(0.996, ge=0, le=1, description="EMA momentum of the target at the start, cosine to 1 "
                            "(BYOL's schedule)")


class DetConB(DetCon):
    Config = DetConBConfig
    teacher_attr = "teacher"  # eval.encoder=teacher: the target; the default evaluates the online backbone, as BYOL
    no_accumulation_reason = "its negatives are every sampled region of the whole batch's target projections"

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: DetConBConfig, epochs: int = 100) -> None:
        super().__init__(backbone, feat_dim, cfg, epochs)
        self.predictor = mlp(out_dim(cfg.projector), cfg.predictor)
        self.teacher = EMA(nn.Sequential(self.backbone, self.projector))  # the target has no predictor

    def forward(self, views, progress=0.0, labels=None, masks=None):
        x = self.crop_views(views, masks)
        maps = [feature_map(self.backbone, v) for v in x]
        sel, ids, ids1, both = self.sample_regions(views, masks, maps[0].shape[-2:])
        z = [self.pooled(self.projector, f, m) for f, m in zip(maps, sel)]
        p = [self.predictor(v.flatten(0, 1)).view(v.shape[0], v.shape[1], -1) for v in z]
        with torch.no_grad():
            t_backbone, t_projector = self.teacher.module
            t = [self.pooled(t_projector, feature_map(t_backbone, v), m) for v, m in zip(x, sel)]
        loss = detcon_loss(p[0], p[1], t[0], t[1], ids, ids1, self.cfg.temperature)
        return {"loss": loss, "regions_both": both.float().mean().detach(), "feats": maps[0].mean((2, 3)).detach(),
                "emb": p[0].mean(1).detach()}

    @torch.no_grad()
    def after_step(self, progress: float) -> dict[str, float]:
        tau = cosine_momentum(self.cfg.tau_base, progress)
        self.teacher.update(nn.Sequential(self.backbone, self.projector), tau)
        return {"momentum": tau}
