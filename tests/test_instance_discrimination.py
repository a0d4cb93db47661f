"""NPID's pieces (Wu et al. 2018): the NCE loss, the Monte-Carlo normaliser and the full non-parametric softmax
against float64 references written from the paper's equations and the instance bank's update rule. Their 2-process
gloo parity (the normaliser, a batch mean; the bank update, gathered over ranks) is one case each in
tests/test_catalogue_losses_ddp.py's single spawn."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from selfsup.losses import nce_normalizer, npid_nce_loss, npid_softmax_loss
from selfsup.nets import InstanceBank

B, K, D, N = 6, 5, 8, 20
TAU = 0.07


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(B, D, generator=g, dtype=torch.float64)
    bank = F.normalize(torch.randn(N, D, generator=g, dtype=torch.float64), dim=1)
    idx = torch.randint(0, N, (B, 1 + K), generator=g)
    return f, bank, idx


def _ref_nce(f, bank, idx, z, n, tau):
    """Eq. 4-6 literally: P(i|f) = exp(v_i.f/tau)/Z, h = P/(P + K/n), J = -log h(data) - sum_k log(1 - h(noise))."""
    k = idx.shape[1] - 1
    total = 0.0
    for b in range(f.shape[0]):
        fb = f[b] / f[b].norm()
        for j, row in enumerate(idx[b].tolist()):
            p = math.exp(float(bank[row] @ fb) / tau) / z
            h = p / (p + k / n)
            total += -math.log(h) if j == 0 else -math.log(1 - h)
    return total / f.shape[0]


def test_nce_loss_matches_the_paper_equation():
    f, bank, idx = _inputs()
    z = 3.7 * N
    got = npid_nce_loss(f, bank[idx], z, N, TAU)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(_ref_nce(f, bank, idx, z, N, TAU), rel=1e-10)
    # and at a normaliser where h is near 1 and near 0 (the log-space form stays exact)
    for zz in (1e-3, 1e6):
        assert npid_nce_loss(f, bank[idx], zz, N, TAU).item() == pytest.approx(_ref_nce(f, bank, idx, zz, N, TAU),
                                                                              rel=1e-9)


def test_nce_loss_gradient_flows_to_features_only():
    f, bank, idx = _inputs(1)
    f.requires_grad_(True)
    rows = bank[idx].clone().requires_grad_(True)
    npid_nce_loss(f, rows, 2.0 * N, N, TAU).backward()
    assert f.grad is not None and f.grad.abs().sum() > 0
    assert rows.grad is None
    assert torch.autograd.gradcheck(lambda x: npid_nce_loss(x, bank[idx], 2.0 * N, N, TAU), (f.detach().clone()
                                    .requires_grad_(True),))


def test_normalizer_is_n_times_the_mean_exponentiated_score():
    f, bank, idx = _inputs(2)
    fn = f / f.norm(dim=1, keepdim=True)
    want = N * sum(math.exp(float(bank[r] @ fn[b]) / TAU) for b in range(B) for r in idx[b].tolist()) / idx.numel()
    assert nce_normalizer(f, bank[idx], N, TAU).item() == pytest.approx(want, rel=1e-10)


def test_softmax_loss_matches_the_paper_equation():
    f, bank, idx = _inputs(3)
    t = idx[:, 0]
    fn = f / f.norm(dim=1, keepdim=True)
    want = 0.0
    for b in range(B):
        logits = [float(bank[j] @ fn[b]) / TAU for j in range(N)]
        want += -(logits[t[b]] - math.log(sum(math.exp(x) for x in logits)))
    assert npid_softmax_loss(f, bank, t, TAU).item() == pytest.approx(want / B, rel=1e-10)


def test_nce_loss_is_lower_when_features_match_their_own_row():
    _, bank, idx = _inputs(4)
    own = bank[idx[:, 0]]
    other = bank[idx[:, 1]]
    assert npid_nce_loss(own, bank[idx], N, N, TAU) < npid_nce_loss(other, bank[idx], N, N, TAU)


def test_bad_shapes_are_one_line_errors():
    f, bank, idx = _inputs()
    with pytest.raises(ValueError, match="bank rows"):
        npid_nce_loss(f, bank[idx[:, 0]], N, N)
    with pytest.raises(ValueError, match="noise row"):
        npid_nce_loss(f, bank[idx[:, :1]], N, N)


def test_bank_update_rule_and_bounds():
    bank = InstanceBank(10, 4, momentum=0.5, seed=0)
    assert torch.allclose(bank.bank.norm(dim=1), torch.ones(10))
    assert torch.equal(bank.bank, InstanceBank(10, 4, seed=0).bank)  # seeded, not the global RNG
    before = bank.bank.clone()
    idx = torch.tensor([3, 7])
    f = torch.randn(2, 4)
    bank.update(idx, f)
    want = F.normalize(0.5 * before[idx] + 0.5 * F.normalize(f, dim=1), dim=1)
    assert torch.allclose(bank.bank[idx], want, atol=1e-6)
    untouched = torch.tensor([i for i in range(10) if i not in (3, 7)])
    assert torch.equal(bank.bank[untouched], before[untouched])
    assert "bank" in bank.state_dict()
    with pytest.raises(ValueError, match="memory_size"):
        bank.rows(torch.tensor([10]))
    s = InstanceBank.sample(4, 3, 10, torch.Generator().manual_seed(1))
    assert s.shape == (4, 3) and torch.equal(s, InstanceBank.sample(4, 3, 10, torch.Generator().manual_seed(1)))
