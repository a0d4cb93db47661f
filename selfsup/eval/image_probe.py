"""Linear probe trained on freshly augmented images (cookbook, "Evaluation with labels: Linear").

SimCLR / BYOL / VICReg train their linear-evaluation heads on random-resized-crop + flip views of
the training images, not on one fixed feature per image. Here the backbone stays frozen (eval mode,
no grad), every epoch draws new views of each uint8 batch (batched, per-sample random, from a seeded
``torch.Generator``), features are computed on the fly and the whole (lr x wd) grid of heads of
:func:`selfsup.eval.linear_probe` is trained at once on them. Model selection uses the non-augmented
validation hold-out and the test accuracy the non-augmented test images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from selfsup.data import ImageArray
from selfsup.views import ViewSpec, apply_view

from ._checks import check_positive_floats, check_positive_ints
from .features import _module_device, extract_features
from .probe import DEFAULT_LRS, _export_head, _GridOptimizer
from .probe_common import ProbeResult, batched_accuracy, cosine_factor, prepare_probe_data
from .splits import stratified_split

EVAL_VIEWS = ("simclr", "flip")


def eval_view_spec(kind: str | ViewSpec | None, size: int) -> ViewSpec | None:
    """The mild views used by the evaluation protocols, or None for no augmentation.

    ``"simclr"``: random-resized crop of scale (0.5, 1) (SimCLR's crop, milder than its 0.08 lower
    bound) resized back to ``size``, and a horizontal flip with p 0.5; no colour changes.
    ``"flip"``: horizontal flip only. A :class:`ViewSpec` is used as given.
    """
    if kind is None or isinstance(kind, ViewSpec):
        return kind
    if kind == "simclr":
        return ViewSpec(size=size, scale=(0.5, 1.0), flip_p=0.5)
    if kind == "flip":
        return ViewSpec(size=size, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.5)
    raise ValueError(f"unknown view kind {kind!r}; choose one of {EVAL_VIEWS}, a ViewSpec, or None")


def check_labeled(split: object, name: str) -> ImageArray:
    """Return ``split`` if it is a non-empty labelled :class:`ImageArray`, else raise a one-line error."""
    if not isinstance(split, ImageArray):
        raise TypeError(f"{name} must be a selfsup.data.ImageArray (uint8 images + labels), got {type(split).__name__}")
    if split.labels is None:
        raise ValueError(f"{name} has no labels; this protocol needs labelled images")
    if len(split) == 0:
        raise ValueError(f"{name} is empty; pass at least one image")
    return split


def check_mean_std(mean: Sequence[float], std: Sequence[float], channels: int) -> None:
    """Raise unless ``mean``/``std`` hold one value per channel and ``std > 0``."""
    if len(mean) != channels or len(std) != channels:
        raise ValueError(f"mean and std need one value per channel ({channels}), got {len(mean)} and {len(std)}")
    if any(float(s) <= 0 for s in std):
        raise ValueError(f"std values must be > 0, got {tuple(std)}")


def linear_probe_on_images(
    backbone: nn.Module,
    train: ImageArray,
    test: ImageArray | None,
    mean: Sequence[float],
    std: Sequence[float],
    views_kind: str | ViewSpec | None = "simclr",
    lrs: Sequence[float] | None = None,
    wds: Sequence[float] = (0.0, 1e-4),
    epochs: int = 20,
    batch_size: int = 256,
    optimizer: str = "sgd",
    momentum: float = 0.9,
    val_fraction: float = 0.1,
    standardize: bool = True,
    num_classes: int | None = None,
    lars_eta: float = 1e-3,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> ProbeResult:
    """Train the (lr x wd) grid of linear heads on augmented views of ``train`` with a frozen backbone.

    Per iteration: gather a uint8 batch of the fit split, draw one view per image (``views_kind``, see
    :func:`eval_view_spec`; None = the plain images, i.e. the offline probe computed on the fly),
    normalise with ``mean``/``std``, run the backbone in eval mode under ``no_grad`` (BatchNorm
    statistics untouched), standardise with the statistics of the *non-augmented* fit features, and
    take one step of every head (softmax cross-entropy, per-head SGD / LARS / AdamW, cosine lr decay
    to 0 over ``epochs``), exactly as :func:`selfsup.eval.linear_probe`. The head with the best
    accuracy on the non-augmented, stratified ``val_fraction`` hold-out is selected; ``test_acc`` is
    its accuracy on the non-augmented ``test`` images. Every random draw (head init, batch order,
    views) comes from one ``torch.Generator`` seeded with ``seed``, so runs are reproducible.
    The returned ``head`` maps non-augmented backbone features to logits.
    """
    train = check_labeled(train, "train")
    if test is not None:
        test = check_labeled(test, "test")
        if (test.channels, test.image_size) != (train.channels, train.image_size):
            raise ValueError("test images must have the same channels and size as the train images")
    check_mean_std(mean, std, train.channels)
    if optimizer not in DEFAULT_LRS:
        raise ValueError(f"optimizer must be one of {sorted(DEFAULT_LRS)}, got {optimizer!r}")
    lrs_t = check_positive_floats(DEFAULT_LRS[optimizer] if lrs is None else lrs, "lrs")
    wds_t = check_positive_floats(wds, "wds", allow_zero=True)
    epochs, batch_size = check_positive_ints((epochs, batch_size), "epochs/batch_size")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    spec = eval_view_spec(views_kind, train.image_size)
    dev = _module_device(backbone) if device is None else torch.device(device)

    fit_idx, val_idx = stratified_split(train.labels, val_fraction, seed)
    grid = [(lr, wd) for lr in lrs_t for wd in wds_t]
    if val_idx.numel() == 0 and len(grid) > 1:
        raise ValueError(
            "no validation images to choose among the lr/wd grid; raise val_fraction or give one lr and wd"
        )
    extract = lambda idx: extract_features(backbone, train.batch(idx)[0], mean, std, batch_size, dev)  # noqa: E731
    fit_f = extract(fit_idx)
    val_f = extract(val_idx) if val_idx.numel() else None
    test_f = None
    if test is not None:
        test_f = extract_features(backbone, test.batch(torch.arange(len(test)))[0], mean, std, batch_size, dev)
    data = prepare_probe_data(
        fit_f, train.labels[fit_idx], test_f, None if test is None else test.labels,
        0.0, val_f, None if val_f is None else train.labels[val_idx], standardize, num_classes, seed, dev,
    )

    gen = torch.Generator().manual_seed(int(seed))
    d, c, g_heads = fit_f.shape[1], data.num_classes, len(grid)
    w = (torch.randn(d, c, generator=gen) * 0.01).to(dev).unsqueeze(1).repeat(1, g_heads, 1).contiguous()
    b = torch.zeros(g_heads, c, device=dev)
    lr = torch.tensor([p[0] for p in grid], device=dev)
    wd = torch.tensor([p[1] for p in grid], device=dev)
    opt = _GridOptimizer(optimizer, lr, wd, momentum, lars_eta)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=dev).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=dev).view(1, -1, 1, 1)
    fit_y = data.y_fit
    n = fit_idx.numel()
    total, step = epochs * math.ceil(n / batch_size), 0
    modes = {m: m.training for m in backbone.modules()}
    backbone.eval()
    try:
        with torch.no_grad():
            for _ in range(epochs):
                perm = torch.randperm(n, generator=gen)
                for start in range(0, n, batch_size):
                    rows = perm[start : start + batch_size]
                    x = train.batch(fit_idx[rows])[0].to(dev, non_blocking=True)
                    if spec is not None:
                        x = apply_view(x, spec, mean, std, gen)
                    else:
                        x = (x.float().div_(255.0) - mean_t) / std_t
                    feats = data.norm(backbone(x).flatten(1).float())
                    _grid_step(feats, fit_y[rows.to(dev)], w, b, opt, cosine_factor(step, total))
                    step += 1
    finally:
        for m, mode in modes.items():
            m.training = mode

    logits = lambda x: (x @ w.view(d, g_heads * c)).view(-1, g_heads, c) + b  # noqa: E731
    if data.x_val.shape[0] > 0:
        val_accs = batched_accuracy(logits, data.x_val, data.y_val)
        best, val_list = int(torch.argmax(val_accs)), val_accs.tolist()
    else:
        best, val_list = 0, [float("nan")]
    test_acc = None
    if data.x_test is not None:
        test_acc = float(batched_accuracy(lambda x: logits(x)[:, best], data.x_test, data.y_test)[0])
    best_lr, best_wd = grid[best]
    name = {"sgd": "SGD", "lars": "LARS", "adamw": "AdamW"}[optimizer]
    views_name = views_kind if isinstance(views_kind, str) else ("none" if views_kind is None else "custom ViewSpec")
    return ProbeResult(
        best_lr=best_lr,
        best_wd=best_wd,
        val_acc=val_list[best],
        test_acc=test_acc,
        grid={k: float(v) for k, v in zip(grid, val_list)},
        head=_export_head(data, w[:, best, :], b[best], None),
        protocol=f"linear probe on augmented images ({views_name} views, {name}, {epochs} epochs, "
        f"best lr={best_lr:g}, wd={best_wd:g})",
        n_train=int(n),
        epochs=epochs,
    )


def _grid_step(x: Tensor, y: Tensor, w: Tensor, b: Tensor, opt: _GridOptimizer, factor: float) -> None:
    """One step of every head on a batch: exact softmax cross-entropy gradient ``(softmax - onehot) / B``."""
    bsz, (d, g_heads, c) = x.shape[0], w.shape
    prob = torch.softmax((x @ w.view(d, g_heads * c)).view(bsz, g_heads, c) + b, dim=-1)
    prob[torch.arange(bsz, device=x.device), :, y] -= 1.0
    prob /= bsz
    gw = (x.T @ prob.view(bsz, g_heads * c)).view(d, g_heads, c)
    opt.step(w, b, gw, prob.sum(dim=0), factor)
