"""MAE (He et al., 2022): masked autoencoders, the encoder on the visible patches only.

A random 75% of the patches is removed (:func:`selfsup.views.masks.random_mask`, drawn per step by the
trainer); the encoder (a :class:`selfsup.nets.vit.MaskedViT`) sees the prefix tokens and the visible 25%
(``mode="drop"``), so pretraining costs about a quarter of a full forward. A light decoder (``decoder_embed``
to ``decoder_dim``, one shared mask token at every removed position, fixed 2-D sin-cos positions,
``decoder_depth`` transformer blocks, LayerNorm, a linear prediction of the ``p * p * C`` pixels) reconstructs
every patch; the loss is the per-patch MSE on the **removed** patches only (:func:`selfsup.losses.mae_loss`),
against per-patch normalised pixels with ``norm_pix_loss`` (Sec. 3, "Reconstruction target"). The decoder is
part of the method, so checkpoints keep it and reconstructions can be shown (MAE #156, #174).

Recipe defaults (paper Table 8 / official PRETRAIN.md, ViT-B/16): mask ratio 0.75, decoder 8 blocks x 512
(16 heads), norm-pix targets, AdamW betas (0.9, 0.95), base lr 1.5e-4 x batch/256 (the argparse default
``--blr 1e-3`` is not the documented value), weight decay 0.05 (not on biases, norms, tokens, positions),
batch 4096, 40 warmup epochs, cosine to 0, 800 epochs, augmentation RandomResizedCrop(0.2, 1) + flip only,
no drop path in pretraining, fixed sin-cos encoder positions. Evaluation: the linear probe reads the cls
token through BatchNorm without affine (``main_linprobe.py``), fine-tuning average-pools (layer decay 0.65
for ViT-B).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
from pydantic import Field

from selfsup.losses.masked_regression import mae_loss, norm_pix_targets, patchify, unpatchify
from selfsup.methods.base import Method, MethodConfig, fresh_generator, require_vit
from selfsup.nets.vit import MaskedViT, sincos_2d
from selfsup.views.masks import random_mask


class MAEConfig(MethodConfig):
    name: Literal["mae"] = "mae"
    mask_ratio: float = Field(0.75, ge=0, lt=1, description="fraction of patches removed from the encoder's input")
    decoder_dim: int = Field(512, gt=0, description="decoder token width")
    decoder_depth: int = Field(8, ge=1, description="decoder blocks")
    decoder_heads: int = Field(16, gt=0, description="decoder attention heads")
    norm_pix_loss: bool = Field(True, description="per-patch normalised pixel targets (paper: +0.5 fine-tune)")


class MAEDecoder(nn.Module):
    """MAE's decoder: visible encoder tokens (prefix + kept patches) -> pixel predictions of every patch."""

    def __init__(self, embed_dim: int, num_prefix: int, grid: tuple[int, int], patch_pixels: int, dim: int,
                 depth: int, heads: int) -> None:
        super().__init__()
        from timm.models.vision_transformer import Block

        self.num_prefix, self.grid = num_prefix, grid
        self.embed = nn.Linear(embed_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos", sincos_2d(grid, dim)[None], persistent=False)  # fixed, not learned
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio=4.0, qkv_bias=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pred = nn.Linear(dim, patch_pixels)
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():  # official init: xavier_uniform Linear ("following official JAX ViT")
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, tokens: torch.Tensor, keep_idx: torch.Tensor) -> torch.Tensor:
        """``tokens [B, P + K, D]`` (encoded) and their patch indices ``keep_idx [B, K]`` -> ``[B, N, p*p*C]``."""
        y = self.embed(tokens)
        prefix, visible = y[:, : self.num_prefix], y[:, self.num_prefix:]
        b, n = y.shape[0], self.grid[0] * self.grid[1]
        full = self.mask_token.to(y.dtype).expand(b, n, -1).clone()
        full = full.scatter(1, keep_idx.unsqueeze(-1).expand(-1, -1, y.shape[-1]), visible)  # unshuffle
        x = torch.cat([prefix, full + self.pos.to(y.dtype)], 1)
        return self.pred(self.norm(self.blocks(x)))[:, self.num_prefix:]


class MAE(Method):
    Config = MAEConfig
    accumulation = "plain"  # per-patch MSE; every image masks the same number of patches
    default_views = "crop"
    eval_features = ("cls",)  # main_linprobe.py probes the cls token
    # BatchNorm without affine + LARS (main_linprobe.py: blr 0.1 x 16384/256 = lr 6.4, wd 0); the lr grid spans it
    linear_probe = {"optimizer": "lars", "batchnorm": True, "lrs": (0.4, 1.6, 6.4), "wds": (0.0,)}
    finetune_features = "avg"  # main_finetune.py --global_pool: fc_norm of the mean patch token

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: MAEConfig, epochs: int = 100) -> None:
        super().__init__(backbone, feat_dim, cfg, epochs)
        vit = require_vit(backbone, "mae")
        channels = vit.patch_embed.proj.in_channels
        self.decoder = MAEDecoder(vit.embed_dim, vit.num_prefix, vit.base_grid, vit.patch_size ** 2 * channels,
                                  cfg.decoder_dim, cfg.decoder_depth, cfg.decoder_heads)

    def make_masks(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor]:
        if self.cfg.mask_ratio == 0:  # the no-masking ablation (the loss is then 0: nothing to reconstruct)
            h, w = self.backbone.base_grid
            return (torch.zeros(batch, h * w, dtype=torch.bool),)
        return (random_mask(batch, self.backbone.base_grid, self.cfg.mask_ratio, generator).mask,)

    def reconstruct(self, x: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Encoder on the visible patches, decoder on all: ``pred [B, N, p*p*C]`` (in norm-pix units with
        ``norm_pix_loss``), ``target`` (the patchified input), and the encoded visible ``tokens``."""
        vit: MaskedViT = self.backbone
        keep = (~mask).nonzero()[:, 1].view(mask.shape[0], -1)
        tokens = vit.encode(vit.mask(vit.embed(x), keep, "keep"))
        return {"pred": self.decoder(tokens, keep), "target": patchify(x, vit.patch_size), "tokens": tokens}

    def forward(self, views, progress=0.0, labels=None, masks=None):
        x = views[0]
        mask = (masks[0] if masks is not None else self.make_masks(x.shape[0], fresh_generator())[0]).to(x.device)
        out = self.reconstruct(x, mask)
        loss = mae_loss(out["pred"], out["target"], mask, norm_pix=self.cfg.norm_pix_loss)
        feats = self.backbone.pool(out["tokens"]).detach()  # features of the visible patches, for the online probe
        return {"loss": loss, "feats": feats, "emb": feats}

    @torch.no_grad()
    def reconstruction(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, str]:
        """The reconstructed images ``[B, C, H, W]`` (normalised input units) and a caption for the report.
        With ``norm_pix_loss`` each patch's prediction is mapped back with the **ground-truth** mean and std of
        that patch, which leaks them into the picture (MAE #153); the caption says so."""
        out = self.reconstruct(x, mask)
        pred, note = out["pred"].float(), "predicted pixels"
        if self.cfg.norm_pix_loss:
            _, mean, std = norm_pix_targets(out["target"])
            pred = pred * std + mean
            note = "norm-pix predictions with each patch's ground-truth mean and std re-added"
        vit: MaskedViT = self.backbone
        return unpatchify(pred, vit.patch_size, vit.grid(tuple(x.shape[-2:])), x.shape[1]), note
