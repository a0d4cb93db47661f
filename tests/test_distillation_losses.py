"""Self-distillation losses (SimSiam, DINO, DirectPred) against the papers' equations written out here,
closed forms and invariances, in float64."""

import math

import numpy as np
import pytest
import torch

from selfsup.losses import (DINOLoss, correlation_update, dino_center_update, dino_loss, directpred_predictor,
                            simsiam_loss)
from selfsup.methods.dino import teacher_temperature
from selfsup.nets import DINOHead

DT = torch.float64


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


# ---- SimSiam -----------------------------------------------------------------------------------------

def ref_simsiam(p1, p2, z1, z2):
    """Eq. (2): 1/2 D(p1, z2) + 1/2 D(p2, z1), D = negative cosine, one sample at a time."""
    total = 0.0
    for i in range(p1.shape[0]):
        d12 = -torch.dot(p1[i], z2[i]) / (p1[i].norm() * z2[i].norm())
        d21 = -torch.dot(p2[i], z1[i]) / (p2[i].norm() * z1[i].norm())
        total = total + (d12 + d21) / 2
    return total / p1.shape[0]


def test_simsiam_matches_equation_closed_forms_and_stop_gradient():
    p1, p2, z1, z2 = (randn(7, 5, seed=s) for s in range(4))
    torch.testing.assert_close(simsiam_loss(p1, p2, z1, z2), ref_simsiam(p1, p2, z1, z2))
    torch.testing.assert_close(simsiam_loss(z2, z1, z1, z2), torch.tensor(-1.0, dtype=DT))  # p = z: minimum -1
    torch.testing.assert_close(simsiam_loss(-z2, -z1, z1, z2), torch.tensor(1.0, dtype=DT))  # opposite: +1
    q, _ = torch.linalg.qr(randn(5, 5, seed=9))
    base = simsiam_loss(p1, p2, z1, z2)
    torch.testing.assert_close(simsiam_loss(p1 @ q, p2 @ q, z1 @ q, z2 @ q), base)  # rotation
    torch.testing.assert_close(simsiam_loss(3 * p1, p2, 0.2 * z1, z2), base)  # scale
    torch.testing.assert_close(simsiam_loss(p2, p1, z2, z1), base)  # symmetric in the views
    for x in (p1, p2, z1, z2):
        x.requires_grad_(True)
    simsiam_loss(p1, p2, z1, z2).backward()
    assert z1.grad is None and z2.grad is None  # stop-gradient on the targets


# ---- DINO --------------------------------------------------------------------------------------------

def ref_dino(student, teacher, center, ts, tt):
    """DINO Eq. (3) + Algorithm 1 with explicit loops over teacher crops, student crops, samples and classes."""
    total, pairs = 0.0, 0
    for i, t in enumerate(teacher):
        for v, s in enumerate(student):
            if v == i:
                continue
            ce = 0.0
            for b in range(t.shape[0]):
                num_t = [math.exp((t[b, k].item() - center[k].item()) / tt) for k in range(t.shape[1])]
                num_s = [torch.exp(s[b, k] / ts) for k in range(s.shape[1])]
                den_s = sum(num_s)
                for k in range(t.shape[1]):
                    ce = ce - num_t[k] / sum(num_t) * torch.log(num_s[k] / den_s)
            total = total + ce / t.shape[0]
            pairs += 1
    return total / pairs


def test_dino_loss_matches_equation_with_multicrop():
    b, k = 3, 5
    student = [randn(b, k, seed=s) for s in range(4)]  # 2 globals + 2 locals
    teacher = [randn(b, k, seed=10 + s) for s in range(2)]
    center = 0.3 * randn(k, seed=20)
    for ts, tt in ((0.1, 0.04), (0.5, 0.07), (1.0, 1.0)):
        torch.testing.assert_close(dino_loss(student, teacher, center, ts, tt), ref_dino(student, teacher, center, ts, tt))
    # a single global crop for the teacher (plain two-view DINO)
    torch.testing.assert_close(dino_loss(student[:2], teacher[:1], center, 0.1, 0.04),
                               ref_dino(student[:2], teacher[:1], center, 0.1, 0.04))


