"""SimMIM (Xie et al., 2022): masked image modeling with mask tokens in the encoder and a linear head.

Masks are drawn on a coarse grid of ``mask_patch_size``-pixel cells (32 px in the paper, Table 1:
best at ratio 0.6) and upsampled to the ViT's patches (:func:`selfsup.views.masks.grid_mask`). Unlike
MAE, the encoder sees every position: masked patches are replaced by a learned mask token before their
position is added (:meth:`MaskedViT.mask` with ``mode="replace"``). The prediction head is "one layer"
(Sec. 3.3): a 1x1 convolution of the patch tokens to ``p * p * C`` values, then a pixel shuffle back to the
image; the loss is L1 on the masked pixels only, against the normalised input
(:func:`selfsup.losses.simmim_loss`, the paper's normaliser; the code's ``+1e-5`` is ``loss_eps``).

Recipe defaults (paper Sec. 4.1 and official ``simmim_pretrain__vit_base__img224__800ep.yaml``, ViT-B/16):
mask ratio 0.6 with 32 px cells, AdamW betas (0.9, 0.999), base lr 1e-4 **per 512 images**
(``main_simmim.py`` ``linear_scaled_lr``: ``optim.lr_reference_batch: 512``), weight decay 0.05, batch 2048,
10 warmup epochs, 800 epochs, gradient clipping 5.0, drop path 0.1, LayerScale 0.1, RandomResizedCrop(0.67, 1)
+ flip only. (The official ViT uses a shared relative position bias instead of absolute positions; selfsup's
ViT keeps timm's learned absolute positions, and the multi-step lr decay at epoch 700 is a cosine here.)
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
from pydantic import Field

from selfsup.losses.masked_regression import simmim_loss
from selfsup.methods.base import Method, MethodConfig, fresh_generator, require_vit
from selfsup.nets.vit import MaskedViT
from selfsup.views.masks import grid_mask


class SimMIMConfig(MethodConfig):
    name: Literal["simmim"] = "simmim"
    mask_ratio: float = Field(0.6, gt=0, lt=1, description="fraction of mask cells hidden")
    mask_patch_size: int = Field(32, gt=0, description="mask cell side in pixels (a multiple of the ViT patch)")
    loss_eps: float = Field(0.0, ge=0, description="added to the masked-pixel count (official code: 1e-5; paper: 0)")


class SimMIM(Method):
    Config = SimMIMConfig
    accumulation = "plain"  # per-pixel L1; every image masks the same number of cells
    default_views = "crop"
    finetune_features = "avg"  # the official ViT fine-tunes with use_mean_pooling

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: SimMIMConfig, epochs: int = 100) -> None:
        super().__init__(backbone, feat_dim, cfg, epochs)
        vit = require_vit(backbone, "simmim")
        if cfg.mask_patch_size % vit.patch_size:
            raise ValueError(f"method.mask_patch_size={cfg.mask_patch_size} must be a multiple of the ViT patch size "
                             f"{vit.patch_size}")
        self.cell = cfg.mask_patch_size // vit.patch_size
        if vit.base_grid[0] % self.cell or vit.base_grid[1] % self.cell:
            raise ValueError(f"method.mask_patch_size={cfg.mask_patch_size} px does not tile the "
                             f"{vit.base_grid[0] * vit.patch_size} px images; choose a divisor of the image size")
        vit.add_mask_token()
        self.channels = vit.patch_embed.proj.in_channels
        p = vit.patch_size
        self.head = nn.Sequential(nn.Conv2d(vit.embed_dim, p * p * self.channels, 1), nn.PixelShuffle(p))

    def make_masks(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor]:
        return (grid_mask(batch, self.backbone.base_grid, self.cfg.mask_ratio, generator, cell=self.cell).mask,)

    def reconstruct(self, x: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """The encoder on every position (masked ones as mask tokens), the head to pixels ``[B, C, H, W]``."""
        vit: MaskedViT = self.backbone
        tokens = vit.encode(vit.mask(vit.embed(x), mask, "replace"))
        h, w = vit.grid(tuple(x.shape[-2:]))
        grid = vit.patches(tokens).transpose(1, 2).reshape(x.shape[0], -1, h, w)
        return {"pred": self.head(grid), "tokens": tokens}

    def forward(self, views, progress=0.0, labels=None, masks=None):
        x = views[0]
        mask = (masks[0] if masks is not None else self.make_masks(x.shape[0], fresh_generator())[0]).to(x.device)
        out = self.reconstruct(x, mask)
        loss = simmim_loss(out["pred"], x, mask, patch_size=self.backbone.patch_size, eps=self.cfg.loss_eps)
        feats = self.backbone.pool(out["tokens"]).detach()
        return {"loss": loss, "feats": feats, "emb": feats}

    @torch.no_grad()
    def reconstruction(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, str]:
        """The predicted images ``[B, C, H, W]`` (normalised input units) and a caption for the report."""
        return self.reconstruct(x, mask)["pred"].float(), "predicted pixels (L1 targets: the normalised input)"
