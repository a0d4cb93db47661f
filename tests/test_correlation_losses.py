"""Barlow Twins, W-MSE, SwAV (Sinkhorn-Knopp, swapped prediction) and DeepCluster-v2's k-means against
references written here from the papers' equations (explicit sums, float64), closed forms, invariances."""

import math

import pytest
import torch
import torch.nn.functional as F

from selfsup.losses import (barlow_twins_loss, cholesky_whiten, nearest_prototype, sinkhorn_knopp, spherical_kmeans,
                            swapped_prediction, swav_loss, wmse_loss)
from selfsup.nets import Prototypes

pytestmark = pytest.mark.usefixtures("float64")


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ---- Barlow Twins --------------------------------------------------------------------------------


def ref_barlow_twins(za, zb, lam, eps=1e-5):
    """Zbontar et al. (2021), Eqs. (1)-(2): batch-standardised embeddings, C_ij = sum_b za_bi zb_bj / N."""
    n, d = za.shape

    def standardise(z):
        out = torch.empty_like(z)
        for i in range(d):
            mu = sum(z[b, i] for b in range(n)) / n
            var = sum((z[b, i] - mu) ** 2 for b in range(n)) / n
            for b in range(n):
                out[b, i] = (z[b, i] - mu) / torch.sqrt(var + eps)
        return out

    a, b_ = standardise(za), standardise(zb)
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(a[b, i] * b_[b, j] for b in range(n)) / n
            loss = loss + ((1 - c) ** 2 if i == j else lam * c ** 2)
    return loss


def test_barlow_twins_matches_equation():
    g = gen(0)
    za, zb = torch.randn(9, 4, generator=g), 2 * torch.randn(9, 4, generator=g) + 1
    for lam in (5e-3, 0.5):
        torch.testing.assert_close(barlow_twins_loss(za, zb, lam), ref_barlow_twins(za, zb, lam))
    torch.testing.assert_close(barlow_twins_loss(za, zb, 0.1, eps=0.0), ref_barlow_twins(za, zb, 0.1, eps=0.0))


def decorrelated(n, d, seed=0):
    """n x d embeddings with zero-mean, uncorrelated, unit-(biased-)variance columns."""
    a = torch.randn(n, d, generator=gen(seed))
    q, _ = torch.linalg.qr(a - a.mean(0))  # orthonormal columns spanning centred vectors: zero mean
    return q * math.sqrt(n)


def test_barlow_twins_closed_forms():
    z = decorrelated(32, 6)
    # perfectly decorrelated, standardised, identical views: C = I, the loss is 0
    torch.testing.assert_close(barlow_twins_loss(z, z.clone(), 5e-3, eps=0.0), torch.tensor(0.0))
    # opposite views: C = -I, each diagonal term is (1 - (-1))^2 = 4
    torch.testing.assert_close(barlow_twins_loss(z, -z, 5e-3, eps=0.0), torch.tensor(4.0 * 6))
    # identical but fully redundant dimensions (all columns equal): C = all-ones, loss = lambda * D(D-1)
    r = decorrelated(32, 1).repeat(1, 5)
    torch.testing.assert_close(barlow_twins_loss(r, r, 0.01, eps=0.0), torch.tensor(0.01 * 5 * 4))


def test_barlow_twins_invariances_and_errors():
    g = gen(1)
    za, zb = torch.randn(16, 5, generator=g), torch.randn(16, 5, generator=g)
    base = barlow_twins_loss(za, zb, 0.02, eps=0.0)
    scale, shift = torch.rand(5, generator=g) + 0.5, torch.randn(5, generator=g)
    torch.testing.assert_close(barlow_twins_loss(za * scale + shift, zb, 0.02, eps=0.0), base)  # per-dim affine
    perm = torch.randperm(16, generator=g)
    torch.testing.assert_close(barlow_twins_loss(za[perm], zb[perm], 0.02, eps=0.0), base)  # batch order
    dims = torch.randperm(5, generator=g)
    torch.testing.assert_close(barlow_twins_loss(za[:, dims], zb[:, dims], 0.02, eps=0.0), base)  # dim order
    torch.testing.assert_close(barlow_twins_loss(zb, za, 0.02, eps=0.0), base)  # C -> C^T
    with pytest.raises(ValueError, match="equal shape"):
        barlow_twins_loss(za, zb[:, :3])
    with pytest.raises(ValueError, match="at least 2"):
        barlow_twins_loss(za[:1], zb[:1])