def test_dino_loss_closed_forms_invariances_and_stop_gradient():
    k, b = 16, 4
    flat = torch.zeros(b, k, dtype=DT)
    # identical uniform distributions: every cross-entropy is log K
    torch.testing.assert_close(dino_loss([flat] * 4, [flat] * 2, torch.zeros(k, dtype=DT)), torch.tensor(math.log(k), dtype=DT))
    student = [randn(b, k, seed=s) for s in range(3)]
    teacher = [randn(b, k, seed=5 + s) for s in range(2)]
    center = randn(k, seed=8)
    base = dino_loss(student, teacher, center)
    shift = randn(b, 1, seed=9)  # softmax ignores a per-row constant (student) and a per-row constant (teacher)
    torch.testing.assert_close(dino_loss([s + shift for s in student], [t + 2 * shift for t in teacher], center), base)
    perm = torch.randperm(k, generator=torch.Generator().manual_seed(0))  # relabelling the prototypes
    torch.testing.assert_close(dino_loss([s[:, perm] for s in student], [t[:, perm] for t in teacher], center[perm]), base)
    rows = torch.randperm(b, generator=torch.Generator().manual_seed(1))  # batch order
    torch.testing.assert_close(dino_loss([s[rows] for s in student], [t[rows] for t in teacher], center), base)
    # centering: the center shifts the teacher exactly like subtracting it from the teacher outputs
    torch.testing.assert_close(dino_loss(student, [t - center for t in teacher], torch.zeros(k, dtype=DT)), base)
    # a sharp teacher (temperature -> 0) gives the student's cross-entropy on the teacher's argmax
    one_hot = [torch.nn.functional.one_hot(t.argmax(1), k).to(DT) * 50 for t in teacher]
    ls = [torch.log_softmax(s / 0.1, 1) for s in student]
    hard = -sum(ls[v][torch.arange(b), one_hot[i].argmax(1)].mean() for i in range(2) for v in range(3) if v != i) / 4
    torch.testing.assert_close(dino_loss(student, one_hot, torch.zeros(k, dtype=DT), 0.1, 0.01), hard)
    teacher = [t.requires_grad_(True) for t in teacher]
    student = [s.requires_grad_(True) for s in student]
    dino_loss(student, teacher, center).backward()
    assert all(t.grad is None for t in teacher) and all(s.grad is not None for s in student)


def test_dino_loss_rejects_bad_crops():
    x = torch.zeros(2, 4)
    with pytest.raises(ValueError, match="at least two crops"):
        dino_loss([x], [x], torch.zeros(4))
    with pytest.raises(ValueError, match="teacher crops"):
        dino_loss([x], [x, x], torch.zeros(4))
    with pytest.raises(ValueError, match="one shape"):
        dino_loss([x, torch.zeros(2, 5)], [x], torch.zeros(4))


def test_dino_center_update_and_module():
    k = 6
    teacher = [randn(5, k, seed=1), randn(5, k, seed=2)]
    c0 = randn(k, seed=3)
    ref = 0.9 * c0 + 0.1 * sum(t[b] for t in teacher for b in range(5)) / 10
    torch.testing.assert_close(dino_center_update(c0, teacher, 0.9), ref)
    torch.testing.assert_close(dino_center_update(c0, torch.cat(teacher), 0.9), ref)
    crit = DINOLoss(k, student_temp=0.1, center_momentum=0.9).to(DT)
    crit.center.copy_(c0)
    student = [randn(5, k, seed=s) for s in range(4, 7)]
    loss = crit(student, teacher, 0.04)
    torch.testing.assert_close(loss, dino_loss(student, teacher, c0, 0.1, 0.04))  # the loss uses the old center
    torch.testing.assert_close(crit.center, ref)  # then the center moves
    crit.eval()
    crit(student, teacher, 0.04)
    torch.testing.assert_close(crit.center, ref)  # not in eval mode
    assert "center" in crit.state_dict()
    with pytest.raises(ValueError, match="center_momentum"):
        DINOLoss(k, center_momentum=1.5)


