"""MMCR, EMP-SSL's total coding rate and FroSSL against float64 references written from the papers'
equations (explicit loops, eigenvalues instead of SVDs / log-determinants), closed forms and invariances."""

from __future__ import annotations

import math

import pytest
import torch

from selfsup.losses import emp_ssl_loss, frossl_loss, mmcr_loss, total_coding_rate

F64 = torch.float64
PERM6, PERM8, PERM12 = (torch.randperm(k, generator=torch.Generator().manual_seed(1)) for k in (6, 8, 12))


def rnd(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def unit(v):
    return v / math.sqrt(float((v * v).sum()))


def nuclear(m):
    """Sum of singular values = sum of sqrt(eigenvalues of the smaller Gram matrix M M^T or M^T M)."""
    gram = m @ m.T if m.shape[0] <= m.shape[1] else m.T @ m
    return float(sum(math.sqrt(max(e, 0.0)) for e in torch.linalg.eigvalsh(gram).tolist()))


def random_rotation(d, seed=0):
    q, _ = torch.linalg.qr(rnd(d, d, seed=seed))
    return q


# ------------------------------------------------------------------------------------------------- MMCR

def mmcr_reference(views, lam):
    n, k, _ = views.shape
    z = [[unit(views[i, j]) for j in range(k)] for i in range(n)]
    centroids = torch.stack([sum(z[i]) / k for i in range(n)])
    local = sum(nuclear(torch.stack(z[i])) for i in range(n)) / n
    return -nuclear(centroids) + lam * local


@pytest.mark.parametrize("lam", [0.0, 0.3])
def test_mmcr_matches_reference(lam):
    v = rnd(7, 3, 5)
    assert float(mmcr_loss(v, lam, distributed=False)) == pytest.approx(mmcr_reference(v, lam), rel=1e-10)


def test_mmcr_orthogonal_centroids_closed_form():
    n, k, d = 4, 3, 6
    views = torch.eye(d, dtype=F64)[:n, None, :].repeat(1, k, 1) * 2.5  # every view of image i is (a multiple of) e_i
    assert float(mmcr_loss(views, 0.0, distributed=False)) == pytest.approx(-n, abs=1e-12)
    # each view matrix is rank one with singular value sqrt(k)
    assert float(mmcr_loss(views, 0.5, distributed=False)) == pytest.approx(-n + 0.5 * math.sqrt(k), abs=1e-12)
    # identical centroids (collapse) give nuclear norm sqrt(n) only
    collapsed = torch.eye(d, dtype=F64)[:1, None, :].repeat(n, k, 1)
    assert float(mmcr_loss(collapsed, 0.0, distributed=False)) == pytest.approx(-math.sqrt(n), abs=1e-12)


def test_mmcr_rotation_and_permutation_invariance():
    v = rnd(6, 2, 5)
    base = mmcr_loss(v, 0.2, distributed=False)
    torch.testing.assert_close(mmcr_loss(v @ random_rotation(5), 0.2, distributed=False), base)
    torch.testing.assert_close(mmcr_loss(v[PERM6], 0.2, distributed=False), base)
    torch.testing.assert_close(mmcr_loss(v[:, [1, 0]], 0.2, distributed=False), base)


def test_mmcr_rejects_single_view():
    with pytest.raises(ValueError, match=r"\[N, K >= 2, D\]"):
        mmcr_loss(rnd(4, 1, 3))


# ------------------------------------------------------------------------------------ total coding rate

def tcr_reference(z, eps, squared=True):
    n, d = z.shape
    e = eps * eps if squared else eps
    gram = z @ z.T  # Sylvester: det(I_D + a Z^T Z) = det(I_N + a Z Z^T)
    return 0.5 * sum(math.log(1 + d / (n * e) * lam) for lam in torch.linalg.eigvalsh(gram).tolist())


@pytest.mark.parametrize("shape", [(9, 4), (3, 6)])
def test_total_coding_rate_matches_reference(shape):
    z = rnd(*shape)
    assert float(total_coding_rate(z, 0.3, distributed=False)) == pytest.approx(tcr_reference(z, 0.3), rel=1e-10)
    assert float(total_coding_rate(z, 0.3, "code", distributed=False)) == pytest.approx(
        tcr_reference(z, 0.3, squared=False), rel=1e-10)
    # the code's eps is the paper's eps^2
    torch.testing.assert_close(total_coding_rate(z, 0.04, "code", False), total_coding_rate(z, 0.2, "paper", False))


def test_total_coding_rate_closed_form_and_invariance():
    d = 5
    z = torch.eye(d, dtype=F64)  # orthonormal rows: Z^T Z = I
    assert float(total_coding_rate(z, 0.5, distributed=False)) == pytest.approx(
        d / 2 * math.log(1 + d / (d * 0.25)), rel=1e-12)
    collapsed = torch.zeros(4, d, dtype=F64)
    assert float(total_coding_rate(collapsed, 0.5, distributed=False)) == 0.0  # collapse codes for free
    x = rnd(8, d)
    torch.testing.assert_close(total_coding_rate(x @ random_rotation(d), 0.2, distributed=False),
                               total_coding_rate(x, 0.2, distributed=False))
    torch.testing.assert_close(total_coding_rate(x[PERM8], 0.2, distributed=False),
                               total_coding_rate(x, 0.2, distributed=False))


def emp_reference(patches, lam, eps, squared=True):
    p, n, _ = patches.shape
    z = [[unit(patches[a, i]) for i in range(n)] for a in range(p)]
    rate = sum(tcr_reference(torch.stack(z[a]), eps, squared) for a in range(p)) / p
    cos = 0.0
    for i in range(n):
        mean = sum(z[a][i] for a in range(p)) / p
        cos += sum(float(z[a][i] @ mean) / math.sqrt(float(mean @ mean)) for a in range(p))
    return -rate - lam * cos / (p * n)


@pytest.mark.parametrize("convention", ["paper", "code"])
def test_emp_ssl_matches_reference(convention):
    x = rnd(4, 6, 5)
    want = emp_reference(x, 200.0, 0.2, squared=convention == "paper")
    assert float(emp_ssl_loss(x, 200.0, 0.2, convention, distributed=False)) == pytest.approx(want, rel=1e-10)
    assert float(emp_ssl_loss(list(x), 200.0, 0.2, convention, distributed=False)) == pytest.approx(want, rel=1e-10)


def test_emp_ssl_invariance_term_is_minimal_for_identical_patches():
    one = rnd(1, 6, 5).repeat(3, 1, 1)
    rate = total_coding_rate(torch.nn.functional.normalize(one[0], dim=1), 0.2, distributed=False)
    assert float(emp_ssl_loss(one, 1.0, 0.2, distributed=False)) == pytest.approx(-float(rate) - 1.0, rel=1e-12)


# ------------------------------------------------------------------------------------------------- FroSSL

def frossl_reference(views, lam):
    v_count = len(views)
    n, d = views[0].shape
    normed = []
    for z in views:
        cols = [z[:, j] / math.sqrt(float((z[:, j] ** 2).sum())) for j in range(d)]
        normed.append(torch.stack(cols, 1))
    loss = 0.0
    for z in normed:
        eig = torch.linalg.eigvalsh(z.T @ z).tolist()  # same non-zero spectrum as Z Z^T
        trace = sum(eig)
        loss += math.log(sum((e / trace) ** 2 for e in eig))
        for i in range(n):
            mean = sum(w[i] for w in normed) / v_count
            loss += lam * v_count * float(((z[i] - mean) ** 2).sum()) / n
    return loss


@pytest.mark.parametrize("n,d,views", [(10, 4, 2), (4, 7, 3)])
def test_frossl_matches_reference(n, d, views):
    zs = [rnd(n, d, seed=s) for s in range(views)]
    want = frossl_reference(zs, 0.7)
    assert float(frossl_loss(zs, 0.7, distributed=False)) == pytest.approx(want, rel=1e-10)


def test_frossl_invariances_and_minimum():
    zs = [rnd(12, 4, seed=s) for s in range(2)]
    base = frossl_loss(zs, 1.0, distributed=False)
    perm = PERM12
    torch.testing.assert_close(frossl_loss([z[perm] for z in zs], 1.0, distributed=False), base)
    torch.testing.assert_close(frossl_loss([z[:, [3, 1, 0, 2]] for z in zs], 1.0, distributed=False), base)
    torch.testing.assert_close(frossl_loss([3 * z for z in zs], 1.0, distributed=False), base)  # scale-free
    # orthogonal columns make the trace-normalised covariance I/D: log ||K||_F^2 = -log D per view
    q = random_rotation(12)[:, :4]
    assert float(frossl_loss([q, q], 1.0, distributed=False)) == pytest.approx(-2 * math.log(4), abs=1e-12)


def test_gradients_match_finite_differences_of_the_references():
    from grad_check import autograd_grad, numeric_grad
    v = rnd(4, 2, 3, seed=7)
    close = lambda a, b: torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    close(autograd_grad(lambda x: mmcr_loss(x, 0.3, distributed=False), v),
          numeric_grad(lambda x: mmcr_reference(x, 0.3), v))
    z = rnd(5, 3, seed=8)
    close(autograd_grad(lambda x: total_coding_rate(x, 0.3, distributed=False), z),
          numeric_grad(lambda x: tcr_reference(x, 0.3), z))
    p = rnd(3, 4, 3, seed=9)  # the mean patch embedding is not detached (official code)
    close(autograd_grad(lambda x: emp_ssl_loss(x, 5.0, 0.2, distributed=False), p),
          numeric_grad(lambda x: emp_reference(x, 5.0, 0.2), p))
    f = rnd(2, 6, 3, seed=10)
    close(autograd_grad(lambda x: frossl_loss(x, 0.7, distributed=False), f),
          numeric_grad(lambda x: frossl_reference(list(x), 0.7), f))
