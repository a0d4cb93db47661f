"""Batched colour augmentations with per-sample factors (SimCLR-style colour distortion).

Colour jitter + random grayscale are the "colour distortion" that SimCLR found essential
next to cropping (Cookbook, Sec. "Role of Data-Augmentation"). All functions take float
images ``Tensor[B, C, H, W]`` in [0, 1] with C in {1, 3} and per-sample factors
``Tensor[B]``; formulas follow torchvision.transforms.v2.functional so results match it.
For 1-channel images saturation and hue are no-ops (as in torchvision / PIL).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from selfsup.views.crop import check_generator

__all__ = [
    "JitterParams",
    "rgb_to_grayscale",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_saturation",
    "adjust_hue",
    "sample_jitter_params",
    "color_jitter",
    "random_grayscale",
    "on_rows",
]

# ITU-R 601-2 luma weights, the ones torchvision and PIL use.
_LUMA = (0.2989, 0.587, 0.114)


def _per_sample(factor: Tensor, x: Tensor) -> Tensor:
    return factor.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1)


def rgb_to_grayscale(x: Tensor) -> Tensor:
    """Luma ``L = 0.2989 R + 0.587 G + 0.114 B`` as ``Tensor[B, 1, H, W]`` (1-channel: x itself)."""
    if x.shape[-3] == 1:
        return x
    r, g, b = x.unbind(dim=-3)
    return (r * _LUMA[0]).add_(g, alpha=_LUMA[1]).add_(b, alpha=_LUMA[2]).unsqueeze(-3)


def _blend(x: Tensor, other: Tensor, factor: Tensor, inplace: bool) -> Tensor:
    """``clamp(f x + (1 - f) other, 0, 1)`` with a per-sample ``f``."""
    # (1 - f) other first: addcmul_ with two broadcast operands measured 1.6x slower for contrast's [B, 1, 1, 1] mean.
    f = _per_sample(factor, x)
    return (x.mul_(f) if inplace else x * f).add_(other * (1.0 - f)).clamp_(0.0, 1.0)


# Every op takes ``inplace``: True overwrites ``x`` (color_jitter's rows), saving an allocation and a pass.


def adjust_brightness(x: Tensor, factor: Tensor, inplace: bool = False) -> Tensor:
    """Brightness: ``clamp(b x, 0, 1)`` per sample."""
    f = _per_sample(factor, x)
    return (x.mul_(f) if inplace else x * f).clamp_(0.0, 1.0)


def adjust_contrast(x: Tensor, factor: Tensor, inplace: bool = False) -> Tensor:
    """Contrast: ``clamp(c x + (1 - c) mean(L(x)), 0, 1)``, mean over the whole image."""
    # The mean of the luma plane, not sum_c w_c mean(x_c): that reduces 3x the elements and measured 1.4x slower.
    mean = rgb_to_grayscale(x).mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(x, mean, factor, inplace)


def adjust_saturation(x: Tensor, factor: Tensor, inplace: bool = False) -> Tensor:
    """Saturation: ``clamp(s x + (1 - s) L(x), 0, 1)``; a no-op for 1-channel images."""
    if x.shape[-3] == 1:
        return x
    return _blend(x, rgb_to_grayscale(x), factor, inplace)


def adjust_hue(x: Tensor, factor: Tensor, inplace: bool = False) -> Tensor:
    """Hue shift ``h' = (h + delta) mod 1`` in HSV space; a no-op for 1-channel images.

    RGB -> hue uses the usual piecewise formula (e.g. ``h = (G - B) / (6 (max - min))`` when
    R is the max); back to RGB with the closed form
    ``c_n = V - (V - m) clamp(min(k_n, 4 - k_n), 0, 1)``, ``k_n = (n + 6 h') mod 6``,
    ``n = 5, 3, 1`` for R, G, B, since a hue shift keeps ``V = max`` and ``m = min``.
    Hand-written instead of a full RGB->HSV->RGB round trip: fewer passes over the data.
    """
    if x.shape[-3] == 1:
        return x
    r, g, b = x.unbind(dim=-3)
    # Elementwise maximum/minimum of the three planes, in-place chains and one contiguous output plane
    # per channel (``addcmul`` into ``out``): no broadcast over the channel dim, which measured slow on
    # CPU: about 1.9x faster at 224 px and 1.2x at 32 px than the broadcast form (interleaved A/B, median of
    # 12 calls, 1 thread, 2-core dev box; absolute times varied 2x between runs there). benchmarks/view_ops.py
    # times each op against torchvision's per-image ops.
    maxc = torch.maximum(torch.maximum(r, g), b)
    delta = maxc - torch.minimum(torch.minimum(r, g), b)
    # Sector masks as float arithmetic rather than torch.where / aminmax / gather, which
    # measured 2-5x slower on CPU. Ties pick R before G before B, as torchvision does;
    # delta == 0 pixels give out = max.
    m_r = (maxc == r).to(x.dtype)
    m_g = (maxc == g).to(x.dtype).mul_(1.0 - m_r)
    m_b = (1.0 - m_r).sub_(m_g)
    h6 = m_r.mul_(g - b)
    h6.addcmul_(m_g, (b - r).add_(delta, alpha=2.0)).addcmul_(m_b, (r - g).add_(delta, alpha=4.0))
    h6.div_(delta.clamp_min(1e-12)).add_(6.0 * _per_sample(factor, x).squeeze(1))
    out = x if inplace else torch.empty_like(x)  # r, g, b are not read below: safe to overwrite
    for c, n in enumerate((5.0, 3.0, 1.0)):
        k = h6 + n
        k.sub_(torch.floor(k / 6.0).mul_(6.0))  # k mod 6 (floor form; faster than remainder)
        k.sub_(2.0).abs_().neg_().add_(2.0).clamp_(0.0, 1.0)  # min(k, 4 - k) clamped to [0, 1]
        torch.addcmul(maxc, delta, k, value=-1.0, out=out.select(-3, c))
    return out


class JitterParams(NamedTuple):
    """Per-sample colour-jitter parameters (CPU tensors).

    factors: ``Tensor[B, 4]`` brightness, contrast, saturation, hue factors.
    order: ``Tensor[B, 4]`` int64, a random permutation of the 4 ops per sample.
    apply: ``Tensor[B]`` bool, which samples are jittered at all.
    enabled: which of the 4 ops have a non-trivial range (others are skipped).
    """

    factors: Tensor
    order: Tensor
    apply: Tensor
    enabled: tuple[bool, bool, bool, bool]


def sample_jitter_params(
    batch: int,
    brightness: float,
    contrast: float,
    saturation: float,
    hue: float,
    p: float,
    generator: torch.Generator,
) -> JitterParams:
    """Draw torchvision ``ColorJitter`` factors per sample, applied with probability ``p``.

    Brightness/contrast/saturation factors ``~ U(max(0, 1 - v), 1 + v)``, hue ``~ U(-h, h)``
    with ``0 <= h <= 0.5``; the op order is a uniform random permutation per sample.
    """
    check_generator(generator)
    for name, v in (("brightness", brightness), ("contrast", contrast), ("saturation", saturation)):
        if v < 0:
            raise ValueError(f"{name} jitter must be >= 0, got {v}")
    if not 0.0 <= hue <= 0.5:
        raise ValueError(f"hue jitter must be in [0, 0.5], got {hue}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"jitter probability must be in [0, 1], got {p}")
    u = torch.rand(batch, 4, generator=generator)
    lo = torch.tensor([max(0.0, 1.0 - brightness), max(0.0, 1.0 - contrast), max(0.0, 1.0 - saturation), -hue])
    hi = torch.tensor([1.0 + brightness, 1.0 + contrast, 1.0 + saturation, hue])
    factors = lo + (hi - lo) * u
    order = torch.rand(batch, 4, generator=generator).argsort(dim=1)  # uniform permutation per row
    apply = torch.rand(batch, generator=generator) < p
    enabled = (brightness > 0, contrast > 0, saturation > 0, hue > 0)
    return JitterParams(factors, order, apply, enabled)


_JITTER_OPS = (adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue)


def color_jitter(x: Tensor, params: JitterParams, inplace: bool = False) -> Tensor:
    """Apply brightness/contrast/saturation/hue in a random order per sample.

    In round ``r`` (of 4), op ``k`` is applied to the samples with ``order[:, r] == k``
    (and ``apply``), so every jittered sample gets each op once in its own order, and the
    total work is that of 4 ops on the jittered samples. Index sets are computed on the
    CPU (where the parameters live), so CUDA inputs need no device->host sync.
    ``inplace=True`` writes into ``x`` (saves a copy when the caller owns it).
    """
    factors, order, apply, enabled = params
    factors, order, apply = factors.cpu(), order.cpu(), apply.cpu()
    if x.shape[0] != apply.shape[0]:
        raise ValueError(f"jitter params are for batch {apply.shape[0]}, images have batch {x.shape[0]}")
    if not bool(apply.any()) or not any(enabled):
        return x
    out = x if inplace else x.clone()
    for r in range(4):
        for k, op in enumerate(_JITTER_OPS):
            if not enabled[k] or (k >= 2 and x.shape[-3] == 1):
                continue
            idx = torch.nonzero(apply & (order[:, r] == k)).squeeze(1)
            n = idx.numel()
            if n == 0:
                continue
            f = factors[:, k]
            on_rows(out, idx, lambda v, rows, op=op, f=f: op(v, f[rows], inplace=True))
    return out


# Above this many bytes per image, on_rows runs a CPU op on each run of rows in place rather than gathering the
# rows and scattering them back: the whole colour jitter on a worker's block of 8 x 224 px measured 14% faster
# that way (interleaved A/B, loaded 2-core EPYC); at 96 px (47 rows) and 32 px (256) the extra calls cost more.
_RUN_ROW_BYTES = 256 * 1024


def rows_in_place(x: Tensor) -> bool:
    """Whether per-row CPU work on ``x`` should run on row slices in place (large CPU images) rather than on
    gathered rows (:data:`_RUN_ROW_BYTES`)."""
    return x.device.type == "cpu" and x[0].numel() * x.element_size() >= _RUN_ROW_BYTES


def equal_runs(keys: list) -> list[tuple[int, int]]:
    """``(start, end)`` of each maximal run of equal consecutive ``keys``."""
    out, start = [], 0
    for j in range(1, len(keys) + 1):
        if j == len(keys) or keys[j] != keys[start]:
            out.append((start, j))
            start = j
    return out


def on_rows(x: Tensor, idx: Tensor, fn: Callable[[Tensor, slice | Tensor], Tensor]) -> Tensor:
    """Apply the in-place row op ``fn(v, rows) -> v`` to the rows ``idx`` (CPU int64, sorted) of ``x``, in place
    (``rows``: which rows ``v`` holds, a slice or an index tensor). A run of rows (one row, or all) is passed as
    a slice of ``x``, with no copy; other sets are gathered and scattered back, except for large CPU images,
    whose runs are each passed as a slice. Returns ``x``."""
    n = idx.numel()
    if n == 0:
        return x
    first = int(idx[0])
    if int(idx[-1]) - first + 1 == n:
        rows = slice(first, first + n)
        fn(x[rows], rows)
        return x
    if rows_in_place(x):
        ii = idx.tolist()
        for s, e in equal_runs([i - j for j, i in enumerate(ii)]):  # consecutive rows share i - j
            rows = slice(ii[s], ii[e - 1] + 1)
            fn(x[rows], rows)
        return x
    dev_idx = idx.to(x.device, non_blocking=True)
    return x.index_copy_(0, dev_idx, fn(x.index_select(0, dev_idx), idx))


def random_grayscale(x: Tensor, apply: Tensor, inplace: bool = False) -> Tensor:
    """Replace the samples where ``apply`` is True by their luma, repeated on all channels
    (``inplace=True``: in ``x``, converting only those samples)."""
    if x.shape[-3] == 1:
        return x
    if inplace:
        return on_rows(x, torch.nonzero(apply.cpu()).squeeze(1),
                       lambda v, rows: v.copy_(rgb_to_grayscale(v).expand_as(v)))
    mask = apply.to(x.device, non_blocking=True).view(-1, 1, 1, 1)
    return torch.where(mask, rgb_to_grayscale(x).expand_as(x), x)
