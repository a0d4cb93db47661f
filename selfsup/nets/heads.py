"""Projector and predictor MLPs from the cookbook's ``x-y-z`` spec strings."""

from __future__ import annotations

import torch.nn as nn


def parse_spec(spec: str | int) -> list[int]:
    """``"2048-2048-256"`` -> ``[2048, 2048, 256]`` (layer output widths; the input is the feature dim)."""
    if isinstance(spec, int):
        return [spec]
    try:
        dims = [int(s) for s in str(spec).split("-")]
    except ValueError:
        raise ValueError(f"head spec '{spec}' must be widths joined by '-', like '2048-2048-256'") from None
    if not dims or any(d <= 0 for d in dims):
        raise ValueError(f"head spec '{spec}' must contain positive widths, like '2048-2048-256'")
    return dims


def mlp(in_dim: int, spec: str | int, norm: str = "bn", last_norm: bool = False, last_bias: bool = True) -> nn.Sequential:
    """MLP head: hidden layers are Linear -> Norm -> ReLU, the last is Linear (+ optional BN).

    - ``norm``: ``"bn"`` (SimCLR/BYOL/VICReg), ``"ln"`` or ``"none"`` for the hidden layers.
    - ``last_norm``: a final ``BatchNorm1d(affine=False)`` as in SimCLR v2, Barlow Twins, MoCo v3.
    - ``last_bias``: bias on the final Linear (off when a BN follows).
    """
    if norm not in ("bn", "ln", "none"):
        raise ValueError(f"head norm '{norm}' is not one of bn, ln, none")
    dims = [in_dim] + parse_spec(spec)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        last = i == len(dims) - 2
        if last:
            layers.append(nn.Linear(a, b, bias=last_bias and not last_norm))
            if last_norm:
                layers.append(nn.BatchNorm1d(b, affine=False))
        else:
            layers.append(nn.Linear(a, b, bias=norm != "bn"))
            if norm == "bn":
                layers.append(nn.BatchNorm1d(b))
            elif norm == "ln":
                layers.append(nn.LayerNorm(b))
            layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


def out_dim(spec: str | int) -> int:
    return parse_spec(spec)[-1]


def online_probe(feat_dim: int, num_classes: int) -> nn.Module:
    """The online linear probe on detached backbone features: a non-affine BatchNorm (so the
    probe keeps up with features whose scale drifts during pretraining) then a linear layer."""
    return nn.Sequential(nn.BatchNorm1d(feat_dim, affine=False), nn.Linear(feat_dim, num_classes))
