"""Patch masks for masked image modeling, as pure functions of an explicit CPU generator.

Each function takes the patch ``grid = (h, w)`` (N = h * w patches, row-major) and returns a
bool ``mask: Tensor[B, N]`` (True = masked) together with rectangular index tensors
``keep_idx: Tensor[B, K]`` and ``mask_idx: Tensor[B, M]`` (sorted, disjoint, covering N);
every sample of a batch has exactly the same counts, so sequences stay equal-length.

All randomness comes from ``generator``: seed it per batch, e.g.
``torch.Generator().manual_seed(selfsup.seeds.mix_seed(seed, epoch, step))``, and the masks
depend only on (seed, epoch, step), so resuming is exact and loader workers never share or
race on a counter. Masks are made on CPU; move them with ``.to(device)``.

Papers: MAE (He et al. 2022), SimMIM (Xie et al. 2022), BEiT (Bao et al. 2022),
I-JEPA (Assran et al. 2023), data2vec 2.0 (Baevski et al. 2023), DINOv2 (Oquab et al. 2023).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from selfsup.views.crop import check_generator

__all__ = [
    "Masks",
    "MultiBlockMasks",
    "RaggedMasks",
    "blockwise_mask",
    "dinov2_mask",
    "dinov2_ratios",
    "grid_mask",
    "inverse_block_mask",
    "mask_indices",
    "multiblock_mask",
    "random_mask",
]


class Masks(NamedTuple):
    """``mask: Tensor[B, N]`` bool (True = masked), ``keep_idx: Tensor[B, K]``, ``mask_idx: Tensor[B, M]``."""

    mask: Tensor
    keep_idx: Tensor
    mask_idx: Tensor


class MultiBlockMasks(NamedTuple):
    """I-JEPA masks: ``context`` (keep_idx = context patches) and one ``Masks`` per target (mask_idx = the block)."""

    context: Masks
    targets: tuple[Masks, ...]


class RaggedMasks(NamedTuple):
    """Masks with per-image counts (DINOv2): ``mask [B, N]``, ``counts [B]``, flat ``flat_idx`` into ``B*N``, ``weight = 1/count``."""

    mask: Tensor
    counts: Tensor
    flat_idx: Tensor
    weight: Tensor


# --------------------------------------------------------------------------- checks and helpers


def _grid(grid: tuple[int, int]) -> tuple[int, int]:
    if len(grid) != 2 or any(isinstance(g, bool) or int(g) != g or g <= 0 for g in grid):
        raise ValueError(f"grid must be two positive ints (patch rows, cols), got {grid}; pass e.g. grid=(14, 14)")
    return int(grid[0]), int(grid[1])


def _batch(batch: int) -> int:
    if isinstance(batch, bool) or int(batch) != batch or batch < 0:
        raise ValueError(f"batch must be a non-negative int, got {batch}; pass e.g. batch=64")
    return int(batch)


def _ratio(name: str, ratio: float, example: float = 0.75) -> float:
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"{name} must be in (0, 1), got {ratio}; pass e.g. {name}={example}")
    return float(ratio)


def _range(name: str, value: tuple[float, float], example: str, upper: float = math.inf) -> tuple[float, float]:
    if len(value) != 2 or not 0.0 < value[0] <= value[1] <= upper:
        raise ValueError(f"{name} must be (min, max) with 0 < min <= max <= {upper}, got {value}; pass e.g. {name}={example}")
    return float(value[0]), float(value[1])


def _adjust_to_count(mask: Tensor, counts: Tensor, generator: torch.Generator) -> Tensor:
    """Set exactly ``counts[b]`` entries of row b: keep set ones first, add or drop uniformly random ones."""
    b, n = mask.shape
    key = mask.to(torch.float64) + torch.rand(b, n, generator=generator, dtype=torch.float64)
    order = key.argsort(dim=1, descending=True)
    out = torch.zeros(b, n, dtype=torch.bool)
    return out.scatter_(1, order, torch.arange(n).expand(b, n) < counts.view(b, 1))


def _finish(mask: Tensor) -> Masks:
    keep_idx, mask_idx = mask_indices(mask)
    return Masks(mask, keep_idx, mask_idx)


def mask_indices(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Sorted ``(keep_idx [B, K], mask_idx [B, M])`` of a bool ``mask [B, N]`` with equal counts per row."""
    if mask.ndim != 2 or mask.dtype != torch.bool:
        raise ValueError(f"mask must be a bool Tensor[B, N], got {tuple(mask.shape)} {mask.dtype}")
    counts = mask.sum(dim=1)
    if counts.numel() and bool((counts != counts[0]).any()):
        raise ValueError(f"mask rows must have equal masked counts for rectangular indices, got {sorted(set(counts.tolist()))}")
    m = int(counts[0]) if counts.numel() else 0
    order = mask.to(torch.int8).argsort(dim=1, stable=True)  # unmasked first, each part in index order
    n = mask.shape[1]
    return order[:, : n - m], order[:, n - m :]


