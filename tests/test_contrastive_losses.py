"""Contrastive-family losses against references written here from the papers' equations (float64),
closed forms and invariances."""

import math

import pytest
import torch
import torch.nn.functional as F

from selfsup.losses import (UNIFIED_PRESETS, PhiPsi, batch_margin_contrastive, batch_triplet, byol_loss, dcl, info_nce, margin_contrastive, moco_infonce,
                            moco_v3_loss, msf_loss, nearest_neighbour, nnclr_loss, nt_xent, relic_loss, relic_terms,
                            supcon, triplet, unified_contrastive, unified_preset)

pytestmark = pytest.mark.usefixtures("float64")


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def unit(x):
    return x / x.norm(dim=-1, keepdim=True)


# ---- SupCon ------------------------------------------------------------------------------------------

def ref_supcon(views, labels, t):
    """Khosla et al. Eq. 2, literally: loop over anchors i, positives p, and the contrast set A(i)."""
    z = unit(torch.cat(views))
    y = labels.repeat(len(views))
    total = 0.0
    for i in range(len(z)):
        a_set = [a for a in range(len(z)) if a != i]
        pos = [p for p in a_set if y[p] == y[i]]
        den = sum(torch.exp(z[i] @ z[a] / t) for a in a_set)
        total = total - sum(torch.log(torch.exp(z[i] @ z[p] / t) / den) for p in pos) / len(pos)
    return total / len(z)


def test_supcon_matches_equation():
    y = torch.tensor([0, 1, 0, 2, 1, 0])
    for n_views in (2, 3):
        views = [rand(6, 4, seed=v) for v in range(n_views)]
        for t in (0.1, 0.5):
            torch.testing.assert_close(supcon(views, y, t), ref_supcon(views, y, t))


def test_supcon_unique_labels_is_nt_xent_and_closed_form():
    z1, z2 = rand(7, 5, seed=1), rand(7, 5, seed=2)
    torch.testing.assert_close(supcon([z1, z2], None, 0.3), nt_xent(z1, z2, 0.3))
    torch.testing.assert_close(supcon([z1, z2], torch.arange(7) * 3, 0.3), nt_xent(z1, z2, 0.3))
    # all 3N embeddings equal: every logit ties, -log(1/(3N - 1)) whatever the labels
    z = torch.ones(4, 3)
    torch.testing.assert_close(supcon([z, z, z], torch.tensor([0, 0, 1, 2]), 0.2), torch.tensor(math.log(11.0)))


def test_supcon_invariances_and_errors():
    z1, z2, y = rand(6, 4, seed=3), rand(6, 4, seed=4), torch.tensor([0, 1, 1, 0, 2, 2])
    base = supcon([z1, z2], y, 0.2)
    q, _ = torch.linalg.qr(rand(4, 4, seed=5))
    torch.testing.assert_close(supcon([z1 @ q, 2 * z2 @ q], y, 0.2), base)  # rotation and scale
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(supcon([z1[perm], z2[perm]], y[perm], 0.2), base)  # batch order
    torch.testing.assert_close(supcon([z1, z2], y + 10, 0.2), base)  # label names do not matter
    with pytest.raises(ValueError, match="at least 2 views"):
        supcon([z1], y)
    with pytest.raises(ValueError, match="labels must have shape"):
        supcon([z1, z2], y[:3])


# ---- DCL / DCLW ---------------------------------------------------------------------------------------

def ref_dcl(z1, z2, t, sigma=None):
    """Yeh et al. Eq. 6 (and the DCLW weight), averaged over the 2N anchors."""
    z1, z2 = unit(z1), unit(z2)
    n = len(z1)
    s = [z1[i] @ z2[i] for i in range(n)]
    mean_e = sum(torch.exp(si / sigma) for si in s) / n if sigma else None
    total = 0.0
    for a, b in ((z1, z2), (z1 * 0 + z2, z1)):
        for i in range(n):
            w = 1.0 if sigma is None else 2 - torch.exp(s[i] / sigma) / mean_e
            neg = sum(torch.exp(a[i] @ a[k] / t) + torch.exp(a[i] @ b[k] / t) for k in range(n) if k != i)
            total = total - w * (a[i] @ b[i]) / t + torch.log(neg)
    return total / (2 * n)


