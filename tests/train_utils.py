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
