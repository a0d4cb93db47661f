"""DINO (Caron et al., 2021): self-distillation with no labels, a centered and sharpened EMA teacher.

Recipe defaults (paper, ViT-S/16, "boosted" run of the official repository): AdamW, base lr
5e-4 x batch/256 with 10 warmup epochs then cosine to 1e-6, weight decay 0.04 -> 0.4 (cosine),
batch 1024, 300 epochs, gradient clipping 3.0; head 2048-2048-256 -> K = 65536 prototypes,
last layer frozen during the first epoch; student temperature 0.1, teacher temperature 0.04 ->
0.07 (linear over 30 epochs), center momentum 0.9, teacher momentum 0.996 -> 1 (cosine);
multi-crop with 2 global (224 px, scale 0.4-1) and 8 local crops (96 px, scale 0.05-0.4), the
teacher seeing the global crops only.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn as nn
from pydantic import Field

from selfsup.losses import DINOLoss, all_reduce_sum, dino_loss
from selfsup.methods.base import Method, MethodConfig, encode_views, n_global_views
from selfsup.nets import EMA, DINOHead, cosine_momentum


class DINOConfig(MethodConfig):
    name: Literal["dino"] = "dino"
    head: str = Field("2048-2048-256", description="head MLP widths, ending with the bottleneck")
    out_dim: int = Field(65536, gt=0, description="number of prototypes K")
    use_bn_in_head: bool = Field(False, description="BatchNorm in the head MLP")
    norm_last_layer: bool = Field(True, description="weight-normalised last layer with its norm fixed to 1")
    student_temp: float = Field(0.1, gt=0, description="student softmax temperature")
    warmup_teacher_temp: float = Field(0.04, gt=0, description="teacher temperature at the start")
    teacher_temp: float = Field(0.07, gt=0, description="teacher temperature after the warm-up")
    warmup_teacher_temp_epochs: int = Field(30, ge=0, description="epochs of the linear teacher-temperature warm-up")
    center_momentum: float = Field(0.9, ge=0, le=1, description="EMA momentum of the teacher center")
    tau_base: float = Field(0.996, ge=0, le=1, description="teacher EMA momentum at the start (cosine to 1)")
    freeze_last_layer_epochs: float = Field(1, ge=0, description="epochs during which the last layer is not updated")


def teacher_temperature(epoch: float, warmup_temp: float, temp: float, warmup_epochs: int) -> float:
    """DINO's teacher temperature: per epoch, linear from ``warmup_temp`` (epoch 0) to ``temp`` (epoch
    ``warmup_epochs - 1``, as ``np.linspace`` in the official code), then constant."""
    e = math.floor(epoch + 1e-9)
    if e >= warmup_epochs:
        return temp
    if warmup_epochs == 1:
        return warmup_temp
    return warmup_temp + (temp - warmup_temp) * e / (warmup_epochs - 1)


class DINO(Method):
    Config = DINOConfig
    default_views = "multicrop"
    teacher_attr = "teacher"
    accumulation = "plain"  # a mean of per-image cross-entropies with the step's center; the center moves in after_step
    eval_encoder = "teacher"  # Sec. 5.2 (Fig. 6: the teacher outperforms the student); eval_linear.py --checkpoint_key teacher

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: DINOConfig, epochs: int = 100) -> None:
        super().__init__(backbone, feat_dim, cfg, epochs)
        self.head = DINOHead(feat_dim, cfg.out_dim, cfg.head, cfg.use_bn_in_head, cfg.norm_last_layer)
        self.teacher = EMA(nn.Sequential(self.backbone, self.head))
        self.criterion = DINOLoss(cfg.out_dim, cfg.student_temp, cfg.center_momentum)  # holds the center buffer
        self._teacher_sum: torch.Tensor | None = None  # teacher outputs summed since the last step, and their count
        self._teacher_rows = 0

    def forward(self, views, progress=0.0, labels=None):
        """``views`` are [globals..., locals...]; the globals are the leading views at the first view's
        resolution. The teacher sees the globals, the student every view."""
        n_global = n_global_views(views)
        h = encode_views(self.backbone, views)
        y = self.head.bottleneck(torch.cat(h))  # one head pass over all crops, as DINO
        student = self.head.last_layer(y).chunk(len(views))
        with torch.no_grad():
            teacher = encode_views(self.teacher, views[:n_global])
        temp = teacher_temperature(progress * self.epochs, self.cfg.warmup_teacher_temp, self.cfg.teacher_temp,
                                   self.cfg.warmup_teacher_temp_epochs)
        loss = dino_loss(student, teacher, self.criterion.center, self.cfg.student_temp, temp)
        if self.training:  # the center moves once per step, in after_step (so K accumulated micro-batches share it)
            t = torch.cat(teacher).detach().to(self.criterion.center.dtype)
            self._teacher_sum = (self._teacher_sum if self._teacher_sum is not None else 0) + t.sum(0)
            self._teacher_rows += t.shape[0]
        return {"loss": loss, "feats": h[0].detach(), "emb": y[: len(h[0])].detach(),  # view 0's bottleneck
                "teacher_temp": torch.tensor(temp)}

    def on_backward(self, progress: float) -> None:
        """Keep the prototypes fixed during the first ``freeze_last_layer_epochs``: their gradients
        are dropped (set to None, so neither the step, momentum nor weight decay moves them)."""
        if progress * self.epochs < self.cfg.freeze_last_layer_epochs - 1e-9:
            for p in self.head.last_layer.parameters():
                p.grad = None

    @torch.no_grad()
    def after_step(self, progress: float) -> dict[str, float]:
        tau = cosine_momentum(self.cfg.tau_base, progress)
        self.teacher.update(nn.Sequential(self.backbone, self.head), tau)
        if self._teacher_sum is not None:  # Eq. (4) with the mean over the step's global batch
            stats = all_reduce_sum(torch.cat([self._teacher_sum, self._teacher_sum.new_tensor([self._teacher_rows])]))
            c, m = self.criterion.center, self.cfg.center_momentum
            c.copy_(c * m + (1 - m) * (stats[:-1] / stats[-1]).to(c.dtype))
            self._teacher_sum, self._teacher_rows = None, 0
        return {"momentum": tau}
