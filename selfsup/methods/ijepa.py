r"""I-JEPA (Assran et al., 2023): predict the representations of masked image blocks from one context block.

Masks (:func:`selfsup.views.masks.multiblock_mask`, drawn per step by the trainer): ``n_targets`` (4) target
blocks of scale 0.15-0.2 and aspect ratio 0.75-1.5, and one context block of scale 0.85-1.0 (aspect 1) from
which the targets are removed; every mask of a batch is cut to the batch minimum so tensors stay
rectangular. :meth:`IJEPA.make_masks` returns them as bool ``[batch, N]`` masks: first the context mask
(True = **not** in the context), then one mask per target block (True = in the block).

- The **context encoder** (the backbone, a :class:`selfsup.nets.vit.MaskedViT` without cls token: recipe
  ``model.vit.class_token: false, pool: avg, pos_embed: sincos``) sees the context patches only
  (``mask(..., mode="keep")``); no mask token enters the encoder.
- The **target encoder** (``teacher``, a deep copy updated by EMA) sees the full image; its output is
  LayerNorm'd over D without affine parameters (``F.layer_norm``, as ``src/train.py``), then the target blocks
  are gathered.
- The **predictor** (:class:`IJEPAPredictor`, a narrow ViT: ``predictor_embed`` D -> ``predictor_dim``, fixed
  2-D sin-cos positions of the predictor width, ``predictor_depth`` timm blocks, LayerNorm, ``predictor_proj``
  back to D) predicts each target block separately: the context is repeated once per block and the block's
  mask tokens (one shared learned token plus the block's positions) are appended.

Loss (paper vs official code): the paper (Sec. 3, Eq. 1) writes the L2 distance,
:math:`\frac1M \sum_{i=1}^M \sum_{j \in B_i} \lVert \hat s_{y_j} - s_{y_j} \rVert_2^2`; the official
``src/train.py`` uses ``F.smooth_l1_loss(z, h)`` (beta 1, mean over every element). The default here is the
code's ``loss: smooth_l1``, as the project's issue for this method asks; ``loss: l2`` is the paper's Eq. 1 as
written (squared distance summed over D and over the patches of each block, averaged over the blocks and
the batch). Adam(W) is nearly invariant to the loss scale, so the two differ in shape (quadratic vs Huber),
not in their effective learning rate.

EMA: the target encoder's momentum goes **linearly** per step from ``tau_base`` 0.996 to ``tau_end`` 1.0
(the code's ``momentum_scheduler``; ``ipe_scale`` 1.0 in every released config).

Recipe defaults (official ``configs/in1k_vith14_ep300.yaml``, paper Sec. 4 and App. A): ViT-H/14 at 224 px,
predictor depth 12 and width 384 (heads: the encoder's, as ``vit_predictor(num_heads=encoder.num_heads)``),
AdamW, lr 2e-4 -> 1e-3 linear warmup over 40 epochs then cosine to 1e-6, weight decay 0.04 -> 0.4 (cosine),
batch 2048 (128 x 16 GPUs), 300 epochs, bf16; views RandomResizedCrop(0.3, 1.0) only (no flip, no colour).
selfsup's warmup starts at 0, not 2e-4 (said in ``ijepa.yaml``).

Evaluation: the probes average-pool the **target encoder** (``eval_encoder = "teacher"``): probes of the
context encoder are about as good as random init (ijepa#55); the paper evaluates the target encoder.
"""

from __future__ import annotations

import math
from functools import partial
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from selfsup.methods.base import Method, MethodConfig, fresh_generator, require_vit
from selfsup.nets import EMA
from selfsup.nets.vit import MaskedViT, sincos_2d
from selfsup.views.masks import mask_indices, multiblock_mask


