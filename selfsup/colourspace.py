"""sRGB <-> CIE Lab (D65), the colour space of colorization (Zhang et al. 2016, Sec. 2), as pure torch functions.

The formulas are the closed-form sRGB / CIE ones scikit-image's ``rgb2lab`` uses (the conversion Zhang et al.'s
code calls): sRGB companding, the sRGB-to-XYZ matrix of ``skimage.color.colorconv.xyz_from_rgb``, the D65 2-degree
white (0.95047, 1, 1.08883), then

    f(t) = t^(1/3) if t > (6/29)^3 else t / (3 (6/29)^2) + 4/29
    L = 116 f(Y/Yn) - 16,   a = 500 (f(X/Xn) - f(Y/Yn)),   b = 200 (f(Y/Yn) - f(Z/Zn))

(scikit-image rounds the two constants to 0.008856 and 7.787; the results differ by < 2e-4 in a and b).
Images are ``[..., 3, H, W]`` with RGB in [0, 1]; L is in [0, 100], a and b roughly in [-110, 110].
"""

from __future__ import annotations

import torch

__all__ = ["rgb_to_lab", "lab_to_rgb", "srgb_to_linear", "linear_to_srgb", "XYZ_FROM_RGB", "D65_WHITE"]

#: sRGB (linear) to CIE XYZ, as in scikit-image (``xyz_from_rgb``)
XYZ_FROM_RGB = ((0.412453, 0.357580, 0.180423),
                (0.212671, 0.715160, 0.072169),
                (0.019334, 0.119193, 0.950227))
#: the D65 2-degree reference white (Xn, Yn, Zn)
D65_WHITE = (0.95047, 1.0, 1.08883)
_DELTA = 6.0 / 29.0


def srgb_to_linear(c: torch.Tensor) -> torch.Tensor:
    """sRGB companding undone: ``c / 12.92`` below 0.04045, else ``((c + 0.055) / 1.055) ** 2.4``."""
    return torch.where(c > 0.04045, ((c.clamp_min(0.04045) + 0.055) / 1.055) ** 2.4, c / 12.92)


def linear_to_srgb(c: torch.Tensor) -> torch.Tensor:
    """sRGB companding: ``12.92 c`` below 0.0031308, else ``1.055 c^(1/2.4) - 0.055``."""
    return torch.where(c > 0.0031308, 1.055 * c.clamp_min(0.0031308) ** (1 / 2.4) - 0.055, 12.92 * c)


def _matrix(dtype: torch.dtype, device: torch.device, inverse: bool = False) -> torch.Tensor:
    m = torch.tensor(XYZ_FROM_RGB, dtype=torch.float64)
    m = m / torch.tensor(D65_WHITE, dtype=torch.float64)[:, None]  # rows scaled: X/Xn, Y/Yn, Z/Zn
    return (torch.linalg.inv(m) if inverse else m).to(dtype=dtype, device=device)


def rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB ``[..., 3, H, W]`` in [0, 1] to Lab ``[..., 3, H, W]`` (L, a, b), the module's formulas."""
    if rgb.ndim < 3 or rgb.shape[-3] != 3:
        raise ValueError(f"rgb_to_lab needs [..., 3, H, W] images, got shape {tuple(rgb.shape)}")
    dtype = rgb.dtype if rgb.dtype in (torch.float32, torch.float64) else torch.float32
    lin = srgb_to_linear(rgb.to(dtype))
    xyz = torch.einsum("ij,...jhw->...ihw", _matrix(dtype, rgb.device), lin)
    f = torch.where(xyz > _DELTA ** 3, xyz.clamp_min(_DELTA ** 3) ** (1 / 3), xyz / (3 * _DELTA ** 2) + 4 / 29)
    fx, fy, fz = f.unbind(-3)
    return torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], -3)


def lab_to_rgb(lab: torch.Tensor, clip: bool = True) -> torch.Tensor:
    """Lab ``[..., 3, H, W]`` back to sRGB, the inverse of :func:`rgb_to_lab`; ``clip``: to [0, 1] (colours
    outside the sRGB gamut have no exact sRGB value)."""
    if lab.ndim < 3 or lab.shape[-3] != 3:
        raise ValueError(f"lab_to_rgb needs [..., 3, H, W] images, got shape {tuple(lab.shape)}")
    if lab.dtype not in (torch.float32, torch.float64):
        lab = lab.float()
    L, a, b = lab.unbind(-3)
    fy = (L + 16) / 116
    f = torch.stack([fy + a / 500, fy, fy - b / 200], -3)
    xyz = torch.where(f > _DELTA, f ** 3, 3 * _DELTA ** 2 * (f - 4 / 29))
    lin = torch.einsum("ij,...jhw->...ihw", _matrix(lab.dtype, lab.device, inverse=True), xyz)
    rgb = linear_to_srgb(lin.clamp_min(0))
    return rgb.clamp(0, 1) if clip else rgb
