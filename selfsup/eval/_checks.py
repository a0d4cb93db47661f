"""Input validation shared by the evaluators (one-line errors that name the fix); feature matrices are
checked by :func:`selfsup.diagnostics.validation.check_features`."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def check_labels(y: object, n: int, name: str = "labels") -> Tensor:
    """Return ``y`` as an int64 1-D tensor of length ``n`` with non-negative entries, else raise."""
    if not isinstance(y, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of int64 class indices, got {type(y).__name__}")
    if y.dim() != 1:
        raise ValueError(f"{name} must be 1-D [N], got shape {tuple(y.shape)}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer class indices, got {y.dtype}; call .long()")
    if y.shape[0] != n:
        raise ValueError(f"{name} has {y.shape[0]} entries but the features have {n} rows; they must match")
    if n > 0 and int(y.min()) < 0:
        raise ValueError(f"{name} contains negative class indices; labels must be in [0, num_classes)")
    return y.long()


def check_same_dim(a: Tensor, b: Tensor, name_a: str, name_b: str) -> None:
    """Raise if two feature matrices have different widths."""
    if a.shape[1] != b.shape[1]:
        raise ValueError(
            f"{name_a} has dim {a.shape[1]} but {name_b} has dim {b.shape[1]}; use the same backbone/layer"
        )


def infer_num_classes(num_classes: int | None, *labels: Tensor | None) -> int:
    """Number of classes: the given value (checked against the labels) or ``max(label) + 1``."""
    present = [y for y in labels if y is not None and y.numel() > 0]
    top = max((int(y.max()) for y in present), default=-1) + 1
    if num_classes is None:
        if top == 0:
            raise ValueError("cannot infer num_classes from empty labels; pass num_classes")
        return top
    if num_classes < top:
        raise ValueError(f"num_classes={num_classes} but labels go up to {top - 1}; pass num_classes >= {top}")
    return int(num_classes)


def check_positive_ints(values: Sequence[int], name: str) -> tuple[int, ...]:
    """Return a tuple of positive ints or raise."""
    out = tuple(int(v) for v in values)
    if not out or any(v < 1 for v in out) or any(int(v) != v for v in values):
        raise ValueError(f"{name} must be a non-empty sequence of positive integers, got {tuple(values)}")
    return out


def check_positive_floats(values: Sequence[float], name: str, allow_zero: bool = False) -> tuple[float, ...]:
    """Return a tuple of positive (or non-negative) floats or raise."""
    out = tuple(float(v) for v in values)
    bad = [v for v in out if (v < 0 if allow_zero else v <= 0) or v != v]
    if not out or bad:
        kind = "non-negative" if allow_zero else "positive"
        raise ValueError(f"{name} must be a non-empty sequence of {kind} numbers, got {tuple(values)}")
    return out


def resolve_device(device: torch.device | str | None, like: Tensor) -> torch.device:
    """``device`` if given, else the device of ``like``."""
    return like.device if device is None else torch.device(device)