def test_teacher_temperature_schedule():
    t = [teacher_temperature(e, 0.04, 0.07, 30) for e in range(40)]
    assert t[0] == 0.04 and t[29] == pytest.approx(0.07) and t[35] == 0.07
    assert all(a < b for a, b in zip(t[:29], t[1:30]))  # linear warmup, per epoch as np.linspace
    assert teacher_temperature(3.7, 0.04, 0.07, 30) == t[3]  # constant within an epoch
    assert teacher_temperature(0.0, 0.04, 0.07, 0) == 0.07  # no warmup


def test_dino_head_normalised_prototypes():
    head = DINOHead(8, out_dim=12, spec="16-16-4").to(DT)
    x = randn(5, 8, seed=0)
    y = head.mlp(x)
    w = head.last_layer.weight
    torch.testing.assert_close(w.norm(dim=1), torch.ones(12, dtype=DT))  # g = 1: unit prototypes
    torch.testing.assert_close(head(x), torch.nn.functional.normalize(y, dim=1) @ w.T)
    assert not head.last_layer.parametrizations.weight.original0.requires_grad  # norm_last_layer
    free = DINOHead(8, out_dim=12, spec="16-4", norm_last_layer=False)
    assert free.last_layer.parametrizations.weight.original0.requires_grad


# ---- DirectPred --------------------------------------------------------------------------------------

def test_correlation_update_matches_equation():
    z = randn(9, 4, seed=0)
    f0 = randn(4, 4, seed=1)
    f0 = f0 @ f0.T
    ref = 0.3 * f0 + 0.7 * sum(torch.outer(z[i], z[i]) for i in range(9)) / 9
    torch.testing.assert_close(correlation_update(f0, z, 0.3), ref)
    torch.testing.assert_close(correlation_update(f0, z, 0.0), (ref - 0.3 * f0) / 0.7)  # rho = 0: the batch alone
    with pytest.raises(ValueError, match="corr must be"):
        correlation_update(torch.zeros(3, 3, dtype=DT), z, 0.3)


def ref_directpred(f, eps):
    """Eq. (18): W = sum_j p_j u_j u_j^T with p_j = sqrt(s_j) / max sqrt(s) + eps (numpy's eigh)."""
    s, u = (torch.from_numpy(x) for x in np.linalg.eigh(f.numpy()))
    s = s.clamp(min=0)
    w = torch.zeros_like(f)
    for j in range(f.shape[0]):
        w = w + (math.sqrt(s[j]) / math.sqrt(s.max()) + eps) * torch.outer(u[:, j], u[:, j])
    return w


def test_directpred_predictor_matches_equation_closed_forms_invariances():
    a = randn(6, 6, seed=0)
    f = a @ a.T
    for eps in (0.0, 0.1, 0.5):
        torch.testing.assert_close(directpred_predictor(f, eps), ref_directpred(f, eps))
    s = torch.tensor([4.0, 1.0, 0.25, 0.0], dtype=DT)  # diagonal F: p = sqrt(s / max s) + eps
    torch.testing.assert_close(directpred_predictor(torch.diag(s), 0.1), torch.diag(torch.tensor([1.1, 0.6, 0.35, 0.1], dtype=DT)))
    torch.testing.assert_close(directpred_predictor(2.5 * torch.eye(3, dtype=DT), 0.1), 1.1 * torch.eye(3, dtype=DT))
    torch.testing.assert_close(directpred_predictor(torch.zeros(3, 3, dtype=DT), 0.1), 0.1 * torch.eye(3, dtype=DT))
    w = directpred_predictor(f, 0.1)
    torch.testing.assert_close(w, w.T)  # symmetric
    torch.testing.assert_close(directpred_predictor(7.0 * f, 0.1), w)  # scale invariant
    q, _ = torch.linalg.qr(randn(6, 6, seed=1))
    torch.testing.assert_close(directpred_predictor(q @ f @ q.T, 0.1), q @ w @ q.T)  # rotation equivariant
    ev = torch.linalg.eigvalsh(w)
    assert ev.min() >= 0.1 - 1e-9 and ev.max() == pytest.approx(1.1)  # spectrum in [eps, 1 + eps]
