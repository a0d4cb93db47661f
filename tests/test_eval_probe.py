"""Linear (batched grid) and MLP probes."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from selfsup.eval import linear_probe, mlp_probe


def _blobs(n=600, dim=16, classes=4, spread=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = 3.0 * torch.randn(classes, dim, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return centers[y] + spread * torch.randn(n, dim, generator=g), y


def _split(x, y, n_train):
    return x[:n_train], y[:n_train], x[n_train:], y[n_train:]


def test_linear_probe_separable_blobs_reaches_95_percent():
    x, y = _blobs(n=900)
    tr_f, tr_y, te_f, te_y = _split(x, y, 600)
    res = linear_probe(tr_f, tr_y, te_f, te_y, epochs=10)
    assert res.test_acc >= 0.95 and res.val_acc >= 0.95
    assert set(res.grid) == {(lr, wd) for lr in (1e-3, 1e-2, 1e-1, 1.0) for wd in (0.0, 1e-4)}
    assert res.n_train == 540  # 10% stratified hold-out
    assert (res.predict(te_f) == te_y).double().mean().item() == pytest.approx(res.test_acc)


def test_linear_probe_selects_the_learning_rate_that_can_learn():
    x, y = _blobs(n=900, dim=32, classes=6, spread=2.0, seed=3)
    tr_f, tr_y, te_f, te_y = _split(x, y, 600)
    res = linear_probe(tr_f, tr_y, te_f, te_y, lrs=(1e-6, 1e-5, 1e-4, 0.1), wds=(0.0,), epochs=2)
    assert res.best_lr == 0.1
    assert res.grid[(1e-6, 0.0)] < 0.5 < res.grid[(0.1, 0.0)]  # tiny steps stay near the random init


@pytest.mark.parametrize("optimizer", ["sgd", "adamw", "lars"])
def test_batched_grid_equals_single_head_runs(optimizer):
    x, y = _blobs(n=500, spread=2.5, seed=1)
    tr_f, tr_y, te_f, te_y = _split(x, y, 400)
    lrs = {"sgd": (0.01, 0.3), "adamw": (1e-3, 3e-2), "lars": (1.0, 30.0)}[optimizer]
    wds = (0.0, 1e-2)
    grid = linear_probe(tr_f, tr_y, te_f, te_y, lrs=lrs, wds=wds, epochs=3, batch_size=64, optimizer=optimizer)
    for lr in lrs:
        for wd in wds:
            one = linear_probe(
                tr_f, tr_y, te_f, te_y, lrs=(lr,), wds=(wd,), epochs=3, batch_size=64, optimizer=optimizer
            )
            # identical math; fp32 summation order differs ([D, G*C] vs [D, C] matmul): allow 1 flipped sample
            assert one.grid[(lr, wd)] == pytest.approx(grid.grid[(lr, wd)], abs=1.01 / 40)
            if (lr, wd) == (grid.best_lr, grid.best_wd):
                assert one.test_acc == pytest.approx(grid.test_acc, abs=1.01 / 100)
                w_one, w_grid = one.head[-1].weight, grid.head[-1].weight
                torch.testing.assert_close(w_one, w_grid, rtol=1e-4, atol=1e-5)


def _torch_reference(x, y, lr, wd, epochs, batch_size, optimizer, batchnorm, seed=0):
    """One head trained with torch.optim + autograd, same init / batch order / schedule as linear_probe."""
    n, d = x.shape
    c = int(y.max()) + 1
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(d, c)
    with torch.no_grad():
        lin.weight.copy_((torch.randn(d, c, generator=g) * 0.01).T)
        lin.bias.zero_()
    model = nn.Sequential(nn.BatchNorm1d(d, affine=False, eps=1e-6), lin) if batchnorm else lin
    groups = [{"params": [lin.weight], "weight_decay": wd}, {"params": [lin.bias], "weight_decay": 0.0}]
    opt = torch.optim.SGD(groups, lr=lr, momentum=0.9) if optimizer == "sgd" else torch.optim.AdamW(groups, lr=lr)
    total = epochs * math.ceil(n / batch_size)
    step = 0
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        for start in range(0, n, batch_size):
            idx = perm[start : start + batch_size]
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
    return model.eval()


def test_lars_head_matches_reference_update():
    """LARS (You et al., 2017) written per parameter: trust ratio eta ||w|| / ||g + wd w|| on the weight only."""
    x, y = _blobs(n=200, dim=6, classes=3, spread=2.0, seed=6)
    lr, wd, eta, epochs, bs = 5.0, 1e-3, 1e-3, 3, 40
    res = linear_probe(
        x, y, lrs=(lr,), wds=(wd,), epochs=epochs, batch_size=bs, optimizer="lars", val_f=x[:20], val_y=y[:20],
        standardize=False,
    )
    g = torch.Generator().manual_seed(0)
    w = torch.randn(6, 3, generator=g).double() * 0.01
    b = torch.zeros(3, dtype=torch.float64)
    buf_w, buf_b = torch.zeros_like(w), torch.zeros_like(b)
    total, step = epochs * math.ceil(200 / bs), 0
    xd = x.double()
    for _ in range(epochs):
        perm = torch.randperm(200, generator=g)
        for start in range(0, 200, bs):
            idx = perm[start : start + bs]
            p = torch.softmax(xd[idx] @ w + b, dim=1)
            p[torch.arange(len(idx)), y[idx]] -= 1
            gw, gb = xd[idx].T @ p / len(idx), p.sum(0) / len(idx)
            d = gw + wd * w
            d = d * (eta * w.norm() / d.norm())
            cur = lr * 0.5 * (1 + math.cos(math.pi * step / total))
            buf_w = 0.9 * buf_w + d
            buf_b = 0.9 * buf_b + gb
            w, b = w - cur * buf_w, b - cur * buf_b
            step += 1
    torch.testing.assert_close(res.head[-1].weight.double(), w.T, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(res.head[-1].bias.double(), b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("optimizer,lr,batchnorm", [("sgd", 0.2, False), ("sgd", 0.2, True), ("adamw", 0.01, False)])
def test_single_head_matches_torch_optim_reference(optimizer, lr, batchnorm):
    x, y = _blobs(n=300, dim=8, classes=3, spread=2.0, seed=5)
    val_f, val_y = x[:50], y[:50]
    wd = 1e-3
    res = linear_probe(
        x, y, lrs=(lr,), wds=(wd,), epochs=4, batch_size=50, optimizer=optimizer, val_f=val_f, val_y=val_y,
        standardize=False, batchnorm=batchnorm,
    )
    ref = _torch_reference(x, y, lr, wd, 4, 50, optimizer, batchnorm)
    ref_lin = ref[-1] if batchnorm else ref
    torch.testing.assert_close(res.head[-1].weight, ref_lin.weight.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(res.head[-1].bias, ref_lin.bias.detach(), rtol=1e-4, atol=1e-5)
    if batchnorm:
        torch.testing.assert_close(res.head[1].running_mean, ref[0].running_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(res.head[1].running_var, ref[0].running_var, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(res.head(val_f), ref(val_f), rtol=1e-4, atol=1e-4)


def test_probe_is_deterministic_and_standardizes_on_train_only():
    x, y = _blobs(n=400, seed=2)
    x = x * 50 + 7  # badly scaled features
    tr_f, tr_y, te_f, te_y = _split(x, y, 300)
    a = linear_probe(tr_f, tr_y, te_f, te_y, epochs=3)
    b = linear_probe(tr_f, tr_y, te_f, te_y, epochs=3)
    assert a.grid == b.grid and a.test_acc == b.test_acc
    norm = a.head[0]
    assert norm.mean.shape == (16,)
    # statistics come from the 270 fit rows (not val, not test)
    assert not torch.allclose(norm.mean, x.mean(0))
    assert a.test_acc > 0.9


def test_probe_errors():
    x, y = _blobs(n=100)
    with pytest.raises(ValueError, match="optimizer"):
        linear_probe(x, y, optimizer="rmsprop")
    with pytest.raises(ValueError, match="validation"):
        linear_probe(x, y, val_fraction=0.0, lrs=(0.1, 1.0))
    with pytest.raises(ValueError, match="lrs"):
        linear_probe(x, y, lrs=(-1.0,))
    with pytest.raises(ValueError, match="test_y"):
        linear_probe(x, y, x, None)
    res = linear_probe(x, y, val_fraction=0.0, lrs=(0.1,), wds=(0.0,), epochs=1)
    assert math.isnan(res.val_acc) and res.test_acc is None


def test_mlp_probe_beats_linear_on_xor_and_stops_early():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1200, 2, generator=g) * 2 - 1
    y = ((x[:, 0] > 0) ^ (x[:, 1] > 0)).long()
    x = torch.cat([x, 0.1 * torch.randn(1200, 6, generator=g)], dim=1)
    tr_f, tr_y, te_f, te_y = _split(x, y, 900)
    lin = linear_probe(tr_f, tr_y, te_f, te_y, epochs=10)
    mlp = mlp_probe(tr_f, tr_y, te_f, te_y, hidden_dim=32, lrs=(1e-2,), epochs=20, patience=4, batch_size=128)
    assert lin.test_acc < 0.7
    assert mlp.test_acc > 0.9
    assert 1 <= mlp.epochs <= 20 and "MLP probe" in mlp.protocol
    again = mlp_probe(tr_f, tr_y, te_f, te_y, hidden_dim=32, lrs=(1e-2,), epochs=20, patience=4, batch_size=128)
    assert again.test_acc == mlp.test_acc  # seeded


def test_mlp_probe_requires_validation_and_valid_depth():
    x, y = _blobs(n=100)
    with pytest.raises(ValueError, match="early stopping"):
        mlp_probe(x, y, val_fraction=0.0)
    with pytest.raises(ValueError, match="num_layers"):
        mlp_probe(x, y, num_layers=5)