# ---- W-MSE ---------------------------------------------------------------------------------------


def test_cholesky_whitening_gives_identity_covariance():
    x = torch.randn(50, 6, generator=gen(2)) @ torch.randn(6, 6, generator=gen(3)) + 3.0
    w = cholesky_whiten(x)
    torch.testing.assert_close(w.mean(0), torch.zeros(6))
    torch.testing.assert_close(w.T @ w / 49, torch.eye(6))
    # W = L^{-1} is lower triangular: the first whitened coordinate is the standardised first input
    x0 = x[:, 0] - x[:, 0].mean()
    torch.testing.assert_close(w[:, 0], x0 / x0.std())
    # shrinkage: covariance (1 - eps) S + eps I is whitened instead; too few samples need eps > 0
    with pytest.raises(ValueError, match="more samples than dimensions"):
        cholesky_whiten(x[:6])
    ws = cholesky_whiten(x[:4], eps=0.1)
    assert torch.isfinite(ws).all()


def ref_wmse(views, perms, w_size):
    """Ermolov et al. (2021), Eqs. (3)-(6): whiten every view of every sub-batch with W = L^{-1}
    (Sigma = L L^T), average 2 - 2 cos over positive pairs, samples, repetitions."""
    n = views[0].shape[0]
    total, count = 0.0, 0
    for perm in perms:
        white = [torch.empty_like(v) for v in views]
        for grp in perm.view(-1, w_size):
            for v, w in zip(views, white):
                x = v[grp]
                xc = x - x.mean(0)
                cov = sum(torch.outer(r, r) for r in xc) / (len(grp) - 1)
                winv = torch.linalg.inv(torch.linalg.cholesky(cov))
                for row, i in zip(xc, grp):
                    w[i] = winv @ row
        for i in range(len(views)):
            for j in range(i + 1, len(views)):
                pair = sum(2 - 2 * torch.dot(white[i][b], white[j][b]) / (white[i][b].norm() * white[j][b].norm())
                           for b in range(n)) / n
                total, count = total + pair, count + 1
    return total / count


def test_wmse_matches_equation():
    g = gen(4)
    views = [torch.randn(24, 3, generator=g) for _ in range(3)]
    got = wmse_loss(views, w_size=8, w_iter=2, generator=gen(7))
    g2 = gen(7)
    perms = [torch.randperm(24, generator=g2) for _ in range(2)]
    torch.testing.assert_close(got, ref_wmse(views, perms, 8))


def test_wmse_closed_forms_and_errors():
    g = gen(5)
    z = torch.randn(32, 4, generator=g)
    torch.testing.assert_close(wmse_loss([z, z.clone()], w_size=16), torch.tensor(0.0))  # identical views
    # one sub-batch = the whole batch: whitening ignores sample order, so the split and w_iter do not matter
    z2 = torch.randn(32, 4, generator=g)
    a = wmse_loss([z, z2], w_size=32, w_iter=1, generator=gen(0))
    torch.testing.assert_close(wmse_loss([z, z2], w_size=32, w_iter=3, generator=gen(1)), a)
    # x -> x A + c with A upper-triangular (positive diagonal): the Cholesky factor becomes A^T L, so the
    # whitened embeddings, hence the loss, do not change
    tri = torch.triu(torch.rand(4, 4, generator=g)) + torch.eye(4)
    torch.testing.assert_close(wmse_loss([z @ tri + 2.0, z2], w_size=32), a)
    with pytest.raises(ValueError, match="multiple of w_size"):
        wmse_loss([z, z2], w_size=12)
    with pytest.raises(ValueError, match="at least two"):
        wmse_loss([z], w_size=16)


# ---- SwAV ----------------------------------------------------------------------------------------


