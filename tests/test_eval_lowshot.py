"""Stratified low-shot subsets, validation hold-outs and low-shot linear probes."""

import pytest
import torch

from selfsup.eval import lowshot_indices, lowshot_linear, stratified_split


def _labels(seed=0):
    # imbalanced classes: sizes 200, 120, 60, 30, 7
    sizes = [200, 120, 60, 30, 7]
    y = torch.cat([torch.full((s,), c) for c, s in enumerate(sizes)])
    return y[torch.randperm(y.numel(), generator=torch.Generator().manual_seed(seed))], sizes


def test_fraction_subsets_are_stratified_and_cover_every_class():
    y, sizes = _labels()
    idx = lowshot_indices(y, fraction=0.1, seed=0)
    counts = torch.bincount(y[idx], minlength=len(sizes)).tolist()
    assert counts == [max(1, round(0.1 * s)) for s in sizes]  # [20, 12, 6, 3, 1]
    assert idx.dtype == torch.int64 and torch.equal(idx, idx.sort().values) and idx.unique().numel() == idx.numel()
    tiny = lowshot_indices(y, fraction=0.01, seed=0)
    assert torch.bincount(y[tiny], minlength=5).min() >= 1  # at least one per class


def test_k_shot_has_exactly_k_per_class():
    y, sizes = _labels()
    for k in (1, 5, 7):
        idx = lowshot_indices(y, k_per_class=k, seed=3)
        assert torch.bincount(y[idx], minlength=5).tolist() == [k] * 5
    with pytest.raises(ValueError, match="class 4 has only 7"):
        lowshot_indices(y, k_per_class=10)


def test_subsets_are_reproducible_seed_dependent_and_nested():
    y, _ = _labels()
    a = lowshot_indices(y, fraction=0.1, seed=0)
    assert torch.equal(a, lowshot_indices(y, fraction=0.1, seed=0))
    assert not torch.equal(a, lowshot_indices(y, fraction=0.1, seed=1))
    small, big = lowshot_indices(y, fraction=0.05, seed=2), lowshot_indices(y, fraction=0.2, seed=2)
    assert set(small.tolist()) <= set(big.tolist())
    one, five = lowshot_indices(y, k_per_class=1, seed=2), lowshot_indices(y, k_per_class=5, seed=2)
    assert set(one.tolist()) <= set(five.tolist())


def test_lowshot_argument_errors():
    y, _ = _labels()
    with pytest.raises(ValueError, match="exactly one"):
        lowshot_indices(y)
    with pytest.raises(ValueError, match="exactly one"):
        lowshot_indices(y, fraction=0.1, k_per_class=1)
    with pytest.raises(ValueError, match="fraction"):
        lowshot_indices(y, fraction=1.5)


def test_stratified_split_holds_out_per_class():
    y, sizes = _labels()
    fit, val = stratified_split(y, 0.1, seed=0)
    assert torch.bincount(y[val], minlength=5).tolist() == [20, 12, 6, 3, 1]
    assert set(fit.tolist()).isdisjoint(val.tolist()) and fit.numel() + val.numel() == y.numel()
    fit2, val2 = stratified_split(y, 0.1, seed=0)
    assert torch.equal(val, val2)
    _, none = stratified_split(y, 0.0)
    assert none.numel() == 0


def test_lowshot_linear_trains_on_the_subsets():
    g = torch.Generator().manual_seed(0)
    centers = 4.0 * torch.randn(4, 8, generator=g)
    y = torch.randint(0, 4, (800,), generator=g)
    x = centers[y] + torch.randn(800, 8, generator=g)
    yt = torch.randint(0, 4, (200,), generator=g)
    xt = centers[yt] + torch.randn(200, 8, generator=g)
    res = lowshot_linear(x, y, xt, yt, fractions=(0.1,), shots=(1, 5), epochs=20, lrs=(0.1,), wds=(0.0,))
    assert set(res) == {"fraction=0.1", "shots=1", "shots=5"}
    assert res["shots=1"].n_train == 4 and res["shots=5"].n_train == 20
    assert 65 <= res["fraction=0.1"].n_train <= 80  # 10% of the 720 non-validation samples, per class
    assert res["fraction=0.1"].test_acc > 0.9
    assert res["shots=5"].test_acc > 0.8
    assert res["shots=1"].protocol.startswith("low-shot shots 1")
    with pytest.raises(ValueError, match="validation"):
        lowshot_linear(x, y, xt, yt, val_f=x, val_y=y)
