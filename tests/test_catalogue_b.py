"""Issue 11's joint-embedding part A: MoCo v1, ReSSL, NNBYOL, NNSiam and FastSiam.

Losses against float64 references written from the papers' equations (plain loops, no library code shared with
the losses), their stop-gradients, reductions to BYOL / SimSiam, exactness under DDP (each loss is a mean of
per-sample terms: two half batches give the full batch's value and gradient; the 2-process gloo check is in
tests/test_catalogue_losses_ddp.py), and the methods as modules (heads,
views, queues moved once per step, refused accumulation). Learning:
tests/test_catalogue_b_learning.py; recipes: tests/recipe_rows_catalogue_b.py.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn

from selfsup.config import ConfigError, load_recipe
from selfsup.losses import byol_loss, fastsiam_loss, moco_infonce, nn_byol_loss, nn_simsiam_loss, ressl_loss, simsiam_loss
from selfsup.methods import METHODS
from selfsup.methods.mocov2 import MoCoV2
from selfsup.train.loop import train
from selfsup.views import build_views
from test_accumulate import DT, accumulated, full_batch, make, max_diff, views_of
from test_resume import EPOCHS, STEPS, _assert_same_run, _fresh
from train_utils import TINY, tiny_digits

g0 = torch.Generator().manual_seed(0)


def r(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=g0, dtype=DT)


def unit(v: list[float]) -> list[float]:
    n = math.sqrt(sum(x * x for x in v))
    return [x / n for x in v]


def dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def cos(a: list[float], b: list[float]) -> float:
    return dot(unit(a), unit(b))


def nn_of(t: list[float], support: list[list[float]]) -> list[float]:
    """NNCLR's NN(t, Q) on unit vectors: the support row (normalised) most cosine-similar to t."""
    return unit(max(support, key=lambda s: cos(t, s)))


# ---- references from the equations ---------------------------------------------------------------------

def ref_ressl(q, k, queue, ts, tt) -> float:
    """ReSSL Eqs. 2-4: -1/N sum_i sum_m p^t_im log p^s_im over the queue, on unit vectors."""
    total = 0.0
    bank = [unit(n) for n in queue.tolist()]
    for qi, ki in zip(q.tolist(), k.tolist()):
        s = [dot(unit(qi), n) / ts for n in bank]
        t = [dot(unit(ki), n) / tt for n in bank]
        log_zs = math.log(sum(math.exp(x) for x in s))
        zt = sum(math.exp(x) for x in t)
        total += -sum(math.exp(tm) / zt * (sm - log_zs) for sm, tm in zip(s, t))
    return total / q.shape[0]


def ref_nn_byol(p1, p2, t1, t2, support) -> float:
    S = support.tolist()
    a = [2 - 2 * dot(unit(p), nn_of(t, S)) for p, t in zip(p1.tolist(), t2.tolist())]
    b = [2 - 2 * dot(unit(p), nn_of(t, S)) for p, t in zip(p2.tolist(), t1.tolist())]
    return sum(a) / len(a) + sum(b) / len(b)


def ref_nn_simsiam(p1, p2, z1, z2, support) -> float:
    S = support.tolist()
    a = [-dot(unit(p), nn_of(z, S)) for p, z in zip(p1.tolist(), z2.tolist())]
    b = [-dot(unit(p), nn_of(z, S)) for p, z in zip(p2.tolist(), z1.tolist())]
    return (sum(a) / len(a) + sum(b) / len(b)) / 2


def ref_fastsiam(p, z) -> float:
    """1/V sum_v D(p_v, mean_{u != v} z_u), D the batch mean of -cos."""
    v, n = len(p), p[0].shape[0]
    total = 0.0
    for i in range(v):
        for row in range(n):
            others = [z[u][row].tolist() for u in range(v) if u != i]
            mean = [sum(col) / (v - 1) for col in zip(*others)]
            total += -cos(p[i][row].tolist(), mean) / n
    return total / v


# ---- losses --------------------------------------------------------------------------------------------

