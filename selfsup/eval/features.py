"""Frozen-feature extraction for the offline protocols (kNN, probes, spectra)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _module_device(module: nn.Module) -> torch.device:
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


@torch.no_grad()
def extract_features(
    backbone: nn.Module,
    images_uint8: Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 512,
    device: torch.device | str | None = None,
    resize: int | None = None,
) -> Tensor:
    """Run ``backbone`` in eval mode on uint8 images ``[N, C, H, W]``; return fp32 features ``[N, D]`` on CPU.

    Each batch is converted to ``(x / 255 - mean) / std`` (per channel), optionally resized to
    ``resize x resize`` (bilinear, antialiased), and passed through the backbone under ``no_grad``
    on ``device`` (default: the backbone's device). Outputs with more than 2 dims are flattened.
    The train/eval flag of every submodule is restored afterwards.
    """
    if not isinstance(backbone, nn.Module):
        raise TypeError(f"backbone must be an nn.Module, got {type(backbone).__name__}")
    if not isinstance(images_uint8, Tensor) or images_uint8.dtype != torch.uint8 or images_uint8.dim() != 4:
        is_tensor = isinstance(images_uint8, Tensor)
        got = f"{images_uint8.dtype} {tuple(images_uint8.shape)}" if is_tensor else type(images_uint8).__name__
        raise ValueError(f"images_uint8 must be a uint8 tensor [N, C, H, W], got {got}")
    channels = images_uint8.shape[1]
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"mean and std need one value per channel ({channels}), got {len(mean)} and {len(std)}")
    if any(s <= 0 for s in std):
        raise ValueError(f"std values must be > 0, got {tuple(std)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if resize is not None and resize < 1:
        raise ValueError(f"resize must be a positive int or None, got {resize}")
    dev = _module_device(backbone) if device is None else torch.device(device)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=dev).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=dev).view(1, -1, 1, 1)
    modes = {m: m.training for m in backbone.modules()}
    backbone.eval()
    outputs: list[Tensor] = []
    try:
        for start in range(0, images_uint8.shape[0], batch_size):
            x = images_uint8[start : start + batch_size].to(dev, non_blocking=True).float().div_(255.0)
            if resize is not None and tuple(x.shape[-2:]) != (resize, resize):
                x = F.interpolate(x, size=(resize, resize), mode="bilinear", align_corners=False, antialias=True)
            out = backbone((x - mean_t) / std_t)
            if not isinstance(out, Tensor):
                raise TypeError(f"backbone returned {type(out).__name__}; extract_features needs a Tensor output")
            outputs.append(out.flatten(1).float().cpu())
    finally:
        for m, mode in modes.items():
            m.training = mode
    if not outputs:
        raise ValueError("images_uint8 has no images (N = 0)")
    return torch.cat(outputs)