def test_dcl_and_dclw_match_equation():
    z1, z2 = rand(6, 5, seed=6), rand(6, 5, seed=7)
    for t in (0.1, 0.5):
        torch.testing.assert_close(dcl(z1, z2, t), ref_dcl(z1, z2, t))
        torch.testing.assert_close(dcl(z1, z2, t, sigma=0.5), ref_dcl(z1, z2, t, sigma=0.5))


def test_dcl_closed_form_and_relations():
    # identical embeddings: -1/t + log((2N - 2) e^{1/t}) = log(2N - 2); DCLW's weight is then 1
    z = torch.ones(5, 3)
    torch.testing.assert_close(dcl(z, z, 0.3), torch.tensor(math.log(8.0)))
    torch.testing.assert_close(dcl(z, z, 0.3, sigma=0.5), torch.tensor(math.log(8.0)))
    # removing the positive from the denominator lowers the loss below NT-Xent's
    z1, z2 = rand(8, 4, seed=8), rand(8, 4, seed=9)
    assert dcl(z1, z2, 0.2) < nt_xent(z1, z2, 0.2)
    torch.testing.assert_close(dcl(z2, z1, 0.2, 0.5), dcl(z1, z2, 0.2, 0.5))  # view swap


# ---- MoCo ---------------------------------------------------------------------------------------------

def test_moco_infonce_matches_equation_closed_form_and_invariances():
    q, k, queue = rand(5, 4, seed=10), rand(5, 4, seed=11), rand(9, 4, seed=12)
    t = 0.2
    qn, kn, nn_ = unit(q), unit(k), unit(queue)
    ref = -sum(torch.log(torch.exp(qn[i] @ kn[i] / t) / (torch.exp(qn[i] @ kn[i] / t)
                                                          + sum(torch.exp(qn[i] @ nn_[m] / t) for m in range(9))))
               for i in range(5)) / 5
    torch.testing.assert_close(moco_infonce(q, k, queue, t), ref)
    # a queue of size M with identical views and entries: -log(1/(M + 1))
    torch.testing.assert_close(moco_infonce(torch.ones(4, 3), torch.ones(4, 3), torch.ones(16, 3), 0.1),
                               torch.tensor(math.log(17.0)))
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(moco_infonce(q, k, queue[perm], t), ref)  # queue order
    torch.testing.assert_close(moco_infonce(q, 3 * k, 0.5 * queue, t), ref)  # scale
    q.requires_grad_(True)
    k.requires_grad_(True)
    moco_infonce(q, k, queue, t).backward()
    assert k.grad is None and q.grad.abs().sum() > 0  # keys come from the momentum encoder: no gradient
    with pytest.raises(ValueError, match="queue"):
        moco_infonce(q, k, rand(9, 3))


def test_moco_v3_loss_matches_algorithm():
    q1, q2, k1, k2 = (rand(6, 4, seed=s) for s in range(13, 17))
    t = 0.7

    def ctr(q, k):
        q, k = unit(q), unit(k)
        return -sum(torch.log(torch.exp(q[i] @ k[i] / t) / sum(torch.exp(q[i] @ k[j] / t) for j in range(6)))
                    for i in range(6)) / 6

    torch.testing.assert_close(moco_v3_loss(q1, q2, k1, k2, t), 2 * t * (ctr(q1, k2) + ctr(q2, k1)))
    # perfectly aligned queries/keys on orthogonal directions: 2 * 2t * log(1 + (N - 1) e^{-1/t})
    e = torch.eye(6)
    torch.testing.assert_close(moco_v3_loss(e, e, e, e, t), torch.tensor(4 * t * math.log(1 + 5 * math.exp(-1 / t))))


# ---- NNCLR / MSF --------------------------------------------------------------------------------------

def test_nnclr_matches_equation_and_stops_gradient():
    z, p, support = rand(6, 4, seed=20), rand(6, 4, seed=21), rand(15, 4, seed=22)
    t = 0.1
    zn, pn, sn = unit(z), unit(p), unit(support)
    nn_ = torch.stack([sn[min(range(15), key=lambda m: (zn[i] - sn[m]).norm())] for i in range(6)])
    torch.testing.assert_close(nearest_neighbour(z, support), nn_)
    ref = -sum(torch.log(torch.exp(nn_[i] @ pn[i] / t) / sum(torch.exp(nn_[i] @ pn[k] / t) for k in range(6)))
               for i in range(6)) / 6
    z.requires_grad_(True)
    p.requires_grad_(True)
    loss = nnclr_loss(z, p, support, t)
    torch.testing.assert_close(loss, ref)
    loss.backward()
    assert z.grad is None and p.grad.abs().sum() > 0  # the neighbour carries no gradient to z
    # a support set that contains z itself: NNCLR reduces to InfoNCE between z and p
    torch.testing.assert_close(nnclr_loss(z.detach(), p, torch.cat([support, 5 * z.detach()]), t),
                               info_nce(z.detach(), p, None, t))
    with pytest.raises(ValueError, match="non-empty support"):
        nearest_neighbour(z, torch.zeros(0, 4))