def test_ressl_matches_equation_and_only_the_student_gets_gradient():
    q, k, queue = r(6, 5).requires_grad_(), r(6, 5).requires_grad_(), r(9, 5)
    loss = ressl_loss(q, k, queue, 0.1, 0.04)
    assert loss.dtype == DT
    assert loss.item() == pytest.approx(ref_ressl(q.detach(), k.detach(), queue, 0.1, 0.04), rel=1e-12)
    loss.backward()
    assert q.grad.abs().sum() > 0 and k.grad is None  # the teacher's relation is a target
    # scale-invariant in every input (all L2-normalised) and in the queue's order
    base = ressl_loss(q.detach(), k.detach(), queue)
    torch.testing.assert_close(ressl_loss(3 * q.detach(), 0.5 * k.detach(), 2 * queue.flip(0)), base)
    # equal temperatures and q = k: the loss is the entropy of the relation (its minimum over q)
    p = torch.softmax(torch.nn.functional.normalize(k.detach(), dim=1) @ torch.nn.functional.normalize(queue, dim=1).T
                      / 0.1, 1)
    torch.testing.assert_close(ressl_loss(k.detach(), k.detach(), queue, 0.1, 0.1), -(p * p.log()).sum(1).mean())
    with pytest.raises(ValueError, match="non-empty queue"):
        ressl_loss(q, k, queue[:0])


def test_nn_byol_matches_equation_stops_gradient_and_reduces_to_byol():
    p1, p2 = r(6, 4).requires_grad_(), r(6, 4).requires_grad_()
    t1, t2, support = r(6, 4).requires_grad_(), r(6, 4), r(11, 4)
    loss = nn_byol_loss(p1, p2, t1, t2, support)
    assert loss.item() == pytest.approx(ref_nn_byol(p1.detach(), p2.detach(), t1.detach(), t2, support), rel=1e-12)
    loss.backward()
    assert p1.grad.abs().sum() > 0 and t1.grad is None
    # the targets themselves in the support set: each is its own neighbour, BYOL's symmetric loss
    t1, t2 = t1.detach(), t2.detach()
    torch.testing.assert_close(nn_byol_loss(p1, p2, t1, t2, torch.cat([t1, t2])),
                               byol_loss(p1, t2) + byol_loss(p2, t1))


def test_nn_simsiam_matches_equation_and_reduces_to_simsiam():
    p1, p2, z1, z2, support = r(6, 4), r(6, 4), r(6, 4), r(6, 4), r(11, 4)
    loss = nn_simsiam_loss(p1, p2, z1, z2, support)
    assert loss.item() == pytest.approx(ref_nn_simsiam(p1, p2, z1, z2, support), rel=1e-12)
    torch.testing.assert_close(nn_simsiam_loss(p1, p2, z1, z2, torch.cat([z1, z2])), simsiam_loss(p1, p2, z1, z2))
    torch.testing.assert_close(nn_simsiam_loss(z2, z1, z1, z2, torch.cat([z1, z2])), torch.tensor(-1.0, dtype=DT))


def test_fastsiam_matches_equation_stops_gradient_and_reduces_to_simsiam():
    p = [r(5, 4).requires_grad_() for _ in range(4)]
    z = [r(5, 4).requires_grad_() for _ in range(4)]
    loss = fastsiam_loss(p, z)
    assert loss.item() == pytest.approx(ref_fastsiam([x.detach() for x in p], [x.detach() for x in z]), rel=1e-12)
    loss.backward()
    assert all(x.grad.abs().sum() > 0 for x in p) and all(x.grad is None for x in z)
    a, b = [x.detach() for x in p[:2]], [x.detach() for x in z[:2]]
    torch.testing.assert_close(fastsiam_loss(a, b), simsiam_loss(a[0], a[1], b[0], b[1]))  # V = 2: SimSiam
    with pytest.raises(ValueError, match="at least 2"):
        fastsiam_loss(a[:1], b[:1])


