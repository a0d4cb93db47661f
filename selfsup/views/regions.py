"""Crops with known geometry and unsupervised image regions, for the dense methods that need to know where each
view came from (VICRegL's location matching, DetCon's masks warped by each view's crop).

The trainer hands a method finished views only, so these methods take *uncropped* photometric views (their
recipes set ``views.params: {scale: [1, 1], ratio: [1, 1], flip_p: 0}``) and crop them themselves with boxes
drawn in the main process (``Method.make_masks``): :func:`sample_crops` draws boxes as fractions of the image
side, :func:`apply_crops` cuts them (the same bilinear crop-and-resize as every selfsup view).
:func:`kmeans_regions` is a deterministic in-repo segmentation (k-means over colour and position, seeded on a
grid, SLIC-like); :func:`felzenszwalb_regions` uses scikit-image's Felzenszwalb-Huttenlocher graph segmentation
(DetCon's default masks) when scikit-image is installed (``pip install 'selfsup[dense]'``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from selfsup.views.crop import resized_crop_flip, sample_apply, sample_crop_params

_NOMINAL = 4096  # boxes are drawn on a nominal square of this side, then kept as fractions


def sample_crops(batch: int, n_views: int, scale: tuple[float, float], ratio: tuple[float, float],
                 flip_p: float, generator: torch.Generator) -> torch.Tensor:
    """``[batch, n_views, 5]`` float64 crops ``(top, left, height, width, flip)``, box coordinates as fractions of
    the image side (RandomResizedCrop's distribution on a square image), drawn in view order from ``generator``."""
    out = []
    for _ in range(n_views):
        boxes = sample_crop_params(batch, _NOMINAL, _NOMINAL, scale, ratio, generator).to(torch.float64) / _NOMINAL
        flip = sample_apply(batch, flip_p, generator).to(torch.float64)
        out.append(torch.cat([boxes, flip[:, None]], 1))
    return torch.stack(out, 1)


def apply_crops(x: torch.Tensor, crops: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Cut each image of ``x`` ``[B, C, H, W]`` (float) to its crop ``[B, 5]`` (see :func:`sample_crops`),
    flipped where flagged, resized to ``size``."""
    h, w = x.shape[-2:]
    c = crops.detach().cpu().to(torch.float64)
    boxes = torch.stack([c[:, 0] * h, c[:, 1] * w, c[:, 2] * h, c[:, 3] * w], 1)
    return resized_crop_flip(x, boxes, c[:, 4] > 0.5, size)


def one_hot_regions(labels: torch.Tensor, n: int) -> torch.Tensor:
    """``[B, H, W]`` integer region ids in ``[0, n)`` -> float masks ``[B, n, H, W]``."""
    return F.one_hot(labels.long(), n).permute(0, 3, 1, 2).to(torch.float32)


@torch.no_grad()
def kmeans_regions(images: torch.Tensor, n_regions: int = 16, position_weight: float = 1.0,
                   iters: int = 10) -> torch.Tensor:
    """Deterministic regions ``[B, H, W]`` (ids in ``[0, n_regions)``) of images ``[B, C, H, W]``: Lloyd's k-means
    on each pixel's (standardised colour, ``position_weight`` x position in image sides) features, the centres
    started on a regular grid of ``ceil(sqrt(n))`` x ``ceil(sqrt(n))`` pixels, batched over images (SLIC-like
    superpixels without the local search window). Same input, same regions: no random draws."""
    b, c, h, w = images.shape
    x = images.float()
    x = (x - x.mean((2, 3), keepdim=True)) / x.std((2, 3), keepdim=True).clamp_min(1e-6)
    ys = (torch.arange(h, device=x.device, dtype=torch.float32) + 0.5) / h
    xs = (torch.arange(w, device=x.device, dtype=torch.float32) + 0.5) / w
    pos = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), 0)[None].expand(b, -1, -1, -1)
    feats = torch.cat([x, position_weight * math.sqrt(c) * pos], 1).flatten(2).transpose(1, 2)  # [B, HW, c+2]
    side = math.ceil(math.sqrt(n_regions))
    gy = ((torch.arange(side, device=x.device) + 0.5) * h / side).long().clamp_max(h - 1)
    gx = ((torch.arange(side, device=x.device) + 0.5) * w / side).long().clamp_max(w - 1)
    seeds = (gy[:, None] * w + gx[None, :]).flatten()[:n_regions]
    centres = feats[:, seeds]  # [B, n, c+2]
    for _ in range(iters):
        assign = torch.cdist(feats, centres).argmin(-1)  # [B, HW]
        onehot = F.one_hot(assign, n_regions).to(feats.dtype)  # [B, HW, n]
        count = onehot.sum(1)[..., None]
        mean = onehot.transpose(1, 2) @ feats / count.clamp_min(1)
        centres = torch.where(count > 0, mean, centres)
    return torch.cdist(feats, centres).argmin(-1).view(b, h, w)


def felzenszwalb_regions(images: torch.Tensor, n_regions: int = 16, scale: float = 1000.0, sigma: float = 0.8,
                         min_size: int = 1000) -> torch.Tensor:
    """Felzenszwalb-Huttenlocher regions ``[B, H, W]`` (scikit-image, on CPU, per image), ids in
    ``[0, n_regions)``: the ``n_regions - 1`` largest segments keep their own id, the rest share the last.
    ``min_size`` is in pixels at 224 px and scaled with the image area. Raises ImportError without scikit-image."""
    try:
        from skimage.segmentation import felzenszwalb
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("segmentation 'felzenszwalb' needs scikit-image: pip install 'selfsup[dense]' (or use "
                          "method.segmentation=kmeans)") from e
    b, c, h, w = images.shape
    arr = images.detach().float().cpu()
    arr = (arr - arr.amin((1, 2, 3), keepdim=True)) / (arr.amax((1, 2, 3), keepdim=True)
                                                      - arr.amin((1, 2, 3), keepdim=True)).clamp_min(1e-6)
    size = max(1, int(min_size * h * w / 224 ** 2))
    out = torch.empty(b, h, w, dtype=torch.long)
    for i in range(b):
        img = arr[i].permute(1, 2, 0).numpy()
        seg = torch.from_numpy(felzenszwalb(img if c == 3 else img[..., 0], scale=scale, sigma=sigma,
                                            min_size=size, channel_axis=-1 if c == 3 else None)).long()
        areas = torch.bincount(seg.flatten())
        rank = torch.empty_like(areas)
        rank[torch.argsort(areas, descending=True, stable=True)] = torch.arange(areas.numel())
        out[i] = rank[seg].clamp_max(n_regions - 1)
    return out.to(images.device)
