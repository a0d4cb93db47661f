"""AIM (El-Nouby et al., 2024, "Scalable Pre-training of Large Autoregressive Image Models"): a ViT trained to
predict the **next patch** in raster order; stable-pretraining ships it as ``iGPT`` (AIM-style).

The patches of the whole image go through the encoder (a :class:`selfsup.nets.vit.MaskedViT` without a cls
token) under a **prefix-causal** attention mask: the first :math:`S` patches (the prefix, :math:`S \\sim U\\{1,
\\dots, N-1\\}` per image, drawn by the trainer) attend to each other in both directions and every later patch
attends to the prefix and to the patches before it (PrefixLM, Sec. 2). The output at position :math:`i`, plus the
positional embedding, goes through a heavy MLP head that works on each patch on its own (a linear map to the head
width, residual LayerNorm-MLP blocks, LayerNorm, a linear map to the ``p * p * C`` pixels) and predicts patch
:math:`i + 1`; the loss is the per-patch normalised MSE on the patches after the prefix
(:func:`selfsup.losses.aim_loss`). Downstream the encoder runs without a mask, bidirectionally: the prefix is what
makes that match pretraining, and ``prefix=false`` gives the plain causal ablation (loss on patches 1..N-1).

Recipe defaults (``aim.yaml``): AIM-0.6B (width 1536, 24 blocks, 12 heads, patch 14, 224 px, sin-cos positions,
no cls token, mean-pooled features), head 12 blocks x 2048, AdamW betas (0.9, 0.95), lr 1e-3 per 4096 images,
weight decay 0.05, gradient clipping 1.0, RandomResizedCrop(0.4, 1) + flip, as lightly 1.6's AIM benchmark
(``benchmarks/imagenet/vitb16/aim.py``, whose head and prefix were checked with the AIM authors, lightly PR #1479).
Two differences from the paper's models: timm's blocks keep their biases (AIM drops them), and the downstream
probe here is selfsup's mean-pooled linear probe, not AIM's attentive probe.

lightly 1.6's AIM (example and benchmark) compares the head's output at position ``i`` with patch ``i`` itself,
which position ``i`` attends to, and puts the prefix in the loss; here the targets are shifted one position as in
the paper (its Fig. 2: "the targets correspond to the input sequence shifted one position to the left").
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
from pydantic import Field

from selfsup.losses.masked_regression import aim_loss, norm_pix_targets, patchify, unpatchify
from selfsup.methods.base import Method, MethodConfig, fresh_generator, require_vit
from selfsup.nets.causal import causal_encode, check_masked_blocks
from selfsup.nets.vit import MaskedViT


class AIMConfig(MethodConfig):
    name: Literal["aim"] = "aim"
    head_dim: int = Field(2048, gt=0, description="width of the MLP prediction head")
    head_blocks: int = Field(12, ge=0, description="residual LayerNorm-MLP blocks in the head")
    prefix: bool = Field(True, description="prefix attention (S ~ U{1..N-1} patches bidirectional, no loss on "
                                           "them); false: plain causal attention, loss on patches 1..N-1")
    norm_pix_loss: bool = Field(True, description="per-patch normalised pixel targets (AIM, as MAE)")


class AIMHead(nn.Module):
    """Per-patch MLP head: Linear(D, H), ``blocks`` x ``x + MLP(LN(x))`` (ratio 4), LN, Linear(H, P); no biases."""

    def __init__(self, in_dim: int, out_dim: int, dim: int, blocks: int) -> None:
        super().__init__()
        from timm.layers import Mlp

        self.proj_in = nn.Linear(in_dim, dim, bias=False)
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(blocks))
        self.mlps = nn.ModuleList(Mlp(dim, 4 * dim, bias=False) for _ in range(blocks))
        self.norm = nn.LayerNorm(dim)
        self.proj_out = nn.Linear(dim, out_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj_in(x)
        for norm, mlp in zip(self.norms, self.mlps):
            x = x + mlp(norm(x))
        return self.proj_out(self.norm(x))


class AIM(Method):
    Config = AIMConfig
    accumulation = "plain"  # a mean of per-image means: a micro-batch's share is exact
    default_views = "crop"
    eval_features = ("avg",)  # no cls token: the mean patch token

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: AIMConfig, epochs: int = 100) -> None:
        super().__init__(backbone, feat_dim, cfg, epochs)
        vit = require_vit(backbone, "aim")
        if vit.num_prefix:
            raise ValueError("aim needs a ViT without cls or register tokens (AIM has none): set "
                             "model.vit.class_token=false model.vit.pool=avg model.vit.registers=0")
        check_masked_blocks(vit, "aim")
        vit.fc_norm.requires_grad_(False)  # a pooling norm (model.vit.fc_norm) is off the loss path: kept at init
        channels = vit.patch_embed.proj.in_channels
        self.head = AIMHead(vit.embed_dim, vit.patch_size ** 2 * channels, cfg.head_dim, cfg.head_blocks)

    def make_masks(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor]:
        """``predicted [B, N]``: True on the patches after each image's prefix (the ones in the loss)."""
        h, w = self.backbone.base_grid
        n = h * w
        if n < 2:
            raise ValueError(f"aim needs at least 2 patches per image, got a {h}x{w} grid; use a smaller patch")
        if self.cfg.prefix:
            s = torch.randint(1, n, (batch, 1), generator=generator)  # S ~ U{1, ..., N-1}
        else:
            s = torch.ones(batch, 1, dtype=torch.long)  # plain causal: every patch but the first is predicted
        return (torch.arange(n)[None] >= s,)

    def encode(self, x: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
        """Patch tokens ``[B, N, D]`` of the encoder under the prefix-causal mask of ``predicted``."""
        return causal_encode(self.backbone, self.backbone.embed(x), (~predicted).sum(1))

    def predict_next(self, x: torch.Tensor, predicted: torch.Tensor) -> dict[str, torch.Tensor]:
        """``pred_next [B, N-1, P]`` (row ``i`` predicts patch ``i + 1``), ``target`` and the encoded ``tokens``."""
        vit: MaskedViT = self.backbone
        tokens = self.encode(x, predicted)
        pos = vit.positions(vit.grid(tuple(x.shape[-2:])))
        pred = self.head(tokens[:, :-1] + (pos[:, :-1].to(tokens.dtype) if pos is not None else 0))
        return {"pred_next": pred, "target": patchify(x, vit.patch_size), "tokens": tokens}

    def forward(self, views, progress=0.0, labels=None, masks=None):
        x = views[0]
        predicted = (masks[0] if masks is not None else self.make_masks(x.shape[0], fresh_generator())[0])
        out = self.predict_next(x, predicted.to(x.device))
        loss = aim_loss(out["pred_next"], out["target"], predicted.to(x.device), norm_pix=self.cfg.norm_pix_loss)
        feats = self.backbone.pool(out["tokens"]).detach()  # mean of the (prefix-causal) tokens, for the probe
        return {"loss": loss, "feats": feats, "emb": feats}

    @torch.no_grad()
    def reconstruction(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, str]:
        """Each patch after the prefix predicted from the patches before it (one teacher-forced pass, not sampled),
        ``[B, C, H, W]`` in normalised input units; the prefix keeps its pixels."""
        out = self.predict_next(x, mask)
        pred, note = out["pred_next"].float(), "each patch predicted from the ones before it in raster order"
        if self.cfg.norm_pix_loss:
            _, mean, std = norm_pix_targets(out["target"][:, 1:])
            pred = pred * std + mean
            note += "; norm-pix predictions with each patch's ground-truth mean and std re-added"
        full = torch.cat([out["target"][:, :1].float(), pred], 1)
        vit: MaskedViT = self.backbone
        return unpatchify(full, vit.patch_size, vit.grid(tuple(x.shape[-2:])), x.shape[1]), note
