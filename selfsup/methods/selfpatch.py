"""SelfPatch (Yun et al., CVPR 2022): DINO plus patch-level self-distillation for ViTs.

Each patch's positives are the ``k`` (4) of its 8 adjacent patches most similar to it under the teacher
(:func:`selfsup.losses.select_positives`); the teacher's matching-aggregation module
(:class:`selfsup.nets.MatchingAggregation`) summarises them into one token per patch, and the student's
patch token is distilled towards it through a separate DINO head of 4096 prototypes with its own center
(:func:`selfsup.losses.selfpatch_loss`), every crop against itself. DINO's CLS loss runs on the
aggregation module's image summary (a class-attention token over all patches, as the official
``SelfPatchHead``; the backbone's own cls token is not used, and the recipes build the ViT without one).
Total loss: ``L_DINO + 0.1 L_SelfPatch`` (official ``main_selfpatch.py``).

Recipe (official README and ``main_selfpatch.py`` defaults): ViT-S/16, 200 epochs, batch 8 x 128, AdamW
lr 5e-4 x batch/256, 10 warm-up epochs, min lr 1e-6, weight decay 0.04 -> 0.4, clip 3.0, drop path 0.1;
heads 2048-2048-256 with 65536 (CLS) and 4096 (patch) prototypes, weight-normalised last layer frozen in
epoch 1; student temperature 0.1, teacher 0.04 without warm-up, center momentum 0.9, teacher momentum
0.996 -> 1; 2 global crops (scale 0.25-1) and 8 local 96 px crops (0.05-0.25), k = 4.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
from pydantic import Field

from selfsup.losses import all_reduce_sum, dino_loss, select_positives, selfpatch_loss
from selfsup.methods.base import Method, MethodConfig, n_global_views, require_vit
from selfsup.methods.dino import teacher_temperature
from selfsup.nets import EMA, DINOHead, cosine_momentum
from selfsup.nets.class_attention import MatchingAggregation


class SelfPatchConfig(MethodConfig):
    name: Literal["selfpatch"] = "selfpatch"
    head: str = Field("2048-2048-256", description="MLP widths of both DINO heads, ending with the bottleneck")
    out_dim: int = Field(65536, gt=0, description="prototypes of the CLS head (DINO's K)")
    patch_out_dim: int = Field(4096, gt=0, description="prototypes of the patch head (official --out_dim_selfpatch)")
    use_bn_in_head: bool = Field(False, description="BatchNorm in the head MLPs")
    norm_last_layer: bool = Field(True, description="weight-normalised last layers with their norm fixed to 1")
    k: int = Field(4, ge=1, le=8, description="positives per patch among its 8 adjacent patches (official --k_num)")
    wrap: bool = Field(False, description="neighbours wrap around the grid (official get_local_index); false: only "
                                          "adjacent patches, as the paper says")
    aggregation_depth: int = Field(2, ge=1, description="class-attention blocks of the matching-aggregation module")
    patch_weight: float = Field(0.1, ge=0, description="weight of the SelfPatch loss beside DINO's (official 0.1)")
    student_temp: float = Field(0.1, gt=0, description="student softmax temperature")
    warmup_teacher_temp: float = Field(0.04, gt=0, description="teacher temperature at the start")
    teacher_temp: float = Field(0.04, gt=0, description="teacher temperature after the warm-up (CLS and patch)")
    warmup_teacher_temp_epochs: int = Field(0, ge=0, description="epochs of the linear teacher-temperature warm-up")
    center_momentum: float = Field(0.9, ge=0, le=1, description="EMA momentum of both teacher centers")
    tau_base: float = Field(0.996, ge=0, le=1, description="teacher EMA momentum at the start (cosine to 1)")
    freeze_last_layer_epochs: float = Field(1, ge=0, description="epochs during which the last layers are not updated")


class _Heads(nn.Module):
    """The matching-aggregation module and the CLS and patch DINO heads (one EMA copy for the teacher)."""

    def __init__(self, dim: int, num_heads: int, cfg: SelfPatchConfig) -> None:
        super().__init__()
        self.aggregation = MatchingAggregation(dim, num_heads, cfg.aggregation_depth)
        self.cls_head = DINOHead(dim, cfg.out_dim, cfg.head, cfg.use_bn_in_head, cfg.norm_last_layer)
        self.patch_head = DINOHead(dim, cfg.patch_out_dim, cfg.head, cfg.use_bn_in_head, cfg.norm_last_layer)


def _per_token(head: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``head`` on every token of ``[B, N, D]`` as rows (its BatchNorm normalises over all of them)."""
    b, n, d = tokens.shape
    return head(tokens.reshape(b * n, d)).reshape(b, n, -1)


