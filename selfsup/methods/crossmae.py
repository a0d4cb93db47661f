"""CrossMAE (Fu et al., 2025, "Rethinking Patch Dependence for Masked Autoencoders", TMLR): MAE whose decoder
reads each masked patch out of the encoder by **cross-attention only**.

The encoder is MAE's (a :class:`selfsup.nets.vit.MaskedViT` on the visible 25%, ``mode="keep"``). The decoder's
queries are one shared mask token plus fixed 2-D sin-cos positions, for a random **subset** of the masked patches
only (partial reconstruction, ``predict_ratio`` of all patches: :func:`selfsup.views.masks.partial_prediction_mask`);
its blocks have no self-attention between the queries (Fig. 4b: cross-attention to the visible tokens, then an
MLP), so every patch is decoded independently of the others. With ``inter_block`` (inter-block attention, Sec. 3.3,
Fig. 4c) decoder block ``j`` attends to its own learned linear combination of the encoder's block outputs (and of
its input tokens with ``use_input``), each through its own LayerNorm; without it, every block attends to the final
normed encoder output. The loss is MAE's norm-pix MSE on the predicted patches (:func:`selfsup.losses.crossmae_loss`).

Recipe defaults (the official README's ViT-B pre-training command, ``main_pretrain.py`` and ``models_cross.py``
``mae_vit_base_patch16``): mask ratio 0.75, predicted 0.25 of the patches, 12 decoder blocks x 512 (16 heads),
inter-block attention over every encoder block plus the input, norm-pix targets, AdamW betas (0.9, 0.95), weight
decay 0.05, batch 4096, 40 warmup epochs, cosine to 0, 800 epochs, RandomResizedCrop(0.2, 1) + flip. The base lr
1.5e-4 is **multiplied by predict_ratio / mask_ratio** in ``main_pretrain.py`` (``scale_kmr``, unless
``--no_lr_scale``), so the recipe's base lr is 5e-5 per 256 images. The released checkpoints of ViT-S/B/L use
predict_ratio 0.75 (every masked patch); the 0.25 here is the README command's and the paper's efficient setting.

Two details of the official code: the keys include the cls token, and with inter-block attention the encoder's
final LayerNorm is not on the loss path (the decoder reads un-normed block outputs through its own norms). selfsup
freezes that norm at its init during pretraining (so DDP sees no parameter without a gradient); the kNN, linear
probe and fine-tune read the cls token or the mean patch token through it, and the fine-tune trains it.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from selfsup.losses.masked_regression import crossmae_loss, norm_pix_targets, patchify, unpatchify
from selfsup.methods.base import Method, fresh_generator, require_vit
from selfsup.methods.mae import MAE, MAEConfig
from selfsup.nets.vit import MaskedViT, sincos_2d
from selfsup.views.masks import partial_prediction_mask


class CrossMAEConfig(MAEConfig):
    name: Literal["crossmae"] = "crossmae"  # type: ignore[assignment]
    predict_ratio: float = Field(0.25, gt=0, lt=1, description="fraction of all patches reconstructed (official "
                                                               "--kept_mask_ratio); at most mask_ratio")
    decoder_depth: int = Field(12, ge=1, description="decoder (cross-attention) blocks")
    inter_block: bool = Field(True, description="inter-block attention: each decoder block attends to its own "
                                                "weighted sum of the encoder's block outputs (official --weight_fm)")
    use_input: bool = Field(True, description="with inter_block, the encoder's input tokens are one more feature "
                                              "map (official --use_input)")
    self_attn: bool = Field(False, description="add self-attention between the queries in every decoder block "
                                               "(the paper's ablation; off in CrossMAE)")


class CrossAttentionBlock(nn.Module):
    """``x + CrossAttn(LN(x), y)``, then ``x + MLP(LN(x))``: queries ``x [B, K, dim]`` from the decoder, keys and
    values from the encoder's ``y [B, L, kv_dim]`` (Fig. 4b). ``self_attn`` first adds ``x + Attn(LN(x))``."""

    def __init__(self, dim: int, kv_dim: int, heads: int, mlp_ratio: float = 4.0, self_attn: bool = False) -> None:
        super().__init__()
        from timm.layers import Mlp
        from timm.models.vision_transformer import Attention

        if dim % heads:
            raise ValueError(f"decoder_dim {dim} is not divisible by decoder_heads {heads}; pick heads dividing it")
        self.heads = heads
        self.norm0 = nn.LayerNorm(dim, eps=1e-6) if self_attn else None
        self.attn = Attention(dim, heads, qkv_bias=True) if self_attn else None
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(kv_dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def cross_attention(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        b, k, d = x.shape
        q = self.q(x).view(b, k, self.heads, d // self.heads).transpose(1, 2)
        kv = self.kv(y).view(b, y.shape[1], 2, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, kv[0], kv[1])  # softmax(q k^T / sqrt(d_head)) v
        return self.proj(out.transpose(1, 2).reshape(b, k, d))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.attn is not None:
            x = x + self.attn(self.norm0(x))
        x = x + self.cross_attention(self.norm1(x), y)
        return x + self.mlp(self.norm2(x))


class CrossMAEDecoder(nn.Module):
    """Encoder tokens (one map, or ``n_maps`` maps for inter-block attention) and the patch indices to read out
    ``[B, K]`` -> pixel predictions ``[B, K, p*p*C]``."""

    def __init__(self, embed_dim: int, grid: tuple[int, int], patch_pixels: int, dim: int, depth: int, heads: int,
                 n_maps: int = 0, self_attn: bool = False) -> None:
        super().__init__()
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos", sincos_2d(grid, dim)[None], persistent=False)  # fixed, not learned
        self.blocks = nn.ModuleList(CrossAttentionBlock(dim, embed_dim, heads, self_attn=self_attn)
                                    for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pred = nn.Linear(dim, patch_pixels)
        # inter-block attention: a k -> depth linear map over the stacked maps, then one LayerNorm per block
        self.weights = nn.Linear(n_maps, depth, bias=False) if n_maps else None
        self.map_norms = nn.ModuleList(nn.LayerNorm(embed_dim, eps=1e-6) for _ in range(depth)) if n_maps else None
        nn.init.normal_(self.mask_token, std=0.02)
        for m in self.modules():  # official init: xavier_uniform Linear, zero biases
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        if self.weights is not None:  # models_cross.py WeightedFeatureMaps: N(0, 1/k)
            nn.init.normal_(self.weights.weight, std=1.0 / math.sqrt(n_maps))

    def forward(self, maps: torch.Tensor | list[torch.Tensor], predict_idx: torch.Tensor) -> torch.Tensor:
        b, k = predict_idx.shape
        dim = self.mask_token.shape[-1]
        where = predict_idx.unsqueeze(-1).expand(-1, -1, dim)
        x = self.mask_token + self.pos.to(self.mask_token.dtype).expand(b, -1, -1).gather(1, where)
        if self.weights is None:
            keys = [maps] * len(self.blocks)
        else:
            mixed = self.weights(torch.stack(maps, -1))  # [B, L, D, k] -> [B, L, D, depth]
            keys = [norm(mixed[..., j]) for j, norm in enumerate(self.map_norms)]
        for blk, y in zip(self.blocks, keys):
            x = blk(x, y)
        return self.pred(self.norm(x))


class CrossMAE(MAE):
    Config = CrossMAEConfig

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: CrossMAEConfig, epochs: int = 100) -> None:
        Method.__init__(self, backbone, feat_dim, cfg, epochs)  # MAE's own decoder is not built
        vit = require_vit(backbone, "crossmae")
        if cfg.predict_ratio > cfg.mask_ratio + 1e-9:
            raise ValueError(f"method.predict_ratio {cfg.predict_ratio} exceeds method.mask_ratio {cfg.mask_ratio}: "
                             f"only masked patches are reconstructed; set predict_ratio <= mask_ratio")
        channels = vit.patch_embed.proj.in_channels
        n_maps = (len(vit.blocks) + int(cfg.use_input)) if cfg.inter_block else 0
        self.decoder = CrossMAEDecoder(vit.embed_dim, vit.base_grid, vit.patch_size ** 2 * channels, cfg.decoder_dim,
                                       cfg.decoder_depth, cfg.decoder_heads, n_maps, cfg.self_attn)
        if cfg.inter_block:  # the final norm is off the loss path (module docstring)
            vit.norm.requires_grad_(False)

    def make_masks(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, predicted = partial_prediction_mask(batch, self.backbone.base_grid, self.cfg.mask_ratio,
                                                    self.cfg.predict_ratio, generator)
        return hidden.mask, predicted.mask

    def encode_maps(self, x: torch.Tensor,
                    mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | list[torch.Tensor]]:
        """The encoder on the visible patches: its normed output tokens and what the decoder attends to."""
        vit: MaskedViT = self.backbone
        keep = (~mask).nonzero()[:, 1].view(mask.shape[0], -1)
        tokens = vit.mask(vit.embed(x), keep, "keep")
        if not self.cfg.inter_block:
            out = vit.encode(tokens)
            return out, out
        out, maps = vit.encode(tokens, layers=list(range(len(vit.blocks))))
        return out, ([vit.norm_pre(tokens)] if self.cfg.use_input else []) + maps

    def reconstruct(self, x: torch.Tensor, mask: torch.Tensor,
                    predict: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """``pred [B, K, p*p*C]`` for the patches of ``predict`` (``[B, N]``, the same count per row; default:
        every patch, visible ones included, which the independent queries allow), their indices
        ``predict_idx [B, K]``, ``target`` (the patchified input) and the encoded visible ``tokens``."""
        tokens, maps = self.encode_maps(x, mask)
        if predict is None:
            predict = torch.ones_like(mask)
        idx = predict.nonzero()[:, 1].view(mask.shape[0], -1)
        return {"pred": self.decoder(maps, idx), "predict_idx": idx, "target": patchify(x, self.backbone.patch_size),
                "tokens": tokens}

    def forward(self, views, progress=0.0, labels=None, masks=None):
        x = views[0]
        if masks is None:
            masks = self.make_masks(x.shape[0], fresh_generator())
        mask, predict = (m.to(x.device) for m in masks)
        out = self.reconstruct(x, mask, predict)
        loss = crossmae_loss(out["pred"], out["target"], out["predict_idx"], norm_pix=self.cfg.norm_pix_loss)
        feats = self.backbone.pool(out["tokens"]).detach()  # features of the visible patches, for the online probe
        return {"loss": loss, "feats": feats, "emb": feats}

    @torch.no_grad()
    def reconstruction(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, str]:
        """Every patch read out from the visible ones (``[B, C, H, W]``, normalised input units) and a caption;
        with ``norm_pix_loss`` each patch's ground-truth mean and std are re-added (as :meth:`MAE.reconstruction`)."""
        out = self.reconstruct(x, mask)
        pred, note = out["pred"].float(), "every patch read out by cross-attention"
        if self.cfg.norm_pix_loss:
            _, mean, std = norm_pix_targets(out["target"])
            pred = pred * std + mean
            note += "; norm-pix predictions with each patch's ground-truth mean and std re-added"
        vit: MaskedViT = self.backbone
        return unpatchify(pred, vit.patch_size, vit.grid(tuple(x.shape[-2:])), x.shape[1]), note
