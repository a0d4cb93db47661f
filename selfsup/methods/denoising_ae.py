"""Denoising autoencoder (Vincent, Larochelle, Bengio & Manzagol 2008, "Extracting and Composing Robust Features
with Denoising Autoencoders", ICML): corrupt the input with masking noise, reconstruct the clean input.

- Masking noise (Sec. 2.3): a fixed number ``round(noise * H * W)`` of each image's pixels, chosen at random,
  is forced to 0 (black, all channels: ``(0 - mean) / std`` in the normalised input). Each image's choice comes
  from its own seed, drawn in the main process by :meth:`make_masks` from the trainer's per-step generator,
  so it is independent of the image size, the batch split and the number of processes.
- Reconstruction: :class:`selfsup.nets.pixel_decoder.PixelDecoder` on the backbone's feature map
  (:func:`selfsup.nets.dense.feature_map`), squared error to the clean normalised image
  (:func:`selfsup.losses.denoising_loss`), optionally emphasising the corrupted pixels with ``alpha`` and the
  others with ``beta`` (Vincent et al. 2010, JMLR, Sec. 4.3); ``alpha = beta = 1`` is the 2008 paper.
- The paper trains one layer at a time and stacks them; here the backbone and decoder are trained end to end
  (the deep convolutional form later methods, MAE and SimMIM, descend from).

Recipe defaults: noise 0.25 (the paper's destruction fraction for MNIST variants, chosen from {0.1, 0.25, 0.4});
the paper's optimisation (plain SGD of one tied-weight layer at a time) has no counterpart for a deep backbone, so
the recipe uses Adam 1e-3, batch 256, 100 epochs (selfsup's choice, as its provenance rows say).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
from pydantic import Field

from selfsup.losses.restoration import denoising_loss
from selfsup.methods.base import Method, MethodConfig, fresh_generator
from selfsup.nets.dense import feature_map
from selfsup.nets.pixel_decoder import PixelDecoder, map_geometry
from selfsup.views import default_mean_std


class DenoisingAEConfig(MethodConfig):
    name: Literal["denoising_ae"] = "denoising_ae"
    noise: float = Field(0.25, ge=0, lt=1, description="masking noise: fraction of each image's pixels zeroed")
    alpha: float = Field(1.0, ge=0, description="squared-error weight of the corrupted pixels")
    beta: float = Field(1.0, ge=0, description="squared-error weight of the uncorrupted pixels")
    decoder_width: int = Field(64, ge=16, description="width of the decoder's first up-convolution")


class DenoisingAE(Method):
    Config = DenoisingAEConfig
    default_views = "crop"
    accumulation = "plain"  # a mean of per-pixel terms, the same count in every image

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: DenoisingAEConfig, epochs: int = 100) -> None:
        super().__init__(backbone, feat_dim, cfg, epochs)
        channels, dim, stride = map_geometry(backbone)
        self.decoder = PixelDecoder(dim, channels, stride, cfg.decoder_width)
        mean, std = default_mean_std(channels)
        black = [-m / s for m, s in zip(mean, std)]
        self.register_buffer("black", torch.tensor(black).view(1, channels, 1, 1), persistent=False)

    def make_masks(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor]:
        """One int64 seed per image; :meth:`corruption` turns it into that image's zeroed pixels."""
        return (torch.randint(0, 2**62, (batch,), generator=generator),)

    def corruption(self, seeds: torch.Tensor, h: int, w: int, device: torch.device) -> torch.Tensor:
        """Bool ``[B, 1, h, w]``: exactly ``round(noise * h * w)`` pixels of each image, chosen from its seed."""
        k = round(self.cfg.noise * h * w)
        mask = torch.zeros(len(seeds), h * w, dtype=torch.bool)
        for i, s in enumerate(seeds.tolist()):
            mask[i, torch.randperm(h * w, generator=torch.Generator().manual_seed(s))[:k]] = True
        return mask.view(-1, 1, h, w).to(device)

    def denoise(self, x: torch.Tensor, corrupted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(reconstruction [B, C, H, W], pooled features [B, D])`` of ``x`` with ``corrupted`` pixels zeroed."""
        x_tilde = torch.where(corrupted, self.black.to(x.dtype), x)
        fmap = feature_map(self.backbone, x_tilde)
        return self.decoder(fmap, tuple(x.shape[-2:])), fmap.mean((2, 3))

    def forward(self, views, progress=0.0, labels=None, masks=None):
        x = views[0]
        seeds = masks[0] if masks is not None else self.make_masks(x.shape[0], fresh_generator())[0]
        corrupted = self.corruption(seeds.cpu(), x.shape[-2], x.shape[-1], x.device)
        recon, feats = self.denoise(x, corrupted)
        loss = denoising_loss(recon, x, corrupted, self.cfg.alpha, self.cfg.beta)
        return {"loss": loss, "feats": feats.detach(), "emb": feats.detach()}
