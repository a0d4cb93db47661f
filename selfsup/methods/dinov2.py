"""DINOv2 (Oquab et al., 2024, "DINOv2: Learning Robust Visual Features without Supervision"): DINO's
CLS loss + iBOT's masked-patch loss + the KoLeo regulariser, with an EMA teacher.

The student sees the global crops with masked patches replaced by the mask token (and the locals
unmasked), the teacher the unmasked global crops (Sec. 4 and ``ssl_meta_arch.py``). The loss is

.. math:: \\mathcal{L} = w_{dino}\\,\\mathcal{L}_{DINO} + w_{ibot}\\,\\mathcal{L}_{iBOT}
          + w_{koleo} \\sum_{g} \\mathcal{L}_{KoLeo}(\\text{student backbone CLS of global crop } g),

- :math:`\\mathcal{L}_{DINO}`: :func:`~selfsup.losses.dino_loss` over every (teacher global, student crop)
  pair of different views (the official global and local terms divided by the number of such pairs);
- :math:`\\mathcal{L}_{iBOT}`: :func:`~selfsup.losses.ibot_patch_loss` on the masked patches of the global
  crops, each image weighted by 1/n_masked, the sum divided by **all** global crops (masked or not);
- KoLeo (:func:`~selfsup.losses.koleo_loss`) on the student's backbone CLS tokens (pre-head, fp32) of each
  global crop separately, per process with no gather, summed over the crops (official ``sum(... for p in
  student_cls_tokens.chunk(2))``), weight 0.1.

By default the patch tokens go through the DINO head (``ibot.separate_head: false``); ``separate_head``
gives them their own DINOHead. Teacher targets: ``centering: centering`` (the default,
``train.centering``) subtracts EMA centers (CLS: :class:`~selfsup.losses.DINOLoss`; patches:
:func:`~selfsup.losses.patch_center_update` over the masked teacher tokens, the exact global mean where
the official code averages per-rank means), ``sinkhorn_knopp`` uses
:func:`~selfsup.losses.sinkhorn_teacher` (3 iterations, max-shifted, all-reduced only under DDP, so neither
dinov2#360 nor #590 applies); both share the teacher temperature. Masks (``collate_data_and_cast``):
``int(mask_probability * n)`` of the ``n`` global crops of the batch, with stratified ratios in
``mask_ratio`` (:func:`~selfsup.views.masks.dinov2_mask`: BEiT blocks of at least 4 patches, at most half
the patches per block).

Recipe defaults (``ssl_default_config.yaml``, which ``vitl16_short.yaml``, the smallest shipped
from-scratch config, uses as it is): heads 3 layers 2048-2048-256 with 65536 prototypes; student
temperature 0.1, teacher 0.04 -> 0.07 over 30 epochs, center momentum 0.9; EMA 0.992 -> 1 (cosine); loss
weights dino 1, ibot 1, koleo 0.1; masks on half the global crops with ratios 0.1-0.5; AdamW (0.9, 0.999),
base lr 0.004 x sqrt(batch/1024), warmup 10 epochs, cosine to 1e-6, weight decay 0.04 -> 0.4, clip 3.0,
last layer frozen for 1 epoch, layer-wise lr decay 0.9, patch-embed lr x 0.2; backbone with LayerScale 1e-5
and uniform drop path 0.3 (registers optional, 4 in Darcet et al., 2024); 2 global crops (224 px, scale
0.32-1) and 8 local ones (96 px, 0.05-0.32); 100 epochs of ``OFFICIAL_EPOCH_LENGTH`` = 1250 iterations.

Where paper and code differ: the paper states no reduction over the two crops for KoLeo and the code
sums; the code's sum is kept (``koleo_loss_weight`` per crop). The teacher runs in eval mode (the official
teacher ViT has no stochastic depth), and the heads see the masked patch tokens only, as the official code.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
from pydantic import Field

from selfsup.losses import DINOLoss, dino_loss, ibot_teacher_probs, patch_center_update, sinkhorn_teacher
from selfsup.methods.base import MethodConfig
from selfsup.methods.dino import teacher_temperature
from selfsup.methods.ibot import IBOT, PatchHeads, global_crops_koleo, masked_vit, patch_loss
from selfsup.nets import EMA, DINOHead
from selfsup.views.masks import dinov2_mask


class DINOv2Config(MethodConfig):
    name: Literal["dinov2"] = "dinov2"
    head: str = Field("2048-2048-256", description="DINO head MLP widths, ending with the bottleneck")
    out_dim: int = Field(65536, gt=0, description="DINO head prototypes")
    separate_head: bool = Field(False, description="patch tokens get their own head (ViT-L/14, g/14 configs)")
    patch_head: str = Field("2048-2048-256", description="the separate iBOT head's widths")
    patch_out_dim: int = Field(65536, gt=0, description="the separate iBOT head's prototypes")
    norm_last_layer: bool = Field(False, description="freeze the prototypes' norms (the official g is trainable)")
    use_bn_in_head: bool = Field(False, description="BatchNorm in the heads' hidden layers (DINOHead use_bn)")
    student_temp: float = Field(0.1, gt=0, description="student softmax temperature")
    warmup_teacher_temp: float = Field(0.04, gt=0, description="teacher temperature at the start")
    teacher_temp: float = Field(0.07, gt=0, description="teacher temperature after the warm-up")
    warmup_teacher_temp_epochs: int = Field(30, ge=0, description="epochs of the linear teacher-temperature warm-up")
    centering: Literal["centering", "sinkhorn_knopp"] = Field("centering", description="teacher targets: DINO's centering or Sinkhorn-Knopp")
    sinkhorn_iters: int = Field(3, ge=1, description="Sinkhorn-Knopp iterations (centering=sinkhorn_knopp)")
    center_momentum: float = Field(0.9, ge=0, le=1, description="CLS and patch centers")
    dino_loss_weight: float = Field(1.0, ge=0, description="weight of the DINO (cls token) loss")
    ibot_loss_weight: float = Field(1.0, ge=0, description="weight of the iBOT (masked patch) loss")
    koleo_loss_weight: float = Field(0.1, ge=0, description="per global crop (the crops' KoLeo terms are summed)")
    tau_base: float = Field(0.992, ge=0, le=1, description="teacher EMA momentum at the start (cosine to tau_final)")
    tau_final: float = Field(1.0, ge=0, le=1, description="teacher EMA momentum at the end (the paper's 1)")
    freeze_last_layer_epochs: float = Field(1, ge=0, description="epochs the last layer of the head(s) gets no gradient")
    n_global: int = Field(2, ge=1, description="global crops (the views masked); must match the views")
    mask_probability: float = Field(0.5, ge=0, le=1, description="fraction of the global crops masked")
    mask_ratio: tuple[float, float] = Field((0.1, 0.5), description="range of the stratified mask ratios")
    min_block_patches: int = Field(4, gt=0, description="smallest mask block (MaskingGenerator min_num_patches)")
    max_block_fraction: float = Field(0.5, gt=0, le=1, description="largest block, a fraction of the patches")


class DINOv2(IBOT):
    Config = DINOv2Config
    no_accumulation_reason = "its centers (or Sinkhorn-Knopp) and KoLeo use the whole batch"
    eval_encoder = "teacher"  # the official evaluations load the teacher's weights
    # eval/linear.py's grid: cls of the last 1 or 4 blocks, with or without the mean patch token
    eval_features = ("cls", "last4_cls", "cls_avg", "last4_cls_avg")

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: DINOv2Config, epochs: int = 100) -> None:
        super(IBOT, self).__init__(masked_vit(backbone, "dinov2"), feat_dim, cfg, epochs)
        cls_head = DINOHead(feat_dim, cfg.out_dim, cfg.head, cfg.use_bn_in_head, cfg.norm_last_layer)
        patch_head = DINOHead(feat_dim, cfg.patch_out_dim, cfg.patch_head, cfg.use_bn_in_head, cfg.norm_last_layer) \
            if cfg.separate_head else None
        self.head = PatchHeads(cls_head, patch_head=patch_head)
        self.teacher = EMA(nn.Sequential(self.backbone, self.head))
        self.criterion = DINOLoss(cfg.out_dim, cfg.student_temp, cfg.center_momentum)
        self.register_buffer("patch_center", torch.zeros(cfg.patch_out_dim if cfg.separate_head else cfg.out_dim))

    def make_masks(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """``n_global`` bool masks ``[batch, N]`` (crop-major) from one :func:`dinov2_mask` over all
        ``n_global * batch`` global crops, as the official collate."""
        cfg, grid = self.cfg, self.backbone.base_grid
        n = grid[0] * grid[1]
        m = dinov2_mask(cfg.n_global * batch, grid, generator, tuple(cfg.mask_ratio), cfg.mask_probability,
                        cfg.min_block_patches, cfg.max_block_fraction).mask
        return tuple(m.view(cfg.n_global, batch, n).unbind(0))

    def _loss(self, e: dict, mask: torch.Tensor, n_views: int, epoch: float) -> dict[str, torch.Tensor]:
        cfg, g = self.cfg, self.cfg.n_global
        temp = teacher_temperature(epoch, cfg.warmup_teacher_temp, cfg.teacher_temp, cfg.warmup_teacher_temp_epochs)
        student = e["cls"].chunk(n_views)
        with torch.no_grad():
            t_patch = e["t_head"].patch(e["t_patches"][mask])  # the masked teacher tokens only
            if cfg.centering == "sinkhorn_knopp":
                q = sinkhorn_teacher(e["t_cls"], temp, cfg.sinkhorn_iters)
                probs = sinkhorn_teacher(t_patch, temp, cfg.sinkhorn_iters)
            else:
                probs = ibot_teacher_probs(t_patch, self.patch_center, temp)
                if self.training:
                    self.patch_center.copy_(patch_center_update(self.patch_center, t_patch, None, cfg.center_momentum))
        if cfg.centering == "sinkhorn_knopp":
            # dino_loss's teacher softmax((t - 0) / 1) of t = log q gives q back
            log_q = q.clamp_min(torch.finfo(q.dtype).tiny).log().chunk(g)
            loss_dino = dino_loss(student, log_q, torch.zeros_like(q[0]), cfg.student_temp, 1.0)
        else:
            loss_dino = self.criterion(student, e["t_cls"].chunk(g), temp)
        loss_ibot = patch_loss(self.head.patch(e["patches"]), probs, mask, cfg.student_temp)
        koleo = global_crops_koleo(e["h"], mask.shape[0], g)
        loss = cfg.dino_loss_weight * loss_dino + cfg.ibot_loss_weight * loss_ibot + cfg.koleo_loss_weight * koleo
        return {"loss": loss, "loss_dino": loss_dino.detach(), "loss_ibot": loss_ibot.detach(),
                "loss_koleo": koleo.detach(), "teacher_temp": torch.tensor(temp)}
