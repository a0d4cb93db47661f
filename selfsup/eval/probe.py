"""Offline linear probe with a whole (lr x wd) grid of heads trained in one pass
(cookbook, "Evaluation with labels: Linear"; multi-head evaluation as in BEiT, Bao et al., 2022).

All G = |lrs| x |wds| heads live in one weight tensor ``W [D, G, C]``; a mini-batch costs one
``[B, D] @ [D, G*C]`` matmul, and each head gets its own lr / wd in a vectorised optimizer update.
The gradient of the softmax cross-entropy is written out (``dL/dlogits = (softmax - onehot) / B``),
which is exact, needs no autograd graph and therefore also works inside a caller's ``no_grad``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import check_positive_floats, check_positive_ints
from .probe_common import ProbeData, ProbeResult, batched_accuracy, cosine_factor, prepare_probe_data

DEFAULT_LRS = {"sgd": (1e-3, 1e-2, 1e-1, 1.0), "lars": (0.1, 1.0, 10.0, 100.0), "adamw": (1e-4, 1e-3, 1e-2)}
BN_EPS = 1e-6  # MAE's linear-probe BatchNorm (He et al., 2022) uses eps=1e-6, affine=False
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8


class _GridOptimizer:
    """Per-head SGD-momentum / LARS / AdamW on ``W [D, G, C]`` and ``b [G, C]``.

    Formulas follow ``torch.optim.SGD`` (``buf = m buf + (g + wd w)``, ``w -= lr buf``),
    LARS (You et al., 2017; trust ratio ``eta ||w|| / ||g + wd w||`` per head, as in the Barlow Twins
    / MAE implementations) and ``torch.optim.AdamW`` (decoupled decay ``w *= 1 - lr wd``).
    Biases get no weight decay and no LARS adaptation.
    """

    def __init__(self, kind: str, lr: Tensor, wd: Tensor, momentum: float, lars_eta: float) -> None:
        self.kind, self.lr, self.wd, self.momentum, self.eta = kind, lr, wd, momentum, lars_eta
        self.state: dict[str, Tensor] = {}
        self.t = 0

    def _buf(self, name: str, like: Tensor) -> Tensor:
        if name not in self.state:
            self.state[name] = torch.zeros_like(like)
        return self.state[name]

    def step(self, w: Tensor, b: Tensor, gw: Tensor, gb: Tensor, factor: float) -> None:
        self.t += 1
        lr = self.lr * factor
        lr_w, lr_b, wd_w = lr.view(1, -1, 1), lr.view(-1, 1), self.wd.view(1, -1, 1)
        if self.kind == "adamw":
            b1, b2 = ADAM_BETAS
            bc1, bc2 = 1 - b1**self.t, math.sqrt(1 - b2**self.t)
            w.mul_(1 - lr_w * wd_w)
            for p, g, lr_p, name in ((w, gw, lr_w, "w"), (b, gb, lr_b, "b")):
                m, v = self._buf("m" + name, p), self._buf("v" + name, p)
                m.mul_(b1).add_(g, alpha=1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                p.sub_(lr_p / bc1 * m / (v.sqrt() / bc2 + ADAM_EPS))
            return
        dw = gw + wd_w * w
        if self.kind == "lars":
            w_norm = w.pow(2).sum(dim=(0, 2)).sqrt()
            d_norm = dw.pow(2).sum(dim=(0, 2)).sqrt()
            ok = (w_norm > 0) & (d_norm > 0)
            trust = torch.where(ok, self.eta * w_norm / d_norm.clamp_min(1e-30), torch.ones_like(w_norm))
            dw = dw * trust.view(1, -1, 1)
        for p, d, lr_p, name in ((w, dw, lr_w, "w"), (b, gb, lr_b, "b")):
            buf = self._buf("buf" + name, p)
            buf.mul_(self.momentum).add_(d)
            p.sub_(lr_p * buf)


def linear_probe(
    train_f: Tensor,
    train_y: Tensor,
    test_f: Tensor | None = None,
    test_y: Tensor | None = None,
    lrs: Sequence[float] | None = None,
    wds: Sequence[float] = (0.0, 1e-4),
    epochs: int = 100,
    batch_size: int = 256,
    optimizer: str = "sgd",
    momentum: float = 0.9,
    val_fraction: float = 0.1,
    val_f: Tensor | None = None,
    val_y: Tensor | None = None,
    standardize: bool = True,
    batchnorm: bool = False,
    num_classes: int | None = None,
    lars_eta: float = 1e-3,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> ProbeResult:
    """Train a linear classifier per (lr, wd) on frozen features, all heads in one pass per epoch.

    Loss: cross-entropy; schedule: per-iteration cosine decay of each head's lr to 0 over ``epochs``.
    Validation: a seeded, stratified ``val_fraction`` hold-out of the training features (or the
    explicit ``val_f``/``val_y``); the head with the best validation accuracy is selected (ties: first
    in ``lrs`` x ``wds`` order) and its test accuracy reported. The selected head is *not* retrained on
    train + val. ``standardize`` fits mean/std on the fit split only; ``batchnorm`` inserts MAE's
    parameter-free BatchNorm before the head (shared by all heads since it has no weights).
    Determinism: weights ``N(0, 0.01^2)`` (biases 0) then one ``randperm`` per epoch, all from a
    ``torch.Generator`` seeded with ``seed``; every head sees the same batches.
    Default ``lrs`` depend on ``optimizer``: sgd (1e-3..1), lars (0.1..100), adamw (1e-4..1e-2).
    """
    if optimizer not in DEFAULT_LRS:
        raise ValueError(f"optimizer must be one of {sorted(DEFAULT_LRS)}, got {optimizer!r}")
    lrs_t = check_positive_floats(DEFAULT_LRS[optimizer] if lrs is None else lrs, "lrs")
    wds_t = check_positive_floats(wds, "wds", allow_zero=True)
    (epochs,) = check_positive_ints((epochs,), "epochs")
    (batch_size,) = check_positive_ints((batch_size,), "batch_size")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    data = prepare_probe_data(
        train_f, train_y, test_f, test_y, val_fraction, val_f, val_y, standardize, num_classes, seed, device
    )
    grid = [(lr, wd) for lr in lrs_t for wd in wds_t]
    if data.x_val.shape[0] == 0 and len(grid) > 1:
        raise ValueError(
            "no validation samples to choose among the lr/wd grid; raise val_fraction, pass val_f/val_y, "
            "or give a single lr and wd"
        )
    w, b, bn_stats = _train_grid(data, grid, epochs, batch_size, optimizer, momentum, batchnorm, lars_eta, seed)

    def logits(x: Tensor) -> Tensor:
        if bn_stats is not None:
            x = F.batch_norm(x, bn_stats[0], bn_stats[1], training=False, eps=BN_EPS)
        d, g, c = w.shape
        return (x @ w.view(d, g * c)).view(-1, g, c) + b

    if data.x_val.shape[0] > 0:
        val_accs = batched_accuracy(logits, data.x_val, data.y_val)
        best = int(torch.argmax(val_accs))  # first maximum
        val_list = val_accs.tolist()
    else:
        best, val_list = 0, [float("nan")]
    head = _export_head(data, w[:, best, :], b[best], bn_stats)
    test_acc = None
    if data.x_test is not None:
        test_acc = float(batched_accuracy(lambda x: logits(x)[:, best], data.x_test, data.y_test)[0])
    best_lr, best_wd = grid[best]
    name = {"sgd": "SGD", "lars": "LARS", "adamw": "AdamW"}[optimizer]
    protocol = f"linear probe (offline, {name}, {epochs} epochs, best lr={best_lr:g}, wd={best_wd:g}"
    protocol += ", BN)" if batchnorm else ")"
    return ProbeResult(
        best_lr=best_lr,
        best_wd=best_wd,
        val_acc=val_list[best],
        test_acc=test_acc,
        grid={k: float(v) for k, v in zip(grid, val_list)},
        head=head,
        protocol=protocol,
        n_train=int(data.x_fit.shape[0]),
        epochs=epochs,
    )


@torch.no_grad()
def _train_grid(
    data: ProbeData,
    grid: list[tuple[float, float]],
    epochs: int,
    batch_size: int,
    optimizer: str,
    momentum: float,
    batchnorm: bool,
    lars_eta: float,
    seed: int,
) -> tuple[Tensor, Tensor, tuple[Tensor, Tensor] | None]:
    """Train all heads jointly; returns ``W [D, G, C]``, ``b [G, C]`` and BN running (mean, var)."""
    x_all, y_all = data.x_fit, data.y_fit
    n, d = x_all.shape
    g_heads, c = len(grid), data.num_classes
    dev = x_all.device
    gen = torch.Generator().manual_seed(int(seed))
    w0 = torch.randn(d, c, generator=gen) * 0.01
    w = w0.to(dev).unsqueeze(1).repeat(1, g_heads, 1).contiguous()
    b = torch.zeros(g_heads, c, device=dev)
    lr = torch.tensor([p[0] for p in grid], device=dev)
    wd = torch.tensor([p[1] for p in grid], device=dev)
    opt = _GridOptimizer(optimizer, lr, wd, momentum, lars_eta)
    bn_stats = (torch.zeros(d, device=dev), torch.ones(d, device=dev)) if batchnorm else None
    steps_per_epoch = math.ceil(n / batch_size)
    total, step = epochs * steps_per_epoch, 0
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen).to(dev)
        for start in range(0, n, batch_size):
            idx = perm[start : start + batch_size]
            x, y = x_all[idx], y_all[idx]
            if bn_stats is not None and x.shape[0] > 1:
                x = F.batch_norm(x, bn_stats[0], bn_stats[1], training=True, momentum=0.1, eps=BN_EPS)
            elif bn_stats is not None:  # a batch of one has no batch statistics: use the running ones
                x = F.batch_norm(x, bn_stats[0], bn_stats[1], training=False, eps=BN_EPS)
            bsz = x.shape[0]
            prob = torch.softmax((x @ w.view(d, g_heads * c)).view(bsz, g_heads, c) + b, dim=-1)
            prob[torch.arange(bsz, device=dev), :, y] -= 1.0
            prob /= bsz
            gw = (x.T @ prob.view(bsz, g_heads * c)).view(d, g_heads, c)
            gb = prob.sum(dim=0)
            opt.step(w, b, gw, gb, cosine_factor(step, total))
            step += 1
    return w, b, bn_stats


def _export_head(data: ProbeData, w: Tensor, b: Tensor, bn_stats: tuple[Tensor, Tensor] | None) -> nn.Module:
    """``nn.Sequential(standardize, [BatchNorm1d(affine=False)], Linear)`` in eval mode for one head."""
    d, c = w.shape
    layers: list[nn.Module] = [data.norm]
    if bn_stats is not None:
        bn = nn.BatchNorm1d(d, affine=False, eps=BN_EPS).to(w.device)
        bn.running_mean.copy_(bn_stats[0])
        bn.running_var.copy_(bn_stats[1])
        layers.append(bn)
    linear = nn.Linear(d, c, device="meta").to_empty(device=w.device)
    with torch.no_grad():
        linear.weight.copy_(w.T)
        linear.bias.copy_(b)
    layers.append(linear)
    return nn.Sequential(*layers).eval().requires_grad_(False)