class SelfPatch(Method):
    Config = SelfPatchConfig
    default_views = "multicrop"
    teacher_attr = "teacher"
    accumulation = "plain"  # as DINO: per-row means with the step's centers; the centers move in after_step
    eval_encoder = "teacher"  # DINO's choice, which SelfPatch inherits

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: SelfPatchConfig, epochs: int = 100) -> None:
        super().__init__(backbone, feat_dim, cfg, epochs)
        vit = require_vit(backbone, "selfpatch")
        self.heads = _Heads(vit.embed_dim, vit.blocks[0].attn.num_heads, cfg)
        self.teacher = EMA(nn.Sequential(self.backbone, self.heads))
        self.register_buffer("center", torch.zeros(cfg.out_dim))
        self.register_buffer("patch_center", torch.zeros(cfg.patch_out_dim))
        self._sums: torch.Tensor | None = None  # teacher CLS sum, patch sum and their row counts since the last step

    def _tokens(self, backbone: nn.Module, views: list[torch.Tensor]) -> list[torch.Tensor]:
        """Encoded tokens ``[B, P + N_v, D]`` of each view, one backbone pass per resolution (multi-crop)."""
        out, i = [], 0
        while i < len(views):
            j = i + 1
            while j < len(views) and views[j].shape[-2:] == views[i].shape[-2:]:
                j += 1
            out.extend(backbone.forward_tokens(torch.cat(views[i:j])).chunk(j - i))
            i = j
        return out

    def forward(self, views, progress=0.0, labels=None):
        """``views``: [globals..., locals...]. CLS: every student crop against the teacher's globals (DINO);
        patches: every crop's student patches against the teacher's aggregated positives of the same crop."""
        cfg, n_global = self.cfg, n_global_views(views)
        grids = [self.backbone.grid(tuple(v.shape[-2:])) for v in views]
        tokens = self._tokens(self.backbone, views)
        z = [self.backbone.patches(t) for t in tokens]
        h = self.heads
        s_cls = list(h.cls_head(torch.cat([h.aggregation.summary(t) for t in z])).chunk(len(views)))
        s_patch = [_per_token(h.patch_head, h.aggregation.norm(t)) for t in z]
        with torch.no_grad():
            t_backbone, th = self.teacher.module[0], self.teacher.module[1]
            zt = [t_backbone.patches(t) for t in self._tokens(t_backbone, views)]
            t_cls = list(th.cls_head(torch.cat([th.aggregation.summary(t) for t in zt[:n_global]])).chunk(n_global))
            t_patch = []
            for t, grid in zip(zt, grids):
                idx, ok = select_positives(t, grid, cfg.k, cfg.wrap)
                t_patch.append(_per_token(th.patch_head, th.aggregation.aggregate(t, idx, ok)))
        temp = teacher_temperature(progress * self.epochs, cfg.warmup_teacher_temp, cfg.teacher_temp,
                                   cfg.warmup_teacher_temp_epochs)
        cls_loss = dino_loss(s_cls, t_cls, self.center, cfg.student_temp, temp)
        patch_loss = selfpatch_loss(s_patch, t_patch, self.patch_center, cfg.student_temp, temp)
        if self.training:  # the centers move once per step, in after_step (as DINO)
            c = torch.cat(t_cls).detach().float()
            p = torch.cat([t.detach().float().reshape(-1, t.shape[-1]) for t in t_patch])
            new = torch.cat([c.sum(0), p.sum(0), c.new_tensor([c.shape[0], p.shape[0]])])
            self._sums = new if self._sums is None else self._sums + new
        return {"loss": cls_loss + cfg.patch_weight * patch_loss, "feats": self.backbone.pool(tokens[0]).detach(),
                "emb": s_cls[0].detach(), "cls_loss": cls_loss.detach(), "patch_loss": patch_loss.detach(),
                "teacher_temp": torch.tensor(temp)}

    def on_backward(self, progress: float) -> None:
        """Both heads' prototypes stay fixed during the first ``freeze_last_layer_epochs`` (as DINO)."""
        if progress * self.epochs < self.cfg.freeze_last_layer_epochs - 1e-9:
            for head in (self.heads.cls_head, self.heads.patch_head):
                for p in head.last_layer.parameters():
                    p.grad = None

    @torch.no_grad()
    def after_step(self, progress: float) -> dict[str, float]:
        tau = cosine_momentum(self.cfg.tau_base, progress)
        self.teacher.update(nn.Sequential(self.backbone, self.heads), tau)
        if self._sums is not None:  # DINO's Eq. (4) for both centers, means over the step's global batch
            stats, k = all_reduce_sum(self._sums), self.cfg.out_dim
            c_sum, p_sum, counts = stats[:k], stats[k:-2], stats[-2:]
            m = self.cfg.center_momentum
            self.center.copy_(self.center * m + (1 - m) * (c_sum / counts[0]).to(self.center.dtype))
            self.patch_center.copy_(self.patch_center * m + (1 - m) * (p_sum / counts[1]).to(self.patch_center.dtype))
            self._sums = None
        return {"momentum": tau}