def test_losses_are_means_of_per_sample_terms_so_exact_under_ddp():
    """No batch statistics: with a queue (support set) shared by every rank, the mean of two half-batch losses
    and their gradients equal the full batch's, which is what 2-process DDP computes (its value the mean over
    ranks, its gradient averaged). So no gather is needed, and none is done."""
    queue = r(10, 4)
    cases = {"ressl": (lambda q, k: ressl_loss(q, k, queue), 2),
             "nn_byol": (lambda *x: nn_byol_loss(*x, queue), 4),
             "nn_simsiam": (lambda *x: nn_simsiam_loss(*x, queue), 4),
             "fastsiam": (lambda *x: fastsiam_loss(list(x[:3]), list(x[3:])), 6)}
    for name, (fn, n_in) in cases.items():
        full = [r(8, 4).requires_grad_() for _ in range(n_in)]
        loss = fn(*full)
        grads = torch.autograd.grad(loss, full, allow_unused=True)
        halves = [[x.detach()[i * 4:(i + 1) * 4].clone().requires_grad_() for x in full] for i in range(2)]
        parts = [fn(*h) for h in halves]
        torch.testing.assert_close((parts[0] + parts[1]) / 2, loss, msg=name)
        for i, g in enumerate(grads):
            hg = [torch.autograd.grad(parts[j], halves[j][i], retain_graph=True, allow_unused=True)[0] for j in range(2)]
            if g is None:
                assert all(h is None for h in hg), name
                continue
            torch.testing.assert_close(torch.cat(hg) / 2, g, msg=name)
        assert grads[0].abs().max() > 0, name


# ---- methods -------------------------------------------------------------------------------------------

def test_mocov1_is_mocov2_with_a_linear_head_tau_007_and_its_own_views():
    cfg = METHODS["mocov1"].Config()
    assert (cfg.temperature, cfg.queue_size, cfg.momentum, cfg.projector) == (0.07, 65536, 0.999, "128")
    m = make("mocov1", queue_size=32, bn_splits=1)
    assert isinstance(m, MoCoV2) and [type(x) for x in m.projector] == [nn.Linear]
    assert m.projector[0].out_features == 128
    views = views_of(8)
    out = m(views)
    with torch.no_grad():
        q = m.projector(m.backbone(views[0]))
        k = m.key_encoder(views[1])
    torch.testing.assert_close(out["loss"], moco_infonce(q, k, m.queue.get(), 0.07))
    spec = build_views("mocov1", 32, 3).specs[0]
    assert (spec.scale, spec.jitter, spec.gray_p, spec.blur_p, spec.flip_p) == ((0.2, 1.0), (0.4, 0.4, 0.4, 0.4, 1.0),
                                                                               0.2, 0.0, 0.5)


def test_ressl_teacher_sees_the_weak_view_and_the_queue_moves_once_per_step():
    m = make("ressl", queue_size=32, bn_splits=1, projector="16-6")
    assert m.queue.full  # random unit vectors, as MoCo's
    views = views_of(8)
    before = m.queue.bank.clone()
    out = m(views)
    with torch.no_grad():
        q = m.projector(m.backbone(views[0]))
        k = m.teacher(views[1])
    torch.testing.assert_close(out["loss"], ressl_loss(q, k, before, 0.1, 0.04))
    m(views)  # a second forward before the step does not move the queue
    assert torch.equal(m.queue.bank, before)
    logs = m.after_step(0.5)
    assert logs["momentum"] == 0.999
    new = torch.nn.functional.normalize(k, dim=1)
    torch.testing.assert_close(m.queue.bank[:8], new)
    assert torch.equal(m.queue.bank[8:], before[8:])
    assert make("ressl", queue_size=32, momentum_cosine=True).after_step(0.5)["momentum"] == pytest.approx(0.9995)


@pytest.mark.parametrize("name", ["nnbyol", "nnsiam"])
def test_nn_methods_start_as_their_base_then_use_the_support_set(name):
    heads = {"projector": "16-6", "predictor": "16-6"}
    m = make(name, queue_size=32, **heads)
    views = views_of(8)
    labels = torch.arange(8) % 3
    first = m(views, 0.0, labels)
    base = make("byol" if name == "nnbyol" else "simsiam", **heads)
    base.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("support.")})
    torch.testing.assert_close(first["loss"], base(views)["loss"])  # empty support set: each target its own NN
    assert int(m.support.count) == 0
    m.after_step(0.0)
    assert int(m.support.count) == 8 and torch.equal(m.support.get_labels(), labels)
    other = views_of(8, seed=5)
    out = m(other, 0.0, labels)
    assert "nn_acc" in out and out["loss"].item() != pytest.approx(base(other)["loss"].item())