class IJEPAConfig(MethodConfig):
    name: Literal["ijepa"] = "ijepa"
    n_targets: int = Field(4, ge=1, description="target blocks per image (num_pred_masks)")
    target_scale: tuple[float, float] = Field((0.15, 0.2), description="target block area, fraction of the image")
    target_aspect: tuple[float, float] = Field((0.75, 1.5), description="target block aspect ratio h / w")
    context_scale: tuple[float, float] = Field((0.85, 1.0), description="context block area before the targets "
                                               "are removed")
    context_aspect: tuple[float, float] = Field((1.0, 1.0), description="context block aspect ratio (1: square)")
    min_keep: int = Field(10, ge=1, description="fewest context patches a context draw may leave")
    predictor_dim: int = Field(384, gt=0, description="predictor token width (pred_emb_dim)")
    predictor_depth: int = Field(12, ge=1, description="predictor transformer blocks (pred_depth)")
    predictor_heads: int | None = Field(None, gt=0, description="predictor attention heads; null: the encoder's")
    tau_base: float = Field(0.996, ge=0, le=1, description="target-encoder EMA momentum at the start (linear to "
                            "tau_end)")
    tau_end: float = Field(1.0, ge=0, le=1, description="target-encoder EMA momentum at the end")
    loss: Literal["smooth_l1", "l2"] = Field("smooth_l1", description="smooth_l1 (official code, beta 1) or l2 "
                                             "(paper Eq. 1)")