def _stamp(top: Tensor, left: Tensor, h: Tensor, w: Tensor, grid: tuple[int, int]) -> Tensor:
    """Bool ``[..., H*W]`` of rectangles (all args ``[...]``), clipped to the grid."""
    rows = torch.arange(grid[0]).view(grid[0], 1)
    cols = torch.arange(grid[1]).view(1, grid[1])
    t, l, hh, ww = (x[..., None, None] for x in (top, left, h, w))
    inside = (rows >= t) & (rows < t + hh) & (cols >= l) & (cols < l + ww)
    return inside.flatten(-2)


# --------------------------------------------------------------------------- MAE and SimMIM


def random_mask(batch: int, grid: tuple[int, int], ratio: float, generator: torch.Generator) -> Masks:
    """MAE (He et al. 2022): exactly ``round(ratio * N)`` patches per sample, uniformly at random."""
    check_generator(generator)
    b, (h, w) = _batch(batch), _grid(grid)
    n = h * w
    m = round(_ratio("ratio", ratio) * n)
    rank = torch.rand(b, n, generator=generator).argsort(dim=1).argsort(dim=1)
    return _finish(rank < m)


def partial_prediction_mask(batch: int, grid: tuple[int, int], ratio: float, predict_ratio: float,
                            generator: torch.Generator) -> tuple[Masks, Masks]:
    """CrossMAE (Fu et al. 2025, Sec. 3.2 "partial reconstruction"): ``round(ratio * N)`` patches hidden from the
    encoder, as :func:`random_mask`, and of those a uniformly random ``round(predict_ratio * N)`` reconstructed
    (``predict_ratio`` is a fraction of **all** patches, the official ``--kept_mask_ratio``; ``predict_ratio =
    ratio`` reconstructs every hidden patch). Returns ``(hidden, predicted)``, ``predicted`` inside ``hidden``."""
    check_generator(generator)
    b, (h, w) = _batch(batch), _grid(grid)
    n = h * w
    m, k = round(_ratio("ratio", ratio) * n), round(_ratio("predict_ratio", predict_ratio, 0.25) * n)
    if k > m or k == 0:
        raise ValueError(f"predict_ratio {predict_ratio} gives {k} predicted of {m} hidden patches (of {n}); it must "
                         f"give 1 to {m}: set predict_ratio <= ratio, e.g. 0.25 with ratio 0.75")
    rank = torch.rand(b, n, generator=generator).argsort(dim=1).argsort(dim=1)
    return _finish(rank < m), _finish(rank < k)


def grid_mask(batch: int, grid: tuple[int, int], ratio: float, generator: torch.Generator, cell: int = 2) -> Masks:
    """SimMIM (Xie et al. 2022): mask ``ceil(ratio * cells)`` random cells of ``cell x cell`` patches.

    SimMIM's 32 px mask cells over 16 px patches are ``cell=2``; the grid must divide into cells.
    """
    check_generator(generator)
    h, w = _grid(grid)
    if isinstance(cell, bool) or int(cell) != cell or cell <= 0 or h % cell or w % cell:
        raise ValueError(f"cell must be a positive int dividing grid {grid}, got {cell}; pass e.g. cell=2")
    ch, cw = h // cell, w // cell
    cells = ch * cw
    m = math.ceil(_ratio("ratio", ratio, 0.6) * cells - 1e-9)
    b = _batch(batch)
    rank = torch.rand(b, cells, generator=generator).argsort(dim=1).argsort(dim=1)
    small = (rank < m).view(b, ch, cw)
    return _finish(small.repeat_interleave(cell, 1).repeat_interleave(cell, 2).reshape(b, h * w))


