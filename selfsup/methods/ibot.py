"""iBOT (Zhou et al., 2022, "iBOT: Image BERT Pre-Training with Online Tokenizer"): DINO's cross-view
CLS distillation plus masked-patch self-distillation on the same view, with an EMA teacher as the
online tokenizer.

Each global crop is shown to the student with some patches replaced by the mask token
(``MaskedViT.mask(..., mode="replace")``) and to the teacher unmasked. The loss (Sec. 3.2, Eq. (2)) is

- :math:`\\mathcal{L}_{[CLS]}`: :func:`~selfsup.losses.dino_loss` between the teacher's global crop ``q``
  and every student crop ``v != q`` (the masked globals and the unmasked locals), with its own center;
- :math:`\\mathcal{L}_{MIM}`: :func:`~selfsup.losses.ibot_patch_loss` between the student's masked patch
  tokens of crop ``q`` and the teacher's patch tokens of the same crop ``q``, each image averaged over its
  masked patches, then over all global crops of the batch (images without a mask count as 0, as the
  official ``clamp(min=1)``), with a separate patch center (:func:`~selfsup.losses.patch_center_update`
  over every teacher patch token, as ``update_center``) and a separate teacher temperature;

weighted ``lambda1 * L_cls + lambda2 * L_mim``. The projection MLP is shared by CLS and patch tokens
(as the official ``iBOTHead``); ``shared_head`` also shares the prototypes (the last layer).

Masks (official ``ImageFolderMask``): every global crop of every image draws its ratio from
``pred_ratio`` +- ``pred_ratio_var`` (one entry chosen uniformly: 0, or U(0.1, 0.5), each with p 0.5),
then BEiT blocks (:func:`~selfsup.views.masks.blockwise_mask`, aspect 0.3-1/0.3) of at least
``(min(h, w) // 3) ** 2`` patches (16 on a 14x14 grid) until ``int(ratio * N)`` patches are masked (the
official loop can stop short; the masks here are topped up to the count). Local crops are not masked.

Recipe defaults (ViT-S/16 command of the official README; Sec. 4 and App. A of the paper): AdamW, lr
5e-4 x batch/256 (batch 1024 = 16 GPUs x 64), 10 warmup epochs, cosine to 1e-6, weight decay 0.04 -> 0.4,
clip 3.0, 800 epochs, drop path 0.1 (linear ramp), head 2048-2048-256 with 8192 prototypes, shared head,
``norm_last_layer`` false, last layer frozen in epoch 1; student temperature 0.1, teacher 0.04 -> 0.07
over 30 epochs for CLS and for patches; centers' momentum 0.9; EMA 0.996 -> 1 (cosine); lambda1 =
lambda2 = 1; multi-crop with 2 global crops (224 px, scale 0.25-1) and 10 local ones (96 px, 0.05-0.25).

Paper vs code: the official argparse defaults are ``--teacher_temp 0.04`` (the README's ViT-S command
sets 0.07, which is the default here) and ``--shared_head false`` (the default here is the README's
``true``; ``shared_head: false`` gives the code's separate patch prototypes, ``patch_out_dim``).
Two departures from the official code, neither changing the loss without BatchNorm in the head: the
teacher's backbone runs in eval mode (the official teacher is a ViT built without stochastic depth), and
the student's head is applied to its masked patch tokens only (the others have zero weight in the loss).
With ``use_bn_in_head`` the head's batch statistics are grouped differently (not measured): here the
CLS head normalises the pooled tokens of every student crop together (globals and locals, as DINO) and
the teacher's pooled tokens alone, the patch path the masked student tokens / all teacher patch tokens;
the official ``iBOTHead`` normalises each forward's CLS and patch tokens jointly, with the student's local
crops in a forward of their own.

On ``ibot_digits`` with the paper-like crops the CLS term collapsed to ln K with no code bug behind it: the tiny
ViT's targets followed the crop more than the digit, and two uncropped views cure it (the recipe's yaml header
has the measurements and the earlier bisection against ``dinov2_digits``).
``koleo_loss_weight`` (beyond the paper; default 0, which computes nothing) adds DINOv2's KoLeo term on the
student's backbone CLS of each global crop (:func:`global_crops_koleo`).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
from pydantic import Field

from selfsup.losses import DINOLoss, ibot_patch_loss, ibot_teacher_probs, koleo_loss, patch_center_update
from selfsup.methods.base import Method, MethodConfig, encode_views, fresh_generator, n_global_views, require_vit
from selfsup.methods.dino import teacher_temperature
from selfsup.nets import EMA, DINOHead, cosine_momentum
from selfsup.nets.vit import MaskedViT
from selfsup.views.masks import blockwise_mask


class IBOTConfig(MethodConfig):
    name: Literal["ibot"] = "ibot"
    head: str = Field("2048-2048-256", description="head MLP widths, ending with the bottleneck")
    out_dim: int = Field(8192, gt=0, description="CLS prototypes K")
    shared_head: bool = Field(True, description="patch tokens share the CLS prototypes (README ViT-S; code default false)")
    patch_out_dim: int | None = Field(None, gt=0, description="patch prototypes without shared_head; null: out_dim")
    norm_last_layer: bool = Field(True, description="weight-normalised last layer with its norm fixed to 1")
    use_bn_in_head: bool = Field(False, description="BatchNorm in the head's hidden layers (official --use_bn_in_head)")
    student_temp: float = Field(0.1, gt=0, description="student softmax temperature")
    warmup_teacher_temp: float = Field(0.04, gt=0, description="teacher temperature (cls) at the start")
    teacher_temp: float = Field(0.07, gt=0, description="CLS teacher temperature after warmup")
    warmup_teacher_patch_temp: float = Field(0.04, gt=0, description="teacher temperature (patches) at the start")
    teacher_patch_temp: float = Field(0.07, gt=0, description="patch teacher temperature after warmup")
    warmup_teacher_temp_epochs: int = Field(30, ge=0, description="epochs of the linear teacher-temperature warm-up")
    center_momentum: float = Field(0.9, ge=0, le=1, description="EMA momentum of the cls center")
    patch_center_momentum: float = Field(0.9, ge=0, le=1, description="EMA momentum of the patch center")
    lambda1: float = Field(1.0, ge=0, description="weight of the CLS loss")
    lambda2: float = Field(1.0, ge=0, description="weight of the masked-patch loss")
    tau_base: float = Field(0.996, ge=0, le=1, description="teacher EMA momentum at the start (cosine to tau_final)")
    tau_final: float = Field(1.0, ge=0, le=1, description="teacher EMA momentum at the end (the paper's 1)")
    freeze_last_layer_epochs: float = Field(1, ge=0, description="epochs the last layer of the head(s) gets no gradient")
    n_global: int = Field(2, ge=1, description="global crops (the views masked); must match the views")
    pred_ratio: tuple[float, ...] = Field((0.0, 0.3), min_length=1, description="mask ratio centres, one chosen per crop")
    pred_ratio_var: tuple[float, ...] = Field((0.0, 0.2), min_length=1, description="+- half-widths of pred_ratio")
    pred_aspect_ratio: tuple[float, float] = Field((0.3, 1 / 0.3), description="aspect-ratio range of the blockwise masks")
    min_block_patches: int | None = Field(None, gt=0, description="smallest block; null: (min(h, w) // 3) ** 2")
    koleo_loss_weight: float = Field(0.0, ge=0, description="DINOv2's KoLeo on the student backbone CLS of each global "
                                                            "crop, summed over crops (not in iBOT; 0: off, the paper)")


def masked_vit(backbone: nn.Module, method: str) -> MaskedViT:
    """``backbone`` if it is a :class:`MaskedViT` (with a mask token added), else a one-line ValueError."""
    vit = require_vit(backbone, method)
    vit.add_mask_token()
    return vit


def prototypes(dim: int, k: int, norm_last_layer: bool) -> nn.Module:
    """A weight-normalised ``dim -> k`` prototype layer, initialised as :class:`DINOHead`'s last layer."""
    return DINOHead(dim, k, str(dim), norm_last_layer=norm_last_layer).last_layer


