"""Batched random-resized-crop + horizontal flip with per-sample parameters.

The crop is the geometric augmentation that SimCLR, BYOL, DINO and most joint-embedding
methods rely on (Cookbook, Sec. "Role of Data-Augmentation"; multi-crop in "Role of
multi-crop"). Parameters are drawn like torchvision's ``RandomResizedCrop`` but for a
whole batch at once; crop, resize and flip are then done in ONE ``F.grid_sample`` call.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["check_generator", "sample_crop_params", "sample_apply", "crop_theta", "resized_crop_flip"]


def check_generator(generator: object) -> None:
    """Raise unless ``generator`` is an explicit CPU ``torch.Generator`` (all view randomness comes from it)."""
    if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
        raise ValueError("views need an explicit CPU torch.Generator, e.g. generator=torch.Generator().manual_seed(0)")


def _check_range(name: str, value: tuple[float, float], low: float = 0.0) -> None:
    if len(value) != 2 or not (low < value[0] <= value[1]):
        raise ValueError(f"{name} must be (min, max) with {low} < min <= max, got {value}; pass e.g. {name}=(0.08, 1.0)")


def sample_apply(batch: int, p: float, generator: torch.Generator) -> Tensor:
    """Per-sample Bernoulli(p) mask, Tensor[B] bool on CPU (which samples get an op)."""
    check_generator(generator)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"probability must be in [0, 1], got {p}")
    return torch.rand(batch, generator=generator) < p


def sample_crop_params(
    batch: int,
    height: int | Tensor,
    width: int | Tensor,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator,
    tries: int = 10,
) -> Tensor:
    """Draw per-sample crop boxes like torchvision's ``RandomResizedCrop``, vectorised.

    For each sample, ``tries`` candidates are drawn with area ``s * H * W``, ``s ~ U(scale)``
    and aspect ratio ``r = exp(U(log ratio))``, giving ``w = round(sqrt(s H W r))`` and
    ``h = round(sqrt(s H W / r))``; the first candidate that fits in the image is kept and
    placed uniformly. Samples with no fitting candidate fall back to the largest centred
    crop whose aspect ratio is clamped to ``ratio`` (torchvision's fallback).

    ``height`` and ``width`` are one size for the batch (in-RAM squares) or per-sample
    ``Tensor[B]`` (each image's true size, for full-resolution streaming); the random draws are
    the same either way. Returns a CPU ``Tensor[B, 4]`` (int64) of ``(top, left, h, w)`` in
    input pixels.
    """
    check_generator(generator)
    hgt = torch.as_tensor(height, dtype=torch.float64).expand(batch).clone()
    wid = torch.as_tensor(width, dtype=torch.float64).expand(batch).clone()
    if batch and (hgt.min() <= 0 or wid.min() <= 0):
        raise ValueError(f"image size must be positive, got height={height}, width={width}")
    _check_range("scale", scale)
    _check_range("ratio", ratio)
    area = (hgt * wid)[:, None]
    u = torch.rand(batch, tries, 2, generator=generator, dtype=torch.float64)
    target_area = area * (scale[0] + (scale[1] - scale[0]) * u[..., 0])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[..., 1])
    w = torch.round(torch.sqrt(target_area * aspect))
    h = torch.round(torch.sqrt(target_area / aspect))
    valid = (w > 0) & (w <= wid[:, None]) & (h > 0) & (h <= hgt[:, None])
    first = valid.to(torch.uint8).argmax(dim=1, keepdim=True)  # index of first valid try
    found = valid.any(dim=1)
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)
    # torchvision's fallback: centre crop with the aspect ratio clamped into `ratio`.
    in_ratio = wid / hgt
    fw = torch.where(in_ratio > ratio[1], torch.round(hgt * ratio[1]), wid)
    fh = torch.where(in_ratio < ratio[0], torch.round(wid / ratio[0]), hgt)
    w = torch.where(found, w, fw)
    h = torch.where(found, h, fh)
    pos = torch.rand(batch, 2, generator=generator, dtype=torch.float64)
    top = torch.minimum(torch.floor(pos[:, 0] * (hgt - h + 1)), hgt - h)
    left = torch.minimum(torch.floor(pos[:, 1] * (wid - w + 1)), wid - w)
    top = torch.where(found, top, torch.floor((hgt - h) / 2))
    left = torch.where(found, left, torch.floor((wid - w) / 2))
    return torch.stack([top, left, h, w], dim=1).long()


def crop_theta(boxes: Tensor, flip: Tensor, height: int, width: int) -> Tensor:
    """Affine matrices ``Tensor[B, 2, 3]`` mapping output to input coords (``align_corners=False``).

    An output coordinate ``s in [-1, 1]`` maps to the input coordinate
    ``x = a s + b`` with ``a = +-w / W`` (negative when flipped) and ``b = (2 left + w) / W - 1``,
    and likewise for rows with ``h / H`` and ``top``. Pixel centres of the box are sampled,
    so a full-image crop at the input size is the identity.
    """
    boxes = boxes.to(torch.float64)
    top, left, h, w = boxes.unbind(dim=1)
    sign = 1.0 - 2.0 * flip.to(torch.float64)
    theta = torch.zeros(boxes.shape[0], 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = sign * w / width
    theta[:, 0, 2] = (2.0 * left + w) / width - 1.0
    theta[:, 1, 1] = h / height
    theta[:, 1, 2] = (2.0 * top + h) / height - 1.0
    return theta


def resized_crop_flip(x: Tensor, boxes: Tensor, flip: Tensor, size: int | tuple[int, int]) -> Tensor:
    """Crop each sample to its box, flip where ``flip`` is True, and resize to ``size``.

    One bilinear ``F.grid_sample`` (no antialiasing, border padding) on float images
    ``x: Tensor[B, C, H, W]``; ``boxes`` is ``Tensor[B, 4]`` of ``(top, left, h, w)``.
    Sizes larger than the input upsample. Returns ``Tensor[B, C, *size]`` of x's dtype.
    """
    if isinstance(size, int):
        size = (size, size)
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(f"crop size must be a positive int or (h, w), got {size}")
    if x.ndim != 4 or not x.is_floating_point():
        raise ValueError(f"resized_crop_flip expects float images Tensor[B, C, H, W], got {tuple(x.shape)} {x.dtype}")
    b, c, hgt, wid = x.shape
    if boxes.shape != (b, 4) or flip.shape != (b,):
        raise ValueError(f"boxes must be Tensor[{b}, 4] and flip Tensor[{b}], got {tuple(boxes.shape)}, {tuple(flip.shape)}")
    theta = crop_theta(boxes.cpu(), flip.cpu(), hgt, wid)
    # The grid is separable (x depends on the column only, y on the row only), so build it by
    # broadcasting instead of F.affine_grid: measured 2.3 ms -> 0.3 ms for 256 x 32^2 on CPU.
    s_w = (torch.arange(size[1], dtype=torch.float64) * 2 + 1) / size[1] - 1
    s_h = (torch.arange(size[0], dtype=torch.float64) * 2 + 1) / size[0] - 1
    gx = theta[:, 0, 0, None] * s_w + theta[:, 0, 2, None]
    gy = theta[:, 1, 1, None] * s_h + theta[:, 1, 2, None]
    # Clamp to the box's outermost pixel centres, so samples never mix in pixels from
    # outside the crop (what cropping then resizing does, e.g. torchvision's resized_crop).
    top, left, h, w = boxes.cpu().to(torch.float64).unbind(dim=1)
    gx = torch.clamp(gx, ((2 * left + 1) / wid - 1)[:, None], ((2 * (left + w) - 1) / wid - 1)[:, None])
    gy = torch.clamp(gy, ((2 * top + 1) / hgt - 1)[:, None], ((2 * (top + h) - 1) / hgt - 1)[:, None])
    gx, gy = gx.to(device=x.device, dtype=x.dtype), gy.to(device=x.device, dtype=x.dtype)
    grid = torch.stack([gx[:, None, :].expand(b, size[0], size[1]), gy[:, :, None].expand(b, size[0], size[1])], dim=-1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
