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
- The adversarial term (Sec. 3.2, Eqs. 2-3) is optional: ``adversarial_weight`` is lambda_adv and the joint loss
  is ``(1 - lambda_adv) L_rec + lambda_adv L_adv`` (the paper's 0.999 / 0.001, Sec. 3.4; ``train.lua``'s
  ``wtl2=0.999``). A :class:`selfsup.nets.pixel_decoder.RegionDiscriminator` (DCGAN-style, not conditioned on
  the context, as the paper) judges the predicted region: the centre square (hole plus band) for ``central``, as
  ``train.lua``; for ``random_block`` the whole image with the hole filled by the prediction (selfsup's choice:
  the blocks have no fixed frame to crop), resized to ``discriminator_size`` (64: ``train.lua``'s centre). At 0 (the default) no discriminator is built and the method is the
  L2-only one, bit for bit. The paper learns its features (AlexNet) with L2 alone, as AlexNet's training diverged
  with the joint loss (Sec. 3.2); the joint loss is its inpainting setting.
- One loss, one optimizer, simultaneous updates: the paper alternates a D step (``optim.adam(fDx)``) and a G step
  on the same batch; selfsup's step has one loss and one optimizer, so the discriminator is a module of the
  method (checkpointed and resumed exactly with the rest) and both players step at once on
  ``L = (1 - lambda_adv) L_rec + lambda_adv L_adv + L_D``, where ``L_D`` sees the prediction detached (it reaches
  D only) and ``L_adv`` runs through D with D's parameters detached and its BatchNorm statistics untouched (it
  reaches the encoder-decoder only). Each player thus gets exactly its own gradient; the difference from
  ``train.lua`` is the order: its G step reuses D's forward pass from before D's update and backpropagates through
  the updated D, while here both players see D as it was before the step (simultaneous gradient descent, the
  common GAN variant that one loss and one optimizer can host). Both players use the recipe's Adam (beta1 0.5,
  as ``train.lua``'s two optimizers) and lr schedule; ``discriminator_lr_scale`` sets D's lr relative to the
  encoder-decoder's: the paper's "higher learning rate for context encoder (10 times)" than for D (Sec. 3.4;
  ``train.lua`` with 0 < wtl2 < 1: 2e-3 and 2e-4) is ``optim.lr=2e-3 method.discriminator_lr_scale=0.1``.
  ``optim.clip_grad`` (off in the recipes) would clip the two players' gradients by their joint norm.
  ``loss`` then includes ``L_D``; the logs show ``loss_rec``, ``loss_adv`` (``L_adv``), ``loss_d`` and ``d_acc``
  (D's accuracy, real and predicted regions averaged; 0.5 is chance).

Recipe defaults (official ``train.lua`` and README command): 128 px crops, Adam lr 2e-4 with beta1 0.5, batch 64,
25 epochs (``niter``), no weight decay; the encoder is any selfsup backbone (AlexNet's conv layers there).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
from pydantic import Field, field_validator

from torch.func import functional_call

from selfsup.losses.restoration import context_encoder_loss, inpainting_discriminator_loss, inpainting_generator_loss
from selfsup.methods.base import Method, MethodConfig, fresh_generator
from selfsup.nets.dense import feature_map
from selfsup.nets.pixel_decoder import PixelDecoder, RegionDiscriminator, map_geometry


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
    adversarial_weight: float = Field(0.0, ge=0, lt=1, description="lambda_adv of the joint loss (1 - lambda_adv) "
                                      "L2 + lambda_adv adversarial (Sec. 3.2); 0: off, no discriminator; 0.001: the "
                                      "paper's inpainting setting")
    discriminator_lr_scale: float = Field(1.0, gt=0, description="the discriminator's lr relative to optim.lr "
                                          "(0.1 with optim.lr x10: the paper's 10x higher lr for the context encoder)")
    discriminator_width: int = Field(64, ge=8, description="width of the discriminator's first convolution "
                                     "(train.lua's ndf)")
    discriminator_size: int = Field(64, ge=8, description="side in px the judged regions are resized to, a power "
                                    "of two (train.lua: the 64 px centre of a 128 px crop)")

    @field_validator("discriminator_size")
    @classmethod
    def _power_of_two(cls, v: int) -> int:
        if v & (v - 1):
            raise ValueError(f"discriminator_size must be a power of two (8, 16, 32, 64, ...), got {v}")
        return v


class ContextEncoder(Method):
    Config = ContextEncoderConfig
    default_views = "crop"
    accumulation = "plain"  # a mean over images of per-image terms

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: ContextEncoderConfig, epochs: int = 100) -> None:
        super().__init__(backbone, feat_dim, cfg, epochs)
        channels, dim, stride = map_geometry(backbone)
        self.decoder = PixelDecoder(dim, channels, stride, cfg.decoder_width)
        # built last, so the encoder-decoder's initialisation does not depend on adversarial_weight
        self.discriminator = (RegionDiscriminator(channels, cfg.discriminator_width, cfg.discriminator_size)
                              if cfg.adversarial_weight else None)

    def param_groups(self) -> list[dict]:
        """The default groups, each split into the encoder-decoder's and the discriminator's parameters, the
        latter with ``lr_scale`` x ``discriminator_lr_scale``."""
        groups = super().param_groups()
        if self.discriminator is None:
            return groups
        d_ids = {id(p) for p in self.discriminator.parameters()}
        split = []
        for g in groups:
            split.append({**g, "params": [p for p in g["params"] if id(p) not in d_ids]})
            split.append({**g, "params": [p for p in g["params"] if id(p) in d_ids],
                          "lr_scale": g.get("lr_scale", 1.0) * self.cfg.discriminator_lr_scale})
        return split

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

    def regions(self, x: torch.Tensor, pred: torch.Tensor, hole: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(real, predicted)`` regions the discriminator judges: the centre square (``central``) or the whole
        image with the hole filled by ``pred`` (``random_block``)."""
        if self.cfg.region == "random_block":
            return x, torch.where(hole, pred, x)
        h, w = x.shape[-2:]
        sh, sw = round(self.cfg.region_size * h), round(self.cfg.region_size * w)
        t, l = (h - sh) // 2, (w - sw) // 2
        return x[..., t:t + sh, l:l + sw], pred[..., t:t + sh, l:l + sw]

    def frozen_discriminator(self, x: torch.Tensor) -> torch.Tensor:
        """D's logits with its parameters detached and its BatchNorm statistics left as they are (copies are
        updated), so a loss on them reaches only ``x``'s producer."""
        d = self.discriminator
        state = {**{n: p.detach() for n, p in d.named_parameters()}, **{n: b.clone() for n, b in d.named_buffers()}}
        return functional_call(d, state, (x,))

    def adversarial_terms(self, x: torch.Tensor, pred: torch.Tensor, hole: torch.Tensor) -> dict[str, torch.Tensor]:
        """``loss_d`` (reaches D only), ``loss_adv`` (reaches the encoder-decoder only) and ``d_acc``."""
        real, fake = self.regions(x, pred, hole)
        real_logits, fake_logits = self.discriminator(real), self.discriminator(fake.detach())
        d_acc = ((real_logits > 0).float().mean() + (fake_logits < 0).float().mean()) / 2
        return {"loss_d": inpainting_discriminator_loss(real_logits, fake_logits),
                "loss_adv": inpainting_generator_loss(self.frozen_discriminator(fake)), "d_acc": d_acc}

    def forward(self, views, progress=0.0, labels=None, masks=None):
        x = views[0]
        hole = self.holes(x.shape[0], x.shape[-2], x.shape[-1], masks[0] if masks is not None else None, x.device)
        pred, feats = self.inpaint(x, hole)
        o = self.overlap_px(min(x.shape[-2:]))
        loss = context_encoder_loss(pred, x, hole, o, self.cfg.overlap_weight)
        if self.discriminator is None:
            return {"loss": loss, "feats": feats.detach(), "emb": feats.detach()}
        adv, lam = self.adversarial_terms(x, pred, hole), self.cfg.adversarial_weight
        total = (1 - lam) * loss + lam * adv["loss_adv"] + adv["loss_d"]
        return {"loss": total, "loss_rec": loss.detach(), **{k: v.detach() for k, v in adv.items()},
                "feats": feats.detach(), "emb": feats.detach()}
