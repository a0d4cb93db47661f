"""``colour_digits``: a built-in colour variant of the digits, for the methods that need colour (colorization).

Every image is the grey digit of :func:`selfsup.data.digits.load_digits_splits` (same split, same labels),
coloured in CIE Lab: the lightness keeps the digit (``L = 20 + 70 g`` for grey level ``g`` in [0, 1]); the strokes
are coloured by their local orientation (hue = twice the angle of the smoothed image gradient, chroma 60), as
natural objects have colours one can infer from their shape; the background gets a per-image random hue
(chroma 25, seed 0), a colour nothing in the grey image predicts. Converted to sRGB (clipped to the gamut) and
stored as uint8, it is deterministic and made offline in about a second.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from selfsup.colourspace import lab_to_rgb

from .arrays import DataSplits, ImageArray
from .digits import load_digits_splits

__all__ = ["load_colour_digits_splits", "colourise_digits"]

COLOUR_SEED = 0
STROKE_CHROMA = 60.0
BACKGROUND_CHROMA = 25.0


def colourise_digits(grey: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """uint8 ``[N, 1, H, W]`` grey digits to uint8 ``[N, 3, H, W]`` sRGB, as the module docstring says; the
    background hues come from ``generator`` (one per image, in order)."""
    g = grey.double() / 255
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]], dtype=torch.float64)
    gx = F.conv2d(F.pad(g, (1, 1, 1, 1), mode="replicate"), sobel.view(1, 1, 3, 3))
    gy = F.conv2d(F.pad(g, (1, 1, 1, 1), mode="replicate"), sobel.T.reshape(1, 1, 3, 3))
    smooth = lambda t: F.avg_pool2d(F.pad(t, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    jxx, jyy, jxy = smooth(gx * gx), smooth(gy * gy), smooth(gx * gy)
    hue = torch.atan2(2 * jxy, jxx - jyy)  # twice the gradient angle: opposite gradients, same colour
    psi = torch.rand(g.shape[0], generator=generator, dtype=torch.float64).view(-1, 1, 1, 1) * 2 * math.pi
    a = g * STROKE_CHROMA * torch.cos(hue) + (1 - g) * BACKGROUND_CHROMA * torch.cos(psi)
    b = g * STROKE_CHROMA * torch.sin(hue) + (1 - g) * BACKGROUND_CHROMA * torch.sin(psi)
    rgb = lab_to_rgb(torch.cat([20 + 70 * g, a, b], 1))
    return (rgb * 255).round().clamp(0, 255).to(torch.uint8)


def load_colour_digits_splits(image_size: int = 32) -> DataSplits:
    """The digits split (1437 train / 360 test, 10 classes) as 3-channel uint8 ``image_size`` squares,
    coloured by :func:`colourise_digits` with one generator seeded ``COLOUR_SEED`` (train rows, then test)."""
    d = load_digits_splits(image_size)
    gen = torch.Generator().manual_seed(COLOUR_SEED)
    tr, te = (colourise_digits(s.images, gen) for s in (d.train, d.test))
    return DataSplits(train=ImageArray(tr, d.train.labels, d.train.classes),
                      test=ImageArray(te, d.test.labels, d.test.classes), name="colour_digits",
                      num_classes=d.num_classes)
