"""Targets for masked image modeling without a downloaded tokenizer (BEiT without DALL-E).

BEiT (Bao et al. 2022) predicts, at each masked patch, the id a frozen DALL-E dVAE gives that
patch. This module provides two stand-ins that need nothing but the user's own images:

* :class:`KMeansPatchTokenizer`: discrete targets, ClusterMIM-style (Li et al. 2024). Patches are
  flattened in MAE's patchify order, standardised one by one (so a patch and ``a * patch + b``,
  ``a > 0``, are the same patch to the tokenizer), and clustered with scikit-learn's
  ``MiniBatchKMeans`` on a seeded sample. At train time the id of a patch is its nearest centroid,
  computed in torch on the centroids' device. Use it with a cross-entropy over ``vocab_size``.
* :class:`HOGTargets`: MaskFeat's (Wei et al. 2022) tokenizer-free target, per-patch histograms
  of oriented gradients, as floats ``[B, N, F]`` for a regression loss.

Both address patches in row-major order (``n = row * (W // p) + col``), the order of a ViT's patch
tokens and of :mod:`selfsup.views.masks`. There is deliberately no random-projection/hash
tokenizer: the hash "k-means" of some libraries carries little information about the patch and
learns poorly (see the survey ``mim-vit.md`` §3).

:func:`save_tokenizer` / :func:`load_tokenizer` store a small dict of tensors plus ``kind``,
``vocab_size`` and ``patch_size``, written atomically and read back with
``torch.load(weights_only=True)``, so a tokenizer fitted once can be cached in a run directory.
"""

from __future__ import annotations

import math
import os
import tempfile
from typing import Any, Iterable, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from selfsup.losses.masked import norm_pix_targets, patchify

__all__ = [
    "Tokenizer",
    "KMeansPatchTokenizer",
    "HOGTargets",
    "fit_tokenizer",
    "save_tokenizer",
    "load_tokenizer",
]

_FORMAT = "selfsup.tokenizer/1"


@runtime_checkable
class Tokenizer(Protocol):
    """Maps images ``[B, C, H, W]`` to one token id per patch, ``LongTensor [B, N]``.

    ``N = (H // patch_size) * (W // patch_size)``, patches in row-major order, ids in
    ``[0, vocab_size)``. ``state_dict`` holds tensors only, so that it survives
    ``torch.load(weights_only=True)``.
    """

    vocab_size: int
    patch_size: int

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...

    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...


# --------------------------------------------------------------------------------------------------
# patches


def _check_images(images: Any, patch_size: int, who: str) -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"{who}: images must be a torch.Tensor [B, C, H, W], got {type(images).__name__}")
    if images.ndim != 4:
        raise ValueError(f"{who}: images must be [B, C, H, W], got shape {tuple(images.shape)}")
    if images.dtype.is_complex or images.dtype == torch.bool:
        raise ValueError(f"{who}: images must be real-valued, got {images.dtype}")
    h, w = images.shape[-2:]
    if h == 0 or w == 0 or h % patch_size or w % patch_size:
        raise ValueError(f"{who}: image size {h}x{w} is not a positive multiple of patch_size {patch_size}")
    return images


def _patches(images: torch.Tensor, patch_size: int, eps: float) -> torch.Tensor:
    """MAE-order patches of checked ``images``, each standardised by its own mean and unbiased std
    (:func:`selfsup.losses.norm_pix_targets`, MAE's norm-pix formula; a constant patch becomes 0)."""
    x = patchify(_check_images(images, patch_size, "tokenizer"), patch_size)
    return norm_pix_targets(x, eps)[0]


def _batches(images: Any) -> Iterable[torch.Tensor]:
    """Yield ``[B, C, H, W]`` tensors from a tensor, or an iterable of tensors / (tensor, ...) items."""
    if isinstance(images, torch.Tensor):
        if images.ndim == 3:
            images = images.unsqueeze(0)
        for start in range(0, images.shape[0], 256):
            yield images[start:start + 256]
        return
    if isinstance(images, np.ndarray):
        raise ValueError("fit: pass images as torch tensors, not numpy arrays")
    try:
        it = iter(images)
    except TypeError:
        raise ValueError(f"fit: images must be a tensor or an iterable of tensors, got "
                         f"{type(images).__name__}") from None
    for item in it:
        if isinstance(item, (tuple, list)) and item:  # (images, labels) from a DataLoader
            item = item[0]
        if isinstance(item, dict) and "image" in item:
            item = item["image"]
        if not isinstance(item, torch.Tensor):
            raise ValueError(f"fit: expected image tensors from the iterable, got {type(item).__name__}")
        if item.ndim == 3:
            item = item.unsqueeze(0)
        yield item


