"""Spatial pretext transforms (cookbook, "Origins of SSL", 3. "Learning spatial context"): rotations (RotNet),
jigsaw tiles and their permutation set (Noroozi & Favaro 2016; PIRL), and centre/neighbour patch pairs
(Doersch et al. 2015). Pure, batched tensor functions on normalised float images ``[B, C, H, W]``; every random
choice is an argument (drawn by the caller from an explicit generator, e.g. ``Method.make_masks``), so a user's
own loop gets exactly the trainer's behaviour.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["rotations", "permutation_set", "jigsaw_geometry", "jigsaw_tiles", "tile_normalize", "NEIGHBOURS",
           "patch_pair_span", "patch_pair", "drop_colour", "project_colour"]


def rotations(x: Tensor) -> tuple[Tensor, Tensor]:
    """RotNet's input (Gidaris et al. 2018, Sec. 2.2): every image of ``x [B, C, S, S]`` rotated by 0, 90, 180 and
    270 degrees (counter-clockwise), all four in the batch: ``([4B, C, S, S], labels [4B])``, rotation ``k`` of
    image ``i`` at row ``k * B + i`` with label ``k``."""
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"rotations need square images, got {tuple(x.shape[-2:])}; crop to a square view")
    out = torch.cat([torch.rot90(x, k, dims=(-2, -1)) for k in range(4)])
    return out, torch.arange(4, device=x.device).repeat_interleave(x.shape[0])


def _all_permutations(n: int) -> Tensor:
    """Every permutation of ``range(n)`` in lexicographic order (``itertools.permutations``'), ``[n!, n]``."""
    out = torch.zeros(1, 0, dtype=torch.long)
    for m in range(1, n + 1):  # permutations of range(m) from those of range(m - 1)
        rows = []
        for first in range(m):
            rest = torch.tensor([v for v in range(m) if v != first], dtype=torch.long)
            rows.append(torch.cat([torch.full((out.shape[0], 1), first), rest[out]], 1))
        out = torch.cat(rows)
    return out


@functools.lru_cache(maxsize=8)
def _greedy_permutations(n: int, cells: int, seed: int) -> Tensor:
    every = _all_permutations(cells)
    columns = every.T.to(torch.int8).numpy().copy()  # [cells, cells!], one contiguous row per position
    # Hamming(c, q) = cells - matches(c, q): the largest mean distance to the chosen set is the fewest matches
    matches = np.zeros(every.shape[0], dtype=np.int64)
    j = int(torch.randint(every.shape[0], (1,), generator=torch.Generator().manual_seed(seed)))
    picks = []
    for _ in range(n):
        picks.append(j)
        for i in range(cells):
            matches += columns[i] == columns[i, j]
        matches[j] = 2**40  # chosen: never again
        j = int(matches.argmin())  # ties: the first, as numpy's argmax in the official script
    return every[picks]


def permutation_set(n: int, cells: int = 9, seed: int = 0) -> Tensor:
    """The jigsaw permutation set ``[n, cells]`` (Noroozi & Favaro 2016, Sec. 3.2 and the official
    ``select_permutations.py``): start from one seeded random permutation of all ``cells!``, then repeatedly add the
    permutation whose mean Hamming distance to those chosen so far is largest (ties: the first in lexicographic
    order). Deterministic in ``(n, cells, seed)`` and cached per process; ``[p, i]`` is the tile shown at position
    ``i`` under permutation ``p``."""
    if cells < 2 or cells > 9:
        raise ValueError(f"permutation_set needs 2-9 cells (a 2x2 or 3x3 grid), got {cells}")
    if not 1 <= n <= math.factorial(cells):
        raise ValueError(f"{n} permutations asked of {cells} cells, which have {math.factorial(cells)}; "
                         f"choose 1 <= n <= {math.factorial(cells)}")
    return _greedy_permutations(n, cells, seed).clone()


def jigsaw_geometry(size: int, grid: int = 3, crop_frac: float = 64 / 75) -> tuple[int, int]:
    """``(cell, crop)``: each of the ``grid x grid`` cells of a ``size``-px image and the random crop inside it
    (Noroozi & Favaro: 225 px -> 75 px cells, 64 px crops, so tiles never share an edge). Raises a one-line
    ValueError when the crop would be under 2 px or leave no gap."""
    cell = size // grid
    crop = int(round(cell * crop_frac))
    if crop < 2 or crop >= cell:
        raise ValueError(f"jigsaw: {size} px images in a {grid}x{grid} grid give {cell} px cells and {crop} px tiles; "
                         f"need 2 <= tile < cell: use larger images (data.image_size >= {4 * grid}) or a smaller "
                         f"method.grid, or set method.crop_frac below 1")
    return cell, crop


def tile_normalize(tiles: Tensor, eps: float = 0.0) -> Tensor:
    """Each tile ``[..., C, h, w]`` normalised by its own per-channel mean and (unbiased) std, a zero std
    replaced by 1 (the official ``JigsawImageLoader``): low-level statistics no longer tell tiles apart."""
    flat = tiles.flatten(-2)
    mean, std = flat.mean(-1, keepdim=True), flat.std(-1, keepdim=True)
    std = torch.where(std > eps, std, torch.ones_like(std))
    return ((flat - mean) / std).view_as(tiles)


def _crops(x: Tensor, top: Tensor, left: Tensor, size: int) -> Tensor:
    """``x [B, C, H, W]`` cut at ``top, left [B, T]`` (pixels) to ``[B, T, C, size, size]``."""
    b, t = top.shape
    ar = torch.arange(size, device=x.device)
    rows = (top[..., None] + ar)[:, :, :, None]  # [B, T, s, 1]
    cols = (left[..., None] + ar)[:, :, None, :]  # [B, T, 1, s]
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    return x.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 1, 4, 2, 3)  # [B, T, s, s, C] -> [B, T, C, s, s]


