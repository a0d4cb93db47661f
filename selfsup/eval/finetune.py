"""Full fine-tuning evaluation (cookbook, "Evaluation with labels: Full Fine-tuning"; MAE, He et al.,
2022; BEiT, Bao et al., 2022).

A copy of the backbone gets a linear head and is trained end to end with AdamW (or SGD), linear
warmup + cosine decay, layer-wise lr decay (:mod:`selfsup.nets.layer_decay`), label smoothing
(Szegedy et al., 2016), optional mixup (Zhang et al., 2018) and light crop + flip views. The epoch
with the best accuracy on a stratified hold-out of the training images is kept.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.data import ImageArray
from selfsup.nets.backbones import feature_dim
from selfsup.train.optim import build_optimizer, set_lr_wd
from selfsup.train.schedules import warmup_cosine
from selfsup.views import ViewSpec, apply_view, default_mean_std

from .features import _module_device
from .image_probe import check_labeled, check_mean_std, eval_view_spec
from selfsup.nets.layer_decay import param_groups_lrd
from .splits import stratified_split

PRECISIONS = ("fp32", "bf16", "fp16")


class Classifier(nn.Module):
    """``head(backbone(x))``: a backbone and a linear head on its ``[B, D]`` features."""

    def __init__(self, backbone: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.backbone(x).flatten(1))


@dataclass
class FinetuneResult:
    """Outcome of :func:`finetune`: accuracies in [0, 1] of the selected epoch and the fine-tuned model.

    ``history`` has one dict per epoch (``epoch``, ``train_loss``, ``val_acc``, ``lr``); ``model`` is the
    :class:`Classifier` (backbone copy + head) at ``best_epoch``, in eval mode; it takes images normalised
    with ``mean``/``std``. ``val_acc`` is NaN and the last epoch is kept when there is no hold-out.
    """

    val_acc: float
    test_acc: float | None
    best_epoch: int
    history: list[dict[str, float]]
    model: nn.Module
    protocol: str
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    extra: dict[str, float] = field(default_factory=dict)


def smooth_targets(labels: Tensor, num_classes: int, label_smoothing: float = 0.0) -> Tensor:
    """Soft targets ``(1 - eps) onehot(y) + eps / C`` (Szegedy et al., 2016), as in ``F.cross_entropy``."""
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
    onehot = F.one_hot(labels.long(), num_classes).float()
    return onehot * (1.0 - label_smoothing) + label_smoothing / num_classes


def mixup(x: Tensor, targets: Tensor, alpha: float, generator: torch.Generator) -> tuple[Tensor, Tensor, float]:
    """Mixup (Zhang et al., 2018): ``lam ~ Beta(alpha, alpha)``, a random pairing ``j = perm(i)``,
    ``x~ = lam x + (1 - lam) x[j]`` and ``t~ = lam t + (1 - lam) t[j]`` for soft targets ``t [B, C]``.

    ``lam`` and the permutation come from the CPU ``generator`` (the Beta draw uses numpy seeded from it).
    Returns ``(mixed inputs, mixed targets, lam)``; ``alpha <= 0`` returns the inputs unchanged and lam 1.
    """
    if x.shape[0] != targets.shape[0]:
        raise ValueError(f"x has {x.shape[0]} rows but targets has {targets.shape[0]}; they must match")
    if alpha <= 0:
        return x, targets, 1.0
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    lam = float(np.random.default_rng(seed).beta(alpha, alpha))
    perm = torch.randperm(x.shape[0], generator=generator).to(x.device)
    return x * lam + x[perm] * (1.0 - lam), targets * lam + targets[perm] * (1.0 - lam), lam


def _accuracy(model: nn.Module, images: ImageArray, idx: Tensor, mean_t: Tensor, std_t: Tensor,
              batch_size: int, dev: torch.device) -> float:
    """Top-1 accuracy of ``model`` (eval mode, fp32, no grad) on rows ``idx`` of ``images``."""
    correct = 0
    model.eval()
    with torch.no_grad():
        for start in range(0, idx.numel(), batch_size):
            x, y = images.batch(idx[start : start + batch_size])
            x = (x.to(dev).float().div_(255.0) - mean_t) / std_t
            correct += int((model(x).argmax(dim=1).cpu() == y).sum())
    return correct / max(idx.numel(), 1)


def _seeded_head(dim: int, num_classes: int, gen: torch.Generator, dev: torch.device) -> nn.Linear:
    """MAE's fine-tuning head init: weights from a truncated normal with std 2e-5, bias 0."""
    head = nn.Linear(dim, num_classes, device="meta").to_empty(device=torch.device("cpu"))  # global RNG untouched
    with torch.no_grad():
        nn.init.trunc_normal_(head.weight, std=2e-5, a=-4e-5, b=4e-5, generator=gen)
        head.bias.zero_()
    return head.to(dev)