def test_msf_matches_equation_and_reduces_to_byol():
    q, tgt, bank = rand(5, 4, seed=23), rand(5, 4, seed=24), rand(12, 4, seed=25)
    u, v = unit(q), unit(tgt)
    support = torch.cat([unit(bank), v])
    for k in (1, 3, 5):
        ref = 0.0
        for i in range(5):
            order = sorted(range(len(support)), key=lambda m: (v[i] - support[m]).norm())
            ref = ref + sum((u[i] - support[m]).pow(2).sum() for m in order[:k]) / k
        torch.testing.assert_close(msf_loss(q, tgt, bank, k), ref / 5)
    # k = 1: the target itself is its nearest neighbour, so MSF is BYOL's loss
    torch.testing.assert_close(msf_loss(q, tgt, bank, 1), byol_loss(q, tgt))
    with pytest.raises(ValueError, match="k <="):
        msf_loss(q, tgt, bank, k=100)


# ---- ReLIC --------------------------------------------------------------------------------------------

def test_relic_matches_equation():
    z1, z2, t1, t2 = (rand(5, 4, seed=s) for s in range(30, 34))
    tau, alpha = 0.3, 0.7
    z1n, z2n, t1n, t2n = (unit(x) for x in (z1, z2, t1, t2))

    def p(a, b, i):  # p^{do}(Y = j | x_i) for all j
        e = torch.stack([torch.exp(a[i] @ b[j] / tau) for j in range(5)])
        return e / e.sum()

    ctr = inv = 0.0
    for i in range(5):
        p12, p21 = p(z1n, t2n, i), p(z2n, t1n, i)
        ctr = ctr - torch.log(p12[i]) - torch.log(p21[i])
        inv = inv + sum(p12[j] * torch.log(p12[j] / p21[j]) + p21[j] * torch.log(p21[j] / p12[j]) for j in range(5))
    c, v = relic_terms(z1, z2, t1, t2, tau)
    torch.testing.assert_close(c, ctr / 10)
    torch.testing.assert_close(v, inv / 10)
    torch.testing.assert_close(relic_loss(z1, z2, t1, t2, tau, alpha), ctr / 10 + alpha * inv / 10)
    # h = f when no targets are given
    torch.testing.assert_close(relic_loss(z1, z2, None, None, tau, alpha), relic_loss(z1, z2, z1, z2, tau, alpha))


def test_relic_closed_forms():
    # identical views: p12 = p21, so the invariance term vanishes and the contrastive term is InfoNCE
    z, t = rand(6, 4, seed=34), rand(6, 4, seed=35)
    c, v = relic_terms(z, z, t, t, 0.2)
    torch.testing.assert_close(v, torch.tensor(0.0))
    torch.testing.assert_close(c, info_nce(z, t, None, 0.2))
    # all embeddings equal: uniform distributions, ctr = log N
    c, v = relic_terms(*(torch.ones(6, 3) for _ in range(4)), temperature=0.2)
    torch.testing.assert_close(c, torch.tensor(math.log(6.0)))


# ---- Tian's unified loss ------------------------------------------------------------------------------

TABLE_1 = {  # written from Tian (2022), Table 1, with tau and eps
    "infonce": lambda tau, eps: (lambda x: tau * math.log(eps + x), lambda x: math.exp(x / tau)),
    "mine": lambda tau, eps: (math.log, math.exp),
    "triplet": lambda tau, eps: (lambda x: x, lambda x: max(x + eps, 0.0)),
    "soft_triplet": lambda tau, eps: (lambda x: tau * math.log(1 + x), lambda x: math.exp(x / tau + eps)),
    "tuplet": lambda tau, eps: (lambda x: math.log(1 + x), math.exp),
    "lifted": lambda tau, eps: (lambda x: max(math.log(x), 0.0) ** 2, lambda x: math.exp(x + eps)),
}


