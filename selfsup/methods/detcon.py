"""DetCon (Hénaff, Koppula, Alayrac, van den Oord, Vinyals & Carreira, 2021, "Efficient Visual Pretraining with
Contrastive Detection", ICCV), the SimCLR variant DetCon-S: contrast mask-pooled features of unsupervised image
regions across two views and the batch (:func:`selfsup.losses.detcon_loss`, tau 0.1).

Regions. Each image is segmented without labels: ``segmentation: kmeans`` (default, in-repo, deterministic
k-means over colour and position, :func:`selfsup.views.regions.kmeans_regions`) or ``felzenszwalb``
(Felzenszwalb-Huttenlocher via scikit-image, the paper's FH masks; ``pip install 'selfsup[dense]'``). The
trainer hands methods finished views only, so the segmentation runs on the first (uncropped) photometric view:
colour jitter is one transform per image and keeps region boundaries, but a grayscaled view (p 0.2) segments on
intensity only. The paper precomputes masks on the raw image.

Geometry. As VICRegL, the method cuts the crops itself (recipes: ``views.kind: byol`` with ``views.params:
{scale: [1, 1], ratio: [1, 1], flip_p: 0}``), with boxes, flips and the mask draws from :meth:`make_masks` (main
process, the trainer's per-step generator). Each region's one-hot mask is warped by the same crop as its view and
averaged onto the feature grid (soft masks: the fraction of each cell the region covers).

Sampling. ``n_masks`` (16, the paper) region ids per image are drawn with replacement, uniformly among the regions
visible in both views (the same ids in both views; a region absent from the other view has no positive and is
weighted 0, as the official code does with masks missing from a view).

Recipe (paper: ResNet-50, batch 4096, LARS, 1000 epochs, tau 0.1, 16 masks, SimCLR's views): the optimiser is
SimCLR's (LARS lr 0.3 x B/256, as lightly-train's DetConSSGDArgs), the projector 2048-128 lightly-train's
DetConSArgs (SimCLR's head); tests/recipe_rows_dense.py cites each value.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from selfsup.losses import detcon_loss, mask_pool
from selfsup.methods.base import Method, MethodConfig
from selfsup.nets import mlp
from selfsup.nets.dense import feature_map
from selfsup.views.regions import apply_crops, felzenszwalb_regions, kmeans_regions, one_hot_regions, sample_crops


class DetConConfig(MethodConfig):
    name: Literal["detcon"] = "detcon"
    projector: str = Field("4096-128", description="projection MLP widths applied to each mask-pooled feature")
    temperature: float = Field(0.1, gt=0, description="contrastive temperature tau")
    n_masks: int = Field(16, ge=1, description="region ids sampled per image (with replacement)")
    n_regions: int = Field(16, ge=2, description="regions per image from the segmentation")
    segmentation: Literal["kmeans", "felzenszwalb"] = Field("kmeans", description="unsupervised regions: in-repo "
                                                            "k-means over colour + position, or scikit-image's FH")
    position_weight: float = Field(1.0, ge=0, description="k-means: weight of position against colour")
    fh_scale: float = Field(1000.0, gt=0, description="felzenszwalb: scale (larger: bigger regions)")
    crop_scale: tuple[float, float] = Field((0.08, 1.0), description="area range of the two crops")
    flip_p: float = Field(0.5, ge=0, le=1, description="horizontal flip probability of each crop")


class DetCon(Method):
    Config = DetConConfig
    default_views = "byol"
    no_accumulation_reason = "its negatives are every sampled region of the whole batch"

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: DetConConfig, epochs: int = 100) -> None:
        super().__init__(backbone, feat_dim, cfg, epochs)
        self.projector = mlp(feat_dim, cfg.projector)

    def make_masks(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """The two crops ``[batch, 2, 5]`` and the uniforms ``[batch, n_masks]`` that pick each mask's region."""
        crops = sample_crops(batch, 2, self.cfg.crop_scale, (3 / 4, 4 / 3), self.cfg.flip_p, generator)
        return crops, torch.rand(batch, self.cfg.n_masks, generator=generator, dtype=torch.float64)

    def regions(self, image: torch.Tensor) -> torch.Tensor:
        """Region ids ``[B, H, W]`` of (uncropped) images."""
        if self.cfg.segmentation == "felzenszwalb":
            return felzenszwalb_regions(image, self.cfg.n_regions, self.cfg.fh_scale)
        return kmeans_regions(image, self.cfg.n_regions, self.cfg.position_weight)

    def crop_views(self, views, masks) -> list[torch.Tensor]:
        """The two views cut by :meth:`make_masks`' crops (the trainer's views are uncropped)."""
        if masks is None:
            raise ValueError(f"{self.cfg.name} crops and samples regions inside the method and needs masks= from "
                             "make_masks (the trainer passes them; in your own loop call method.make_masks(batch, "
                             "generator))")
        crops, size = masks[0], views[0].shape[-1]
        return [apply_crops(views[i], crops[:, i], size) for i in range(2)]

    @torch.no_grad()
    def sample_regions(self, views, masks, grid: tuple[int, int]) -> tuple[list[torch.Tensor], torch.Tensor,
                                                                            torch.Tensor, torch.Tensor]:
        """Regions of the uncropped ``views[0]``, warped through each view's crop onto the feature ``grid``, and
        the ``n_masks`` sampled per image: ``(soft masks [B, M, h, w] per view, ids [B, M], ids of view 2 (-1 - id
        where the region is absent from it: no positive), regions visible in both views [B])``."""
        crops, u = masks
        size = views[0].shape[-1]
        onehot = one_hot_regions(self.regions(views[0]), self.cfg.n_regions)  # [B, K, H, W]
        # each region's share of every feature cell, through the view's crop
        softs = [F.adaptive_avg_pool2d(apply_crops(onehot, crops[:, i], size), grid) for i in range(2)]
        visible = [s.flatten(2).sum(-1) > 1e-3 * s[0, 0].numel() for s in softs]  # [B, K] each
        both = visible[0] & visible[1]
        choose = torch.where(both.any(1, keepdim=True), both, visible[0])
        order = torch.argsort((~choose).to(torch.int8), dim=1, stable=True)  # candidate ids first
        n = choose.sum(1, keepdim=True).clamp_min(1)
        ids = order.gather(1, (u.to(order.device) * n).long().clamp_max(self.cfg.n_regions - 1))  # [B, M]
        sel = [s.gather(1, ids[:, :, None, None].expand(-1, -1, *s.shape[-2:])) for s in softs]
        ids1 = torch.where(visible[1].gather(1, ids), ids, -1 - ids)  # absent from view 2: no positive
        return sel, ids, ids1, both.sum(1)

    @staticmethod
    def pooled(head: nn.Module, fmap: torch.Tensor, soft: torch.Tensor) -> torch.Tensor:
        """``head`` of each sampled region's mask-pooled feature: ``[B, M, D]``."""
        h = mask_pool(fmap, soft)  # [B, M, C]
        return head(h.flatten(0, 1)).view(h.shape[0], h.shape[1], -1)

    def forward(self, views, progress=0.0, labels=None, masks=None):
        x = self.crop_views(views, masks)
        maps = [feature_map(self.backbone, v) for v in x]
        sel, ids, ids1, both = self.sample_regions(views, masks, maps[0].shape[-2:])
        emb = [self.pooled(self.projector, f, m) for f, m in zip(maps, sel)]
        loss = detcon_loss(emb[0], emb[1], emb[0], emb[1], ids, ids1, self.cfg.temperature)
        return {"loss": loss, "regions_both": both.float().mean().detach(), "feats": maps[0].mean((2, 3)).detach(),
                "emb": emb[0].mean(1).detach()}
