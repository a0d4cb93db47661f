"""Losses against references written here from the papers' equations, closed forms, invariances."""

import math

import pytest
import torch
import torch.nn.functional as F

from selfsup.losses import byol_loss, info_nce, negative_cosine, nt_xent, off_diagonal, vicreg_loss, vicreg_terms

pytestmark = pytest.mark.usefixtures("float64")


def ref_nt_xent(z1, z2, t):
    """SimCLR Eq. (1), literally: loop over the 2N anchors."""
    z = torch.cat([z1, z2])
    n2 = z.shape[0]
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        j = (i + n) % n2
        sim = lambda a, b: torch.dot(z[a], z[b]) / (z[a].norm() * z[b].norm())
        num = torch.exp(sim(i, j) / t)
        den = sum(torch.exp(sim(i, k) / t) for k in range(n2) if k != i)
        total = total - torch.log(num / den)
    return total / n2


def test_nt_xent_matches_equation():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    for t in (0.1, 0.5, 1.0):
        torch.testing.assert_close(nt_xent(z1, z2, t), ref_nt_xent(z1, z2, t))


def test_nt_xent_closed_form_identical_embeddings():
    # all 2N embeddings equal: every logit ties, so the loss is -log(1/(2N-1)) for any temperature
    for n in (2, 5, 16):
        z = torch.ones(n, 8)
        torch.testing.assert_close(nt_xent(z, z.clone(), 0.3), torch.tensor(math.log(2 * n - 1)))


def test_nt_xent_invariances():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    base = nt_xent(z1, z2, 0.2)
    q, _ = torch.linalg.qr(torch.randn(4, 4, generator=g))
    torch.testing.assert_close(nt_xent(z1 @ q, z2 @ q, 0.2), base)  # rotation
    torch.testing.assert_close(nt_xent(3 * z1, 0.5 * z2, 0.2), base)  # scale
    perm = torch.randperm(6, generator=g)
    torch.testing.assert_close(nt_xent(z1[perm], z2[perm], 0.2), base)  # batch order
    torch.testing.assert_close(nt_xent(z2, z1, 0.2), base)  # view swap


def test_nt_xent_rejects_bad_shapes():
    with pytest.raises(ValueError, match="equal shape"):
        nt_xent(torch.randn(4, 3), torch.randn(5, 3))


def test_info_nce_matches_equation_with_queue():
    g = torch.Generator().manual_seed(2)
    q, k, neg = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g), torch.randn(9, 4, generator=g)
    t = 0.2
    qn, kn, nn_ = F.normalize(q, dim=1), F.normalize(k, dim=1), F.normalize(neg, dim=1)
    ref = 0.0
    for i in range(5):
        den = sum(torch.exp(qn[i] @ kn[j] / t) for j in range(5)) + sum(torch.exp(qn[i] @ nn_[m] / t) for m in range(9))
        ref = ref - torch.log(torch.exp(qn[i] @ kn[i] / t) / den)
    torch.testing.assert_close(info_nce(q, k, neg, t), ref / 5)


def test_info_nce_queue_closed_form():
    # a memory bank of size M with identical views and entries: -log(1/(M + N))
    n, m = 4, 10
    z = torch.ones(n, 3)
    torch.testing.assert_close(info_nce(z, z, torch.ones(m, 3), 0.1), torch.tensor(math.log(m + n)))


def test_byol_loss_matches_equation_and_invariances():
    g = torch.Generator().manual_seed(3)
    p, z = torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g)
    ref = ((p / p.norm(dim=1, keepdim=True) - z / z.norm(dim=1, keepdim=True)) ** 2).sum(1).mean()
    torch.testing.assert_close(byol_loss(p, z), ref)
    torch.testing.assert_close(byol_loss(p, 2.5 * p), torch.tensor(0.0))  # scale invariance: aligned -> 0
    torch.testing.assert_close(byol_loss(p, -p), torch.tensor(4.0))  # opposite -> maximum 4
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g))
    torch.testing.assert_close(byol_loss(p @ q, z @ q), ref)  # rotation invariance
    p.requires_grad_(True)
    z.requires_grad_(True)
    byol_loss(p, z).backward()
    assert z.grad is None or z.grad.abs().max() == 0  # stop-gradient on the target
    torch.testing.assert_close(negative_cosine(p.detach(), z.detach()), -F.cosine_similarity(p, z).mean().detach())


def ref_vicreg(z1, z2, lam, mu, nu, gamma=1.0, eps=1e-4):
    """VICReg Eqs. (1)-(6) written out with explicit sums."""
    n, d = z1.shape
    inv = sum(((z1[i] - z2[i]) ** 2).sum() for i in range(n)) / (n * d)

    def v(z):
        return sum(torch.clamp(gamma - torch.sqrt(z[:, j].var() + eps), min=0) for j in range(d)) / d

    def c(z):
        zm = z - z.mean(0)
        cov = sum(torch.outer(zm[i], zm[i]) for i in range(n)) / (n - 1)
        return sum(cov[a, b] ** 2 for a in range(d) for b in range(d) if a != b) / d

    return lam * inv + mu * (v(z1) + v(z2)) / 2 + nu * (c(z1) + c(z2))


def test_vicreg_matches_equation():
    g = torch.Generator().manual_seed(4)
    z1, z2 = 0.5 * torch.randn(10, 4, generator=g), 0.5 * torch.randn(10, 4, generator=g)
    torch.testing.assert_close(vicreg_loss(z1, z2, 25, 25, 1), ref_vicreg(z1, z2, 25, 25, 1))
    torch.testing.assert_close(vicreg_loss(z1, z2, 1.0, 0.0, 3.0), ref_vicreg(z1, z2, 1.0, 0.0, 3.0))


def test_vicreg_closed_forms_and_invariances():
    g = torch.Generator().manual_seed(5)
    z = torch.randn(64, 6, generator=g)
    inv, var, cov = vicreg_terms(z, z.clone())
    assert inv == 0  # identical views: no invariance loss
    # constant embeddings (collapse): every std is sqrt(eps), variance term = gamma - sqrt(eps)
    inv, var, cov = vicreg_terms(torch.ones(8, 3), torch.ones(8, 3))
    torch.testing.assert_close(var, torch.tensor(1.0 - math.sqrt(1e-4)))
    assert cov == 0
    # translation invariance of variance/covariance, permutation invariance over the batch
    base = vicreg_terms(z, z + 0.1)
    shifted = vicreg_terms(z + 3.0, z + 3.1)
    for a, b in zip(base, shifted):
        torch.testing.assert_close(a, b)
    perm = torch.randperm(64, generator=g)
    for a, b in zip(base, vicreg_terms(z[perm], z[perm] + 0.1)):
        torch.testing.assert_close(a, b)


def test_off_diagonal():
    m = torch.arange(16.0).view(4, 4)
    ref = torch.stack([m[i, j] for i in range(4) for j in range(4) if i != j])
    torch.testing.assert_close(off_diagonal(m), ref)
