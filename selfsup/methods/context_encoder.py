"""Context encoder (Pathak, Krähenbühl, Donahue, Darrell & Efros 2016, "Context Encoders: Feature Learning by
Inpainting", CVPR): drop a region of the image, encode the rest, decode the missing pixels.

- Regions (Sec. 3.3): ``central`` (the official default: the centre square of half the image side is
  predicted; the input hides it less an ``overlap`` border, which stays visible) or ``random_block`` (the union
  of ``n_blocks`` squares of side ``block_size`` at random positions; the paper's "random block" masks, up to a
  quarter of the image). The paper's "random region" masks (shapes of PASCAL segmentations) need an outside
  dataset and are not reproduced. Block positions are drawn in the main process by :meth:`make_masks` from the
  trainer's per-step generator, as fractions of the free range, and scaled to the image size in ``forward``.
- The hole is filled with 0 in normalised units, i.e. the normalisation mean (the paper's "mean pixel").
- The loss is L2 on the hole plus the ``overlap`` band around it, the band weighted x ``overlap_weight``
  (:func:`selfsup.losses.context_encoder_loss`; ``train.lua``'s ``overlapPred=4``, ``overlapL2Weight=10``).
- Encoder: the backbone's feature map (:func:`selfsup.nets.dense.feature_map`); decoder:
  :class:`selfsup.nets.pixel_decoder.PixelDecoder` (up-convolutions back to the input size). The official 4000-d
  fully connected bottleneck is replaced by the map itself.
- The adversarial term (weight 0.001 beside L2's 0.999) is not implemented: it needs a discriminator updated by
  its own optimizer in alternation with the encoder-decoder, which selfsup's one-loss, one-optimizer step cannot
  host without a hidden second training loop (its state, schedule and exact resume). It makes inpaintings
  sharper; the features are trained by the reconstruction loss here, so L2 weight 0.999 is just 1.

Recipe defaults (official ``train.lua`` and README command): 128 px crops, Adam lr 2e-4 with beta1 0.5, batch 64,
25 epochs (``niter``), no weight decay; the encoder is any selfsup backbone (AlexNet's conv layers there).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
from pydantic import Field

from selfsup.losses.restoration import context_encoder_loss
from selfsup.methods.base import Method, MethodConfig, fresh_generator
from selfsup.nets.dense import feature_map
from selfsup.nets.pixel_decoder import PixelDecoder, map_geometry


class ContextEncoderConfig(MethodConfig):
    name: Literal["context_encoder"] = "context_encoder"
    region: Literal["central", "random_block"] = Field("central", description="which pixels are dropped")
    region_size: float = Field(0.5, gt=0, lt=1, description="central: side of the predicted centre square, as a "
                               "fraction of the image side (64 of 128 px)")
    overlap: float = Field(0.03125, ge=0, lt=0.25, description="visible band predicted around the hole, as a "
                           "fraction of the image side (4 of 128 px; at least 1 px when > 0)")
    overlap_weight: float = Field(10.0, ge=0, description="L2 weight of the overlap band (the hole's is 1)")
    n_blocks: int = Field(4, ge=1, description="random_block: squares dropped per image")
    block_size: float = Field(0.25, gt=0, le=1, description="random_block: side of each square (fraction of the side)")
    decoder_width: int = Field(64, ge=16, description="width of the decoder's first up-convolution")


class ContextEncoder(Method):
    Config = ContextEncoderConfig
    default_views = "crop"
    accumulation = "plain"  # a mean over images of per-image terms

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: ContextEncoderConfig, epochs: int = 100) -> None:
        super().__init__(backbone, feat_dim, cfg, epochs)
        channels, dim, stride = map_geometry(backbone)
        self.decoder = PixelDecoder(dim, channels, stride, cfg.decoder_width)

    def make_masks(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor] | None:
        """random_block: block positions ``[batch, n_blocks, 2]`` (fractions of the free range, top-left);
        central: None (no randomness)."""
        if self.cfg.region != "random_block":
            return None
        return (torch.rand(batch, self.cfg.n_blocks, 2, generator=generator),)

    def overlap_px(self, side: int) -> int:
        o = self.cfg.overlap
        return max(1, round(o * side)) if o > 0 else 0

    def holes(self, b: int, h: int, w: int, positions: torch.Tensor | None, device: torch.device) -> torch.Tensor:
        """Bool ``[b, 1, h, w]``: the dropped pixels (see the module docstring)."""
        hole = torch.zeros(b, 1, h, w, dtype=torch.bool, device=device)
        if self.cfg.region == "central":
            sh, sw = round(self.cfg.region_size * h), round(self.cfg.region_size * w)
            t, l = (h - sh) // 2, (w - sw) // 2
            o = self.overlap_px(min(h, w))
            hole[:, :, t + o:t + sh - o, l + o:l + sw - o] = True
            return hole
        sh, sw = max(1, round(self.cfg.block_size * h)), max(1, round(self.cfg.block_size * w))
        if positions is None:
            positions = self.make_masks(b, fresh_generator())[0]
        pos = positions.to(device)
        top = (pos[..., 0] * (h - sh + 1)).long().clamp(0, h - sh)
        left = (pos[..., 1] * (w - sw + 1)).long().clamp(0, w - sw)
        rows = torch.arange(h, device=device).view(1, 1, h, 1)
        cols = torch.arange(w, device=device).view(1, 1, 1, w)
        top, left = top.view(b, -1, 1, 1), left.view(b, -1, 1, 1)
        inside = (rows >= top) & (rows < top + sh) & (cols >= left) & (cols < left + sw)  # [b, K, h, w]
        return inside.any(1, keepdim=True)

    def inpaint(self, x: torch.Tensor, hole: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(predicted image [B, C, H, W], pooled features [B, D])`` from ``x`` with ``hole`` filled by 0."""
        fmap = feature_map(self.backbone, x.masked_fill(hole, 0.0))
        return self.decoder(fmap, tuple(x.shape[-2:])), fmap.mean((2, 3))

    def forward(self, views, progress=0.0, labels=None, masks=None):
        x = views[0]
        hole = self.holes(x.shape[0], x.shape[-2], x.shape[-1], masks[0] if masks is not None else None, x.device)
        pred, feats = self.inpaint(x, hole)
        o = self.overlap_px(min(x.shape[-2:]))
        loss = context_encoder_loss(pred, x, hole, o, self.cfg.overlap_weight)
        return {"loss": loss, "feats": feats.detach(), "emb": feats.detach()}