# --------------------------------------------------------------------------- BEiT and DINOv2


class _Uniforms:
    """Uniforms from ``generator`` in chunks, for the sequential BEiT loop (deterministic)."""

    def __init__(self, generator: torch.Generator) -> None:
        self.generator, self.buf, self.pos = generator, [], 0

    def __call__(self) -> float:
        if self.pos == len(self.buf):
            self.buf, self.pos = torch.rand(512, generator=self.generator, dtype=torch.float64).tolist(), 0
        self.pos += 1
        return self.buf[self.pos - 1]


def _beit_one(rng: _Uniforms, h: int, w: int, target: int, min_p: int, max_p: int, log_a: tuple[float, float]) -> np.ndarray:
    """BEiT's block loop for one image; like the official code it may stop short of ``target``."""
    mask = np.zeros((h, w), dtype=bool)
    count = 0
    while count < target:
        budget = min(target - count, max_p)
        delta = 0
        for _ in range(10):
            area = min_p + (budget - min_p) * rng()
            aspect = math.exp(log_a[0] + (log_a[1] - log_a[0]) * rng())
            bh, bw = int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect)))
            if 0 < bh <= h and 0 < bw <= w:
                top, left = int(rng() * (h - bh + 1)), int(rng() * (w - bw + 1))
                new = bh * bw - int(mask[top : top + bh, left : left + bw].sum())
                if 0 < new <= budget:
                    mask[top : top + bh, left : left + bw] = True
                    delta = new
                    break
        if delta == 0:
            break
        count += delta
    return mask.reshape(-1)


def _blockwise(
    counts: list[int], grid: tuple[int, int], generator: torch.Generator, min_patches: int,
    aspect: tuple[float, float], max_patches: int | None,
) -> Tensor:
    h, w = grid
    if isinstance(min_patches, bool) or int(min_patches) != min_patches or min_patches < 1:
        raise ValueError(f"min_patches must be a positive int, got {min_patches}; pass e.g. min_patches=16")
    if max_patches is not None and (int(max_patches) != max_patches or max_patches < 1):
        raise ValueError(f"max_patches must be None or a positive int, got {max_patches}; pass e.g. max_patches=None")
    lo, hi = _range("aspect", aspect, "(0.3, 1 / 0.3)")
    rng = _Uniforms(generator)
    rows = [
        _beit_one(rng, h, w, c, int(min_patches), c if max_patches is None else int(max_patches), (math.log(lo), math.log(hi)))
        for c in counts
    ]
    mask = torch.from_numpy(np.stack(rows)) if rows else torch.zeros(0, h * w, dtype=torch.bool)
    return _adjust_to_count(mask, torch.tensor(counts, dtype=torch.long).view(-1), generator)  # top up


def blockwise_mask(
    batch: int, grid: tuple[int, int], num_masked: int, generator: torch.Generator, min_patches: int = 16,
    aspect: tuple[float, float] = (0.3, 1 / 0.3), max_patches: int | None = None,
) -> Masks:
    """BEiT (Bao et al. 2022): rectangles of >= ``min_patches`` with log-uniform ``aspect`` until ``num_masked``.

    The official loop stops when a block adds nothing, so it can fall short; the rest is topped
    up with uniformly random patches, and every sample has exactly ``num_masked`` masked.
    ``max_patches`` caps the new patches per block (default: the whole budget).
    """
    check_generator(generator)
    b, g = _batch(batch), _grid(grid)
    if isinstance(num_masked, bool) or int(num_masked) != num_masked or not 0 <= num_masked <= g[0] * g[1]:
        raise ValueError(f"num_masked must be an int in [0, {g[0] * g[1]}], got {num_masked}; pass e.g. num_masked=75")
    return _finish(_blockwise([int(num_masked)] * b, g, generator, min_patches, aspect, max_patches))


