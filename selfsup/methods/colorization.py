"""Colorization (Zhang, Isola & Efros 2016, "Colorful Image Colorization", ECCV): from the lightness L of an
image, predict its colours as a distribution over quantised ab bins, per location.

- The network sees L only: the Lab image with a = b = 0, i.e. the neutral grey of the same lightness, as an sRGB
  image normalised like the views (so the backbone's input stays a normalised RGB image, as at evaluation).
- The output is a dense head (:func:`selfsup.nets.pixel_decoder.dense_classifier`) on the backbone's feature
  map (:func:`selfsup.nets.dense.feature_map`), its logits resized to ``1/out_stride`` of the input (the paper
  predicts at 1/4); the target ab is the image's ab, area-averaged to that resolution.
- Colours: :func:`selfsup.losses.ab_gamut_bins` on a grid of 10 (261 in-gamut bins computed in-repo; the paper's
  ``pts_in_hull.npy`` has 313, see that function), soft encoding to 5 nearest bins with sigma 5, class
  rebalancing with lambda 0.5 (Eq. 4) from the empirical prior, which :meth:`Colorization.prepare` estimates on
  ``prior_images`` training images before the first epoch and keeps in buffers (checkpointed), and the
  annealed mean (T 0.38) in :meth:`Colorization.colorize`.
- The images must be colour: a 1-channel dataset (the built-in digits) is refused; the digits recipe uses
  ``data.format: colour_digits`` (:mod:`selfsup.data.colour_digits`).

Recipe defaults (paper Sec. 3 and supplementary training details): Adam betas (0.9, 0.99), weight decay 1e-3,
lr 3e-5, batch 40, ~450k iterations (14 ImageNet epochs); the lr drops at 200k and 375k iterations are a cosine
here. The paper's VGG-style network with dilated convolutions is any selfsup backbone here (ResNet-50 in the
recipe); Zhang et al. evaluate the features on grey images, selfsup's protocols feed the colour test images.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from selfsup.colourspace import lab_to_rgb, rgb_to_lab
from selfsup.losses.colour import ab_gamut_bins, ab_prior, annealed_mean, colorization_loss, rebalancing_weights
from selfsup.methods.base import Method, MethodConfig
from selfsup.nets.dense import feature_map
from selfsup.nets.pixel_decoder import dense_classifier, map_geometry
from selfsup.views import default_mean_std


class ColorizationConfig(MethodConfig):
    name: Literal["colorization"] = "colorization"
    grid: float = Field(10.0, gt=0, description="ab quantisation step (the paper's grid size 10)")
    neighbours: int = Field(5, ge=1, description="soft encoding: nearest bins per ground-truth colour")
    sigma: float = Field(5.0, gt=0, description="soft encoding and prior smoothing: Gaussian sigma in ab units")
    lam: float = Field(0.5, ge=0, le=1, description="class rebalancing: weight of the uniform mix (lambda, Eq. 4)")
    rebalance: bool = Field(True, description="weight pixels by the rebalancing weights (false: plain soft CE)")
    prior_images: int = Field(10000, ge=1, description="training images that estimate the colour prior")
    temperature: float = Field(0.38, gt=0, description="annealed-mean temperature T for decoding (Eq. 5)")
    out_stride: int = Field(4, ge=1, description="predictions at 1/out_stride of the input resolution")
    head_width: int = Field(256, ge=1, description="width of the dense head's 3x3 conv")


class Colorization(Method):
    Config = ColorizationConfig
    default_views = "crop"
    accumulation = "plain"  # a mean of per-pixel terms; the class weights are fixed after prepare

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: ColorizationConfig, epochs: int = 100) -> None:
        super().__init__(backbone, feat_dim, cfg, epochs)
        channels, dim, _ = map_geometry(backbone)
        if channels != 3:
            raise ValueError(f"colorization needs colour (3-channel) images, got {channels}-channel; the digits are "
                             f"grey: set data.format=colour_digits (or use a colour dataset)")
        mean, std = default_mean_std(3)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        bins = ab_gamut_bins(cfg.grid).float()
        self.register_buffer("bins", bins)
        self.register_buffer("prior", torch.full((len(bins),), 1.0 / len(bins)))
        self.register_buffer("class_weights", torch.ones(len(bins)))
        self.head = dense_classifier(dim, len(bins), cfg.head_width)
        self.prepare_images = cfg.prior_images if cfg.rebalance else 0

    def lab(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised RGB views to Lab ``[B, 3, H, W]`` (float32, no gradient)."""
        with torch.no_grad():
            return rgb_to_lab((x.float() * self.std + self.mean).clamp(0, 1))

    def grey_input(self, lab: torch.Tensor) -> torch.Tensor:
        """The network's input: the lightness alone (a = b = 0) as a normalised sRGB image."""
        with torch.no_grad():
            grey = lab_to_rgb(torch.cat([lab[:, :1], torch.zeros_like(lab[:, 1:])], 1))
            return (grey - self.mean) / self.std

    def target_ab(self, lab: torch.Tensor) -> torch.Tensor:
        """The ab the loss scores, area-averaged to the prediction's resolution."""
        s = self.cfg.out_stride
        return F.avg_pool2d(lab[:, 1:], s, s) if s > 1 else lab[:, 1:]

    def logits(self, x_in: torch.Tensor, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(bin logits [B, Q, *size], pooled features [B, D])`` of the network input ``x_in``."""
        fmap = feature_map(self.backbone, x_in)
        logits = self.head(fmap)
        if tuple(logits.shape[-2:]) != tuple(size):
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        return logits, fmap.mean((2, 3))

    def forward(self, views, progress=0.0, labels=None):
        lab = self.lab(views[0])
        ab = self.target_ab(lab)
        logits, feats = self.logits(self.grey_input(lab).to(views[0].dtype), tuple(ab.shape[-2:]))
        weights = self.class_weights if self.cfg.rebalance else None
        loss = colorization_loss(logits, ab, self.bins, weights, self.cfg.neighbours, self.cfg.sigma)
        return {"loss": loss, "feats": feats.detach(), "emb": feats.detach()}

    @torch.no_grad()
    def prepare(self, images, run_dir=None) -> dict[str, float]:
        """The empirical ab prior of the training images (at the prediction's resolution) and the class
        rebalancing weights from it (Zhang et al. Sec. 2.2), into the ``prior`` / ``class_weights`` buffers."""
        counts = torch.zeros(len(self.bins), dtype=torch.float64, device=self.bins.device)
        for x in images:
            ab = self.target_ab(self.lab(x.to(self.bins.device)))
            counts += ab_prior(ab.permute(0, 2, 3, 1).reshape(-1, 2), self.bins) * ab[:, 0].numel()
        prior = counts / counts.sum()
        self.prior.copy_(prior)
        self.class_weights.copy_(rebalancing_weights(prior, self.bins, self.cfg.lam, self.cfg.sigma))
        return {"colour_bins_seen": float((prior > 0).sum()), "max_class_weight": float(self.class_weights.max())}

    @torch.no_grad()
    def colorize(self, x: torch.Tensor) -> torch.Tensor:
        """sRGB ``[B, 3, H, W]`` in [0, 1]: the input's lightness with the annealed-mean ab (T = ``temperature``),
        upsampled to the input resolution."""
        lab = self.lab(x)
        size = tuple(s // self.cfg.out_stride for s in x.shape[-2:])
        logits, _ = self.logits(self.grey_input(lab).to(x.dtype), size)
        ab = F.interpolate(annealed_mean(logits, self.bins, self.cfg.temperature), size=tuple(x.shape[-2:]),
                           mode="bilinear", align_corners=False)
        return lab_to_rgb(torch.cat([lab[:, :1], ab], 1))