@pytest.mark.parametrize("name, plain", [("nnbyol", "byol"), ("nnsiam", "simsiam")])
def test_nn_start_keeps_own_targets_then_uses_the_support_set(name, plain):
    """``nn_start`` (nnbyol_digits' 0.5; NNSiam's learning test sets it too): before that fraction of training the
    loss is the plain method's (own targets: BYOL's, SimSiam's) while the support set still fills; from it on the
    targets are the neighbours. Fails if the option is ignored (the first assertion) or if it also stops the
    support set from filling."""
    heads = {"projector": "16-6", "predictor": "16-6"}
    m = make(name, queue_size=32, nn_start=0.5, **heads)
    base = make(plain, **heads)
    base.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("support.")})
    m(views_of(8), 0.0)
    m.after_step(0.0)
    base.after_step(0.0)
    assert int(m.support.count) == 8
    other = views_of(8, seed=5)
    torch.testing.assert_close(m(other, 0.49)["loss"], base(other)["loss"])  # support set filled, own targets
    assert m(other, 0.5)["loss"].item() != pytest.approx(base(other)["loss"].item())
    assert load_recipe(name).method.nn_start == 0  # solo-learn's: neighbours from the second step on


@pytest.mark.parametrize("name", ["nnbyol", "nnsiam", "ressl", "mocov1"])
def test_queue_methods_refuse_accumulation_in_one_line(name):
    with pytest.raises(ConfigError, match=rf"train.accumulate=2: {name} cannot accumulate") as e:
        load_recipe(f"{name}_digits", ["train.accumulate=2"])
    assert "\n" not in str(e.value)


def test_fastsiam_uses_every_view_and_with_two_is_simsiam():
    heads = {"projector": "16-6", "predictor": "16-6"}
    m = make("fastsiam", **heads)
    views = views_of(8, n_views=4)
    out = m(views)
    with torch.no_grad():
        z = [m.projector(m.backbone(v)) for v in views]
        p = [m.predictor(x) for x in z]
    torch.testing.assert_close(out["loss"], fastsiam_loss(p, z))
    s = make("simsiam", **heads)
    s.load_state_dict(m.state_dict())
    torch.testing.assert_close(m(views[:2])["loss"], s(views[:2])["loss"])
    assert METHODS["fastsiam"].accumulation == "plain"
    assert len(load_recipe("fastsiam").views.params) == 1 and load_recipe("fastsiam").views.params["n_views"] == 4


RESUME = {"ressl": ["method.queue_size=64", "method.projector=32-16"],  # EMA teacher, random-unit queue, keys
          "nnbyol": ["method.queue_size=64", "method.projector=32-16", "method.predictor=32-16"]}  # EMA, support set


@pytest.mark.parametrize("name", list(RESUME))
def test_resume_mid_epoch_is_bit_identical(name, tmp_path, one_thread):
    """As tests/test_resume.py: stopped mid-run and resumed into a model built from another seed (another random
    queue), the run ends bit-identical to the uninterrupted one: teacher, queue / support set and its labels are
    in the checkpoint."""
    r = load_recipe(f"{name}_digits", TINY + [f"train.epochs={EPOCHS}", *RESUME[name]])
    data, quiet = tiny_digits(), (lambda *a: None)
    straight = train(r, run_dir=tmp_path / "a", data=data, method=_fresh(r, 0), log=quiet)
    run = tmp_path / "b"
    train(r, run_dir=run, data=data, method=_fresh(r, 0), stop_after_step=STEPS + 2, log=quiet)
    train(r, run_dir=run, resume=True, data=data, method=_fresh(r, 1), log=quiet)
    _assert_same_run(straight, run)


def test_fastsiam_plain_accumulation_equals_the_full_batch():
    """Per-image loss over 4 views (BatchNorm replaced by per-sample norms, as tests/test_accumulate.py)."""
    m = make("fastsiam", projector="16-12", predictor="16-12")
    views = views_of(n_views=4)
    ref, g_ref = full_batch(m, views)
    out, g = accumulated(m, views, 2)
    torch.testing.assert_close(out["loss"], ref["loss"].detach(), rtol=0, atol=1e-12)
    assert max_diff(g, g_ref) < 1e-12