def dinov2_ratios(
    batch: int, generator: torch.Generator, ratio_range: tuple[float, float] = (0.1, 0.5), masked_fraction: float = 0.5,
) -> Tensor:
    """DINOv2 (Oquab et al. 2023): per-image mask ratios ``Tensor[B]``; ``int(B * masked_fraction)`` images masked.

    Their ratios are stratified over ``ratio_range`` (image i draws from the i-th of equal
    sub-intervals, as the official collate does); the others get 0; the order is shuffled.
    """
    check_generator(generator)
    b = _batch(batch)
    lo, hi = _range("ratio_range", ratio_range, "(0.1, 0.5)", upper=1.0)
    if not 0.0 <= masked_fraction <= 1.0:
        raise ValueError(f"masked_fraction must be in [0, 1], got {masked_fraction}; pass e.g. masked_fraction=0.5")
    k = int(b * masked_fraction)
    edges = torch.linspace(lo, hi, k + 1, dtype=torch.float64)
    ratios = torch.zeros(b, dtype=torch.float64)
    ratios[:k] = edges[:-1] + (edges[1:] - edges[:-1]) * torch.rand(k, generator=generator, dtype=torch.float64)
    return ratios[torch.randperm(b, generator=generator)]


def dinov2_mask(
    batch: int, grid: tuple[int, int], generator: torch.Generator, ratio_range: tuple[float, float] = (0.1, 0.5),
    masked_fraction: float = 0.5, min_patches: int = 4, max_fraction: float = 0.5,
) -> RaggedMasks:
    """DINOv2/iBOT masks: ``dinov2_ratios`` then BEiT blocks of ``int(ratio * N)`` patches per image.

    Counts differ per image, so indices are flat (``flat_idx`` into ``B*N``) with iBOT's per-patch
    ``weight = 1 / count(image)``, as in DINOv2's collate; blocks add at most ``max_fraction * N``.
    """
    ratios = dinov2_ratios(batch, generator, ratio_range, masked_fraction)
    h, w = _grid(grid)
    n = h * w
    counts = [int(n * r) for r in ratios.tolist()]
    mask = _blockwise(counts, (h, w), generator, min_patches, (0.3, 1 / 0.3), max(1, int(max_fraction * n)))
    cnt = mask.sum(dim=1)
    flat = mask.reshape(-1).nonzero().squeeze(1)
    weight = (1.0 / cnt.clamp(min=1).to(torch.float32)).repeat_interleave(cnt)
    return RaggedMasks(mask, cnt, flat, weight)


# --------------------------------------------------------------------------- I-JEPA