def ref_sinkhorn(scores, eps, n_iters):
    """Caron et al. (2020), Appendix A.1, literally: Q = exp(S^T / eps), normalised to total 1, then
    alternately rows to 1/K and columns to 1/B; codes are the columns scaled by B."""
    b, k = scores.shape
    q = [[math.exp(scores[i, j].item() / eps) for i in range(b)] for j in range(k)]
    tot = sum(sum(r) for r in q)
    q = [[v / tot for v in r] for r in q]
    for _ in range(n_iters):
        q = [[v / sum(r) / k for v in r] for r in q]
        cols = [sum(q[j][i] for j in range(k)) for i in range(b)]
        q = [[q[j][i] / cols[i] / b for i in range(b)] for j in range(k)]
    return torch.tensor([[q[j][i] * b for j in range(k)] for i in range(b)])


def test_sinkhorn_matches_algorithm():
    s = F.normalize(torch.randn(7, 5, generator=gen(6)), dim=1)
    for eps, it in ((0.05, 3), (0.5, 1), (0.2, 10)):
        torch.testing.assert_close(sinkhorn_knopp(s, eps, it), ref_sinkhorn(s, eps, it))


def test_sinkhorn_marginals_and_form():
    b, k = 40, 8
    s = F.normalize(torch.randn(b, k, generator=gen(8)), dim=1)
    q = sinkhorn_knopp(s, epsilon=0.1, n_iters=500)
    torch.testing.assert_close(q.sum(1), torch.ones(b))  # every sample's code is a distribution
    torch.testing.assert_close(q.sum(0), torch.full((k,), b / k))  # equipartition over prototypes
    assert (q >= 0).all()
    # the solution has the form Diag(u) exp(S^T / eps) Diag(v): log Q - S/eps is a sum of row and column terms
    m = torch.log(q) - s / 0.1
    torch.testing.assert_close(m - m[:, :1] - m[:1, :] + m[0, 0], torch.zeros(b, k))
    # SwAV's 3 iterations: the last step normalises the columns, so codes are exact distributions
    torch.testing.assert_close(sinkhorn_knopp(s, 0.05, 3).sum(1), torch.ones(b))


def test_sinkhorn_invariances_and_ties():
    s = torch.randn(12, 6, generator=gen(9))
    base = sinkhorn_knopp(s, 0.3, 5)
    torch.testing.assert_close(sinkhorn_knopp(s + 4.0, 0.3, 5), base)  # shift of all scores
    perm = torch.randperm(12, generator=gen(10))
    torch.testing.assert_close(sinkhorn_knopp(s[perm], 0.3, 5), base[perm])  # sample order
    torch.testing.assert_close(sinkhorn_knopp(torch.zeros(4, 5), 0.05, 3), torch.full((4, 5), 0.2))  # ties: uniform
    assert torch.isfinite(sinkhorn_knopp(200 * s, 0.05, 3)).all()  # large scores: no overflow
    with pytest.raises(ValueError, match=r"\[B, K\]"):
        sinkhorn_knopp(torch.zeros(3))


def ref_swapped(scores, codes, t):
    """Caron et al. (2020), Eqs. (1)-(2) with multi-crop: mean over code crops i of the mean over other
    crops v of -sum_k q_ik log softmax(s_v / t)_k, averaged over samples."""
    total = 0.0
    for i, q in enumerate(codes):
        sub = 0.0
        for v, s in enumerate(scores):
            if v == i:
                continue
            for b in range(s.shape[0]):
                den = sum(math.exp(s[b, j].item() / t) for j in range(s.shape[1]))
                sub -= sum(q[b, j].item() * math.log(math.exp(s[b, j].item() / t) / den) for j in range(s.shape[1]))
        total += sub / s.shape[0] / (len(scores) - 1)
    return torch.tensor(total / len(codes))


def test_swapped_prediction_matches_equation_and_swav_loss():
    g = gen(11)
    scores = [F.normalize(torch.randn(5, 4, generator=g), dim=1) for _ in range(4)]
    codes = [torch.softmax(torch.randn(5, 4, generator=g), 1) for _ in range(2)]
    torch.testing.assert_close(swapped_prediction(scores, codes, 0.1), ref_swapped(scores, codes, 0.1))
    # swav_loss = swapped prediction of the first n_assign crops' Sinkhorn codes
    codes = [ref_sinkhorn(s, 0.05, 3) for s in scores[:2]]
    torch.testing.assert_close(swav_loss(scores, 2, 0.1, 0.05, 3), ref_swapped(scores, codes, 0.1))
    # with a queue, Sinkhorn runs on [queue; batch] and only the batch's codes are kept
    queue = [F.normalize(torch.randn(6, 4, generator=g), dim=1) for _ in range(2)]
    codes = [ref_sinkhorn(torch.cat([qu, s]), 0.05, 3)[-5:] for qu, s in zip(queue, scores[:2])]
    torch.testing.assert_close(swav_loss(scores, 2, 0.1, 0.05, 3, queue_scores=queue), ref_swapped(scores, codes, 0.1))


