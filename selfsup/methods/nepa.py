"""NEPA (Xu et al., 2025, "Next-Embedding Prediction Makes Strong Vision Learners"): a causal ViT whose output
at each position predicts the **input embedding** of the next one.

The image's tokens (cls first, then the patches in raster order) go through a
:class:`selfsup.nets.vit.MaskedViT` under plain causal attention (:func:`selfsup.nets.causal.causal_encode`); the
final-normed output at position :math:`t` is scored against the embedding layer's token :math:`t + 1` with
SimSiam's negative cosine and a stop-gradient on the target (:func:`selfsup.losses.nepa_loss`; Algorithm 1). No
decoder, no head, no second view, no teacher. Downstream the encoder runs bidirectionally (the paper's Table 1e:
82.5 against 81.3 with causal fine-tuning; it fine-tunes causally by default).

The targets are the embedding layer's output **before** positions are added, as in the official code, where
positions enter through RoPE inside attention and the embedding layer carries none (``target_positions=true``:
the tokens with their absolute positions). selfsup's ViT uses absolute positions (timm has no RoPE ViT here), and
of the paper's stabilisers the recipe keeps LayerScale 1e-5 and QK-norm (timm's has affine parameters; NEPA's has
none); the official configs use GELU MLPs (``use_gated_mlp: false``), as here.

Recipe defaults (paper Table 4, official ``scripts/pretrain/nepa_b.sh`` and ``configs/pretrain/nepa-base-patch14-224``):
ViT-B at patch 14, 224 px, AdamW betas (0.9, 0.95), base lr 3e-4 x B/256, weight decay 0.05, batch 4096, cosine,
40 warm-up epochs (``--warmup_ratio 0.025``), 1600 epochs, RandomResizedCrop (torchvision's default scale
(0.08, 1)) + flip. The paper evaluates by fine-tuning; its linear probe is weak (Table 6: 11.3 / 14.1).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
from pydantic import Field

from selfsup.losses.masked_regression import nepa_loss
from selfsup.methods.base import Method, MethodConfig, require_vit
from selfsup.nets.causal import causal_encode, check_masked_blocks
from selfsup.nets.vit import MaskedViT


class NEPAConfig(MethodConfig):
    name: Literal["nepa"] = "nepa"
    shift: bool = Field(True, description="predict the next token's embedding (false: its own, Table 1a's failing "
                                          "ablation)")
    target_positions: bool = Field(False, description="targets with the absolute positions added (off: the "
                                                      "embedding layer alone, as the official RoPE model)")


class NEPA(Method):
    Config = NEPAConfig
    accumulation = "plain"  # a mean over tokens, the same count in every image
    default_views = "crop"
    eval_features = ("avg",)  # Table 6: the mean embedding probes better than the last one

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: NEPAConfig, epochs: int = 100) -> None:
        super().__init__(backbone, feat_dim, cfg, epochs)
        vit = require_vit(backbone, "nepa")
        check_masked_blocks(vit, "nepa")
        vit.fc_norm.requires_grad_(False)  # a pooling norm (model.vit.fc_norm) is off the loss path: kept at init

    def embed_and_predict(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inputs, outputs)`` ``[B, T, D]``: the embedding layer's tokens (the targets) and the causal encoder's."""
        vit: MaskedViT = self.backbone
        tokens = vit.embed(x)
        outputs = causal_encode(vit, tokens, torch.zeros(x.shape[0], dtype=torch.long, device=x.device))
        pos = vit.positions(vit.grid(tuple(x.shape[-2:])))
        if self.cfg.target_positions or pos is None:
            return tokens, outputs
        return torch.cat([vit.prefix(tokens), vit.patches(tokens) - pos.to(tokens.dtype)], 1), outputs

    def forward(self, views, progress=0.0, labels=None, masks=None):
        inputs, outputs = self.embed_and_predict(views[0])
        loss = nepa_loss(outputs, inputs, shift=self.cfg.shift)
        feats = self.backbone.pool(outputs).detach()  # the causal outputs' pooled features, for the online probe
        return {"loss": loss, "feats": feats, "emb": feats}
