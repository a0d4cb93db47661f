"""Low-shot linear evaluation: probes trained on 1% / 10% of the labels or k examples per class
(semi-supervised protocol of Chen et al., 2020 (SimCLR) and Assran et al., 2022 (MSN))."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor

from selfsup.diagnostics.validation import check_features

from ._checks import check_labels
from .probe import linear_probe
from .probe_common import ProbeResult
from .splits import lowshot_indices, stratified_split

__all__ = ["lowshot_indices", "lowshot_linear"]


def lowshot_linear(
    train_f: Tensor,
    train_y: Tensor,
    test_f: Tensor,
    test_y: Tensor,
    fractions: Sequence[float] = (0.01, 0.1),
    shots: Sequence[int] = (1, 5, 10),
    seed: int = 0,
    val_fraction: float = 0.1,
    **probe_kwargs: Any,
) -> dict[str, ProbeResult]:
    """Linear probes on stratified low-shot subsets; returns ``{"fraction=0.01": ..., "shots=5": ...}``.

    A 1-shot subset cannot provide its own validation split, so the lr/wd grid is selected on a
    stratified ``val_fraction`` hold-out of the training set that is disjoint from every subset;
    those validation labels are used for model selection only, never for fitting. Subsets are
    then drawn (nested, seeded) from the remaining training samples. ``probe_kwargs`` go to
    :func:`linear_probe` (``lrs``, ``wds``, ``epochs``, ``optimizer``, ...).
    """
    train_f = check_features(train_f, "train_f")
    train_y = check_labels(train_y, train_f.shape[0], "train_y")
    if "val_f" in probe_kwargs or "val_y" in probe_kwargs:
        raise ValueError("lowshot_linear builds its own validation split; do not pass val_f/val_y")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"lowshot_linear needs a validation hold-out: val_fraction in (0, 1), got {val_fraction}")
    pool_idx, val_idx = stratified_split(train_y, val_fraction, seed)
    pool_f, pool_y = train_f[pool_idx.to(train_f.device)], train_y[pool_idx.to(train_y.device)]
    val_f, val_y = train_f[val_idx.to(train_f.device)], train_y[val_idx.to(train_y.device)]
    probe_kwargs.setdefault("num_classes", int(train_y.max()) + 1)
    subsets: dict[str, Tensor] = {}
    for fraction in fractions:
        subsets[f"fraction={fraction:g}"] = lowshot_indices(pool_y, fraction=fraction, seed=seed)
    for k in shots:
        subsets[f"shots={k}"] = lowshot_indices(pool_y, k_per_class=k, seed=seed)
    if not subsets:
        raise ValueError("give at least one entry in fractions or shots")
    results: dict[str, ProbeResult] = {}
    for name, idx in subsets.items():
        idx = idx.to(pool_f.device)
        res = linear_probe(
            pool_f[idx], pool_y[idx], test_f, test_y, val_f=val_f, val_y=val_y, seed=seed, **probe_kwargs
        )
        res.protocol = f"low-shot {name.replace('=', ' ')}: " + res.protocol
        results[name] = res
    return results
