"""Alignment/uniformity, DirectCLR, MACL and CO2 against float64 references written from the papers'
equations with explicit loops, plus closed forms (antipodal points) and invariances."""

from __future__ import annotations

import math

import pytest
import torch

from selfsup.losses import align_uniform_loss, alignment_loss, co2_loss, directclr_loss, macl_loss, uniformity_loss

F64 = torch.float64


def rnd(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def units(z):
    return [v / math.sqrt(float(v @ v)) for v in z]


def dot(a, b):
    return float(a @ b)


# ----------------------------------------------------------------------------------- alignment, uniformity

def uniformity_reference(z, t):
    u = units(z)
    pairs = [(i, j) for i in range(len(u)) for j in range(i + 1, len(u))]
    return math.log(sum(math.exp(-t * float(((u[i] - u[j]) ** 2).sum())) for i, j in pairs) / len(pairs))


def test_alignment_and_uniformity_match_reference():
    z1, z2 = rnd(9, 4, seed=1), rnd(9, 4, seed=2)
    u1, u2 = units(z1), units(z2)
    for alpha in (2.0, 1.0):
        want = sum(math.sqrt(float(((a - b) ** 2).sum())) ** alpha for a, b in zip(u1, u2)) / 9
        assert float(alignment_loss(z1, z2, alpha)) == pytest.approx(want, rel=1e-12)
    assert float(uniformity_loss(z1, 2.0, distributed=False)) == pytest.approx(uniformity_reference(z1, 2.0), rel=1e-12)
    want = float(alignment_loss(z1, z2)) + 0.5 * (uniformity_reference(z1, 2.0) + uniformity_reference(z2, 2.0)) / 2
    assert float(align_uniform_loss(z1, z2, 0.5, distributed=False)) == pytest.approx(want, rel=1e-12)


def test_uniformity_closed_forms_and_invariances():
    x = rnd(1, 5)
    assert float(uniformity_loss(torch.cat([x, -3 * x]), 2.0, distributed=False)) == pytest.approx(-8.0, abs=1e-12)
    assert float(uniformity_loss(x.repeat(4, 1), 2.0, distributed=False)) == pytest.approx(0.0, abs=1e-12)
    # the vertices of a regular simplex (d+1 points in R^d) all lie at squared distance 2(d+1)/d
    d = 3
    simplex = torch.eye(d + 1, dtype=F64) - 1 / (d + 1)
    assert float(uniformity_loss(simplex, 2.0, distributed=False)) == pytest.approx(-2 * 2 * (d + 1) / d, abs=1e-12)
    z = rnd(10, 4)
    q, _ = torch.linalg.qr(rnd(4, 4, seed=3))
    base = uniformity_loss(z, 2.0, distributed=False)
    torch.testing.assert_close(uniformity_loss(z @ q, 2.0, distributed=False), base)
    torch.testing.assert_close(uniformity_loss(z[torch.randperm(10, generator=torch.Generator().manual_seed(0))],
                                               2.0, distributed=False), base)


# -------------------------------------------------------------------------------------------- DirectCLR

def infonce_reference(a, b, tau):
    ua, ub = units(a), units(b)
    n = len(ua)
    return sum(-dot(ua[i], ub[i]) / tau + math.log(sum(math.exp(dot(ua[i], ub[j]) / tau) for j in range(n)))
               for i in range(n)) / n


def ntxent_reference(a, b, tau):
    u = units(a) + units(b)
    n2, n = len(u), len(a)
    total = 0.0
    for i in range(n2):
        pos = (i + n) % n2
        total += -dot(u[i], u[pos]) / tau + math.log(sum(math.exp(dot(u[i], u[k]) / tau) for k in range(n2) if k != i))
    return total / n2


def test_directclr_uses_only_the_first_d0_dimensions():
    r1, r2 = rnd(7, 10, seed=1), rnd(7, 10, seed=2)
    want = (infonce_reference(r1[:, :4], r2[:, :4], 0.1) + infonce_reference(r2[:, :4], r1[:, :4], 0.1)) / 2
    got = directclr_loss(r1, r2, 4, 0.1, distributed=False)
    assert float(got) == pytest.approx(want, rel=1e-12)
    assert float(directclr_loss(r1, r2, 4, 0.5, "nt_xent", False)) == pytest.approx(
        ntxent_reference(r1[:, :4], r2[:, :4], 0.5), rel=1e-12)
    x = r1.clone().requires_grad_()
    (g,) = torch.autograd.grad(directclr_loss(x, r2, 4, 0.1, distributed=False), x)
    assert g[:, 4:].abs().max() == 0 and g[:, :4].abs().max() > 0
    with pytest.raises(ValueError, match="negatives must be"):
        directclr_loss(r1, r2, 4, negatives="queue")


# ------------------------------------------------------------------------------------------------- MACL

def macl_reference(z1, z2, tau0, alpha, a0):
    u = units(z1) + units(z2)
    n = len(z1)
    align = sum(dot(u[i], u[i + n]) for i in range(n)) / n
    tau = tau0 * (1 + alpha * (align - a0))
    total = 0.0
    for i in range(2 * n):
        pos = (i + n) % (2 * n)
        denom = sum(math.exp(dot(u[i], u[k]) / tau) for k in range(2 * n) if k != i)
        p = math.exp(dot(u[i], u[pos]) / tau) / denom
        total += -math.log(p) / (1 - p + 1e-8)
    return total / (2 * n)


def test_macl_matches_reference_and_reweights_by_detached_factor():
    z1, z2 = rnd(6, 4, seed=1), rnd(6, 4, seed=2) + 0.5 * rnd(6, 4, seed=1)
    assert float(macl_loss(z1, z2, 0.1, 0.5, 0.2, distributed=False)) == pytest.approx(
        macl_reference(z1, z2, 0.1, 0.5, 0.2), rel=1e-10)
    # the weight 1/(1 - P) and the temperature are detached: the gradient is finite and non-zero
    x = z1.clone().requires_grad_()
    (g,) = torch.autograd.grad(macl_loss(x, z2, 0.1, 0.5, distributed=False), x)
    assert torch.isfinite(g).all() and g.abs().max() > 0
    with pytest.raises(ValueError, match="alpha and a0"):
        macl_loss(z1, z2, alpha=1.5)


# -------------------------------------------------------------------------------------------------- CO2

def co2_reference(z1, z2, bank, tau):
    q, k = units(z1), units(z2)
    n = len(q)
    total = 0.0
    for i in range(n):
        neg_p = [dot(q[i], b) for b in bank] if bank is not None else [dot(q[i], k[j]) for j in range(n) if j != i]
        neg_q = [dot(k[i], b) for b in bank] if bank is not None else [dot(k[i], q[j]) for j in range(n) if j != i]
        lp = [dot(q[i], k[i]) / tau] + [s / tau for s in neg_p]
        lq = [dot(k[i], q[i]) / tau] + [s / tau for s in neg_q]
        zp, zq = math.log(sum(map(math.exp, lp))), math.log(sum(map(math.exp, lq)))
        p = [math.exp(v - zp) for v in lp]
        qq = [math.exp(v - zq) for v in lq]
        kl_pq = sum(a * math.log(a / b) for a, b in zip(p, qq))
        kl_qp = sum(b * math.log(b / a) for a, b in zip(p, qq))
        total += 0.5 * (kl_pq + kl_qp)
    return total / n


def test_co2_matches_reference_with_queue_and_in_batch():
    z1, z2, bank = rnd(5, 4, seed=1), rnd(5, 4, seed=2), rnd(7, 4, seed=3)
    assert float(co2_loss(z1, z2, bank, 0.5, distributed=False)) == pytest.approx(
        co2_reference(z1, z2, units(bank), 0.5), rel=1e-10)
    assert float(co2_loss(z1, z2, None, 0.5, distributed=False)) == pytest.approx(
        co2_reference(z1, z2, None, 0.5), rel=1e-10)
    # identical views: P = Q, no inconsistency; the queue gets no gradient
    assert float(co2_loss(z1, z1, bank, 0.05, distributed=False)) == pytest.approx(0.0, abs=1e-12)
    b = bank.clone().requires_grad_()
    x = z1.clone().requires_grad_()
    gx, gb = torch.autograd.grad(co2_loss(x, z2, b, 0.5, distributed=False), [x, b], allow_unused=True)
    assert gx.abs().max() > 0 and gb is None


def test_gradients_match_finite_differences_of_the_references():
    from grad_check import autograd_grad, numeric_grad
    close = lambda a, b: torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    z1, z2, bank = rnd(5, 3, seed=4), rnd(5, 3, seed=5), rnd(4, 3, seed=6)
    close(autograd_grad(lambda x: align_uniform_loss(x, z2, 0.5, distributed=False), z1),
          numeric_grad(lambda x: sum(float(((a - b) ** 2).sum()) for a, b in zip(units(x), units(z2))) / 5
                       + 0.25 * (uniformity_reference(x, 2.0) + uniformity_reference(z2, 2.0)), z1))
    r1, r2 = rnd(5, 6, seed=7), rnd(5, 6, seed=8)
    close(autograd_grad(lambda x: directclr_loss(x, r2, 4, 0.3, distributed=False), r1),
          numeric_grad(lambda x: (infonce_reference(x[:, :4], r2[:, :4], 0.3)
                                  + infonce_reference(r2[:, :4], x[:, :4], 0.3)) / 2, r1))
    for negatives in (bank, None):
        close(autograd_grad(lambda x: co2_loss(x, z2, negatives, 0.5, distributed=False), z1),
              numeric_grad(lambda x: co2_reference(x, z2, None if negatives is None else units(bank), 0.5), z1))
    # MACL: the temperature (from the alignment) and the weights 1/(1-P) are constants of the gradient
    u1, u2 = units(z1), units(z2)
    tau = 0.1 * (1 + 0.5 * (sum(dot(a, b) for a, b in zip(u1, u2)) / 5 - 0.1))
    u = u1 + u2

    def prob(vs, i):
        pos = (i + 5) % 10
        return math.exp(dot(vs[i], vs[pos]) / tau) / sum(math.exp(dot(vs[i], vs[k]) / tau) for k in range(10) if k != i)
    weights = [1 / (1 - prob(u, i) + 1e-8) for i in range(10)]
    frozen = lambda x: sum(-w * math.log(prob(units(x) + u2, i)) for i, w in enumerate(weights)) / 10
    close(autograd_grad(lambda x: macl_loss(x, z2, 0.1, 0.5, 0.1, distributed=False), z1), numeric_grad(frozen, z1))
