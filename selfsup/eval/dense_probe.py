"""Dense evaluation: a linear segmentation probe on frozen feature maps, reporting mIoU and pixel accuracy.

The "linear" setting of DINOv2's semantic-segmentation evaluation (Oquab et al. 2023, Sec. 7.4, and its
released mmseg config ``ade20k linear``, the protocol SelfPatch, Leopart and others also report): the
backbone is frozen; a BatchNorm then a 1x1 convolution (a linear classifier per location) maps the last
feature map (:func:`selfsup.nets.dense.feature_map`) to class logits; the low-resolution logits are
bilinearly upsampled to the image size and trained with per-pixel cross-entropy, pixels labelled
``ignore_index`` skipped. Optimisation as that config: AdamW, lr 1e-3, weight decay 1e-4, betas
(0.9, 0.999), batch 16, linear warm-up over the first 1500/40000 = 3.75% of the updates then a poly
(power 1, i.e. linear) decay to 0; the head's conv is initialised N(0, 0.01) with zero bias (mmseg's
``conv_seg``). No augmentation and no lr search: one run, seeded (initialisation and shuffling come
from a ``torch.Generator``), deterministic on CPU.

mIoU is computed from the test set's confusion matrix ``M`` (rows: true class, columns: predicted):
``IoU_c = M_cc / (sum_j M_cj + sum_i M_ic - M_cc)``, averaged over the classes present in the labels or
the predictions (mmseg's ``nanmean`` over classes with a non-zero union); pixel accuracy is
``trace(M) / sum(M)``. See :mod:`selfsup.data.digit_scenes` for a dataset with exact masks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from selfsup.nets.dense import feature_map

__all__ = ["DenseProbeResult", "confusion_matrix", "miou_from_confusion", "dense_linear_probe", "frozen_feature_maps"]

#: DINOv2's linear segmentation config (ade20k, 40k iterations, 1500 of them warm-up)
DENSE_LR, DENSE_WD, DENSE_BATCH, DENSE_WARMUP = 1e-3, 1e-4, 16, 1500 / 40000


@dataclass
class DenseProbeResult:
    """Test mIoU and pixel accuracy in [0, 1], the per-class IoU (NaN: class absent from labels and
    predictions), the confusion matrix and a protocol line."""

    miou: float
    pixel_acc: float
    iou: list[float]
    confusion: Tensor = field(repr=False)
    protocol: str = ""


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int, ignore_index: int = 255) -> Tensor:
    """int64 ``[K, K]`` counts of (true class, predicted class) over the pixels whose target is not
    ``ignore_index``. Targets outside ``0..K-1`` (other than ``ignore_index``) raise."""
    pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
    if pred.shape != target.shape:
        raise ValueError(f"pred has {pred.numel()} pixels but target {target.numel()}; give one prediction per pixel")
    keep = target != ignore_index
    pred, target = pred[keep], target[keep]
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= num_classes):
        raise ValueError(f"target holds class {int(target.max())} (or negative) but num_classes={num_classes}; "
                         f"fix the masks or num_classes")
    return torch.bincount(target * num_classes + pred, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def miou_from_confusion(conf: Tensor) -> tuple[float, float, list[float]]:
    """``(mIoU, pixel accuracy, per-class IoU)`` from a confusion matrix (rows true, columns predicted);
    classes with an empty union (absent from both) are NaN in the list and left out of the mean."""
    conf = conf.double()
    tp = conf.diagonal()
    union = conf.sum(1) + conf.sum(0) - tp
    iou = torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, float("nan")))
    present = ~iou.isnan()
    miou = float(iou[present].mean()) if bool(present.any()) else float("nan")
    total = float(conf.sum())
    return miou, (float(tp.sum()) / total if total else float("nan")), iou.tolist()


@torch.no_grad()
def frozen_feature_maps(backbone: nn.Module, images_uint8: Tensor, mean: Sequence[float], std: Sequence[float],
                        device: torch.device | str | None = None, batch_size: int = 256) -> Tensor:
    """fp32 ``[N, C, h, w]`` feature maps of ``backbone`` (eval mode, no grad; its modes restored) on the
    images normalised as ``(x / 255 - mean) / std``, on CPU."""
    if images_uint8.dtype != torch.uint8 or images_uint8.dim() != 4:
        raise ValueError(f"images must be uint8 [N, C, H, W], got {images_uint8.dtype} {tuple(images_uint8.shape)}")
    dev = torch.device(device) if device is not None else next(backbone.parameters()).device
    mu = torch.tensor(mean, dtype=torch.float32, device=dev).view(1, -1, 1, 1)
    sd = torch.tensor(std, dtype=torch.float32, device=dev).view(1, -1, 1, 1)
    modes = {m: m.training for m in backbone.modules()}
    backbone.eval()
    try:
        out = [feature_map(backbone, (images_uint8[i:i + batch_size].to(dev).float() / 255 - mu) / sd).float().cpu()
               for i in range(0, len(images_uint8), batch_size)]
    finally:
        for m, mode in modes.items():
            m.training = mode
    return torch.cat(out)


def _head(channels: int, num_classes: int, gen: torch.Generator) -> nn.Sequential:
    conv = nn.Conv2d(channels, num_classes, 1)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * 0.01)
        conv.bias.zero_()
    return nn.Sequential(nn.BatchNorm2d(channels), conv)


def _lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warm-up from 1e-6 (mmseg's warmup_ratio) over ``warmup`` updates, then poly power 1 to 0."""
    if step < warmup:
        return 1e-6 + (1 - 1e-6) * step / warmup
    return 1.0 - step / max(total, 1)


