"""MaskFeat's tokenizer-free masked-image-modeling targets (Wei et al. 2022): per-patch histograms of oriented
gradients, as floats ``[B, N, F]`` for a regression loss. Saving and loading are in :mod:`selfsup.nets.tokenizers`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from selfsup.nets.patch_kmeans import check_images

__all__ = ["HOGTargets"]


def _default_cell(patch_size: int) -> int:
    return max(d for d in range(1, min(8, patch_size) + 1) if patch_size % d == 0)


class HOGTargets:
    """MaskFeat's tokenizer-free targets: per-patch HOG, ``[B, C, H, W] -> float [B, N, F]``.

    Per channel: gradients ``gx = x[i, j+1] - x[i, j-1]`` and ``gy = x[i+1, j] - x[i-1, j]``
    (fixed ``[-1, 0, 1]`` filters by depthwise ``conv2d``, reflect padding, so the gradient
    across the image border is 0); magnitude ``sqrt(gx^2 + gy^2)``; unsigned orientation
    ``atan2(gy, gx) mod 180`` degrees (image coordinates, y down) hard-binned into ``n_bins``
    equal bins, bin 0 = ``[0, 180 / n_bins)``, i.e. horizontal gradients (vertical edges).
    Each pixel adds its magnitude to its bin in its ``cell_size x cell_size`` cell.

    Normalisation (``norm``):

    * ``"cell"`` (default): every cell's histogram, per channel, is L2-normalised over its bins.
      This is what the MaskFeat reference code does (SlowFast ``HOGLayerC``, copied by MMPretrain:
      ``F.normalize(hist, dim=bins)``). A cell with no gradient stays 0.
    * ``"patch"``: the whole ``F``-vector of a patch is L2-normalised, the paper's wording
      ("normalised per patch", block normalisation over the patch's cells and channels).
    * ``None``: raw magnitude sums.

    Output ``F = (patch_size // cell_size)^2 * C * n_bins``, ordered (cell row, cell column,
    channel, bin): channel-then-bin last, like MAE's channel-last patchify. MaskFeat's defaults
    are patch 16, cell 8, 9 bins, RGB: ``F = 2*2*3*9 = 108``. ``cell_size`` defaults to the largest
    divisor of ``patch_size`` not above 8 (8 for p=16, 4 for CIFAR's p=4).

    Differences from the reference code: it uses Sobel filters, not ``[-1, 0, 1]``; it weights
    magnitudes by a 16x16 Gaussian window (sigma 8) tiled per patch, which we do not; its angle
    ``atan2(gx, gy)`` is measured from the y axis, so its bin for vertical edges is 4, ours 0.
    The histogram content per cell is otherwise the same construction (hard binning, magnitude
    weighted, 9 unsigned bins).
    """

    def __init__(self, patch_size: int = 16, n_bins: int = 9, cell_size: int | None = None,
                 norm: str | None = "cell", eps: float = 1e-12) -> None:
        if int(patch_size) != patch_size or patch_size < 1:
            raise ValueError(f"HOGTargets: patch_size must be an int >= 1, got {patch_size}")
        if int(n_bins) != n_bins or n_bins < 1:
            raise ValueError(f"HOGTargets: n_bins must be an int >= 1, got {n_bins}")
        cell_size = _default_cell(int(patch_size)) if cell_size is None else cell_size
        if int(cell_size) != cell_size or cell_size < 1 or patch_size % cell_size:
            raise ValueError(f"HOGTargets: cell_size {cell_size} must divide patch_size {patch_size}")
        if norm not in ("cell", "patch", None):
            raise ValueError(f"HOGTargets: norm must be 'cell', 'patch' or None, got {norm!r}")
        self.patch_size, self.n_bins, self.cell_size = int(patch_size), int(n_bins), int(cell_size)
        self.norm, self.eps = norm, float(eps)

    def feature_dim(self, in_chans: int = 3) -> int:
        return (self.patch_size // self.cell_size) ** 2 * in_chans * self.n_bins

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        images = check_images(images, self.patch_size, "HOGTargets")
        b, c, hh, ww = images.shape
        if hh < 2 or ww < 2:
            raise ValueError(f"HOGTargets: images must be at least 2x2, got {hh}x{ww}")
        x = images.detach().float()
        kx = x.new_tensor([-1.0, 0.0, 1.0])
        xp = F.pad(x, (1, 1, 1, 1), mode="reflect")
        gx = F.conv2d(xp[:, :, 1:-1, :], kx.view(1, 1, 1, 3).expand(c, 1, 1, 3), groups=c)
        gy = F.conv2d(xp[:, :, :, 1:-1], kx.view(1, 1, 3, 1).expand(c, 1, 3, 1), groups=c)
        mag = torch.sqrt(gx * gx + gy * gy)
        # unsigned angle in radians: atan2(0, -1) = pi folds to exactly 0 (no 179.99.. degree bin)
        ang = torch.remainder(torch.atan2(gy, gx), math.pi)
        bins = torch.floor(ang * (self.n_bins / math.pi)).long().clamp_(0, self.n_bins - 1)
        s, k = self.cell_size, self.patch_size // self.cell_size
        hc, wc = hh // s, ww // s
        hist = x.new_zeros(b, c, self.n_bins, hc, wc)
        for i in range(self.n_bins):  # one masked sum per bin: deterministic, B*C*H*W memory
            hist[:, :, i] = (mag * (bins == i)).reshape(b, c, hc, s, wc, s).sum(dim=(3, 5))
        if self.norm == "cell":
            hist = F.normalize(hist, p=2.0, dim=2, eps=self.eps)
        # [B, C, nb, h*k, w*k] -> [B, h, w, k, k, C, nb] -> [B, N, F]
        h, w = hh // self.patch_size, ww // self.patch_size
        out = hist.reshape(b, c, self.n_bins, h, k, w, k).permute(0, 3, 5, 4, 6, 1, 2)
        out = out.reshape(b, h * w, k * k * c * self.n_bins)
        if self.norm == "patch":
            out = F.normalize(out, p=2.0, dim=-1, eps=self.eps)
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            "patch_size": torch.tensor(self.patch_size),
            "n_bins": torch.tensor(self.n_bins),
            "cell_size": torch.tensor(self.cell_size),
            "norm": torch.tensor({None: 0, "cell": 1, "patch": 2}[self.norm]),
            "eps": torch.tensor(self.eps, dtype=torch.float64),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = {"patch_size", "n_bins", "cell_size", "norm", "eps"} - set(state)
        if missing:
            raise ValueError(f"load_state_dict: missing keys {sorted(missing)}")
        norm = {0: None, 1: "cell", 2: "patch"}.get(int(state["norm"]), "?")
        self.__init__(int(state["patch_size"]), int(state["n_bins"]), int(state["cell_size"]), norm,
                      float(state["eps"]))

    def __repr__(self) -> str:
        return (f"HOGTargets(patch_size={self.patch_size}, n_bins={self.n_bins}, cell_size={self.cell_size}, "
                f"norm={self.norm!r})")
