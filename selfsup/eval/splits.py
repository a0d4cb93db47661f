"""Seeded, stratified index splits: validation hold-outs and low-shot subsets.

Every class draws one random permutation of its members from a ``torch.Generator`` seeded with
``seed`` (classes visited in increasing label order); subsets are prefixes of these permutations.
Hence the same seed gives the same subset, and for one seed smaller subsets are nested in larger
ones (1% ⊂ 10%, 1-shot ⊂ 5-shot).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import check_labels


def _class_permutations(labels: Tensor, seed: int) -> list[tuple[int, Tensor]]:
    """``[(class, shuffled member indices)]`` for every class present, in increasing class order."""
    labels = check_labels(labels, labels.shape[0] if isinstance(labels, Tensor) else -1, "labels").cpu()
    if labels.numel() == 0:
        raise ValueError("labels is empty; nothing to split")
    order = torch.argsort(labels, stable=True)
    classes, counts = torch.unique_consecutive(labels[order], return_counts=True)
    gen = torch.Generator().manual_seed(int(seed))
    out: list[tuple[int, Tensor]] = []
    for c, members in zip(classes.tolist(), torch.split(order, counts.tolist())):
        out.append((c, members[torch.randperm(members.numel(), generator=gen)]))
    return out


def stratified_split(labels: Tensor, val_fraction: float, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Split indices into (fit, validation) with ``round(val_fraction * n_c)`` validation samples per class.

    Every class with at least 2 members puts at least one sample in each part; singleton classes
    stay in the fit part. Both index tensors are sorted (int64).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    fit, val = [], []
    for _, perm in _class_permutations(labels, seed):
        n_c = perm.numel()
        n_val = round(val_fraction * n_c)
        if val_fraction > 0 and n_c >= 2:
            n_val = min(max(n_val, 1), n_c - 1)
        elif n_c < 2:
            n_val = 0
        val.append(perm[:n_val])
        fit.append(perm[n_val:])
    return torch.sort(torch.cat(fit)).values, torch.sort(torch.cat(val)).values


def lowshot_indices(
    labels: Tensor, fraction: float | None = None, k_per_class: int | None = None, seed: int = 0
) -> Tensor:
    """Stratified low-shot subset of ``labels`` (sorted int64 indices), reproducible by ``seed``.

    Give exactly one of ``fraction`` (each class keeps ``max(1, round(fraction * n_c))`` samples,
    as in the 1% / 10% ImageNet protocols of Chen et al., 2020) or ``k_per_class`` (exactly k per
    class; a class with fewer than k samples raises). Subsets for one seed are nested.
    """
    if (fraction is None) == (k_per_class is None):
        raise ValueError("pass exactly one of fraction= or k_per_class=")
    if fraction is not None and not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    if k_per_class is not None and (int(k_per_class) != k_per_class or k_per_class < 1):
        raise ValueError(f"k_per_class must be a positive integer, got {k_per_class}")
    chosen = []
    for c, perm in _class_permutations(labels, seed):
        n_c = perm.numel()
        if k_per_class is not None:
            if n_c < k_per_class:
                raise ValueError(f"class {c} has only {n_c} samples, fewer than k_per_class={k_per_class}; lower k")
            take = int(k_per_class)
        else:
            take = max(1, round(float(fraction) * n_c))
        chosen.append(perm[:take])
    return torch.sort(torch.cat(chosen)).values
