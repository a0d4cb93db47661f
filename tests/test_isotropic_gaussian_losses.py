"""SIGReg (Epps-Pulley over random slices), LeJEPA and VISReg against float64 references written from the
equations: the complex empirical characteristic function integrated over the symmetric grid, explicit
sorting against Python's NormalDist quantiles; Gaussian vs collapsed samples; rotation/permutation."""

from __future__ import annotations

import cmath
import math
import statistics

import pytest
import torch

from selfsup.losses import (epps_pulley, lejepa_loss, multiview_invariance, random_slices, sigreg, visreg_loss,
                            visreg_terms)

F64 = torch.float64


def rnd(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def slices_for(d, m, seed=5):
    return random_slices(d, m, torch.Generator().manual_seed(seed), F64)


def ep_reference(x, knots=17, t_max=3.0):
    """N * integral over [-t_max, t_max] of |ecf(t) - exp(-t^2/2)|^2 exp(-t^2/2), trapezoid on the symmetric grid
    with the same spacing (2 knots - 1 points)."""
    n = len(x)
    ts = [t_max * k / (knots - 1) for k in range(-(knots - 1), knots)]
    vals = []
    for t in ts:
        ecf = sum(cmath.exp(1j * t * xi) for xi in x) / n
        phi = math.exp(-t * t / 2)
        vals.append(abs(ecf - phi) ** 2 * phi)
    dt = ts[1] - ts[0]
    return n * dt * (sum(vals) - (vals[0] + vals[-1]) / 2)


def test_random_slices_are_unit_and_reproducible():
    a = random_slices(6, 10, torch.Generator().manual_seed(3), F64)
    torch.testing.assert_close(a.norm(dim=0), torch.ones(10, dtype=F64))
    torch.testing.assert_close(a, random_slices(6, 10, torch.Generator().manual_seed(3), F64))
    assert not torch.allclose(a, random_slices(6, 10, torch.Generator().manual_seed(4), F64))


@pytest.mark.parametrize("knots,t_max", [(17, 3.0), (9, 5.0)])
def test_epps_pulley_matches_complex_ecf_reference(knots, t_max):
    x = rnd(40, 3) * 1.3 + 0.2
    got = epps_pulley(x, knots, t_max, distributed=False)
    want = torch.tensor([ep_reference(x[:, m].tolist(), knots, t_max) for m in range(3)], dtype=F64)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_sigreg_matches_reference_per_view_and_slice():
    z = rnd(2, 30, 4)
    a = slices_for(4, 7)
    want = sum(ep_reference((z[v] @ a[:, m]).tolist()) for v in range(2) for m in range(7)) / 14
    assert float(sigreg(z, a, distributed=False)) == pytest.approx(want, rel=1e-10)
    assert float(sigreg(z[0], a, distributed=False)) == pytest.approx(
        sum(ep_reference((z[0] @ a[:, m]).tolist()) for m in range(7)) / 7, rel=1e-10)


def test_sigreg_gaussian_is_small_collapsed_is_large():
    n, d = 2048, 32  # enough dimensions for the 256 slices to be close to independent
    a = slices_for(d, 256)
    grid = torch.linspace(-3, 3, 20001, dtype=F64)
    phi = torch.exp(-grid ** 2 / 2)
    # under H0, E[T] = integral of (1 - phi^2) phi over the window; a point mass at 0 gives N * integral (1-phi)^2 phi
    null_mean = float(torch.trapezoid((1 - phi ** 2) * phi, grid))
    collapsed_value = n * float(torch.trapezoid((1 - phi) ** 2 * phi, grid))
    gauss = float(sigreg(rnd(n, d, seed=1), a, distributed=False))
    collapsed = float(sigreg(torch.zeros(n, d, dtype=F64), a, distributed=False))
    assert gauss == pytest.approx(null_mean, rel=0.3)
    assert collapsed == pytest.approx(collapsed_value, rel=1e-3)  # quadrature error of 17 knots only
    assert collapsed > 300 * gauss
    # a Gaussian of the wrong scale is detected too
    assert float(sigreg(3 * rnd(n, d, seed=1), a, distributed=False)) > 50 * gauss


def test_sigreg_rotation_and_permutation():
    z, a = rnd(25, 5), slices_for(5, 11)
    q, _ = torch.linalg.qr(rnd(5, 5, seed=2))
    torch.testing.assert_close(sigreg(z @ q, a, distributed=False), sigreg(z, q @ a, distributed=False))
    torch.testing.assert_close(sigreg(z[torch.randperm(25, generator=torch.Generator().manual_seed(0))], a,
                                      distributed=False), sigreg(z, a, distributed=False))


def test_sigreg_rejects_wrong_slices():
    with pytest.raises(ValueError, match="slices must be"):
        sigreg(rnd(8, 4), slices_for(5, 3))


def test_lejepa_matches_reference():
    gv, lv, a = rnd(2, 12, 4, seed=1), rnd(3, 12, 4, seed=2), slices_for(4, 9)
    views = torch.cat([gv, lv])
    inv = 0.0
    for v in range(5):
        for i in range(12):
            center = (gv[0, i] + gv[1, i]) / 2
            inv += float(((views[v, i] - center) ** 2).sum())
    inv /= 5 * 12 * 4
    reg = sum(ep_reference((views[v] @ a[:, m]).tolist()) for v in range(5) for m in range(9)) / 45
    got = lejepa_loss(gv, lv, a, 0.05, distributed=False)
    assert float(got) == pytest.approx(0.95 * inv + 0.05 * reg, rel=1e-10)
    assert float(multiview_invariance(gv, lv)) == pytest.approx(inv, rel=1e-12)
    assert float(multiview_invariance(gv[:1].repeat(2, 1, 1))) == 0.0


def visreg_reference(views, a, eps=1e-4, frozen_sd=None):
    """``frozen_sd`` [V, D]: the standard deviations the shape term divides by (its stop-gradient, frozen)."""
    v_count, n, d = views.shape
    scale = center = shape = 0.0
    q = [statistics.NormalDist().inv_cdf(k / (n + 1)) for k in range(1, n + 1)]
    for v in range(v_count):
        mus, sds = [], []
        for j in range(d):
            col = views[v, :, j].tolist()
            mu = sum(col) / n
            sd = math.sqrt(sum((c - mu) ** 2 for c in col) / n)
            mus.append(mu)
            sds.append(sd)
            scale += (1 - sd) ** 2
            center += mu ** 2
        for m in range(a.shape[1]):
            div = sds if frozen_sd is None else frozen_sd[v]
            proj = sorted(sum((views[v, i, j].item() - mus[j]) / (div[j] + eps) * a[j, m].item() for j in range(d))
                          for i in range(n))
            shape += sum((p - qk) ** 2 for p, qk in zip(proj, q))
    return scale / (v_count * d), shape / (v_count * n * a.shape[1]), center / (v_count * d)


def test_visreg_terms_and_loss_match_reference():
    views, a = rnd(3, 10, 4) * 0.7 + 0.1, slices_for(4, 6)
    want = visreg_reference(views, a)
    got = visreg_terms(views, a, distributed=False)
    for g, w in zip(got, want):
        assert float(g) == pytest.approx(w, rel=1e-10)
    gv, lv = views[:2], views[2:]
    inv = float(multiview_invariance(gv, lv))
    total = visreg_loss(gv, lv, a, 0.9, 1.0, 2.0, 0.5, distributed=False)
    assert float(total) == pytest.approx(0.1 * inv + 0.9 * (want[0] + 2 * want[1] + 0.5 * want[2]), rel=1e-10)


def test_visreg_shape_ignores_scale_and_scale_gradient_survives_collapse():
    a = slices_for(4, 16)
    z = rnd(1, 64, 4, seed=3).requires_grad_()
    _, shape, _ = visreg_terms(z, a, eps=1e-12, distributed=False)
    (g,) = torch.autograd.grad(shape, z)
    assert g.abs().max() > 0
    # sg[sigma]: scaling all embeddings leaves the standardised projections, hence the shape term, unchanged
    torch.testing.assert_close(visreg_terms(3 * z.detach(), a, eps=1e-12, distributed=False)[1], shape.detach())
    # near collapse the scale term is ~1 and its gradient norm is 2 (1 - sigma) / sqrt(D N), whatever the scale
    tiny = (1e-6 * rnd(1, 64, 4, seed=4)).requires_grad_()
    scale, _, _ = visreg_terms(tiny, a, distributed=False)
    (gt,) = torch.autograd.grad(scale, tiny)
    assert float(scale.detach()) == pytest.approx(1.0, abs=1e-5)
    assert float(gt.norm()) == pytest.approx(2 / math.sqrt(4 * 64), rel=1e-4)


def test_gradients_match_finite_differences_of_the_references():
    from grad_check import autograd_grad, numeric_grad
    close = lambda a, b: torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    a = slices_for(3, 4)
    z = rnd(2, 6, 3, seed=3)
    close(autograd_grad(lambda x: sigreg(x, a, distributed=False), z),
          numeric_grad(lambda x: sum(ep_reference((x[v] @ a[:, m]).tolist()) for v in range(2)
                                     for m in range(4)) / 8, z))
    # VISReg's shape term standardises with a stop-gradient on sigma: freeze it at the base point
    sd0 = z.std(1, unbiased=False).tolist()
    got = autograd_grad(lambda x: sum(w * t for w, t in zip((1.0, 2.0, 0.5), visreg_terms(x, a, distributed=False))), z)
    weighted_reference = lambda x: sum(w * t for w, t in zip((1.0, 2.0, 0.5), visreg_reference(x, a, 1e-4, sd0)))
    close(got, numeric_grad(weighted_reference, z))