def _block_sizes(
    count: int, grid: tuple[int, int], scale: tuple[float, float], aspect: tuple[float, float], generator: torch.Generator,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(h, w, scale, aspect)`` of ``count`` blocks; scale and aspect are independent draws (the official reuses one)."""
    gh, gw = grid
    u = torch.rand(count, 2, generator=generator, dtype=torch.float64)
    s = scale[0] + (scale[1] - scale[0]) * u[:, 0]
    a = aspect[0] + (aspect[1] - aspect[0]) * u[:, 1]
    area = torch.floor(gh * gw * s)
    bh = torch.round(torch.sqrt(area * a)).clamp(1, gh).long()
    bw = torch.round(torch.sqrt(area / a)).clamp(1, gw).long()
    return bh, bw, s, a


def _place(bh: Tensor, bw: Tensor, grid: tuple[int, int], generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Uniform top-left corners; the last row and column are reachable (the official ``randint`` excludes them)."""
    u = torch.rand(*bh.shape, 2, generator=generator, dtype=torch.float64)
    top = torch.minimum(torch.floor(u[..., 0] * (grid[0] - bh + 1)).long(), grid[0] - bh)
    left = torch.minimum(torch.floor(u[..., 1] * (grid[1] - bw + 1)).long(), grid[1] - bw)
    return top, left


def multiblock_mask(
    batch: int, grid: tuple[int, int], generator: torch.Generator, n_targets: int = 4,
    target_scale: tuple[float, float] = (0.15, 0.2), target_aspect: tuple[float, float] = (0.75, 1.5),
    context_scale: tuple[float, float] = (0.85, 1.0), context_aspect: tuple[float, float] = (1.0, 1.0),
    min_keep: int = 10, tries: int = 20,
) -> MultiBlockMasks:
    """I-JEPA (Assran et al. 2023): ``n_targets`` target blocks and one context block with the targets removed.

    Every block draws its own scale and aspect (``aspect = h / w``). A context left with fewer
    than ``min_keep`` patches is redrawn up to ``tries`` times, then becomes the complement of
    the targets. For rectangular output, every context (and every target) is cut to the batch
    minimum by dropping uniformly random patches, not the last ones in row-major order.
    """
    check_generator(generator)
    b, g = _batch(batch), _grid(grid)
    n = g[0] * g[1]
    if isinstance(n_targets, bool) or int(n_targets) != n_targets or n_targets < 1:
        raise ValueError(f"n_targets must be a positive int, got {n_targets}; pass e.g. n_targets=4")
    if int(min_keep) != min_keep or not 1 <= min_keep <= n or int(tries) != tries or tries < 1:
        raise ValueError(f"min_keep must be in [1, {n}] and tries >= 1, got {min_keep}, {tries}; pass e.g. min_keep=10, tries=20")
    ts, ta = _range("target_scale", target_scale, "(0.15, 0.2)", 1.0), _range("target_aspect", target_aspect, "(0.75, 1.5)")
    cs, ca = _range("context_scale", context_scale, "(0.85, 1.0)", 1.0), _range("context_aspect", context_aspect, "(1.0, 1.0)")
    t = int(n_targets)
    th, tw, _, _ = _block_sizes(b * t, g, ts, ta, generator)
    th, tw = th.view(b, t), tw.view(b, t)
    targets = _stamp(*_place(th, tw, g, generator), th, tw, g)  # [B, T, N]
    ch, cw, _, _ = _block_sizes(b * tries, g, cs, ca, generator)
    ch, cw = ch.view(b, tries), cw.view(b, tries)
    free = ~targets.any(dim=1)  # [B, N]
    cands = _stamp(*_place(ch, cw, g, generator), ch, cw, g) & free[:, None]  # [B, tries, N]
    ok = cands.sum(dim=2) >= min_keep
    first = ok.to(torch.uint8).argmax(dim=1)
    context = torch.where(ok.any(dim=1)[:, None], cands[torch.arange(b), first], free)
    if b and int(context.sum(dim=1).min()) < min_keep:
        raise ValueError(f"targets leave fewer than min_keep={min_keep} context patches; lower target_scale or n_targets")
    kc = int(context.sum(dim=1).min()) if b else 0
    context = _adjust_to_count(context, torch.full((b,), kc), generator)
    kt = int(targets.sum(dim=2).min()) if b else 0
    cut = _adjust_to_count(targets.reshape(b * t, n), torch.full((b * t,), kt), generator).view(b, t, n)
    return MultiBlockMasks(_finish(~context), tuple(_finish(cut[:, i]) for i in range(t)))


# --------------------------------------------------------------------------- data2vec 2.0


def inverse_block_mask(
    batch: int, grid: tuple[int, int], ratio: float, generator: torch.Generator, block: int = 3, adjust: float = 0.07,
) -> Masks:
    """data2vec 2.0 (Baevski et al. 2023): ``block x block`` islands of *visible* patches; the rest is masked.

    ``N * (1 - ratio + adjust) / block**2`` centres are drawn uniformly (blocks clipped at the
    border), then random patches are added or removed until exactly ``N - round(ratio * N)``
    are visible, and the result is inverted: exactly ``round(ratio * N)`` masked per sample.
    """
    check_generator(generator)
    b, (h, w) = _batch(batch), _grid(grid)
    n = h * w
    m = round(_ratio("ratio", ratio, 0.8) * n)
    if isinstance(block, bool) or int(block) != block or block < 1:
        raise ValueError(f"block must be a positive int, got {block}; pass e.g. block=3")
    if not 0.0 <= adjust < 1.0:
        raise ValueError(f"adjust must be in [0, 1), got {adjust}; pass e.g. adjust=0.07")
    centres = max(1, int(n * (1.0 - ratio + adjust) / block**2))
    pos = torch.randint(0, n, (b, centres), generator=generator)
    half = (block - 1) // 2
    size = torch.full_like(pos, block)
    visible = _stamp(pos // w - half, pos % w - half, size, size, (h, w)).any(dim=1)
    visible = _adjust_to_count(visible, torch.full((b,), n - m), generator)
    return _finish(~visible)
