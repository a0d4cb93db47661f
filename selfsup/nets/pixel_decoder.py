"""Small heads on a backbone's dense feature map (:func:`selfsup.nets.dense.feature_map`) for the pixel-restoring
pretext tasks: :class:`PixelDecoder` (context encoder, denoising autoencoder) back to the image, and
:func:`dense_classifier` (colorization's per-location colour-bin logits); and :class:`RegionDiscriminator`, the
context encoder's optional adversary on the predicted region.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from selfsup.nets.dense import feature_map, feature_stride

__all__ = ["PixelDecoder", "RegionDiscriminator", "dense_classifier", "input_channels", "map_geometry"]


def input_channels(backbone: nn.Module) -> int:
    """The number of image channels ``backbone`` takes (its first convolution's ``in_channels``)."""
    for m in backbone.modules():
        if isinstance(m, nn.Conv2d):
            return m.in_channels
    raise ValueError(f"cannot tell the input channels of a {type(backbone).__name__} (no Conv2d)")


def map_geometry(backbone: nn.Module, probe_size: int = 64) -> tuple[int, int, int]:
    """``(input channels, feature-map channels, stride)`` of ``backbone``, measured on one ``probe_size`` image."""
    c = input_channels(backbone)
    p = next(backbone.parameters())
    was = backbone.training
    backbone.eval()
    try:
        with torch.no_grad():
            dim = feature_map(backbone, torch.zeros(1, c, probe_size, probe_size, device=p.device,
                                                    dtype=p.dtype)).shape[1]
    finally:
        backbone.train(was)
    return c, dim, feature_stride(backbone, probe_size, c)


class PixelDecoder(nn.Module):
    """Feature map ``[B, D, h, w]`` to an image ``[B, out_channels, H, W]``: log2(stride) stages of (2x nearest
    upsampling, 3x3 conv, BatchNorm, ReLU) with widths ``width, width/2, ...`` (at least 16), a 3x3 conv to
    ``out_channels``, and a final bilinear resize when ``H, W`` is not the map times the stride (DCGAN-style
    up-convolutions, as in the context encoder's decoder, Pathak et al. Fig. 2, at a small size)."""

    def __init__(self, in_dim: int, out_channels: int, stride: int, width: int = 64) -> None:
        super().__init__()
        stages = int(round(math.log2(stride))) if stride > 1 else 0
        if 2 ** stages != stride:
            raise ValueError(f"PixelDecoder needs a power-of-two feature stride, got {stride}")
        layers: list[nn.Module] = []
        c = in_dim
        for i in range(stages):
            out = max(width // 2 ** i, 16)
            layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, out, 3, padding=1, bias=False),
                       nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
            c = out
        layers.append(nn.Conv2d(c, out_channels, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, fmap: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        y = self.net(fmap)
        return y if tuple(y.shape[-2:]) == tuple(size) else F.interpolate(y, size=size, mode="bilinear",
                                                                           align_corners=False)


def dense_classifier(in_dim: int, classes: int, width: int = 256) -> nn.Sequential:
    """Per-location logits ``[B, classes, h, w]`` from a feature map: 3x3 conv, BatchNorm, ReLU, 1x1 conv
    (colorization's output layer, Zhang et al. Fig. 2, on top of the backbone's map)."""
    return nn.Sequential(nn.Conv2d(in_dim, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                         nn.ReLU(inplace=True), nn.Conv2d(width, classes, 1))


class RegionDiscriminator(nn.Module):
    """DCGAN-style discriminator (Radford et al. 2016) of the context encoder's adversarial loss (Pathak et al.
    Sec. 3.2; ``train.lua``'s ``netD`` without context conditioning): regions resized to ``size`` px (bilinear;
    the identity at ``train.lua``'s 64 px centre of a 128 px crop), log2(size / 4) 4x4 stride-2 convolutions of
    widths ``width, 2 width, ...`` with LeakyReLU(0.2) (BatchNorm after all but the first) down to a 4 x 4 map,
    then a 4x4 convolution to one logit. The map stays 4 x 4 whatever the size: on a 1 x 1 map BatchNorm over a
    batch of only real or only predicted regions would equalise their mean features and blind the logit.
    Weights drawn from N(0, 0.02), BatchNorm's scale from N(1, 0.02) (``weights_init``). Returns logits ``[B]``
    (no sigmoid: the losses take logits)."""

    def __init__(self, in_channels: int, width: int = 64, size: int = 64) -> None:
        super().__init__()
        stages = int(round(math.log2(size))) - 2
        if size < 8 or 2 ** (stages + 2) != size:
            raise ValueError(f"RegionDiscriminator needs a power-of-two size of at least 8 px, got {size}")
        layers: list[nn.Module] = []
        c = in_channels
        for i in range(stages):
            out = width * 2 ** i
            layers.append(nn.Conv2d(c, out, 4, stride=2, padding=1, bias=i == 0))
            if i > 0:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.LeakyReLU(0.2, inplace=True))
            c = out
        self.size = size
        self.features = nn.Sequential(*layers)
        self.logit = nn.Conv2d(c, 1, 4)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.logit(self.features(x)).flatten()
