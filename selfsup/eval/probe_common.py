"""Shared pieces of the linear and MLP probes: data preparation, result type, schedule."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from selfsup.diagnostics.validation import check_features

from ._checks import check_labels, check_same_dim, infer_num_classes, resolve_device
from .splits import stratified_split


class Standardize(nn.Module):
    """``(x - mean) / std`` with statistics fitted on the probe's training split only."""

    def __init__(self, mean: Tensor, std: Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean.clone())
        self.register_buffer("std", std.clone())

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


@dataclass
class ProbeResult:
    """Outcome of a probe: the selected hyperparameters, accuracies in [0, 1] and the trained head.

    ``grid`` maps every ``(lr, wd)`` tried to its validation accuracy. ``head`` maps raw features
    (as passed to the probe) to logits, including standardisation / BatchNorm, in eval mode.
    ``test_acc`` is None when no test set was given; ``val_acc`` is NaN without a validation split.
    """

    best_lr: float
    best_wd: float
    val_acc: float
    test_acc: float | None
    grid: dict[tuple[float, float], float]
    head: nn.Module
    protocol: str
    n_train: int
    epochs: int
    extra: dict[str, float] = field(default_factory=dict)

    @torch.no_grad()
    def predict(self, features: Tensor) -> Tensor:
        """Predicted class indices for raw features ``[N, D]``."""
        device = next(iter(self.head.buffers()), next(self.head.parameters())).device
        return self.head(features.to(device, torch.float32)).argmax(dim=1)


@dataclass
class ProbeData:
    """Features/labels of the fit, validation and test parts on one device, standardised if asked."""

    x_fit: Tensor
    y_fit: Tensor
    x_val: Tensor
    y_val: Tensor
    x_test: Tensor | None
    y_test: Tensor | None
    num_classes: int
    norm: nn.Module


def prepare_probe_data(
    train_f: Tensor,
    train_y: Tensor,
    test_f: Tensor | None,
    test_y: Tensor | None,
    val_fraction: float,
    val_f: Tensor | None,
    val_y: Tensor | None,
    standardize: bool,
    num_classes: int | None,
    seed: int,
    device: torch.device | str | None,
) -> ProbeData:
    """Validate inputs, hold out a stratified validation split (unless ``val_f`` is given), standardise."""
    train_f = check_features(train_f, "train_f")
    train_y = check_labels(train_y, train_f.shape[0], "train_y")
    if (test_f is None) != (test_y is None):
        raise ValueError("pass both test_f and test_y, or neither")
    if test_f is not None:
        test_f = check_features(test_f, "test_f")
        check_same_dim(train_f, test_f, "train_f", "test_f")
        test_y = check_labels(test_y, test_f.shape[0], "test_y")
    if (val_f is None) != (val_y is None):
        raise ValueError("pass both val_f and val_y, or neither")
    dev = resolve_device(device, train_f)
    if val_f is not None:
        val_f = check_features(val_f, "val_f")
        check_same_dim(train_f, val_f, "train_f", "val_f")
        val_y = check_labels(val_y, val_f.shape[0], "val_y")
        x_fit, y_fit, x_val, y_val = train_f, train_y, val_f, val_y
    else:
        fit_idx, val_idx = stratified_split(train_y, val_fraction, seed)
        x_fit, y_fit = train_f[fit_idx.to(train_f.device)], train_y[fit_idx.to(train_y.device)]
        x_val, y_val = train_f[val_idx.to(train_f.device)], train_y[val_idx.to(train_y.device)]
    n_cls = infer_num_classes(num_classes, train_y, test_y, val_y)
    x_fit = x_fit.to(dev, torch.float32)
    dim = x_fit.shape[1]
    if standardize:
        mean = x_fit.mean(dim=0)
        std = x_fit.std(dim=0, unbiased=False).clamp_min(1e-6)
    else:
        mean = torch.zeros(dim, device=dev)
        std = torch.ones(dim, device=dev)
    norm = Standardize(mean, std)

    def move(x: Tensor | None) -> Tensor | None:
        return None if x is None else norm(x.to(dev, torch.float32))

    return ProbeData(
        x_fit=norm(x_fit),
        y_fit=y_fit.to(dev),
        x_val=move(x_val),
        y_val=y_val.to(dev),
        x_test=move(test_f),
        y_test=None if test_y is None else test_y.to(dev),
        num_classes=n_cls,
        norm=norm,
    )


def cosine_factor(step: int, total_steps: int) -> float:
    """Cosine decay ``0.5 (1 + cos(pi t / T))`` of the base learning rate at update ``t`` of ``T``."""
    return 0.5 * (1.0 + math.cos(math.pi * step / max(total_steps, 1)))


@torch.no_grad()
def batched_accuracy(logits_fn: Callable[[Tensor], Tensor], x: Tensor, y: Tensor, chunk: int = 4096) -> Tensor:
    """Accuracy per head: ``logits_fn`` maps ``[B, D]`` to ``[B, G, C]`` (or ``[B, C]``); returns ``[G]``."""
    correct = None
    for start in range(0, x.shape[0], chunk):
        logits = logits_fn(x[start : start + chunk])
        if logits.dim() == 2:
            logits = logits.unsqueeze(1)
        hit = (logits.argmax(dim=-1) == y[start : start + chunk].unsqueeze(1)).sum(dim=0)
        correct = hit if correct is None else correct + hit
    if correct is None:
        raise ValueError("cannot compute an accuracy on an empty set")
    return correct.double() / x.shape[0]


def seeded_linear(in_dim: int, out_dim: int, gen: torch.Generator, device: torch.device) -> nn.Linear:
    """``nn.Linear`` with PyTorch's default uniform init drawn from ``gen`` (global RNG untouched)."""
    layer = nn.Linear(in_dim, out_dim, device="meta").to_empty(device=device)
    bound = 1.0 / math.sqrt(in_dim)
    with torch.no_grad():
        layer.weight.copy_((torch.rand(out_dim, in_dim, generator=gen) * 2 - 1) * bound)
        layer.bias.copy_((torch.rand(out_dim, generator=gen) * 2 - 1) * bound)
    return layer