def dense_linear_probe(train_feats: Tensor, train_masks: Tensor, test_feats: Tensor, test_masks: Tensor,
                       num_classes: int, epochs: int = 20, lr: float = DENSE_LR, weight_decay: float = DENSE_WD,
                       batch_size: int = DENSE_BATCH, ignore_index: int = 255, seed: int = 0,
                       device: torch.device | str = "cpu") -> DenseProbeResult:
    """Train the BN + 1x1-conv head on frozen feature maps ``[N, C, h, w]`` against masks ``[N, H, W]``
    (logits bilinearly upsampled to ``H x W``) for ``epochs`` passes; return its test mIoU and pixel
    accuracy. The module docstring gives the protocol and where its values come from."""
    if train_feats.dim() != 4 or test_feats.dim() != 4:
        raise ValueError(f"features must be [N, C, h, w] maps, got {tuple(train_feats.shape)} and "
                         f"{tuple(test_feats.shape)}; compute them with frozen_feature_maps")
    if train_masks.dim() != 3 or len(train_masks) != len(train_feats) or len(test_masks) != len(test_feats):
        raise ValueError("give one H x W mask per feature map (masks [N, H, W])")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")
    dev = torch.device(device)
    gen = torch.Generator().manual_seed(seed)
    head = _head(train_feats.shape[1], num_classes, gen).to(dev)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.999))
    size = tuple(train_masks.shape[-2:])
    per_epoch = math.ceil(len(train_feats) / batch_size)
    total, step = epochs * per_epoch, 0
    warmup = max(1, round(DENSE_WARMUP * total))
    head.train()
    for _ in range(epochs):
        order = torch.randperm(len(train_feats), generator=gen)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            x, y = train_feats[idx].to(dev), train_masks[idx].to(dev).long()
            for g in opt.param_groups:
                g["lr"] = lr * _lr_factor(step, total, warmup)
            logits = F.interpolate(head(x), size=size, mode="bilinear", align_corners=False)
            loss = F.cross_entropy(logits, y, ignore_index=ignore_index)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    head.eval()
    conf = torch.zeros(num_classes, num_classes, dtype=torch.int64)
    with torch.no_grad():
        for start in range(0, len(test_feats), 256):
            x = test_feats[start:start + 256].to(dev)
            logits = F.interpolate(head(x), size=tuple(test_masks.shape[-2:]), mode="bilinear", align_corners=False)
            conf += confusion_matrix(logits.argmax(1).cpu(), test_masks[start:start + 256], num_classes, ignore_index)
    miou, acc, iou = miou_from_confusion(conf)
    c, h, w = train_feats.shape[1:]
    protocol = (f"linear segmentation probe (DINOv2 'linear': frozen {c}x{h}x{w} feature map, BN + 1x1 conv, "
                f"logits upsampled to {size[0]}x{size[1]}; AdamW lr {lr:g} wd {weight_decay:g}, batch {batch_size}, "
                f"{epochs} epochs, warm-up + poly; {len(train_feats)} train / {len(test_feats)} test images, "
                f"{num_classes} pixel classes)")
    return DenseProbeResult(miou, acc, iou, conf, protocol)