def linear_momentum(tau_base: float, tau_end: float, progress: float) -> float:
    """I-JEPA's EMA momentum: linear in the step from ``tau_base`` (progress 0) to ``tau_end`` (progress 1)."""
    return tau_base + (tau_end - tau_base) * min(max(progress, 0.0), 1.0)


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows ``idx [B, K]`` of ``x [B, N, D]`` -> ``[B, K, D]`` (``apply_masks`` for one mask)."""
    return x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class IJEPAPredictor(nn.Module):
    """I-JEPA's predictor (``VisionTransformerPredictor``): context tokens ``[B, K, D]`` and target block
    indices -> predicted target representations ``[T * B, Kt, D]``, block-major (all images' block 0 first)."""

    def __init__(self, embed_dim: int, grid: tuple[int, int], dim: int, depth: int, heads: int) -> None:
        super().__init__()
        from timm.models.vision_transformer import Block

        if dim % heads or dim % 4:
            raise ValueError(f"predictor_dim={dim} must be divisible by 4 (sin-cos) and by predictor_heads={heads}")
        self.grid, self.dim = tuple(grid), dim
        self.predictor_embed = nn.Linear(embed_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos", sincos_2d(self.grid, dim)[None], persistent=False)  # fixed, not learned
        self.predictor_blocks = nn.ModuleList(
            Block(dim, heads, mlp_ratio=4.0, qkv_bias=True, norm_layer=partial(nn.LayerNorm, eps=1e-6))
            for _ in range(depth))
        self.predictor_norm = nn.LayerNorm(dim, eps=1e-6)
        self.predictor_proj = nn.Linear(dim, embed_dim)
        # official init: trunc-normal(0.02) Linear weights, zero biases, mask token trunc-normal(0.02), and
        # ``fix_init_weight``: each block's output projections divided by sqrt(2 * layer_id)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        with torch.no_grad():
            for i, b in enumerate(self.predictor_blocks, 1):
                b.attn.proj.weight.div_(math.sqrt(2.0 * i))
                b.mlp.fc2.weight.div_(math.sqrt(2.0 * i))

    def positions(self, grid: tuple[int, int]) -> torch.Tensor:
        return self.pos if tuple(grid) == self.grid else sincos_2d(tuple(grid), self.dim).to(self.pos)[None]

    def forward(self, context: torch.Tensor, context_idx: torch.Tensor, target_idx: list[torch.Tensor],
                grid: tuple[int, int] | None = None) -> torch.Tensor:
        """``context [B, K, D]`` (encoded context patches), their patch indices ``context_idx [B, K]``, and
        one ``[B, Kt]`` index tensor per target block."""
        b, k = context_idx.shape
        pos = self.positions(grid or self.grid).to(context.dtype).expand(b, -1, -1)
        x = self.predictor_embed(context) + gather_tokens(pos, context_idx)
        x = x.repeat(len(target_idx), 1, 1)  # [T * B, K, d]: the context once per target block
        tgt = torch.cat(target_idx, 0)
        pos_t = gather_tokens(pos.repeat(len(target_idx), 1, 1), tgt)
        x = torch.cat([x, self.mask_token.to(x.dtype) + pos_t], 1)
        for blk in self.predictor_blocks:
            x = blk(x)
        return self.predictor_proj(self.predictor_norm(x)[:, k:])


class IJEPA(Method):
    Config = IJEPAConfig
    default_views = "crop"
    teacher_attr = "teacher"
    eval_encoder = "teacher"  # ijepa#55: probes average-pool the target encoder; the paper evaluates it

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: IJEPAConfig, epochs: int = 100) -> None:
        super().__init__(backbone, feat_dim, cfg, epochs)
        vit = require_vit(backbone, "ijepa")
        heads = cfg.predictor_heads or int(vit.blocks[0].attn.num_heads)
        self.predictor = IJEPAPredictor(vit.embed_dim, vit.base_grid, cfg.predictor_dim, cfg.predictor_depth, heads)
        self.teacher = EMA(nn.Sequential(self.backbone, nn.Identity()))  # the target encoder (deep copy)
        self.teacher.eval()

    def train(self, mode: bool = True) -> "IJEPA":
        super().train(mode)
        self.teacher.eval()  # the target encoder never drops paths
        return self

    @property
    def target_encoder(self) -> MaskedViT:
        return self.teacher.module[0]

    def make_masks(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        c = self.cfg
        m = multiblock_mask(batch, self.backbone.base_grid, generator, n_targets=c.n_targets,
                            target_scale=c.target_scale, target_aspect=c.target_aspect,
                            context_scale=c.context_scale, context_aspect=c.context_aspect, min_keep=c.min_keep)
        return (m.context.mask, *(t.mask for t in m.targets))

    @torch.no_grad()
    def targets(self, x: torch.Tensor, target_idx: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Target encoder on the full image: ``(F.layer_norm`` of its patch tokens gathered per block
        ``[T * B, Kt, D]``, block-major; the encoded tokens)."""
        enc = self.target_encoder
        tokens = enc.encode(enc.embed(x))
        h = enc.patches(tokens)
        h = F.layer_norm(h, h.shape[-1:])
        return torch.cat([gather_tokens(h, idx) for idx in target_idx], 0), tokens

    def predict(self, x: torch.Tensor, context_idx: torch.Tensor, target_idx: list[torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Context encoder on the context patches, then the predictor: ``(pred [T * B, Kt, D], context tokens)``."""
        vit: MaskedViT = self.backbone
        z = vit.encode(vit.mask(vit.embed(x), context_idx, "keep"))
        return self.predictor(vit.patches(z), context_idx, target_idx, vit.grid(tuple(x.shape[-2:]))), z

    def loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        pred, target = pred.float(), target.float()
        if self.cfg.loss == "smooth_l1":
            return F.smooth_l1_loss(pred, target, beta=1.0)
        return (pred - target).pow(2).sum(-1).sum(-1).mean()  # Eq. 1: sum over D and the block, mean over blocks

    def forward(self, views, progress=0.0, labels=None, masks=None):
        x = views[0]
        if masks is None:
            masks = self.make_masks(x.shape[0], fresh_generator())
        masks = [m.to(x.device) for m in masks]
        context_idx = mask_indices(masks[0])[0]  # the context patches, ascending
        target_idx = [mask_indices(m)[1] for m in masks[1:]]  # each block's patches, ascending
        target, teacher_tokens = self.targets(x, target_idx)
        pred, z = self.predict(x, context_idx, target_idx)
        loss = self.loss(pred, target)
        feats = self.target_encoder.pool(teacher_tokens).detach()  # the evaluated encoder, full image
        emb = self.backbone.pool(z).detach()  # the context encoder, context patches
        return {"loss": loss, "feats": feats, "emb": emb, "context_patches": torch.tensor(float(context_idx.shape[1])),
                "target_patches": torch.tensor(float(target_idx[0].shape[1]))}

    @torch.no_grad()
    def after_step(self, progress: float) -> dict[str, float]:
        tau = linear_momentum(self.cfg.tau_base, self.cfg.tau_end, progress)
        self.teacher.update(nn.Sequential(self.backbone, nn.Identity()), tau)
        return {"momentum": tau}
