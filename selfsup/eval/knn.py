"""k-nearest-neighbour classification of frozen features (cookbook, "Evaluation with labels: KNN").

Weighted vote as in Wu et al. (2018) and DINO (Caron et al., 2021): each of the k neighbours votes
for its label with weight ``w = exp(s / T)``, ``s`` the cosine similarity (or ``s = -||x - x'||_2``
for the euclidean metric). Majority vote uses ``w = 1``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from selfsup.diagnostics.validation import check_features

from ._checks import (
    check_labels,
    check_positive_floats,
    check_positive_ints,
    check_same_dim,
    infer_num_classes,
    resolve_device,
)

KnnKey = tuple[int, float | None]


def similarity(query: Tensor, keys: Tensor, metric: str) -> Tensor:
    """Similarity ``[M, N]`` between rows: cosine of pre-normalised rows, or minus euclidean distance."""
    if metric == "cosine":
        return query @ keys.T
    return -torch.cdist(query, keys)


def prepare_metric(x: Tensor, metric: str) -> Tensor:
    """L2-normalise rows for the cosine metric (done once, not per chunk); check the metric name."""
    if metric == "cosine":
        return F.normalize(x, dim=1)
    if metric == "euclidean":
        return x
    raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")


def rank_classes(votes: Tensor) -> Tensor:
    """Classes sorted by decreasing vote; ties go to the smaller class index (stable sort)."""
    return torch.sort(votes, dim=1, descending=True, stable=True).indices


def knn_classify(
    train_f: Tensor,
    train_y: Tensor,
    test_f: Tensor,
    test_y: Tensor | None = None,
    ks: Sequence[int] = (20, 200),
    temperatures: Sequence[float] = (0.07,),
    metric: str = "cosine",
    vote: str = "weighted",
    num_classes: int | None = None,
    chunk_size: int = 1024,
    return_predictions: bool = False,
    device: torch.device | str | None = None,
) -> dict[KnnKey, dict[str, float | Tensor]]:
    """kNN top-1 / top-5 accuracy for every (k, T) in one pass over the test features.

    For each chunk of ``chunk_size`` test rows the ``[chunk, N_train]`` similarities are computed
    (the full test x train matrix is never materialised), the ``max(ks)`` nearest neighbours are
    taken once, and every smaller k and every temperature are derived from them.

    Returns ``{(k, T): {"top1": float, "top5": float, "predictions": LongTensor[M]}}`` with
    accuracies in [0, 1]; the accuracies are present when ``test_y`` is given, the predictions when
    ``return_predictions`` or ``test_y is None``. For ``vote="majority"`` the temperature plays no
    role and keys are ``(k, None)``. A k larger than the training set is clipped to N_train with a
    warning (the key keeps the requested k). Vote ties go to the smaller class index; top-5 is
    top-min(5, C). Computation runs on ``device`` (default: the device of ``train_f``); peak extra
    memory is about ``chunk_size * N_train * 4`` bytes (lower ``chunk_size`` for ImageNet-size sets).
    """
    train_f = check_features(train_f, "train_f")
    test_f = check_features(test_f, "test_f")
    check_same_dim(train_f, test_f, "train_f", "test_f")
    train_y = check_labels(train_y, train_f.shape[0], "train_y")
    if test_y is not None:
        test_y = check_labels(test_y, test_f.shape[0], "test_y")
    ks = check_positive_ints(ks, "ks")
    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")
    if vote not in ("weighted", "majority"):
        raise ValueError(f"vote must be 'weighted' or 'majority', got {vote!r}")
    temps: tuple[float | None, ...] = (
        check_positive_floats(temperatures, "temperatures") if vote == "weighted" else (None,)
    )
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    num_classes = infer_num_classes(num_classes, train_y, test_y)
    n_train = train_f.shape[0]
    if max(ks) > n_train:
        warnings.warn(f"k={max(ks)} exceeds the {n_train} training samples; clipping k to {n_train}", stacklevel=2)
    eff_k = {k: min(k, n_train) for k in ks}
    dev = resolve_device(device, train_f)
    return _vote_pass(
        train_f, train_y, test_f, test_y, eff_k, temps, metric, num_classes, chunk_size, return_predictions, dev
    )


@torch.no_grad()
def _vote_pass(
    train_f: Tensor,
    train_y: Tensor,
    test_f: Tensor,
    test_y: Tensor | None,
    eff_k: dict[int, int],
    temps: tuple[float | None, ...],
    metric: str,
    num_classes: int,
    chunk_size: int,
    return_predictions: bool,
    dev: torch.device,
) -> dict[KnnKey, dict[str, float | Tensor]]:
    """The single chunked pass of :func:`knn_classify` over the test features (inputs validated)."""
    ks = tuple(eff_k)
    k_top = max(eff_k.values())
    top_n = min(5, num_classes)
    keys = prepare_metric(train_f.to(dev, torch.float32), metric)
    key_labels = train_y.to(dev)
    combos = [(k, t) for k in ks for t in temps]
    correct1 = {c: 0 for c in combos}
    correct5 = {c: 0 for c in combos}
    want_preds = return_predictions or test_y is None
    preds: dict[KnnKey, list[Tensor]] = {c: [] for c in combos}

    for start in range(0, test_f.shape[0], chunk_size):
        query = prepare_metric(test_f[start : start + chunk_size].to(dev, torch.float32), metric)
        sims, idx = similarity(query, keys, metric).topk(k_top, dim=1)  # sorted, nearest first
        neigh_labels = key_labels[idx]
        sims = sims.double()
        # Subtracting the row maximum rescales all weights of a row by one constant: the argmax is
        # unchanged and exp() cannot overflow/underflow for euclidean distances.
        shifted = sims - sims[:, :1]
        target = test_y[start : start + chunk_size].to(dev) if test_y is not None else None
        for t in temps:
            weights = torch.ones_like(sims) if t is None else torch.exp(shifted / t)
            for k in ks:
                kk = eff_k[k]
                votes = torch.zeros(query.shape[0], num_classes, dtype=torch.float64, device=dev)
                votes.scatter_add_(1, neigh_labels[:, :kk], weights[:, :kk])
                ranked = rank_classes(votes)[:, :top_n]
                if target is not None:
                    hits = ranked == target.unsqueeze(1)
                    correct1[(k, t)] += int(hits[:, 0].sum())
                    correct5[(k, t)] += int(hits.any(dim=1).sum())
                if want_preds:
                    preds[(k, t)].append(ranked[:, 0].cpu())

    n_test = test_f.shape[0]
    out: dict[KnnKey, dict[str, float | Tensor]] = {}
    for c in combos:
        entry: dict[str, float | Tensor] = {}
        if test_y is not None:
            entry["top1"] = correct1[c] / n_test
            entry["top5"] = correct5[c] / n_test
        if want_preds:
            entry["predictions"] = torch.cat(preds[c])
        out[c] = entry
    return out


def knn_protocol(k: int, t: float | None, metric: str = "cosine", vote: str = "weighted") -> str:
    """Human-readable protocol label, e.g. ``kNN (offline, cosine, weighted, k=20, T=0.07)``."""
    temp = f", T={t:g}" if t is not None else ""
    return f"kNN (offline, {metric}, {vote}, k={k}{temp})"
