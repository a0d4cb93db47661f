"""Offline MLP probe with early stopping (cookbook, "Evaluation with labels: MLP").

The cookbook warns that MLP probes overfit: the best MLP head is usually reached after a few
epochs, not after the ~100 used for linear probes, so regularisation or early stopping is needed.
This probe therefore keeps the weights of the epoch with the best validation accuracy and stops
after ``patience`` epochs without improvement.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import check_positive_floats, check_positive_ints
from .probe_common import ProbeData, ProbeResult, batched_accuracy, cosine_factor, prepare_probe_data, seeded_linear


def build_mlp(
    in_dim: int, hidden_dim: int, num_classes: int, num_layers: int, gen: torch.Generator, device: torch.device
) -> nn.Sequential:
    """``num_layers`` linear layers with BatchNorm1d + ReLU between them (seeded init, global RNG untouched)."""
    if num_layers not in (2, 3):
        raise ValueError(f"num_layers must be 2 or 3 for an MLP probe, got {num_layers}")
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(num_layers - 1):
        layers += [seeded_linear(width, hidden_dim, gen, device), nn.BatchNorm1d(hidden_dim).to(device), nn.ReLU()]
        width = hidden_dim
    layers.append(seeded_linear(width, num_classes, gen, device))
    return nn.Sequential(*layers)


def mlp_probe(
    train_f: Tensor,
    train_y: Tensor,
    test_f: Tensor | None = None,
    test_y: Tensor | None = None,
    hidden_dim: int = 1024,
    num_layers: int = 2,
    lrs: Sequence[float] = (1e-3,),
    wds: Sequence[float] = (1e-4,),
    epochs: int = 100,
    patience: int = 10,
    batch_size: int = 256,
    val_fraction: float = 0.1,
    val_f: Tensor | None = None,
    val_y: Tensor | None = None,
    standardize: bool = True,
    num_classes: int | None = None,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> ProbeResult:
    """Train a 2- or 3-layer MLP (Linear-BN-ReLU blocks) per (lr, wd) with AdamW and early stopping.

    Each configuration is trained separately (cross-entropy, per-iteration cosine lr decay over
    ``epochs``), evaluated on the stratified validation hold-out after every epoch, and rolled back to
    its best epoch. The configuration with the best validation accuracy is selected and its test
    accuracy reported. Warning (cookbook): MLP probes overfit the probe's training data quickly, so
    compare them with linear probes with care and keep early stopping on. ``ProbeResult.epochs`` is
    the best epoch of the selected head.
    """
    lrs_t = check_positive_floats(lrs, "lrs")
    wds_t = check_positive_floats(wds, "wds", allow_zero=True)
    epochs, patience, batch_size, hidden_dim = check_positive_ints(
        (epochs, patience, batch_size, hidden_dim), "epochs/patience/batch_size/hidden_dim"
    )
    data = prepare_probe_data(
        train_f, train_y, test_f, test_y, val_fraction, val_f, val_y, standardize, num_classes, seed, device
    )
    if data.x_val.shape[0] == 0:
        raise ValueError(
            "the MLP probe needs a validation split for early stopping; raise val_fraction or pass val_f/val_y"
        )
    grid: dict[tuple[float, float], float] = {}
    best: tuple[float, nn.Module, tuple[float, float], int] | None = None
    for lr in lrs_t:
        for wd in wds_t:
            model, acc, epoch = _train_one(data, hidden_dim, num_layers, lr, wd, epochs, patience, batch_size, seed)
            grid[(lr, wd)] = acc
            if best is None or acc > best[0]:
                best = (acc, model, (lr, wd), epoch)
    assert best is not None
    val_acc, model, (best_lr, best_wd), best_epoch = best
    head = nn.Sequential(data.norm, model).eval().requires_grad_(False)
    test_acc = None
    if data.x_test is not None:
        test_acc = float(batched_accuracy(model, data.x_test, data.y_test)[0])
    protocol = (
        f"MLP probe (offline, {num_layers} layers, hidden {hidden_dim}, AdamW, best epoch "
        f"{best_epoch}/{epochs} (early stopping), lr={best_lr:g}, wd={best_wd:g})"
    )
    return ProbeResult(
        best_lr=best_lr,
        best_wd=best_wd,
        val_acc=val_acc,
        test_acc=test_acc,
        grid=grid,
        head=head,
        protocol=protocol,
        n_train=int(data.x_fit.shape[0]),
        epochs=best_epoch,
    )


def _train_one(
    data: ProbeData,
    hidden_dim: int,
    num_layers: int,
    lr: float,
    wd: float,
    epochs: int,
    patience: int,
    batch_size: int,
    seed: int,
) -> tuple[nn.Module, float, int]:
    """Train one MLP; return it rolled back to its best epoch, that epoch's val accuracy and the epoch."""
    dev = data.x_fit.device
    gen = torch.Generator().manual_seed(int(seed))
    model = build_mlp(data.x_fit.shape[1], hidden_dim, data.num_classes, num_layers, gen, dev)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=wd)
    n = data.x_fit.shape[0]
    steps_per_epoch = -(-n // batch_size)
    total, step = epochs * steps_per_epoch, 0
    best_acc, best_state, best_epoch, since_best = -1.0, copy.deepcopy(model.state_dict()), 0, 0
    for epoch in range(1, epochs + 1):
        model.train()
        perm = torch.randperm(n, generator=gen).to(dev)
        for start in range(0, n, batch_size):
            idx = perm[start : start + batch_size]
            if idx.numel() < 2:  # BatchNorm cannot normalise a single sample
                continue
            for group in opt.param_groups:
                group["lr"] = lr * cosine_factor(step, total)
            with torch.enable_grad():
                loss = F.cross_entropy(model(data.x_fit[idx]), data.y_fit[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
            opt.step()
            step += 1
        model.eval()
        acc = float(batched_accuracy(model, data.x_val, data.y_val)[0])
        if acc > best_acc:
            best_acc, best_state, best_epoch, since_best = acc, copy.deepcopy(model.state_dict()), epoch, 0
        else:
            since_best += 1
            if since_best >= patience:
                break
    model.load_state_dict(best_state)
    return model.eval(), best_acc, best_epoch
