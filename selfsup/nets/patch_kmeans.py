"""ClusterMIM-style k-means patch tokenizer (Li et al. 2024): discrete masked-image-modeling targets fitted on the
user's own images, a stand-in for BEiT's DALL-E dVAE (Bao et al. 2022).

Patches are flattened in MAE's patchify order, standardised one by one (so a patch and ``a * patch + b``,
``a > 0``, are the same patch to the tokenizer), and clustered with scikit-learn's ``MiniBatchKMeans`` on a
seeded sample. At train time the id of a patch is its nearest centroid, computed in torch on the centroids'
device. Use it with a cross-entropy over ``vocab_size``. Saving, loading and the ``Tokenizer`` protocol are in
:mod:`selfsup.nets.tokenizers`.
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import torch

from selfsup.losses.masked_regression import norm_pix_targets, patchify

__all__ = ["KMeansPatchTokenizer", "check_images"]


# patches


def check_images(images: Any, patch_size: int, who: str) -> torch.Tensor:
    """``images`` as a real ``[B, C, H, W]`` tensor whose sides are multiples of ``patch_size``, else a
    ``ValueError`` naming ``who``."""
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
    x = patchify(check_images(images, patch_size, "tokenizer"), patch_size)
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
            batch = check_images(batch, self.patch_size, "fit")
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
        images = check_images(images, self.patch_size, "tokenize")
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