# --------------------------------------------------------------------------------------------------
# k-means tokenizer


class KMeansPatchTokenizer:
    """ClusterMIM-style tokenizer: the id of a patch is its nearest k-means centroid.

    Each patch is flattened in MAE's patchify order and standardised by its own mean/std
    (:func:`selfsup.losses.norm_pix_targets`), so token ids ignore per-patch brightness and contrast
    (``a * x + b``, ``a > 0``, gets the token of ``x``) and describe the patch's *shape*.

    :meth:`fit` draws a uniform sample of at most ``max_patches`` patches (random keys from a
    ``torch.Generator`` seeded with ``seed``, so the sample does not depend on batch boundaries)
    and runs ``sklearn.cluster.MiniBatchKMeans(random_state=seed)``: deterministic for a seed and
    a given image order. The centroids are then standardised the same way as the patches, so they
    live where the patches live; nearest-by-squared-distance then picks the most similar shape,
    and a centroid fed back as a patch gets its own id.

    Assignment (``__call__``) runs under ``no_grad`` in float32 on the centroids' device (move
    them with :meth:`to`), in chunks of at most ``chunk_size`` patches.
    """

    def __init__(self, vocab_size: int = 512, patch_size: int = 16, *, eps: float = 1e-6,
                 chunk_size: int | None = None) -> None:
        if int(vocab_size) != vocab_size or vocab_size < 2:
            raise ValueError(f"KMeansPatchTokenizer: vocab_size must be an int >= 2, got {vocab_size}")
        if int(patch_size) != patch_size or patch_size < 1:
            raise ValueError(f"KMeansPatchTokenizer: patch_size must be an int >= 1, got {patch_size}")
        if not eps > 0:
            raise ValueError(f"KMeansPatchTokenizer: eps must be > 0, got {eps}")
        self.vocab_size = int(vocab_size)
        self.patch_size = int(patch_size)
        self.eps = float(eps)
        self.chunk_size = chunk_size if chunk_size is not None else max(1, (1 << 22) // self.vocab_size)
        if self.chunk_size < 1:
            raise ValueError(f"KMeansPatchTokenizer: chunk_size must be >= 1, got {chunk_size}")
        self.in_chans: int | None = None
        self.centroids: torch.Tensor | None = None  # [vocab_size, p*p*C], float32

    # -- fitting -----------------------------------------------------------------------------------

    @property
    def fitted(self) -> bool:
        return self.centroids is not None

    @property
    def device(self) -> torch.device:
        return self.centroids.device if self.centroids is not None else torch.device("cpu")

    def sample_patches(self, images: Any, max_patches: int = 100_000, seed: int = 0) -> torch.Tensor:
        """A uniform sample (without replacement) of normalised patches, ``[M, p*p*C]`` float32 on CPU.

        Every patch gets a random key from a generator seeded with ``seed``; the ``max_patches``
        smallest keys are kept (reservoir sampling), so memory stays bounded for any data size.
        """
        if int(max_patches) != max_patches or max_patches < self.vocab_size:
            raise ValueError(f"fit: max_patches ({max_patches}) must be an int >= vocab_size "
                             f"({self.vocab_size})")
        gen = torch.Generator().manual_seed(int(seed))
        kept: torch.Tensor | None = None
        keys: torch.Tensor | None = None
        dim = None
        for batch in _batches(images):
            batch = _check_images(batch, self.patch_size, "fit")
            if batch.shape[0] == 0:
                continue
            x = _patches(batch.detach().to("cpu", torch.float32), self.patch_size,
                         self.eps).reshape(-1, self.patch_size ** 2 * batch.shape[1])
            if dim is None:
                dim, self.in_chans = x.shape[1], int(batch.shape[1])
            elif x.shape[1] != dim:
                raise ValueError(f"fit: images have {batch.shape[1]} channels, earlier ones had "
                                 f"{self.in_chans}")
            k = torch.rand(x.shape[0], generator=gen, dtype=torch.float64)
            if kept is not None:
                x, k = torch.cat([kept, x]), torch.cat([keys, k])
            if x.shape[0] > max_patches:
                idx = torch.topk(k, int(max_patches), largest=False, sorted=False).indices
                idx = idx.sort().values  # keep arrival order: independent of topk's internals
                x, k = x[idx], k[idx]
            kept, keys = x, k
        if kept is None or kept.shape[0] < self.vocab_size:
            n = 0 if kept is None else kept.shape[0]
            raise ValueError(f"fit: got {n} patches, fewer than vocab_size={self.vocab_size}")
        return kept.contiguous()

    def fit(self, images: Any, max_patches: int = 100_000, seed: int = 0, *, batch_size: int | None = None,
            max_iter: int = 100, n_init: int = 3, n_threads: int | None = None) -> "KMeansPatchTokenizer":
        """Fit the centroids on ``images``: a tensor ``[B, C, H, W]`` or an iterable of batches
        (tensors, or ``(images, ...)`` tuples as a DataLoader yields). Returns ``self``.

        ``n_threads`` caps scikit-learn's OpenMP/BLAS threads during the fit (``None``: its
        default). On a small sample or a busy machine ``n_threads=1`` is much faster.
        """
        from sklearn.cluster import MiniBatchKMeans
        from threadpoolctl import threadpool_limits

        x = self.sample_patches(images, max_patches=max_patches, seed=seed)
        km = MiniBatchKMeans(
            n_clusters=self.vocab_size,
            batch_size=batch_size or max(1024, 4 * self.vocab_size),
            max_iter=max_iter,
            n_init=n_init,
            random_state=int(seed),
        )
        with threadpool_limits(limits=n_threads):
            km.fit(x.numpy())
        c = torch.from_numpy(np.ascontiguousarray(km.cluster_centers_, dtype=np.float32))
        self.centroids = norm_pix_targets(c, self.eps)[0].contiguous()
        return self

    # -- assignment --------------------------------------------------------------------------------

    def to(self, device: torch.device | str) -> "KMeansPatchTokenizer":
        if self.centroids is not None:
            self.centroids = self.centroids.to(device)
        return self

    @torch.no_grad()
    def assign(self, patches: torch.Tensor) -> torch.Tensor:
        """Nearest centroid (squared distance) of already normalised patches ``[..., D] -> [...]``."""
        c = self._centroids("assign")
        if patches.shape[-1] != c.shape[1]:
            raise ValueError(f"assign: patches have {patches.shape[-1]} values, centroids {c.shape[1]}")
        lead = patches.shape[:-1]
        x = patches.reshape(-1, c.shape[1]).to(c.device, torch.float32)
        c2 = (c * c).sum(1)  # |x - c|^2 = |x|^2 - 2 x.c + |c|^2; |x|^2 does not change the argmin
        out = torch.empty(x.shape[0], dtype=torch.long, device=c.device)
        for s in range(0, x.shape[0], self.chunk_size):
            xs = x[s:s + self.chunk_size]
            out[s:s + self.chunk_size] = torch.addmm(c2, xs, c.t(), alpha=-2.0).argmin(1)
        return out.reshape(lead)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """Token ids ``LongTensor [B, N]`` on the centroids' device."""
        c = self._centroids("tokenize")
        images = _check_images(images, self.patch_size, "tokenize")
        if images.shape[1] != self.in_chans:
            raise ValueError(f"tokenize: images have {images.shape[1]} channels, the tokenizer was fitted "
                             f"on {self.in_chans}")
        return self.assign(_patches(images.detach().to(c.device, torch.float32), self.patch_size, self.eps))

    def _centroids(self, who: str) -> torch.Tensor:
        if self.centroids is None:
            raise ValueError(f"{who}: KMeansPatchTokenizer is not fitted; call fit() or "
                             "load_state_dict() first")
        return self.centroids

    # -- state ---------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, torch.Tensor]:
        c = self._centroids("state_dict")
        return {
            "centroids": c.detach().to("cpu").clone(),
            "vocab_size": torch.tensor(self.vocab_size),
            "patch_size": torch.tensor(self.patch_size),
            "in_chans": torch.tensor(self.in_chans),
            "eps": torch.tensor(self.eps, dtype=torch.float64),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = {"centroids", "vocab_size", "patch_size", "in_chans", "eps"} - set(state)
        if missing:
            raise ValueError(f"load_state_dict: missing keys {sorted(missing)}")
        c = state["centroids"]
        k, p, ch = int(state["vocab_size"]), int(state["patch_size"]), int(state["in_chans"])
        if (k, p) != (self.vocab_size, self.patch_size):
            raise ValueError(f"load_state_dict: state has vocab_size={k}, patch_size={p}; this tokenizer "
                             f"has vocab_size={self.vocab_size}, patch_size={self.patch_size}")
        if not isinstance(c, torch.Tensor) or c.shape != (k, p * p * ch) or not c.is_floating_point():
            raise ValueError(f"load_state_dict: centroids must be float [{k}, {p * p * ch}], got "
                             f"{getattr(c, 'shape', type(c))}")
        if not torch.isfinite(c).all():
            raise ValueError("load_state_dict: centroids contain non-finite values")
        self.in_chans, self.eps = ch, float(state["eps"])
        self.centroids = c.detach().to(self.device, torch.float32).clone()

    def __repr__(self) -> str:
        return (f"KMeansPatchTokenizer(vocab_size={self.vocab_size}, patch_size={self.patch_size}, "
                f"fitted={self.fitted})")


# --------------------------------------------------------------------------------------------------
# HOG targets


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
        images = _check_images(images, self.patch_size, "HOGTargets")
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


# --------------------------------------------------------------------------------------------------
# convenience and caching


def fit_tokenizer(images: Any, kind: str = "kmeans", vocab_size: int = 512, patch_size: int = 16,
                  seed: int = 0, **kwargs: Any) -> KMeansPatchTokenizer | HOGTargets:
    """Fit (``kind="kmeans"``) or build (``kind="hog"``, nothing to fit) a target generator.

    ``kwargs`` go to :meth:`KMeansPatchTokenizer.fit` (``max_patches``, ``batch_size``, ...) or
    to :class:`HOGTargets` (``n_bins``, ``cell_size``, ``norm``). For ``"hog"``, ``images``,
    ``vocab_size`` and ``seed`` are not used.
    """
    if kind == "kmeans":
        return KMeansPatchTokenizer(vocab_size, patch_size).fit(images, seed=seed, **kwargs)
    if kind == "hog":
        return HOGTargets(patch_size, **kwargs)
    raise ValueError(f"fit_tokenizer: unknown kind {kind!r}; expected 'kmeans' or 'hog'")


def save_tokenizer(tok: KMeansPatchTokenizer | HOGTargets, path: str | os.PathLike) -> None:
    """Write ``{format, kind, vocab_size, patch_size, state}`` atomically (temp file + ``os.replace``)."""
    if isinstance(tok, KMeansPatchTokenizer):
        kind, vocab = "kmeans", tok.vocab_size
    elif isinstance(tok, HOGTargets):
        kind, vocab = "hog", 0
    else:
        raise ValueError(f"save_tokenizer: cannot save a {type(tok).__name__}")
    blob = {"format": _FORMAT, "kind": kind, "vocab_size": vocab, "patch_size": tok.patch_size,
            "state": tok.state_dict()}
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=d)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(blob, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_tokenizer(path: str | os.PathLike, map_location: str | torch.device = "cpu"
                   ) -> KMeansPatchTokenizer | HOGTargets:
    """Read a file written by :func:`save_tokenizer` (``torch.load(weights_only=True)``)."""
    blob = torch.load(os.fspath(path), map_location=map_location, weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != _FORMAT:
        raise ValueError(f"load_tokenizer: {os.fspath(path)} is not a selfsup tokenizer file")
    kind = blob.get("kind")
    if kind == "kmeans":
        tok: KMeansPatchTokenizer | HOGTargets = KMeansPatchTokenizer(int(blob["vocab_size"]),
                                                                      int(blob["patch_size"]))
    elif kind == "hog":
        tok = HOGTargets(int(blob["patch_size"]))
    else:
        raise ValueError(f"load_tokenizer: unknown kind {kind!r} in {os.fspath(path)}")
    tok.load_state_dict(blob["state"])
    if isinstance(tok, KMeansPatchTokenizer):
        tok.to(map_location)
    return tok
