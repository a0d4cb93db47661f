"""Singular-value spectrum and RankMe of an embedding matrix (cookbook, "Dimensional Collapse of
Representations" and "Evaluation without labels"), used by the trainer's collapse monitor and by
the label-free evaluation protocols of :mod:`selfsup.eval`.

Decompositions run in float64: singular values of fp32 embeddings span many orders of magnitude,
and the entropy below is sensitive to their small end.
"""

from __future__ import annotations

import torch
from torch import Tensor

from selfsup.diagnostics.validation import check_features


def singular_values(z: Tensor, center: bool = True) -> Tensor:
    """Singular values ``sigma_1 >= ... >= sigma_min(N, D)`` of ``z`` [N, D] in float64.

    ``center=True`` subtracts the per-dimension mean first, so ``sigma_k^2 / (N - 1)`` are the
    eigenvalues of the embedding covariance (the spectrum plotted by Jing et al., 2022).
    """
    z = check_features(z, "z").detach().to(torch.float64)
    if center:
        z = z - z.mean(dim=0, keepdim=True)
    return torch.linalg.svdvals(z)


def entropy_effective_rank(values: Tensor, eps: float) -> float:
    """Effective rank ``exp(-sum_k p_k log p_k)`` of non-negative ``values``, ``p_k = v_k / ||v||_1 + eps``
    (Roy & Vetterli, 2007); 1 for all-zero values (no direction at all)."""
    total = values.sum()
    if float(total) <= 0.0:
        return 1.0
    p = values / total + eps
    return float(torch.exp(-(p * torch.log(p)).sum()))


def rankme(z: Tensor, eps: float = 1e-7, center: bool = False) -> float:
    """RankMe (Garrido et al., 2023): smooth effective rank of the embedding matrix.

    ``RankMe(Z) = exp(-sum_k p_k log p_k)``, ``p_k = sigma_k(Z) / ||sigma(Z)||_1 + eps``,
    k = 1..min(N, D). Equals min(N, D) for a perfectly isotropic Z and 1 for rank-one Z.
    The paper uses the raw (uncentred) embeddings, hence ``center=False`` by default.
    """
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    return entropy_effective_rank(singular_values(z, center=center), eps)
