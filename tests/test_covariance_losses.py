"""TiCo (explicit running covariance), IterNorm whitening and VIbCReg against float64 references written
from the equations with explicit loops, plus closed forms and invariances."""

from __future__ import annotations

import math

import pytest
import torch

from selfsup.losses import iter_norm, tico_loss, vibcreg_loss
from selfsup.losses.covariance import _group_channels

F64 = torch.float64


def rnd(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def unit(v):
    return v / math.sqrt(float((v * v).sum()))


# ------------------------------------------------------------------------------------------------- TiCo

def tico_reference(z1, z2, cov, beta, rho):
    n, d = z1.shape
    a = [unit(z1[i]) for i in range(n)]
    b = [unit(z2[i]) for i in range(n)]
    c = beta * cov + (1 - beta) * sum(torch.outer(v, v) for v in a) / n
    loss = -sum(float(a[i] @ b[i]) for i in range(n)) / n + rho * sum(float(a[i] @ c @ a[i]) for i in range(n)) / n
    return loss, c


def test_tico_matches_reference_over_steps():
    d = 5
    cov = torch.zeros(d, d, dtype=F64)
    state = None
    for step in range(3):
        z1, z2 = rnd(8, d, seed=2 * step), rnd(8, d, seed=2 * step + 1)
        want, cov = tico_reference(z1, z2, cov, 0.9, 8.0)
        got, state = tico_loss(z1, z2, state, 0.9, 8.0, distributed=False)
        assert float(got) == pytest.approx(want, rel=1e-12)
        torch.testing.assert_close(state, cov)
        assert not state.requires_grad


def test_tico_gradient_treats_covariance_as_memory_unless_asked():
    z1, z2, prev = rnd(6, 4, seed=1).requires_grad_(), rnd(6, 4, seed=2), 0.1 * torch.eye(4, dtype=F64)
    loss, c = tico_loss(z1, z2, prev, 0.9, 8.0, distributed=False)
    (g,) = torch.autograd.grad(loss, z1)
    # reference: the same formula with C_t a constant
    z1c = z1.detach().clone().requires_grad_()
    a, b = torch.nn.functional.normalize(z1c, dim=1), torch.nn.functional.normalize(z2, dim=1)
    ref = -(a * b).sum(1).mean() + 8.0 * torch.einsum("ni,ij,nj->n", a, c, a).mean()
    (g_ref,) = torch.autograd.grad(ref, z1c)
    torch.testing.assert_close(g, g_ref)
    loss_t, _ = tico_loss(z1, z2, prev, 0.9, 8.0, grad_through_batch=True, distributed=False)
    (g_t,) = torch.autograd.grad(loss_t, z1)
    torch.testing.assert_close(loss_t, loss)  # same value ...
    assert (g_t - g).abs().max() > 1e-3  # ... but the batch term now carries gradient
    # collapse is penalised: identical embeddings give -1 + rho (1 - beta) at C_0 = 0
    same = rnd(1, 4).repeat(6, 1)
    assert float(tico_loss(same, same, None, 0.9, 8.0, distributed=False)[0]) == pytest.approx(-1 + 0.8, abs=1e-12)


def test_tico_rejects_bad_state():
    with pytest.raises(ValueError, match="cov must be"):
        tico_loss(rnd(4, 3), rnd(4, 3), torch.zeros(2, 2, dtype=F64))


# --------------------------------------------------------------------------------------------- IterNorm

def iternorm_reference(x, channels, iterations, eps):
    n, d = x.shape
    out = torch.empty_like(x)
    for start in range(0, d, channels):
        xg = x[:, start:start + channels].T  # [c, N]
        mu = xg.sum(1, keepdim=True) / n
        xc = xg - mu
        sigma = eps * torch.eye(channels, dtype=F64) + sum(torch.outer(xc[:, i], xc[:, i]) for i in range(n)) / n
        tr = float(sum(sigma[k, k] for k in range(channels)))
        sn = sigma / tr
        p = torch.eye(channels, dtype=F64)
        for _ in range(iterations):
            p = (3 * p - p @ p @ p @ sn) / 2
        out[:, start:start + channels] = (p / math.sqrt(tr) @ xc).T
    return out


def test_iter_norm_matches_newton_reference():
    x = rnd(20, 8) * torch.linspace(0.5, 2, 8, dtype=F64) + 1.0
    got = iter_norm(x, num_groups=2, iterations=5, distributed=False)
    torch.testing.assert_close(got, iternorm_reference(x, 4, 5, 1e-5))


def test_iter_norm_converges_to_zca_whitening():
    x = rnd(200, 6) @ (torch.eye(6, dtype=F64) + 0.3 * rnd(6, 6, seed=1))
    # 10 Newton steps converge here (the uncoupled iteration is not self-correcting: rounding grows past ~15)
    got = iter_norm(x, num_groups=1, iterations=10, eps=0.0, distributed=False)
    xc = x - x.mean(0)
    evals, evecs = torch.linalg.eigh(xc.T @ xc / 200)
    zca = xc @ evecs @ torch.diag(evals.rsqrt()) @ evecs.T
    torch.testing.assert_close(got, zca, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(got.T @ got / 200, torch.eye(6, dtype=F64), rtol=1e-9, atol=1e-10)


def test_iter_norm_groups_follow_the_reference_layer():
    assert _group_channels(2048, 64) == 32  # solo-learn's VIbCReg projector: 64 groups of 32
    assert _group_channels(10, 4) == 1  # ceil(10/4) = 3 does not divide 10: halved to 1
    assert _group_channels(12, 4) == 3
    x = rnd(30, 12)
    perm = torch.randperm(30, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(iter_norm(x[perm], 4, distributed=False), iter_norm(x, 4, distributed=False)[perm])


# ---------------------------------------------------------------------------------------------- VIbCReg

def vibcreg_reference(z1, z2, lam, mu, nu, eps=1e-4):
    n, d = z1.shape
    inv = sum(float((z1[i, j] - z2[i, j]) ** 2) for i in range(n) for j in range(d)) / (n * d)
    var = cov = 0.0
    for z in (z1, z2):
        cols = [z[:, j].tolist() for j in range(d)]
        means = [sum(c) / n for c in cols]
        var += sum(max(0.0, 1 - math.sqrt(sum((v - m) ** 2 for v in c) / (n - 1) + eps))
                   for c, m in zip(cols, means)) / d
        for j in range(d):
            for k in range(d):
                if j == k:
                    continue
                num = sum((cols[j][i] - means[j]) * (cols[k][i] - means[k]) for i in range(n))
                den = math.sqrt(sum((v - means[j]) ** 2 for v in cols[j]) * sum((v - means[k]) ** 2 for v in cols[k]))
                cov += (num / den) ** 2 / d ** 2
    return lam * inv + mu * var + nu * cov


def test_vibcreg_matches_reference():
    z1, z2 = rnd(10, 5, seed=1) * 0.6, rnd(10, 5, seed=2) * 0.6 + 0.2
    assert float(vibcreg_loss(z1, z2, distributed=False)) == pytest.approx(
        vibcreg_reference(z1, z2, 25.0, 25.0, 200.0), rel=1e-10)


def test_vibcreg_covariance_term_is_scale_free():
    z1, z2 = rnd(12, 4, seed=3), rnd(12, 4, seed=4)
    cov_only = lambda a, b: vibcreg_loss(a, b, 0.0, 0.0, 1.0, distributed=False)
    torch.testing.assert_close(cov_only(5 * z1, 0.1 * z2), cov_only(z1, z2))
    # decorrelated (orthogonal, centred) columns have no covariance penalty
    q, _ = torch.linalg.qr(rnd(12, 12, seed=5))
    white, _ = torch.linalg.qr(q[:, 1:5] - q[:, 1:5].mean(0))  # centred, orthonormal columns
    assert float(cov_only(white, white)) == pytest.approx(0.0, abs=1e-20)


def test_gradients_match_finite_differences_of_the_references():
    from grad_check import autograd_grad, numeric_grad
    close = lambda a, b: torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    z1, z2 = rnd(6, 3, seed=6), rnd(6, 3, seed=7)
    close(autograd_grad(lambda x: vibcreg_loss(x, z2, distributed=False), z1),
          numeric_grad(lambda x: vibcreg_reference(x, z2, 25.0, 25.0, 200.0), z1))
    x0, probe = rnd(7, 4, seed=8) + 1, rnd(7, 4, seed=9)
    close(autograd_grad(lambda x: (iter_norm(x, 2, distributed=False) * probe).sum(), x0),
          numeric_grad(lambda x: float((iternorm_reference(x, 2, 5, 1e-5) * probe).sum()), x0))
