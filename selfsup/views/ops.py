"""Functional batched augmentation ops (float images in [0, 1], per-sample parameters).

Gaussian blur, solarization and normalisation live here; crop/flip and colour ops are
re-exported from :mod:`selfsup.views.crop` and :mod:`selfsup.views.color` so that
``selfsup.views.ops`` is the one place to import every op from. Blur and solarization are
BYOL's asymmetric augmentations (Cookbook, Sec. "Role of Data-Augmentation").
Parameter sampling (``sample_*``) is separate from application so the math can be tested.

Hand-written rather than built on kornia.augmentation: on the same view specs (32 px,
batch 256, 1 thread, 2-core AMD EPYC) these ops measured 2.4x (simclr), 2.0x (byol) and
3.0x (multicrop) kornia 0.9's throughput (benchmarks/augment.py --kornia), and selfsup
keeps torch/torchvision as its only imaging dependencies.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.views.color import (
    JitterParams,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    color_jitter,
    on_rows,
    random_grayscale,
    rgb_to_grayscale,
    rows_in_place,
    sample_jitter_params,
)
from selfsup.views.crop import check_generator, crop_theta, resized_crop_flip, sample_apply, sample_crop_params

__all__ = [
    "JitterParams",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_hue",
    "adjust_saturation",
    "blur_kernel_size",
    "blur_radius",
    "check_generator",
    "color_jitter",
    "crop_theta",
    "gaussian_blur",
    "gaussian_kernels",
    "normalize",
    "random_grayscale",
    "resized_crop_flip",
    "rgb_to_grayscale",
    "sample_apply",
    "sample_blur_sigma",
    "sample_crop_params",
    "sample_jitter_params",
    "solarize",
]


def blur_kernel_size(image_size: int) -> int:
    """SimCLR's blur kernel: ~10% of the image side, made odd, at least 3 (23 for 224 px)."""
    if image_size <= 0:
        raise ValueError(f"image_size must be positive, got {image_size}")
    k = int(0.1 * image_size)
    return max(3, k if k % 2 == 1 else k + 1)


def sample_blur_sigma(batch: int, sigma: tuple[float, float], generator: torch.Generator) -> Tensor:
    """Per-sample blur std ``sigma ~ U(sigma_min, sigma_max)``, CPU ``Tensor[B]``."""
    check_generator(generator)
    if len(sigma) != 2 or not 0.0 < sigma[0] <= sigma[1]:
        raise ValueError(f"blur_sigma must be (min, max) with 0 < min <= max, got {sigma}")
    return sigma[0] + (sigma[1] - sigma[0]) * torch.rand(batch, generator=generator)


def gaussian_kernels(sigma: Tensor, kernel_size: int) -> Tensor:
    """Normalised 1-D Gaussian kernels ``k_b(t) ∝ exp(-t^2 / (2 sigma_b^2))``, ``t = -(K-1)/2..(K-1)/2``.

    Returns ``Tensor[B, K]`` (same dtype/device as ``sigma``).
    """
    if kernel_size <= 0 or kernel_size % 2 == 0:
        raise ValueError(f"blur kernel_size must be a positive odd int, got {kernel_size}")
    t = torch.arange(kernel_size, dtype=sigma.dtype, device=sigma.device) - (kernel_size - 1) / 2.0
    k = torch.exp(-0.5 * (t / sigma.unsqueeze(1)) ** 2)
    return k / k.sum(dim=1, keepdim=True)