def ref_unified(z1, z2, phi, psi, negatives, symmetric=True):
    """Tian (2022) Eq. 1 with explicit loops, on normalised embeddings, averaged over anchors."""
    z1, z2 = unit(z1).tolist(), unit(z2).tolist()
    sq = lambda a, b: sum((x - y) ** 2 for x, y in zip(a, b))

    def one(a, b):
        n, total = len(a), 0.0
        for i in range(n):
            cands = [b[j] for j in range(n) if j != i]
            if negatives == "all":
                cands += [a[j] for j in range(n) if j != i]
            total += phi(sum(psi(sq(a[i], b[i]) - sq(a[i], c)) for c in cands))
        return total / n

    return (one(z1, z2) + one(z2, z1)) / 2 if symmetric else one(z1, z2)


@pytest.mark.parametrize("name", list(UNIFIED_PRESETS))
def test_unified_presets_match_table_1(name):
    z1, z2 = rand(5, 3, seed=40), rand(5, 3, seed=41)
    for tau, eps in ((0.5, None), (0.3, 0.4)):
        e = UNIFIED_PRESETS[name][1] if eps is None else eps
        phi, psi = TABLE_1[name](tau, e)
        pair = unified_preset(name, tau, eps)
        for negatives in ("other", "all"):
            ref = ref_unified(z1, z2, phi, psi, negatives)
            torch.testing.assert_close(unified_contrastive(z1, z2, pair, negatives=negatives), torch.tensor(ref))
            # the plain phi/psi path agrees with the log-domain one
            torch.testing.assert_close(unified_contrastive(z1, z2, pair.phi, pair.psi, negatives=negatives),
                                       torch.tensor(ref))


def test_unified_custom_phi_psi_and_one_direction():
    z1, z2 = rand(6, 4, seed=42), rand(6, 4, seed=43)
    phi, psi = (lambda s: s.pow(2)), torch.sigmoid
    ref = ref_unified(z1, z2, lambda s: s * s, lambda x: 1 / (1 + math.exp(-x)), "other", symmetric=False)
    torch.testing.assert_close(unified_contrastive(z1, z2, phi, psi, negatives="other", symmetric=False),
                               torch.tensor(ref))
    torch.testing.assert_close(unified_contrastive(z1, z2, PhiPsi(phi, psi), negatives="other", symmetric=False),
                               torch.tensor(ref))
    with pytest.raises(ValueError, match="phi and psi"):
        unified_contrastive(z1, z2, phi)
    with pytest.raises(ValueError, match="unknown unified preset"):
        unified_preset("simclr")


def test_unified_infonce_closed_forms():
    # on unit vectors d^2 = 2 - 2 cos, so InfoNCE with tau on squared distances is tau x NT-Xent at tau / 2:
    # eps = 1 with both views as negatives is SimCLR, eps = 0 is DCL, eps = 1 with the other view is InfoNCE
    z1, z2 = rand(7, 5, seed=44), rand(7, 5, seed=45)
    tau = 0.6
    uc = lambda eps, neg: unified_contrastive(z1, z2, unified_preset("infonce", tau, eps), negatives=neg)
    torch.testing.assert_close(uc(1.0, "all"), tau * nt_xent(z1, z2, tau / 2))
    torch.testing.assert_close(uc(0.0, "all"), tau * dcl(z1, z2, tau / 2))
    both = (info_nce(z1, z2, None, tau / 2) + info_nce(z2, z1, None, tau / 2)) / 2
    torch.testing.assert_close(uc(1.0, "other"), tau * both)
    # two images, the other view as the only negative: the triplet preset is the triplet loss
    a, b = rand(2, 4, seed=46), rand(2, 4, seed=47)
    got = unified_contrastive(a, b, unified_preset("triplet", eps=0.3), negatives="other", symmetric=False)
    torch.testing.assert_close(got, triplet(unit(a), unit(b), unit(b).flip(0), margin=0.3))


def test_unified_log_domain_is_stable():
    # tau = 0.002 puts exp(x / tau) far beyond float64's range; the log-domain path stays finite and exact
    z1, z2 = rand(6, 4, seed=48), rand(6, 4, seed=49)
    loss = unified_contrastive(z1, z2, unified_preset("infonce", tau=0.002, eps=0.0), negatives="all")
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, 0.002 * dcl(z1, z2, 0.001))