def test_swav_closed_forms_and_gradient():
    # uniform predictions: every crop costs -sum_k q_k log(1/K) = log K whatever the codes
    scores = [torch.zeros(6, 10) for _ in range(3)]
    torch.testing.assert_close(swav_loss(scores, 2), torch.tensor(math.log(10)))
    # codes are targets: no gradient flows through the Sinkhorn branch
    s = [torch.randn(6, 5, generator=gen(12), requires_grad=True) for _ in range(2)]
    q = sinkhorn_knopp(s[0])
    assert not q.requires_grad
    swav_loss(s, 1).backward()
    assert s[0].grad is None or s[0].grad.abs().max() == 0  # crop 0 only gives codes when n_assign=1
    assert s[1].grad.abs().max() > 0
    with pytest.raises(ValueError, match="n_assign"):
        swav_loss(s, 3)


def test_prototypes_stay_normalised():
    p = Prototypes(8, 5)
    torch.testing.assert_close(p.weight.norm(dim=1), torch.ones(5, dtype=p.weight.dtype))
    with torch.no_grad():
        p.weight.mul_(3.0)
    z = F.normalize(torch.randn(4, 8, generator=gen(13)), dim=1).to(p.weight.dtype)
    torch.testing.assert_close(p(z), 3 * z @ (p.weight / 3).T)
    p.normalize_()
    torch.testing.assert_close(p.weight.norm(dim=1), torch.ones(5, dtype=p.weight.dtype))
    with pytest.raises(ValueError, match="shape"):
        p.set_(torch.randn(4, 8))


# ---- DeepCluster-v2's spherical k-means ---------------------------------------------------------------


def ref_kmeans(x, init, n_iters):
    """Lloyd's algorithm on the sphere, literally: assign by largest cosine, centroid = normalised mean."""
    c = [row.clone() for row in init]
    for _ in range(n_iters):
        members = [[] for _ in c]
        for row in x:
            members[max(range(len(c)), key=lambda k: float(row @ c[k]))].append(row)
        c = [F.normalize(sum(m) / len(m), dim=0) if m else c[k] for k, m in enumerate(members)]
    c = torch.stack(c)
    return c, torch.tensor([int((c @ row).argmax()) for row in x])


def test_spherical_kmeans_matches_lloyd():
    x = F.normalize(torch.randn(60, 3, generator=gen(14)), dim=1)
    init = x[:6].clone()
    c, a = spherical_kmeans(x, init, n_iters=7)
    rc, ra = ref_kmeans(x, init, 7)
    torch.testing.assert_close(c, rc)
    assert torch.equal(a, ra)
    torch.testing.assert_close(c.norm(dim=1), torch.ones(6))
    assert torch.equal(nearest_prototype(x, c, chunk=7), a)  # chunking does not change the argmax


def test_spherical_kmeans_recovers_separated_clusters_and_keeps_empty_ones():
    centers = torch.eye(4)
    g = gen(15)
    labels = torch.arange(80) % 4
    x = F.normalize(centers[labels] + 0.05 * torch.randn(80, 4, generator=g), dim=1)
    init = x[[0, 1, 2, 3]]
    c, a = spherical_kmeans(x, init, 5)
    assert torch.equal(a, labels)
    torch.testing.assert_close(c, centers, atol=0.05, rtol=0)
    # a centroid no row is closest to stays where it was
    far = torch.tensor([[0.0, 0.0, 0.0, 0.0, 1.0]])
    x5 = torch.cat([x, torch.zeros(80, 1)], 1)
    c5, _ = spherical_kmeans(x5, torch.cat([x5[:4], far]), 3)
    torch.testing.assert_close(c5[4], far[0])
