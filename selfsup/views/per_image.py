"""Per-image torchvision.transforms.v2 equivalents of the batched views.

For users who prefer augmenting one image at a time inside DataLoader workers, and as
the baseline of ``benchmarks/augment.py``. Each ``ViewSpec`` becomes a ``v2.Compose`` of
RandomResizedCrop, RandomHorizontalFlip, RandomApply(ColorJitter), RandomGrayscale,
RandomApply(GaussianBlur), RandomSolarize, ToDtype and Normalize, in the same order as the
batched :func:`selfsup.views.apply_view`. Differences: torchvision antialiases when it
downsizes the crop and works in uint8 until the end; randomness comes from torch's global
RNG (seeded per worker by the DataLoader), not from an explicit generator.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from torchvision.transforms import v2

from selfsup.views.paper_views import build_views
from selfsup.views.pipelines import MultiView, ViewSpec

__all__ = ["TorchvisionViews", "torchvision_view", "torchvision_views"]


def torchvision_view(spec: ViewSpec, channels: int, mean: Sequence[float], std: Sequence[float]) -> v2.Compose:
    """A per-image ``v2.Compose`` mapping a uint8 ``Tensor[C, H, W]`` to one normalised view."""
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    ops: list[Any] = [
        v2.RandomResizedCrop(spec.size, scale=spec.scale, ratio=spec.ratio, antialias=True),
        v2.RandomHorizontalFlip(spec.flip_p),
    ]
    b, c, s, h, p = spec.jitter
    if p > 0 and max(b, c, s, h) > 0:
        ops.append(v2.RandomApply([v2.ColorJitter(brightness=b, contrast=c, saturation=s, hue=h)], p=p))
    if spec.gray_p > 0 and channels == 3:
        ops.append(v2.RandomGrayscale(spec.gray_p))
    if spec.blur_p > 0:
        ops.append(v2.RandomApply([v2.GaussianBlur(spec.kernel_size, sigma=spec.blur_sigma)], p=spec.blur_p))
    if spec.solarize_p > 0:
        ops.append(v2.RandomSolarize(threshold=128, p=spec.solarize_p))  # uint8: x >= 128 <=> x/255 >= 0.5
    ops += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]
    return v2.Compose(ops)


class TorchvisionViews:
    """Callable mapping ONE uint8 image ``Tensor[C, H, W]`` to its list of views (globals first)."""

    def __init__(self, views: MultiView) -> None:
        channels = len(views.mean)
        self.n_global = views.n_global
        self.n_local = views.n_local
        self.channels = channels
        self.transforms = [torchvision_view(s, channels, views.mean, views.std) for s in views.specs]

    def __call__(self, image: Tensor) -> list[Tensor]:
        if image.ndim != 3 or image.shape[0] != self.channels or image.dtype != torch.uint8:
            raise ValueError(
                f"expected one uint8 image Tensor[{self.channels}, H, W], got {tuple(image.shape)} {image.dtype}"
            )
        return [t(image) for t in self.transforms]


def torchvision_views(
    kind: str,
    image_size: int,
    channels: int,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    **overrides: Any,
) -> TorchvisionViews:
    """Per-image equivalent of :func:`selfsup.views.build_views` (same arguments)."""
    return TorchvisionViews(build_views(kind, image_size, channels, mean, std, **overrides))