class PatchHeads(nn.Module):
    """The CLS head (a :class:`DINOHead`) and the patch tokens' head: the same MLP with the same or own
    prototypes (iBOT: ``patch_last_layer``), or a whole separate DINOHead (DINOv2's ``separate_head``)."""

    def __init__(self, cls_head: DINOHead, patch_last_layer: nn.Module | None = None,
                 patch_head: DINOHead | None = None) -> None:
        super().__init__()
        self.cls_head = cls_head
        self.patch_last_layer = patch_last_layer
        self.patch_head = patch_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cls_head(x)

    def patch(self, x: torch.Tensor) -> torch.Tensor:
        """Prototype logits of patch tokens ``[..., D]`` (flattened to rows, so that a head with BatchNorm
        normalises over images and tokens together, as the official ``CustomSequential``)."""
        rows = x.reshape(-1, x.shape[-1])
        if self.patch_head is not None:
            out = self.patch_head(rows)
        else:
            last = self.patch_last_layer if self.patch_last_layer is not None else self.cls_head.last_layer
            out = last(self.cls_head.bottleneck(rows))
        return out.reshape(*x.shape[:-1], out.shape[-1])


def pack_masked(flat: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Rows ``flat [M, K]`` of the masked tokens (``x[mask]`` order) -> ``[B', m, K]`` for the ``B'`` images
    with a masked patch (``m`` = their largest count, zero-padded), the ``[B', m]`` validity mask and ``B'``."""
    counts = mask.sum(1)
    rows = counts[counts > 0]
    m = int(rows.max()) if rows.numel() else 0
    valid = torch.arange(m, device=mask.device) < rows[:, None]
    out = flat.new_zeros(rows.numel(), m, flat.shape[-1])
    return out.index_put(valid.nonzero(as_tuple=True), flat), valid, rows.numel()


def patch_loss(student_flat: torch.Tensor, teacher_probs: torch.Tensor, mask: torch.Tensor,
               student_temp: float) -> torch.Tensor:
    """:func:`ibot_patch_loss` over all ``B = mask.shape[0]`` images from the masked tokens only: each masked
    image's mean cross-entropy over its masked patches, summed and divided by ``B`` (DINOv2's
    ``-sum(masks_weight * ce) / B``)."""
    s, valid, n = pack_masked(student_flat, mask)
    if n == 0:
        return student_flat.sum() * 0.0  # keeps every head parameter in the graph (DDP)
    t = pack_masked(teacher_probs, mask)[0]
    return ibot_patch_loss(s, t, valid, student_temp) * (n / mask.shape[0])


def global_crops_koleo(h: torch.Tensor, n_rows: int, n_global: int) -> torch.Tensor:
    """DINOv2's KoLeo term: :func:`koleo_loss` on the first ``n_rows`` rows of ``h`` (the student backbone CLS
    of the global crops, crop-major), once per crop and summed over the ``n_global`` crops (``ssl_meta_arch.py``'s
    ``sum(... for p in student_cls_tokens.chunk(2))``), per process."""
    return sum(koleo_loss(c) for c in h[:n_rows].chunk(n_global))


class IBOT(Method):
    Config = IBOTConfig
    no_accumulation_reason = "its centers move inside forward"
    default_views = "multicrop"
    teacher_attr = "teacher"
    eval_encoder = "teacher"  # the official evaluation loads --checkpoint_key teacher

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: IBOTConfig, epochs: int = 100) -> None:
        super().__init__(masked_vit(backbone, "ibot"), feat_dim, cfg, epochs)
        self.head = self._heads(cfg)
        self.teacher = EMA(nn.Sequential(self.backbone, self.head))
        self.criterion = DINOLoss(cfg.out_dim, cfg.student_temp, cfg.center_momentum)
        self.register_buffer("patch_center", torch.zeros(self._patch_dim(cfg)))

    def _patch_dim(self, cfg: IBOTConfig) -> int:
        return cfg.out_dim if cfg.shared_head else (cfg.patch_out_dim or cfg.out_dim)

    def _heads(self, cfg: IBOTConfig) -> PatchHeads:
        if cfg.shared_head and cfg.patch_out_dim not in (None, cfg.out_dim):
            raise ValueError(f"ibot: shared_head uses the CLS prototypes for patches; patch_out_dim "
                             f"{cfg.patch_out_dim} != out_dim {cfg.out_dim} needs shared_head=false")
        cls_head = DINOHead(self.feat_dim, cfg.out_dim, cfg.head, cfg.use_bn_in_head, cfg.norm_last_layer)
        if cfg.shared_head:
            return PatchHeads(cls_head)
        bottleneck = int(cfg.head.split("-")[-1])
        return PatchHeads(cls_head, prototypes(bottleneck, self._patch_dim(cfg), cfg.norm_last_layer))

    def train(self, mode: bool = True) -> IBOT:
        """The teacher's backbone stays in eval mode (no stochastic depth, as the official teacher ViT); its head
        follows ``mode``, so a head with BatchNorm normalises by batch statistics, as the official teacher."""
        super().train(mode)
        self.teacher.module[0].eval()
        return self

    # ------------------------------------------------------------------ masks

    def _min_block(self, grid: tuple[int, int]) -> int:
        return self.cfg.min_block_patches or max(1, (min(grid) // 3) ** 2)

    def make_masks(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """``n_global`` bool masks ``[batch, N]`` (crop-major): per crop and image a ratio from ``pred_ratio``
        +- ``pred_ratio_var``, then BEiT blocks of ``int(ratio * N)`` patches."""
        cfg, grid = self.cfg, self.backbone.base_grid
        if len(cfg.pred_ratio) != len(cfg.pred_ratio_var):
            raise ValueError(f"ibot: pred_ratio {cfg.pred_ratio} and pred_ratio_var {cfg.pred_ratio_var} differ in length")
        n, total = grid[0] * grid[1], cfg.n_global * batch
        centre, half = (torch.tensor(v, dtype=torch.float64) for v in (cfg.pred_ratio, cfg.pred_ratio_var))
        u = torch.rand(total, 2, generator=generator, dtype=torch.float64)
        pick = (u[:, 0] * len(centre)).long().clamp(max=len(centre) - 1)
        ratio = (centre[pick] - half[pick] + 2 * half[pick] * u[:, 1]).clamp(0, 1)
        rows = [blockwise_mask(1, grid, int(r * n), generator, self._min_block(grid), cfg.pred_aspect_ratio).mask
                for r in ratio.tolist()]
        return tuple(torch.cat(rows).view(cfg.n_global, batch, n).unbind(0))

    # ------------------------------------------------------------------ forward

    def _masks(self, views: list[torch.Tensor], masks: tuple[torch.Tensor, ...] | None) -> torch.Tensor:
        n_global = n_global_views(views)
        if n_global != self.cfg.n_global:
            raise ValueError(f"{self.cfg.name}: {n_global} global crops, but method.n_global={self.cfg.n_global}")
        if masks is None:
            masks = self.make_masks(views[0].shape[0], fresh_generator())
        if len(masks) != n_global:
            raise ValueError(f"{self.cfg.name}: {len(masks)} masks for {n_global} global crops")
        return torch.cat([m.to(views[0].device, torch.bool) for m in masks])

    def _encode(self, views: list[torch.Tensor], mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Student (masked globals and locals) and teacher (unmasked globals) outputs before the loss."""
        g, bb = self.cfg.n_global, self.backbone
        glob = torch.cat(views[:g])
        tokens = bb.encode(bb.mask(bb.embed(glob), mask, "replace"))
        h = torch.cat([bb.pool(tokens), *encode_views(bb, views[g:])])  # backbone CLS of every crop
        y = self.head.cls_head.bottleneck(h)
        t_bb, t_head = self.teacher.module
        with torch.no_grad():
            t_tokens = t_bb.forward_tokens(glob)
        return {"h": h, "y": y, "cls": self.head.cls_head.last_layer(y), "patches": bb.patches(tokens)[mask],
                "t_cls": t_head(t_bb.pool(t_tokens)), "t_patches": t_bb.patches(t_tokens), "t_head": t_head}

    def forward(self, views, progress=0.0, labels=None, masks=None):
        """``views`` are [globals..., locals...]; ``masks`` one bool ``[B, N]`` per global crop (True = masked)."""
        mask = self._masks(views, masks)
        e = self._encode(views, mask)
        out = self._loss(e, mask, len(views), progress * self.epochs)
        b = views[0].shape[0]
        out.update(feats=e["h"][:b].detach(), emb=e["y"][:b].detach(), masked_ratio=mask.float().mean())
        return out

    def _loss(self, e: dict, mask: torch.Tensor, n_views: int, epoch: float) -> dict[str, torch.Tensor]:
        cfg = self.cfg
        t_cls = teacher_temperature(epoch, cfg.warmup_teacher_temp, cfg.teacher_temp, cfg.warmup_teacher_temp_epochs)
        t_patch = teacher_temperature(epoch, cfg.warmup_teacher_patch_temp, cfg.teacher_patch_temp,
                                      cfg.warmup_teacher_temp_epochs)
        loss_cls = self.criterion(e["cls"].chunk(n_views), e["t_cls"].chunk(cfg.n_global), t_cls)
        with torch.no_grad():
            t_logits = e["t_head"].patch(e["t_patches"])  # every patch token: the center sees them all
            probs = ibot_teacher_probs(t_logits[mask], self.patch_center, t_patch)
            if self.training:
                self.patch_center.copy_(patch_center_update(self.patch_center, t_logits, None, cfg.patch_center_momentum))
        loss_mim = patch_loss(self.head.patch(e["patches"]), probs, mask, cfg.student_temp)
        loss = cfg.lambda1 * loss_cls + cfg.lambda2 * loss_mim
        out = {"loss_cls": loss_cls.detach(), "loss_mim": loss_mim.detach(),
               "teacher_temp": torch.tensor(t_cls), "teacher_patch_temp": torch.tensor(t_patch)}
        if cfg.koleo_loss_weight > 0:  # beyond the paper (DINOv2's term); 0 computes nothing: iBOT's loss exactly
            koleo = global_crops_koleo(e["h"], mask.shape[0], cfg.n_global)
            loss = loss + cfg.koleo_loss_weight * koleo
            out["loss_koleo"] = koleo.detach()
        return {"loss": loss, **out}

    def on_backward(self, progress: float) -> None:
        """Every prototype layer (``*last_layer*``) stays fixed during the first ``freeze_last_layer_epochs``."""
        if progress * self.epochs < self.cfg.freeze_last_layer_epochs - 1e-9:
            for name, p in self.head.named_parameters():
                if "last_layer" in name:
                    p.grad = None

    @torch.no_grad()
    def after_step(self, progress: float) -> dict[str, float]:
        tau = cosine_momentum(self.cfg.tau_base, progress, self.cfg.tau_final)
        self.teacher.update(nn.Sequential(self.backbone, self.head), tau)
        return {"momentum": tau}