# ---- classic margin losses ----------------------------------------------------------------------------

def test_margin_contrastive_matches_hadsell_eq4():
    x1, x2 = rand(8, 3, seed=50), rand(8, 3, seed=51)
    same = torch.tensor([1, 0, 1, 0, 0, 1, 1, 0], dtype=torch.bool)
    m = 2.5
    ref = 0.0
    for i in range(8):
        d = math.sqrt(sum((a - b) ** 2 for a, b in zip(x1[i].tolist(), x2[i].tolist())))
        ref += 0.5 * d * d if same[i] else 0.5 * max(0.0, m - d) ** 2
    torch.testing.assert_close(margin_contrastive(x1, x2, same, m), torch.tensor(ref / 8))
    # dissimilar pairs beyond the margin cost nothing; identical similar pairs cost nothing
    assert margin_contrastive(x1, x1 + 10, torch.zeros(8, dtype=torch.bool), 1.0) == 0
    x = x1.clone().requires_grad_(True)
    loss = margin_contrastive(x, x.detach().clone(), torch.zeros(8, dtype=torch.bool), 1.0)
    loss.backward()
    assert torch.isfinite(x.grad).all()  # D = 0 on dissimilar pairs: finite gradient


def test_triplet_matches_facenet_eq1():
    a, p, n = rand(7, 4, seed=52), rand(7, 4, seed=53), rand(7, 4, seed=54)
    ref = sum(max(0.0, (a[i] - p[i]).pow(2).sum().item() - (a[i] - n[i]).pow(2).sum().item() + 0.2)
              for i in range(7)) / 7
    torch.testing.assert_close(triplet(a, p, n, 0.2), torch.tensor(ref))
    assert triplet(a, a, a + 100, 0.2) == 0
    with pytest.raises(ValueError, match="equal shape"):
        triplet(a, p, n[:3])


def _anchors_and_negatives(z1, z2):
    """(anchor, positive, [negatives]) with both views as anchors and the other images' views as negatives."""
    z1, z2 = unit(z1), unit(z2)
    n = len(z1)
    out = []
    for a, b in ((z1, z2), (z2, z1)):
        for i in range(n):
            out.append((a[i], b[i], [v[j] for j in range(n) if j != i for v in (z1, z2)]))
    return out


def test_batch_triplet_mining_matches_facenet():
    z1, z2 = rand(6, 3, seed=55), 0.3 * rand(6, 3, seed=56) + rand(6, 3, seed=55)
    m = 0.5
    sq = lambda x, y: (x - y).pow(2).sum().item()
    ref = {"all": 0.0, "hard": 0.0, "semihard": 0.0}
    triples = _anchors_and_negatives(z1, z2)
    for a, p, negs in triples:
        d_ap, d_an = sq(a, p), [sq(a, c) for c in negs]
        ref["all"] += sum(max(0.0, d_ap - d + m) for d in d_an) / len(d_an)
        ref["hard"] += max(0.0, d_ap - min(d_an) + m)
        semi = [d for d in d_an if d > d_ap]
        ref["semihard"] += max(0.0, d_ap - (min(semi) if semi else max(d_an)) + m)
    for mining, value in ref.items():
        torch.testing.assert_close(batch_triplet(z1, z2, m, mining), torch.tensor(value / len(triples)))
    assert batch_triplet(z1, z2, m, "hard") >= batch_triplet(z1, z2, m, "semihard")
    with pytest.raises(ValueError, match="mining"):
        batch_triplet(z1, z2, m, "easy")


def test_batch_margin_contrastive_matches_hadsell():
    z1, z2 = rand(5, 3, seed=57), rand(5, 3, seed=58)
    m = 1.2
    pos = neg = 0.0
    n_neg = 0
    for a, p, negs in _anchors_and_negatives(z1, z2):
        pos += 0.5 * (a - p).pow(2).sum().item()
        for c in negs:
            neg += 0.5 * max(0.0, m - (a - c).norm().item()) ** 2
            n_neg += 1
    torch.testing.assert_close(batch_margin_contrastive(z1, z2, m), torch.tensor(pos / 10 + neg / n_neg))
    # identical views, orthonormal images farther apart than the margin: zero loss
    e = torch.eye(4)
    assert batch_margin_contrastive(e, e, margin=1.0) == 0