def jigsaw_tiles(x: Tensor, order: Tensor, offsets: Tensor, grid: int = 3, crop_frac: float = 64 / 75,
                 tile_size: int | None = None, normalize: bool = True) -> Tensor:
    """Jigsaw tiles (Noroozi & Favaro 2016, Sec. 3.2): the centred ``grid x grid`` cells of ``x [B, C, S, S]``, a
    crop of ``crop_frac`` of each cell at ``offsets [B, T, 2]`` (fractions in [0, 1) of the free room, drawn by the
    caller), resized to ``tile_size`` (None: the crop's size), each normalised by its own statistics
    (:func:`tile_normalize`), then shuffled: position ``i`` of image ``b`` shows tile ``order[b, i]``
    (``order [B, T]``, e.g. rows of :func:`permutation_set`). Returns ``[B, T, C, t, t]``, ``T = grid ** 2``."""
    b, _, h, w = x.shape
    t = grid * grid
    if h != w:
        raise ValueError(f"jigsaw_tiles needs square images, got {h}x{w}; crop to a square view")
    if order.shape != (b, t) or offsets.shape != (b, t, 2):
        raise ValueError(f"order must be [{b}, {t}] and offsets [{b}, {t}, 2], got {tuple(order.shape)} and "
                         f"{tuple(offsets.shape)}")
    cell, crop = jigsaw_geometry(h, grid, crop_frac)
    base = (h - grid * cell) // 2  # centre the grid
    room = cell - crop + 1
    shift = (offsets.to(x.device).float() * room).long().clamp_(0, room - 1)
    pos = torch.arange(t, device=x.device)
    top = base + (pos // grid) * cell + shift[..., 0]
    left = base + (pos % grid) * cell + shift[..., 1]
    tiles = _crops(x, top, left, crop)
    if tile_size is not None and tile_size != crop:
        tiles = F.interpolate(tiles.flatten(0, 1), size=(tile_size, tile_size), mode="bilinear",
                              align_corners=False).unflatten(0, (b, t))
    if normalize:
        tiles = tile_normalize(tiles)
    return tiles.gather(1, order.to(x.device).long()[:, :, None, None, None].expand_as(tiles))


#: Doersch et al.'s 8 neighbour positions of the centre patch, label ``k`` at (row, col) ``NEIGHBOURS[k]`` of the
#: 3 x 3 arrangement (row-major, the centre (1, 1) left out)
NEIGHBOURS = ((0, 0), (0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1), (2, 2))


def patch_pair_span(patch: int, gap: int, jitter: int) -> int:
    """The side a centre/neighbour pair needs: 3 patches, 2 gaps and the jitter on both sides."""
    return 3 * patch + 2 * gap + 2 * jitter


def patch_pair(x: Tensor, neighbour: Tensor, origin: Tensor, jitter: Tensor, patch: int, gap: int,
               max_jitter: int) -> tuple[Tensor, Tensor]:
    """Doersch et al. 2015 (Sec. 3): a centre patch and one of its 8 neighbours from each image of ``x [B, C, S, S]``.

    The 3 x 3 arrangement of ``patch``-px patches separated by ``gap`` px sits at ``origin [B, 2]`` (fractions in
    [0, 1) of the free room); the second patch is neighbour ``neighbour [B]`` (0-7, :data:`NEIGHBOURS`); each patch
    is moved by up to ``max_jitter`` px on each axis (``jitter [B, 2, 2]``, fractions in [0, 1) for the centre and
    the neighbour), so neither edges nor exact alignment give the answer away. Returns ``(centre, other)``, each
    ``[B, C, patch, patch]``."""
    b, _, h, w = x.shape
    span = patch_pair_span(patch, gap, max_jitter)
    if h != w or span > h:
        raise ValueError(f"patch pairs of {patch} px patches, gap {gap} and jitter {max_jitter} need {span} px square "
                         f"images, got {h}x{w}; use data.image_size >= {span} or a smaller method.patch/gap/jitter")
    room = h - span + 1
    corner = (origin.to(x.device).float() * room).long().clamp_(0, room - 1) + max_jitter  # [B, 2]
    cells = torch.tensor(NEIGHBOURS, device=x.device)[neighbour.to(x.device).long()]  # [B, 2] row, col
    step = patch + gap
    where = torch.stack([torch.ones_like(cells), cells], 1) * step  # [B, 2 patches, 2 axes]: centre (1, 1)
    move = (jitter.to(x.device).float() * (2 * max_jitter + 1)).long().clamp_(0, 2 * max_jitter) - max_jitter
    top_left = corner[:, None, :] + where + move
    pair = _crops(x, top_left[..., 0], top_left[..., 1], patch)
    return pair[:, 0], pair[:, 1]


def drop_colour(patches: Tensor, keep: Tensor, noise: Tensor) -> Tensor:
    """Doersch et al.'s colour dropping (Sec. 4.1, against chromatic aberration): of each patch ``[B, C, p, p]``
    only channel ``keep [B]`` is kept; the others become Gaussian noise ``noise [B, C, p, p]`` (standard normal,
    drawn by the caller) scaled to 1/100 of the kept channel's std."""
    kept = patches.gather(1, keep.long()[:, None, None, None].expand(-1, 1, *patches.shape[2:]))
    scale = kept.flatten(1).std(1).view(-1, 1, 1, 1) / 100
    mask = F.one_hot(keep.long(), patches.shape[1]).to(patches.dtype)[:, :, None, None]
    return mask * patches + (1 - mask) * noise.to(patches) * scale


def project_colour(patches: Tensor) -> Tensor:
    """Doersch et al.'s projection (Sec. 4.1): remove each pixel's component along the green-magenta axis
    ``(-1, 2, -1) / sqrt(6)`` of RGB, the colour axis chromatic aberration shifts most."""
    if patches.shape[1] != 3:
        raise ValueError(f"colour projection needs 3-channel images, got {patches.shape[1]}; use colour: none")
    axis = torch.tensor([-1.0, 2.0, -1.0], device=patches.device, dtype=patches.dtype) / math.sqrt(6.0)
    along = (patches * axis[:, None, None]).sum(1, keepdim=True)
    return patches - along * axis[:, None, None]
