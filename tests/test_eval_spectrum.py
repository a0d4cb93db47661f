"""Spectral diagnostics (RankMe, alpha-ReQ, LiDAR, ranks, AUC); the collapse monitor is in test_collapse_monitor.py."""

import math

import pytest
import torch

from selfsup.diagnostics import rankme, singular_values
from selfsup.eval import alpha_req, lidar, powerlaw_fit, spectrum_auc, thresholded_rank


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _with_spectrum(eigenvalues, n, seed=0):
    """Centred [n, D] data whose sample covariance has exactly ``eigenvalues`` (random orthogonal bases)."""
    g = _gen(seed)
    d = eigenvalues.numel()
    a = torch.randn(n, d, generator=g, dtype=torch.float64)
    u, _ = torch.linalg.qr(a - a.mean(0))  # orthonormal, zero-mean columns
    v, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    return ((u * (eigenvalues * (n - 1)).sqrt()) @ v.T).float()


def test_rankme_isotropic_gaussian_close_to_full_rank():
    z = torch.randn(4000, 64, generator=_gen())
    assert rankme(z) == pytest.approx(64, rel=0.02)
    # wide matrix: bounded by N
    assert rankme(torch.randn(64, 2000, generator=_gen(1))) == pytest.approx(64, rel=0.02)


def test_rankme_of_rank_k_data_is_about_k():
    g = _gen(2)
    for k in (1, 5, 12):
        basis, _ = torch.linalg.qr(torch.randn(96, k, generator=g))
        z = torch.randn(3000, k, generator=g) @ basis.T  # isotropic inside a k-dim subspace
        assert rankme(z) == pytest.approx(k, rel=0.03, abs=0.05)
        assert thresholded_rank(z) == k


def test_rankme_matches_formula():
    z = torch.randn(50, 20, generator=_gen(3))
    s = torch.linalg.svdvals(z.double())
    p = s / s.sum() + 1e-7
    assert rankme(z) == pytest.approx(math.exp(-(p * p.log()).sum().item()), rel=1e-9)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 1.5, 2.5])
def test_alpha_req_recovers_power_law_exponent(alpha):
    lam = torch.arange(1, 129, dtype=torch.float64) ** -alpha
    z = _with_spectrum(lam, n=1000, seed=int(alpha * 10))
    est, r2 = alpha_req(z, return_r2=True)
    assert est == pytest.approx(alpha, abs=0.05)
    assert r2 > 0.99


def test_alpha_req_on_sampled_gaussian_data():
    lam = torch.arange(1, 65, dtype=torch.float64) ** -1.0
    g = _gen(4)
    basis, _ = torch.linalg.qr(torch.randn(64, 64, generator=g, dtype=torch.float64))
    z = ((torch.randn(20000, 64, generator=g, dtype=torch.float64) * lam.sqrt()) @ basis.T).float()
    assert alpha_req(z) == pytest.approx(1.0, abs=0.05)


def test_alpha_req_ignores_noise_floor_of_low_rank_data():
    lam = torch.zeros(64, dtype=torch.float64)
    lam[:16] = torch.arange(1, 17, dtype=torch.float64) ** -1.2
    z = _with_spectrum(torch.where(lam > 0, lam, torch.zeros_like(lam)), n=500, seed=7)
    assert alpha_req(z) == pytest.approx(1.2, abs=0.05)


def test_powerlaw_fit_exact_line_and_errors():
    k = torch.arange(1, 51, dtype=torch.float64)
    fit = powerlaw_fit(3.0 * k**-0.7)
    assert fit.slope == pytest.approx(-0.7, abs=1e-10)
    assert fit.intercept == pytest.approx(math.log(3.0), abs=1e-10)
    assert fit.r2 == pytest.approx(1.0)
    with pytest.raises(ValueError, match="positive"):
        powerlaw_fit(torch.tensor([1.0, 0.0, 0.5]))


def test_spectrum_auc_collapsed_vs_isotropic():
    iso = spectrum_auc(torch.randn(5000, 32, generator=_gen(5)))
    assert iso == pytest.approx(33 / 64, abs=0.03)
    rank1 = torch.randn(500, 1, generator=_gen(6)) * torch.randn(1, 32, generator=_gen(7))
    assert spectrum_auc(rank1) == pytest.approx(1.0, abs=1e-6)


def test_singular_values_centering():
    z = torch.randn(200, 8, generator=_gen(8)) + 100.0
    assert singular_values(z, center=False)[0] > 10 * singular_values(z, center=True)[0]
    assert singular_values(z).dtype == torch.float64


def _multiview(n, views, d, signal_rank, noise, seed):
    g = _gen(seed)
    basis, _ = torch.linalg.qr(torch.randn(d, signal_rank, generator=g))
    means = torch.randn(n, signal_rank, generator=g) @ basis.T
    return means.unsqueeze(1) + noise * torch.randn(n, views, d, generator=g)


def test_lidar_separates_collapsed_from_healthy_embeddings():
    healthy = _multiview(400, 4, 32, signal_rank=32, noise=0.1, seed=0)
    collapsed = _multiview(400, 4, 32, signal_rank=2, noise=0.1, seed=1)
    l_h, l_c = lidar(healthy), lidar(collapsed)
    assert l_h > 25 and l_c < 4
    assert lidar(list(healthy.unbind(1))) == pytest.approx(l_h)
    # views that carry no sample information (within-sample noise dominates): low LiDAR
    assert lidar(_multiview(400, 4, 32, signal_rank=32, noise=10.0, seed=2)) < l_h


def test_lidar_input_errors():
    with pytest.raises(ValueError, match="views"):
        lidar(torch.randn(10, 1, 4))
    with pytest.raises(ValueError, match="delta"):
        lidar(torch.randn(10, 2, 4), delta=0.0)