def blur_radius(sigma: Tensor, kernel_size: int) -> Tensor:
    """Per-sample kernel radius ``r_b = clamp(ceil(4 sigma_b), 1, (K - 1) / 2)``, ``Tensor[B]`` int64."""
    return torch.ceil(4.0 * sigma.to(torch.float64)).clamp_(1, (kernel_size - 1) // 2).to(torch.int64)


def _shift_add(xp: Tensor, k: Tensor, length: int, dim: int, out: Tensor | None = None) -> Tensor:
    """``sum_j k[:, j] * xp.narrow(dim, j, length)``: a 1-D correlation along ``dim`` as one pass per tap
    (per-sample weights ``k: Tensor[n, taps]``; one sample: python-float weights)."""
    taps = k.shape[1]
    if xp.shape[0] == 1:
        kw = k[0].tolist()
        out = torch.mul(xp.narrow(dim, 0, length), kw[0], out=out)
        for j in range(1, taps):
            out.add_(xp.narrow(dim, j, length), alpha=kw[j])
        return out
    kv = k.view(-1, 1, 1, 1, taps).unbind(-1)
    out = torch.mul(xp.narrow(dim, 0, length), kv[0], out=out)
    for j in range(1, taps):
        out.addcmul_(xp.narrow(dim, j, length), kv[j])
    return out


def _blur_radius_group(x: Tensor, sigma: Tensor, r: int, out: Tensor | None = None) -> Tensor:
    """Blur samples that share the radius ``r`` (kernels of ``2 r + 1`` taps), reflect padding."""
    b, c, h, w = x.shape
    k = gaussian_kernels(sigma.to(torch.float64), 2 * r + 1).to(device=x.device, dtype=x.dtype)
    xp = F.pad(x, (r, r, r, r), mode="reflect")
    if x.device.type == "cpu":
        # Shifted multiply-adds, the vertical pass first (its shifted slices are contiguous rows);
        # measured faster than the grouped conv below on CPU at every size here, contiguous or channels_last.
        return _shift_add(_shift_add(xp, k, h, 2), k, w, 3, out)
    kk = k.repeat_interleave(c, dim=0)
    y = F.conv2d(xp.reshape(1, b * c, h + 2 * r, w + 2 * r), kk.view(b * c, 1, 1, 2 * r + 1), groups=b * c)
    y = F.conv2d(y, kk.view(b * c, 1, 2 * r + 1, 1), groups=b * c).view(b, c, h, w)
    return y if out is None else out.copy_(y)


def _check_kernel(x: Tensor, kernel_size: int) -> None:
    h, w = x.shape[-2:]
    if kernel_size // 2 >= min(h, w):
        raise ValueError(f"blur kernel_size {kernel_size} too large for {h}x{w} images; use kernel_size < {2 * min(h, w)}")


def _blur_all(x: Tensor, sigma: Tensor, kernel_size: int, inplace: bool = False) -> Tensor:
    _check_kernel(x, kernel_size)
    radius = blur_radius(sigma.cpu(), kernel_size)
    radii = radius.unique().tolist()
    if len(radii) == 1:
        return _blur_radius_group(x, sigma, radii[0], x if inplace and x.device.type == "cpu" else None)
    out = x if inplace else torch.empty_like(x)
    for r in radii:
        idx = torch.nonzero(radius == r).squeeze(1)
        if idx.numel() == 1:  # one sample: blur its slice, no gather
            i = int(idx)
            _blur_radius_group(x[i : i + 1], sigma[i : i + 1], r, out[i : i + 1])
            continue
        dev_idx = idx.to(x.device, non_blocking=True)
        out.index_copy_(0, dev_idx, _blur_radius_group(x.index_select(0, dev_idx), sigma.cpu()[idx], r))
    return out


def _blur_each(x: Tensor, sigma: Tensor, kernel_size: int, apply: Tensor, inplace: bool) -> Tensor:
    """Large CPU images: blur each selected sample's slice in place (its padded copy is read, then the slice is
    written), with no gather and scatter of the selected rows: the same arithmetic as a one-sample radius group,
    which a test checks is bit-identical to the grouped path."""
    _check_kernel(x, kernel_size)
    out = x if inplace else x.clone()
    sigma = sigma.cpu()
    radius = blur_radius(sigma, kernel_size).tolist()
    for i in torch.nonzero(apply).squeeze(1).tolist():
        _blur_radius_group(out[i : i + 1], sigma[i : i + 1], radius[i], out[i : i + 1])
    return out


def gaussian_blur(x: Tensor, sigma: Tensor, kernel_size: int, apply: Tensor | None = None,
                  inplace: bool = False) -> Tensor:
    """Per-sample Gaussian blur with reflect padding (as torchvision ``gaussian_blur``).

    ``sigma: Tensor[B]``; ``apply: Tensor[B]`` bool selects the samples to blur (others are
    returned unchanged, and cost nothing). ``inplace=True`` writes the blurred samples into ``x``.

    What differs from torchvision: each sample's kernel stops at ``r_b = ceil(4 sigma_b)`` taps from
    the centre (:func:`blur_radius`; never more than ``kernel_size // 2``, torchvision's own cut) and
    is renormalised. The Gaussian's mass beyond 4 sigma is 6.3e-5, so a pixel moves by at most about
    2.5e-4 (0.07 / 255) from torchvision's ``kernel_size`` blur (tests/test_views.py bounds it), while
    SimCLR's sigma in [0.1, 2] at 224 px needs 3-17 taps instead of 23. Samples are grouped by radius;
    on CPU each group is a separable pass of shifted multiply-adds, elsewhere a grouped conv.
    """
    if sigma.shape != (x.shape[0],):
        raise ValueError(f"sigma must be Tensor[{x.shape[0]}], got {tuple(sigma.shape)}")
    if apply is None:
        return _blur_all(x, sigma, kernel_size, inplace)
    apply = apply.cpu()
    if not bool(apply.any()):
        return x
    if rows_in_place(x):
        return _blur_each(x, sigma, kernel_size, apply, inplace)
    if bool(apply.all()):
        return _blur_all(x, sigma, kernel_size, inplace)
    idx = torch.nonzero(apply).squeeze(1)
    dev_idx = idx.to(x.device, non_blocking=True)
    blurred = _blur_all(x.index_select(0, dev_idx), sigma.cpu()[idx], kernel_size)
    return x.index_copy_(0, dev_idx, blurred) if inplace else x.index_copy(0, dev_idx, blurred)


def solarize(x: Tensor, apply: Tensor, threshold: float = 0.5, inplace: bool = False) -> Tensor:
    """Solarization: ``x' = 1 - x`` where ``x >= threshold`` (default half the range), per sample.

    Only the samples where ``apply`` is True are touched (``inplace=True``: in ``x``); the others cost nothing.
    """
    idx = torch.nonzero(apply.cpu()).squeeze(1)
    if idx.numel() == 0:
        return x
    out = x if inplace else x.clone()

    def flip_bright(v: Tensor, _rows: slice | Tensor) -> Tensor:
        if threshold == 0.5:
            # where(x >= 0.5, 1 - x, x) == x - relu(2x - 1), exactly (Sterbenz): 4x faster than torch.where on CPU.
            return v.sub_(torch.relu_(v * 2.0 - 1.0))
        return torch.where(v >= threshold, 1.0 - v, v, out=v)

    return on_rows(out, idx, flip_bright)


def normalize(x: Tensor, mean: Sequence[float] | Tensor, std: Sequence[float] | Tensor, inplace: bool = False,
              out: Tensor | None = None) -> Tensor:
    """Per-channel ``(x - mean) / std`` (``out``: written there, e.g. a slice of a preallocated batch)."""
    c = x.shape[-3]
    if not isinstance(std, Tensor) and any(float(s) <= 0 for s in std):
        raise ValueError(f"std must be positive, got {list(std)}")
    mean_t = torch.as_tensor(mean, dtype=x.dtype, device=x.device).reshape(-1)
    std_t = torch.as_tensor(std, dtype=x.dtype, device=x.device).reshape(-1)
    if mean_t.numel() != c or std_t.numel() != c:
        raise ValueError(f"mean/std need {c} values for {c}-channel images, got {mean_t.numel()} and {std_t.numel()}")
    if out is not None:
        return torch.sub(x, mean_t.view(c, 1, 1), out=out).div_(std_t.view(c, 1, 1))
    out = x if inplace else x.clone()
    return out.sub_(mean_t.view(c, 1, 1)).div_(std_t.view(c, 1, 1))
