"""Targets for masked image modeling without a downloaded tokenizer (BEiT without DALL-E).

BEiT (Bao et al. 2022) predicts, at each masked patch, the id a frozen DALL-E dVAE gives that
patch. This module provides two stand-ins that need nothing but the user's own images:

* :class:`KMeansPatchTokenizer` (:mod:`selfsup.nets.patch_kmeans`): discrete targets, ClusterMIM-style
  (Li et al. 2024). Patches are flattened in MAE's patchify order, standardised one by one (so a patch and
  ``a * patch + b``, ``a > 0``, are the same patch to the tokenizer), and clustered with scikit-learn's
  ``MiniBatchKMeans`` on a seeded sample. At train time the id of a patch is its nearest centroid,
  computed in torch on the centroids' device. Use it with a cross-entropy over ``vocab_size``.
* :class:`HOGTargets` (:mod:`selfsup.nets.hog_targets`): MaskFeat's (Wei et al. 2022) tokenizer-free
  target, per-patch histograms of oriented gradients, as floats ``[B, N, F]`` for a regression loss.

Both address patches in row-major order (``n = row * (W // p) + col``), the order of a ViT's patch
tokens and of :mod:`selfsup.views.masks`. There is deliberately no random-projection/hash
tokenizer: the hash "k-means" of some libraries carries little information about the patch and
learns poorly (see the survey ``mim-vit.md`` §3).

:func:`save_tokenizer` / :func:`load_tokenizer` store a small dict of tensors plus ``kind``,
``vocab_size`` and ``patch_size``, written atomically and read back with
``torch.load(weights_only=True)``, so a tokenizer fitted once can be cached in a run directory.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Protocol, runtime_checkable

import torch

from selfsup.nets.hog_targets import HOGTargets
from selfsup.nets.patch_kmeans import KMeansPatchTokenizer

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
