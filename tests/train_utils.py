"""Short training runs on a small slice of digits, for method and trainer tests."""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from selfsup.config import load_recipe
from selfsup.data import DataSplits, ImageArray, load_data
from selfsup.train.loop import build_method, train

_DIGITS: dict[int, DataSplits] = {}


def tiny_digits(n_train: int = 192, n_test: int = 64, size: int = 16) -> DataSplits:
    """The first ``n_train``/``n_test`` images of the built-in digits at ``size`` px."""
    if size not in _DIGITS:
        _DIGITS[size] = load_data(None, image_size=size)
    d = _DIGITS[size]
    cut = lambda s, n: ImageArray(s.images[:n], s.labels[:n], s.classes)
    return DataSplits(cut(d.train, n_train), cut(d.test, n_test), d.name, d.num_classes)


TINY = ["model.backbone=small_cnn", "model.width=8", "data.batch_size=32", "data.image_size=16", "train.precision=fp32",
        "train.progress_bar=false", "optim.warmup_epochs=0", "eval.linear_epochs=5"]


def short_run(recipe: str, tmp_path: Path, overrides: list[str] = (), epochs: int = 1, data: DataSplits | None = None,
              size: int = 16):
    """Train ``recipe`` briefly; return ``(run_dir, initial_state, method)`` where ``method`` holds the
    trained weights and ``initial_state`` is a deep copy of its state before training."""
    r = load_recipe(recipe, TINY + [f"train.epochs={epochs}", f"train.out_dir={tmp_path}", *overrides])
    data = data or tiny_digits(size=size)
    torch.manual_seed(0)
    method = build_method(r, data.train.channels, data.train.image_size)
    before = copy.deepcopy(method.state_dict())
    run = train(r, run_dir=tmp_path / "run", data=data, method=method, log=lambda *a: None)
    return run, before, method


def changed(before: dict, after: dict, prefix: str) -> bool:
    """Whether any floating tensor under ``prefix`` differs between two state dicts."""
    return any(not torch.equal(before[k], after[k]) for k in before
               if k.startswith(prefix) and before[k].is_floating_point())


# ---- learning checks: a trained backbone against the same backbone at random init ------------------------

#: Short, fast learning runs (44 steps an epoch) on the whole digits train split at 16 px, LARS eta 0.02
#: as in the digits recipes (the papers' 1e-3 barely moves a width-16 SmallCNN in a few hundred steps).
#: Batch 32 rather than 256: more steps for the same images. They check that trainer, loss and views
#: learn, not the recipes' tuning.
LEARN = ["model.backbone=small_cnn", "model.width=16", "data.image_size=16", "data.batch_size=32", "train.epochs=6",
         "optim.warmup_epochs=1", "optim.eta=0.02", "train.precision=fp32", "train.progress_bar=false",
         "train.online_probe=false", "train.seed=0"]


def shifted(images: torch.Tensor, max_shift: int, seed: int = 0) -> torch.Tensor:
    """uint8 images ``[N, C, H, W]``, each translated by a seeded random offset in ``[-max_shift, max_shift]``
    on both axes, filled with 0 (the digits' background)."""
    g = torch.Generator().manual_seed(seed)
    n, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (max_shift,) * 4)
    off = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=g).tolist()
    return torch.stack([padded[i, :, a:a + h, b:b + w] for i, (a, b) in enumerate(off)])


def shifted_digits(size: int = 16, max_shift: int = 2, copies: int = 4, seed: int = 0) -> DataSplits:
    """The whole digits train split (1437 images) at ``size`` px; as the test split, ``copies`` copies of the
    360 test images, each image translated by up to ``max_shift`` px (copy ``i`` with seed ``seed + i``).

    The plain split is too easy to tell learning from random init: a random SmallCNN's kNN leans on the
    aligned pixels (0.92 on the plain test, ~0.50 on this one at width 16), while crop-augmented
    pretraining learns the invariance. The copies make the score less dependent on one draw of shifts."""
    tiny_digits(size=size)  # fills the cache
    d = _DIGITS[size]
    images = torch.cat([shifted(d.test.images, max_shift, seed + i) for i in range(copies)])
    test = ImageArray(images, d.test.labels.repeat(copies), d.test.classes)
    return DataSplits(d.train, test, d.name, d.num_classes)


def bn_recalibrated(backbone: torch.nn.Module, images: torch.Tensor, batch_size: int = 256) -> torch.nn.Module:
    """A copy of ``backbone`` whose BatchNorm running statistics are re-estimated on ``images`` (uint8).

    The fair random-init baseline: a run that learns nothing (constant loss, lr 0) still updates the
    running statistics in its train-mode forwards, which alone moves a kNN score by a few points."""
    from selfsup.views import default_mean_std

    net = copy.deepcopy(backbone).train()
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the pass
    mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in default_mean_std(images.shape[1]))
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            net((images[i:i + batch_size].float() / 255 - mean) / std)
    return net.eval()


def knn_top1(backbone: torch.nn.Module, data: DataSplits, k: int = 20, temperature: float = 0.07) -> float:
    """Weighted kNN top-1 (cosine, as ``selfsup eval``) of frozen features: train split as the gallery."""
    from selfsup.eval import extract_features, knn_classify
    from selfsup.views import default_mean_std

    mean, std = default_mean_std(data.train.channels)
    f_train = extract_features(backbone, data.train.images, mean, std)
    f_test = extract_features(backbone, data.test.images, mean, std)
    res = knn_classify(f_train, data.train.labels, f_test, data.test.labels, ks=(k,), temperatures=(temperature,))
    return res[(k, temperature)]["top1"]


def random_init_knn(backbone: torch.nn.Module, data: DataSplits) -> float:
    """The random-init baseline: the better kNN top-1 of ``backbone`` as it is and with its BatchNorm
    statistics re-estimated on the training images."""
    return max(knn_top1(backbone, data), knn_top1(bn_recalibrated(backbone, data.train.images), data))


#: A 2-block, 32-wide ViT at patch 4 (16 tokens at 16 px), to follow TINY in a short run's overrides.
VIT_TINY = ["model.backbone=timm:vit_tiny_patch16_224", "model.vit.patch_size=4", "model.vit.embed_dim=32",
            "model.vit.depth=2", "model.vit.num_heads=2"]
