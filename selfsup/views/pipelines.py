"""View pipelines: a ``ViewSpec`` per view and ``MultiView`` for the set (the papers' recipes are
in :mod:`selfsup.views.paper_views`).

A view is a crop (from a uint8 batch on the device, or cut by the streaming loader from each
full-resolution image, :class:`Crops`) followed by the photometric part. Everything is
batched: ``x: Tensor[B, C, H, W]`` uint8 on any device, per-sample randomness drawn on the
CPU from an explicit ``torch.Generator`` (so runs are reproducible and resume is exact).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from selfsup.views.color import JitterParams, color_jitter, equal_runs, random_grayscale, sample_jitter_params
from selfsup.views.crop import check_generator, resized_crop_flip, sample_apply, sample_crop_params
from selfsup.views.ops import blur_kernel_size, gaussian_blur, normalize, sample_blur_sigma, solarize

__all__ = [
    "ViewSpec",
    "ViewParams",
    "Crops",
    "ReadyViews",
    "sample_view_params",
    "apply_view",
    "finish_view",
    "MultiView",
    "default_mean_std",
    "mean_std_of",
    "local_crop_size",
    "replace_all",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _pair(name: str, value: Sequence[float]) -> tuple[float, float]:
    v = tuple(float(t) for t in value)
    if len(v) != 2 or not 0.0 < v[0] <= v[1]:
        raise ValueError(f"{name} must be (min, max) with 0 < min <= max, got {value}")
    return v  # type: ignore[return-value]


def _prob(name: str, p: float) -> float:
    if not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
    return float(p)


@dataclass
class ViewSpec:
    """How to make one view.

    size: output side in pixels (square). scale: crop area fraction range. ratio: aspect
    ratio range (sampled log-uniformly). flip_p: horizontal flip probability.
    jitter: (brightness, contrast, saturation, hue, p) of colour jitter.
    gray_p: random grayscale probability. blur_p, blur_sigma: Gaussian blur probability and
    std range in output pixels; blur_kernel: odd kernel side (None: ~10% of ``size``, as SimCLR).
    solarize_p: solarization probability (threshold: half the range).
    """

    size: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    flip_p: float = 0.5
    jitter: tuple[float, float, float, float, float] = (0.0, 0.0, 0.0, 0.0, 0.0)
    gray_p: float = 0.0
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel: int | None = None
    solarize_p: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size <= 0:
            raise ValueError(f"ViewSpec.size must be a positive int (output side in pixels), got {self.size!r}")
        self.scale = _pair("scale", self.scale)
        self.ratio = _pair("ratio", self.ratio)
        self.blur_sigma = _pair("blur_sigma", self.blur_sigma)
        jitter = tuple(float(t) for t in self.jitter)
        if len(jitter) != 5 or min(jitter[:4]) < 0 or jitter[3] > 0.5:
            raise ValueError(
                f"jitter must be (brightness, contrast, saturation, hue, p) with values >= 0 and hue <= 0.5, got {self.jitter}"
            )
        _prob("jitter p", jitter[4])
        self.jitter = jitter  # type: ignore[assignment]
        self.flip_p = _prob("flip_p", self.flip_p)
        self.gray_p = _prob("gray_p", self.gray_p)
        self.blur_p = _prob("blur_p", self.blur_p)
        self.solarize_p = _prob("solarize_p", self.solarize_p)
        if self.blur_kernel is not None and (self.blur_kernel <= 0 or self.blur_kernel % 2 == 0):
            raise ValueError(f"blur_kernel must be a positive odd int or None, got {self.blur_kernel}")

    @property
    def kernel_size(self) -> int:
        """Blur kernel side used for this view."""
        return self.blur_kernel if self.blur_kernel is not None else blur_kernel_size(self.size)


class ViewParams(NamedTuple):
    """All per-sample random parameters of one view (CPU tensors)."""

    boxes: Tensor  # [B, 4] (top, left, h, w)
    flip: Tensor  # [B] bool
    jitter: JitterParams
    gray: Tensor  # [B] bool
    blur: Tensor  # [B] bool
    blur_sigma: Tensor  # [B]
    solarize: Tensor  # [B] bool


def sample_view_params(spec: ViewSpec, batch: int, height: int | Tensor, width: int | Tensor,
                       generator: torch.Generator) -> ViewParams:
    """Draw every random parameter of a view on the CPU, in a fixed order (``height``/``width``: one
    size, or per-sample ``Tensor[B]`` true sizes, see :func:`sample_crop_params`)."""
    check_generator(generator)
    boxes = sample_crop_params(batch, height, width, spec.scale, spec.ratio, generator)
    flip = sample_apply(batch, spec.flip_p, generator)
    jitter = sample_jitter_params(batch, *spec.jitter, generator=generator)
    gray = sample_apply(batch, spec.gray_p, generator)
    blur = sample_apply(batch, spec.blur_p, generator)
    sigma = sample_blur_sigma(batch, spec.blur_sigma, generator)
    sol = sample_apply(batch, spec.solarize_p, generator)
    return ViewParams(boxes, flip, jitter, gray, blur, sigma, sol)


def _rows_of(params: ViewParams, rows: slice) -> ViewParams:
    """The per-sample parameters of ``rows`` only."""
    j = params.jitter
    return ViewParams(params.boxes[rows], params.flip[rows], j._replace(factors=j.factors[rows], order=j.order[rows],
                      apply=j.apply[rows]), params.gray[rows], params.blur[rows], params.blur_sigma[rows],
                      params.solarize[rows])


def _check_images(x: Tensor) -> None:
    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"views expect images Tensor[B, C, H, W] with C in (1, 3), got shape {tuple(x.shape)}")


def _to_unit_float(x: Tensor) -> Tensor:
    _check_images(x)
    if x.dtype == torch.uint8:
        return x.to(torch.float32).div_(255.0)
    if x.is_floating_point():
        return x
    raise ValueError(f"views expect uint8 images (or float in [0, 1]), got dtype {x.dtype}")


def apply_view(
    x: Tensor,
    spec: ViewSpec,
    mean: Sequence[float],
    std: Sequence[float],
    generator: torch.Generator,
    shard: tuple[int, int] = (0, 1),
) -> Tensor:
    """One augmented view of a batch: crop+flip, jitter, grayscale, blur, solarize, normalise.

    ``x``: uint8 ``Tensor[B, C, H, W]`` (or float in [0, 1]) on any device; parameters are
    drawn per sample from the CPU ``generator``. Returns float32 ``Tensor[B, C, size, size]``.
    ``shard=(rank, world)``: ``x`` is rows ``rank*B : (rank+1)*B`` of a global batch of ``world*B``;
    the parameters are drawn for the whole global batch (same generator on every rank) and this
    shard's rows are used, so the views do not depend on the number of processes.
    Resizing is bilinear without antialiasing (strong downscales alias slightly more than
    torchvision's antialiased per-image resize).
    """
    xf = _to_unit_float(x)
    b, c, h, w = xf.shape
    if len(mean) != c or len(std) != c:
        raise ValueError(f"mean/std need {c} values for {c}-channel images, got {len(mean)} and {len(std)}")
    rank, world = shard
    params = sample_view_params(spec, b * world, h, w, generator)
    if world > 1:
        params = _rows_of(params, slice(rank * b, (rank + 1) * b))
    return _photometric(resized_crop_flip(xf, params.boxes, params.flip, spec.size), spec, params, mean, std)


def _photometric(out: Tensor, spec: ViewSpec, params: ViewParams, mean: Sequence[float], std: Sequence[float],
                 dest: Tensor | None = None) -> Tensor:
    """Jitter, grayscale, blur, solarize, normalise a cropped view (float [0, 1], a fresh tensor
    that is written in place; ``dest``: the normalised view is written there instead)."""
    c = out.shape[1]
    out = color_jitter(out, params.jitter, inplace=True)
    if spec.gray_p > 0 and c == 3:
        out = random_grayscale(out, params.gray, inplace=True)
    if spec.blur_p > 0:
        out = gaussian_blur(out, params.blur_sigma, spec.kernel_size, params.blur, inplace=True)
    if spec.solarize_p > 0:
        out = solarize(out, params.solarize, inplace=True)
    # `out` is always a fresh tensor (grid_sample output or later), so normalise in place.
    return normalize(out, mean, std, inplace=True, out=dest)


def finish_view(crop: Tensor, spec: ViewSpec, params: ViewParams, mean: Sequence[float], std: Sequence[float],
                out: Tensor | None = None) -> Tensor:
    """The view from a crop already cut and resized elsewhere (the streaming loader's workers):
    ``crop`` is uint8 ``Tensor[B, C, size, size]`` of the boxes ``params.boxes``, unflipped; this
    flips where ``params.flip`` and applies the photometric part of ``spec`` with ``params``.
    ``out``: a float32 ``Tensor[B, C, size, size]`` to write the view into (returned)."""
    if crop.shape[-1] != spec.size or crop.shape[-2] != spec.size:
        raise ValueError(f"crop is {tuple(crop.shape[-2:])} but the view is {spec.size}px; cut it at the view's size")
    flip = params.flip.cpu()
    if crop.device.type == "cpu" and crop.dtype == torch.uint8 and (out is None or out.device.type == "cpu"):
        # Converted straight into ``out`` (in the loader's workers: recycled shared memory), each run of rows
        # flipped or not as it is copied, then finished in place there: no gather of the flipped rows, and one
        # float buffer per block instead of two. The same values as the path below (a test checks the bits).
        _check_images(crop)
        x = torch.empty(crop.shape, dtype=torch.float32) if out is None else out
        flips = flip.tolist()
        for s, e in equal_runs(flips):
            x[s:e].copy_(crop[s:e].flip(-1) if flips[s] else crop[s:e])
        y = _photometric(x.div_(255.0), spec, params, mean, std)
        return x if y is x else x.copy_(y)
    if bool(flip.any()):  # flip before the float conversion: a quarter of the bytes to move
        idx = torch.nonzero(flip).squeeze(1).to(crop.device)
        crop = crop.index_copy(0, idx, crop.index_select(0, idx).flip(-1))
    x = _to_unit_float(crop)
    if x is crop:
        x = x.clone()
    return _photometric(x, spec, params, mean, std, out)


class ReadyViews(NamedTuple):
    """Views already finished by the streaming loader's worker processes (CPU training: the
    workers run the photometric part too, with the parameters drawn in the main process).
    :class:`MultiView` returns them unchanged."""

    views: list[Tensor]


class Crops(NamedTuple):
    """A batch whose views were cut in the data loader: one uint8 ``Tensor[B, C, s_v, s_v]`` per view
    (globals first) and each view's parameters, drawn in the main process (see
    :meth:`MultiView.sample_params`). :class:`MultiView` turns it into views."""

    crops: list[Tensor]
    params: list[ViewParams]


class MultiView:
    """A set of views: ``n_global`` global specs then ``n_local`` local specs.

    ``views = MultiView(globals, locals, mean, std)(x_uint8, generator)`` returns a list of
    ``Tensor[B, C, size_i, size_i]``, globals first. The uint8 -> float conversion is done
    once and shared by all views.
    """

    def __init__(
        self,
        global_views: Sequence[ViewSpec],
        local_views: Sequence[ViewSpec] = (),
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        if len(global_views) == 0:
            raise ValueError("MultiView needs at least one global ViewSpec")
        for v in (*global_views, *local_views):
            if not isinstance(v, ViewSpec):
                raise ValueError(f"MultiView takes ViewSpec objects, got {type(v).__name__}")
        if len(mean) != len(std) or len(mean) not in (1, 3):
            raise ValueError(f"mean and std need 1 or 3 values each, got {len(mean)} and {len(std)}")
        if any(float(s) <= 0 for s in std):
            raise ValueError(f"std must be positive, got {tuple(std)}")
        self.global_views = list(global_views)
        self.local_views = list(local_views)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    @property
    def n_global(self) -> int:
        return len(self.global_views)

    @property
    def n_local(self) -> int:
        return len(self.local_views)

    @property
    def specs(self) -> list[ViewSpec]:
        """All view specs, globals first."""
        return self.global_views + self.local_views

    def __call__(self, x: Tensor | Crops, generator: torch.Generator, shard: tuple[int, int] = (0, 1),
                 block_bytes: int | None = None, out: Sequence[Tensor] | None = None) -> list[Tensor]:
        """The views of ``x``; ``shard=(rank, world)`` as in :func:`apply_view`.

        ``x`` is a uint8 batch (cropped here, with parameters drawn from ``generator``) or
        :class:`Crops` from the streaming loader (already cut; ``generator`` is unused, the
        parameters travel with the crops); or :class:`ReadyViews`, returned as they are.
        ``block_bytes`` (Crops only, for CPUs): finish each view in blocks of rows whose float
        tensor is about this size, so every pass stays in cache; the result is identical (the ops
        are per sample). Measured on a 2-core EPYC, one thread, 64 x 224 px SimCLR views: 10.2 ms
        per image whole, 6.6 ms in blocks of 8 rows (4.8 MB). ``out`` (Crops only): one float32 tensor per
        view to write it into (the loader's workers pass shared memory: sent to the main process uncopied)."""
        if isinstance(x, ReadyViews):
            return list(x.views)
        if isinstance(x, Crops):
            if len(x.crops) != len(self.specs) or len(x.params) != len(self.specs):
                raise ValueError(f"got {len(x.crops)} crops for {len(self.specs)} views; cut them with these views")
            if out is not None and [tuple(o.shape) for o in out] != [tuple(c.shape) for c in x.crops]:
                raise ValueError(f"out must hold one tensor per view shaped like its crops, {[tuple(c.shape) for c in x.crops]}")
            res = []
            for v, (c, spec, p) in enumerate(zip(x.crops, self.specs, x.params)):
                rows = c.shape[0] if block_bytes is None else max(1, block_bytes // (4 * c[0].numel()))
                if rows >= c.shape[0]:
                    res.append(finish_view(c, spec, p, self.mean, self.std, None if out is None else out[v]))
                    continue
                dest = torch.empty(c.shape, dtype=torch.float32, device=c.device) if out is None else out[v]
                for i in range(0, c.shape[0], rows):  # each block normalised straight into its rows (no cat)
                    finish_view(c[i : i + rows], spec, _rows_of(p, slice(i, i + rows)), self.mean, self.std,
                                dest[i : i + rows])
                res.append(dest)
            return res
        xf = _to_unit_float(x)
        if xf.shape[1] != len(self.mean):
            raise ValueError(
                f"these views were built for {len(self.mean)}-channel images, got {xf.shape[1]} channels; "
                "rebuild with matching channels/mean/std"
            )
        return [apply_view(xf, spec, self.mean, self.std, generator, shard) for spec in self.specs]

    def sample_params(self, heights: Tensor, widths: Tensor, generator: torch.Generator,
                      shard: tuple[int, int] = (0, 1)) -> list[ViewParams]:
        """Every view's parameters for a global batch of images of true sizes ``heights x widths``
        (``Tensor[B_global]`` each), drawn from ``generator`` in view order; the rows of ``shard``'s
        rank are kept. Crop boxes are in each image's own pixels (full-resolution streaming)."""
        n = int(heights.shape[0])
        rank, world = shard
        if n % world:
            raise ValueError(f"a global batch of {n} does not split over {world} processes")
        b = n // world
        out = []
        for spec in self.specs:
            p = sample_view_params(spec, n, heights, widths, generator)
            out.append(_rows_of(p, slice(rank * b, (rank + 1) * b)) if world > 1 else p)
        return out

    def __repr__(self) -> str:
        specs = ",\n  ".join(repr(s) for s in self.specs)
        return f"MultiView(n_global={self.n_global}, n_local={self.n_local}, mean={self.mean}, std={self.std},\n  {specs})"


def default_mean_std(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """ImageNet mean/std for 3 channels, ``(0.5,), (0.5,)`` for 1 channel."""
    if channels == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    if channels == 1:
        return (0.5,), (0.5,)
    raise ValueError(f"channels must be 1 or 3, got {channels}")


def mean_std_of(x: Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean/std of uint8 images ``Tensor[N, C, H, W]`` scaled to [0, 1] (chunked, float64)."""
    if x.ndim != 4 or x.dtype != torch.uint8 or x.shape[0] == 0:
        raise ValueError(f"mean_std_of expects a non-empty uint8 Tensor[N, C, H, W], got {tuple(x.shape)} {x.dtype}")
    c = x.shape[1]
    s1 = torch.zeros(c, dtype=torch.float64)
    s2 = torch.zeros(c, dtype=torch.float64)
    for i in range(0, x.shape[0], chunk):
        xc = x[i : i + chunk].to(torch.float64).div_(255.0)
        s1 += xc.sum(dim=(0, 2, 3)).cpu()
        s2 += xc.square().sum(dim=(0, 2, 3)).cpu()
    n = x.numel() // c
    mean = s1 / n
    std = (s2 / n - mean.square()).clamp_min(0).sqrt().clamp_min(1e-6)
    return tuple(mean.tolist()), tuple(std.tolist())


def local_crop_size(image_size: int) -> int:
    """DINO's local/global side ratio 96/224 = 3/7, applied to ``image_size``, at least 8 px."""
    return max(8, round(image_size * 3 / 7))


def replace_all(specs: Sequence[ViewSpec], **fields: Any) -> list[ViewSpec]:
    """Copy of ``specs`` with the given ViewSpec fields replaced in every spec."""
    return [dataclasses.replace(s, **fields) for s in specs]