def finetune(
    backbone: nn.Module,
    train: ImageArray,
    test: ImageArray | None,
    num_classes: int | None = None,
    epochs: int = 30,
    lr: float = 1e-3,
    optimizer: str = "adamw",
    weight_decay: float = 0.05,
    layer_decay: float | None = 0.75,
    label_smoothing: float = 0.1,
    mixup_alpha: float = 0.0,
    augment: str | ViewSpec | None = "simclr",
    batch_size: int = 128,
    warmup: float = 0.1,
    momentum: float = 0.9,
    clip_grad: float | None = None,
    val_fraction: float = 0.1,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    precision: str = "fp32",
    seed: int = 0,
    device: torch.device | str | None = None,
) -> FinetuneResult:
    """Fine-tune a copy of ``backbone`` plus a linear head on ``train``; report hold-out and test accuracy.

    The caller's backbone is never modified (a deep copy is trained). Per iteration: a uint8 batch of the
    fit split (seeded shuffle, batches of one skipped for BatchNorm), one view per image (``augment``,
    see :func:`selfsup.eval.image_probe.eval_view_spec`; None = plain images), normalisation with
    ``mean``/``std`` (default: :func:`selfsup.views.default_mean_std`, as in pretraining), soft targets
    with ``label_smoothing``, optional mixup, cross-entropy under ``precision`` autocast, and an
    optimizer step with ``lr_t = warmup_cosine(lr, progress, warmup) * layer_decay ** (L - layer_id)``
    (``lr`` is the absolute peak lr of the head; no batch-size scaling). Biases and norms get no weight
    decay. After every epoch the model is scored on the stratified ``val_fraction`` hold-out (plain
    images, eval mode) and the best epoch's weights are kept (ties: the earliest); ``test_acc`` is
    theirs on ``test``. All randomness (head init, order, views, mixup) comes from ``seed``.
    """
    train = check_labeled(train, "train")
    if test is not None:
        test = check_labeled(test, "test")
        if (test.channels, test.image_size) != (train.channels, train.image_size):
            raise ValueError("test images must have the same channels and size as the train images")
    if not isinstance(backbone, nn.Module):
        raise TypeError(f"backbone must be an nn.Module, got {type(backbone).__name__}")
    if optimizer not in ("adamw", "sgd"):
        raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {optimizer!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if not lr > 0 or weight_decay < 0 or not 0.0 <= warmup < 1.0 or mixup_alpha < 0:
        raise ValueError(
            f"need lr > 0, weight_decay >= 0, 0 <= warmup < 1 and mixup_alpha >= 0; got lr={lr}, "
            f"weight_decay={weight_decay}, warmup={warmup}, mixup_alpha={mixup_alpha}"
        )
    dev = _module_device(backbone) if device is None else torch.device(device)
    if precision == "fp16" and dev.type != "cuda":
        raise ValueError(f"precision='fp16' needs a CUDA device, got {dev}; use precision='bf16' or 'fp32'")
    if mean is None or std is None:
        mean, std = default_mean_std(train.channels)
    check_mean_std(mean, std, train.channels)
    labels = [train.labels] + ([test.labels] if test is not None else [])
    top = max(int(y.max()) for y in labels) + 1
    num_classes = top if num_classes is None else int(num_classes)
    if num_classes < top:
        raise ValueError(f"num_classes={num_classes} but labels go up to {top - 1}; pass num_classes >= {top}")
    spec = eval_view_spec(augment, train.image_size)

    fit_idx, val_idx = stratified_split(train.labels, val_fraction, seed)
    gen = torch.Generator().manual_seed(int(seed))
    net = copy.deepcopy(backbone).to(dev).requires_grad_(True)
    dim = feature_dim(net, train.channels, train.image_size)
    model = Classifier(net, _seeded_head(dim, num_classes, gen, dev))
    groups = param_groups_lrd(model, lr, weight_decay, layer_decay)
    opt = build_optimizer(groups, optimizer, lr, weight_decay, momentum=momentum)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=dev).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=dev).view(1, -1, 1, 1)

    n = fit_idx.numel()
    total, step = epochs * math.ceil(n / batch_size), 0
    history: list[dict[str, float]] = []
    best_acc, best_epoch, best_state = -1.0, epochs, None
    for epoch in range(1, epochs + 1):
        model.train()
        perm = torch.randperm(n, generator=gen)
        loss_sum, seen = 0.0, 0
        for start in range(0, n, batch_size):
            rows = fit_idx[perm[start : start + batch_size]]
            if rows.numel() < 2:  # BatchNorm cannot normalise a single sample
                continue
            x, y = train.batch(rows)
            x = x.to(dev, non_blocking=True)
            x = apply_view(x, spec, mean, std, gen) if spec is not None else (x.float().div_(255.0) - mean_t) / std_t
            targets = smooth_targets(y.to(dev), num_classes, label_smoothing)
            x, targets, _ = mixup(x, targets, mixup_alpha, gen)
            set_lr_wd(opt, warmup_cosine(lr, step / total, warmup), weight_decay, lr)
            with torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                loss = F.cross_entropy(model(x).float(), targets)
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise FloatingPointError(
                    f"fine-tuning loss is {loss_value} at epoch {epoch}; lower lr or use precision='fp32'"
                )
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if clip_grad:
                scaler.unscale_(opt)
                nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            scaler.step(opt)
            scaler.update()
            loss_sum, seen, step = loss_sum + loss_value * rows.numel(), seen + rows.numel(), step + 1
        val_acc = _accuracy(model, train, val_idx, mean_t, std_t, batch_size, dev) if val_idx.numel() else float("nan")
        history.append({"epoch": epoch, "train_loss": loss_sum / max(seen, 1), "val_acc": val_acc,
                        "lr": opt.param_groups[-1]["lr"]})
        if val_idx.numel() and val_acc > best_acc:
            best_acc, best_epoch = val_acc, epoch
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval().requires_grad_(False)
    test_acc = None
    if test is not None:
        test_acc = _accuracy(model, test, torch.arange(len(test)), mean_t, std_t, batch_size, dev)
    views = augment if isinstance(augment, str) else ("none" if augment is None else "custom ViewSpec")
    protocol = (
        f"full fine-tuning ({optimizer}, lr={lr:g}, wd={weight_decay:g}, layer decay={layer_decay}, "
        f"label smoothing={label_smoothing:g}, mixup={mixup_alpha:g}, {views} views, best epoch {best_epoch}/{epochs})"
    )
    return FinetuneResult(
        val_acc=best_acc if best_state is not None else float("nan"),
        test_acc=test_acc,
        best_epoch=best_epoch,
        history=history,
        model=model,
        protocol=protocol,
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
    )
