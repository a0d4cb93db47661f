"""Label-based retrieval metrics of frozen features: mean average precision and Recall@k.

A gallery item is relevant to a query when they share a label (instance/category retrieval as in
deep metric learning, e.g. Musgrave et al., 2020).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch
from torch import Tensor

from selfsup.diagnostics.validation import check_features

from ._checks import check_labels, check_positive_ints, check_same_dim, resolve_device
from .knn import prepare_metric, similarity


def retrieval_metrics(
    query_f: Tensor,
    query_y: Tensor,
    gallery_f: Tensor | None = None,
    gallery_y: Tensor | None = None,
    ks: Sequence[int] = (1, 5, 10),
    metric: str = "cosine",
    chunk_size: int = 256,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """``{"mAP": ..., "recall@k": ...}`` (in [0, 1]) of ranking the gallery by similarity to each query.

    ``AP = (1 / |R|) sum_{j: rel_j} precision@j`` over the full ranking, ``R`` the relevant items;
    ``Recall@k`` = fraction of queries with at least one relevant item among the k nearest.
    Without a gallery, each query is ranked against all other queries (leave-one-out). Queries
    without any relevant gallery item are skipped (with a warning). Similarity ties are ordered by
    gallery index. Only ``[chunk_size, N_gallery]`` similarities exist at a time.
    """
    query_f = check_features(query_f, "query_f")
    query_y = check_labels(query_y, query_f.shape[0], "query_y")
    leave_one_out = gallery_f is None
    if leave_one_out:
        if gallery_y is not None:
            raise ValueError("gallery_y given without gallery_f; pass both or neither")
        gallery_f, gallery_y = query_f, query_y
    else:
        gallery_f = check_features(gallery_f, "gallery_f")
        check_same_dim(query_f, gallery_f, "query_f", "gallery_f")
        if gallery_y is None:
            raise ValueError("gallery_f given without gallery_y; pass both")
        gallery_y = check_labels(gallery_y, gallery_f.shape[0], "gallery_y")
    ks = check_positive_ints(ks, "ks")
    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    n_gallery = gallery_f.shape[0] - (1 if leave_one_out else 0)
    if n_gallery < 1:
        raise ValueError("the gallery is empty (leave-one-out needs at least 2 samples)")
    if max(ks) > n_gallery:
        raise ValueError(f"recall@{max(ks)} needs at least {max(ks)} gallery items, have {n_gallery}; lower ks")

    dev = resolve_device(device, query_f)
    ap_sum, n_valid, hits = _rank_pass(
        query_f, query_y, gallery_f, gallery_y, ks, metric, chunk_size, leave_one_out, dev
    )
    skipped = query_f.shape[0] - n_valid
    if n_valid == 0:
        raise ValueError("no query has a relevant (same-label) item in the gallery; check the labels")
    if skipped:
        warnings.warn(f"{skipped} queries have no same-label gallery item and were skipped", stacklevel=2)
    out = {"mAP": ap_sum / n_valid}
    out.update({f"recall@{k}": hits[k] / n_valid for k in ks})
    return out


@torch.no_grad()
def _rank_pass(
    query_f: Tensor,
    query_y: Tensor,
    gallery_f: Tensor,
    gallery_y: Tensor,
    ks: tuple[int, ...],
    metric: str,
    chunk_size: int,
    leave_one_out: bool,
    dev: torch.device,
) -> tuple[float, int, dict[int, int]]:
    """Chunked ranking; returns (sum of AP, number of queries with a relevant item, Recall@k hit counts)."""
    keys = prepare_metric(gallery_f.to(dev, torch.float32), metric)
    key_y = gallery_y.to(dev)
    ap_sum, n_valid = 0.0, 0
    hits = {k: 0 for k in ks}
    for start in range(0, query_f.shape[0], chunk_size):
        q = prepare_metric(query_f[start : start + chunk_size].to(dev, torch.float32), metric)
        q_y = query_y[start : start + chunk_size].to(dev)
        sims = similarity(q, keys, metric)
        rows = torch.arange(q.shape[0], device=dev)
        if leave_one_out:
            sims[rows, rows + start] = -torch.inf
        order = torch.sort(sims, dim=1, descending=True, stable=True).indices
        rel = key_y[order] == q_y.unsqueeze(1)
        if leave_one_out:
            rel[:, -1] = False  # the query itself, ranked last by its -inf similarity
            rel = rel[:, :-1]
        n_rel = rel.sum(dim=1)
        valid = n_rel > 0
        ranks = torch.arange(1, rel.shape[1] + 1, device=dev, dtype=torch.float64)
        precision = rel.cumsum(dim=1).double() / ranks
        ap = (precision * rel).sum(dim=1) / n_rel.clamp_min(1)
        ap_sum += float(ap[valid].sum())
        n_valid += int(valid.sum())
        for k in ks:
            hits[k] += int(rel[valid, :k].any(dim=1).sum())
    return ap_sum, n_valid, hits
