"""SMoG, All4One and VISReg: losses against float64 references written from their equations (loops, no shared
code), the methods' state updates (groups, resets, queue, slices), and each ``*_digits`` recipe's short run beating
the random-init backbone's kNN (tests/test_catalogue_learning.py's short_run_knn and MARGIN; All4One and VISReg,
see below). 2-process gloo DDP parity of the three losses is in tests/test_catalogue_losses_ddp.py (one spawn).

Measured (1 thread, seed 0; kNN top-1 on the shifted digits, random-init baseline 0.497): all4one 0.549 (+0.052,
2 epochs; 19-37 s under a load average of ~11); its loss sign inverted gives 0.433 and fails. visreg 0.574
(+0.077; lr 2, 256 slices, the 2 global views only, 2 epochs = 44 steps); its loss sign inverted gives 0.324 and
fails, and the prediction term alone (lambda 0) 0.491. Those 2-epoch figures are from an earlier machine; on the
AVX-512 2-core machine of 2026-12-02 (1 thread, gain over random init 0.497 / 0.506 / 0.516 at seeds 0 / 1 / 2)
the 2-epoch runs gave all4one +0.050 / +0.042 / +0.022 (3 epochs +0.065 / +0.066 / +0.028, lr 2 +0.090 / +0.049 /
+0.027, queue 256 +0.035 at seed 2) and visreg +0.044 / +0.068 / +0.038, so the tests now train all4one 4 epochs
and visreg 3: all4one +0.088 / +0.098 / +0.051 (0.585 / 0.604 / 0.567), visreg +0.066 / +0.101 / +0.062 (0.563 /
0.607 / 0.578). With every positive pair broken (benchmarks/short_run_seeds.py --brk permviews, the same
overrides: view 1 of each pair from another image) all4one -0.008 / -0.001 / -0.008 and visreg +0.001 / +0.007 /
-0.010; with the loss negated (--brk neg, seed 0) -0.031 and -0.296: all fail. SMoG's test below re-measured
on that machine: +0.097 / +0.062 / +0.047, as its docstring.
The local crops slow VISReg in short runs: with them, 0.501 (2 epochs),
0.517 (3), 0.519 (lambda 0.2), 0.449 (lambda 0.05), 0.492 (lr 0.5), 0.642 only after 8 epochs; with 2 local crops
and 256 slices 0.522 (3 epochs, lambda 0.2), 0.506 (the same, projector 256-64), 0.465 (2 epochs, lr 4, lambda 0.2);
with none 0.599 (3 epochs), 0.609 (4), 0.620 (5) (benchmarks/short_run_knn.py). SMoG's learning test
(test_smog_short_run_beats_random_init_on_average) is the mean over seeds 0-2, with the official code's two options
(k-means initialised groups, both directions; smog_digits sets them) and crops 0.8-1 without colour jitter: its
docstring has the figures against random init and against broken positive pairs. With lightly's step and the
recipe's views SMoG does not learn in the short run (0.475-0.551 over ~40 settings, none clearing MARGIN on more
than one seed; selfsup/methods/smog.py's note), although that step equals lightly's
(benchmarks/smog_lightly_parity.py): at random init the two views of an image share a group for 0.02-0.11 of the
batch (chance 0.03), so the group targets hardly depend on the image (benchmarks/smog_groups.py).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from selfsup.config import load_recipe
from selfsup.losses import (all4one_loss, feature_contrast, random_slices, slot_position_encoding, smog_group_update,
                            smog_loss, spherical_kmeans, visreg_loss)
from selfsup.train.loop import build_method, train
from test_catalogue_learning import MARGIN, short_run_knn
from test_resume import EPOCHS, STEPS, _assert_same_run, _fresh
from train_utils import TINY, tiny_digits

pytestmark = pytest.mark.usefixtures("one_thread")


def _r(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _cos(a, b):
    a, b = a.detach(), b.detach()
    return float(a @ b / (a.norm() * b.norm()))


# ---- SMoG ---------------------------------------------------------------------------------------------------------

def smog_ref(p, z, t, g, beta, tau):
    """The equations by loops: y_i = argmax_k cos(t_i, g_k); S_k = {i: argmax_j cos(z_i, g_j) = k};
    g'_k = beta g_k + (1 - beta) mean_{i in S_k} z_i (g_k if S_k is empty); CE of cos(p_i, g'_k) / tau."""
    n, k = p.shape[0], g.shape[0]
    y = [max(range(k), key=lambda j: _cos(t[i], g[j])) for i in range(n)]
    a = [max(range(k), key=lambda j: _cos(z[i], g[j])) for i in range(n)]
    new = []
    for j in range(k):
        members = [z[i] for i in range(n) if a[i] == j]
        new.append(beta * g[j] + (1 - beta) * torch.stack(members).mean(0) if members else g[j])
    new = torch.stack(new)
    loss = 0.0
    for i in range(n):
        logits = torch.stack([p[i] @ new[j] / (p[i].norm() * new[j].norm()) for j in range(k)]) / tau
        loss = loss - (logits[y[i]] - torch.logsumexp(logits, 0))
    return loss / n, new


def test_smog_loss_matches_the_equation_value_and_gradient():
    p, z, t, g = _r(12, 6, seed=1), _r(12, 6, seed=2), _r(12, 6, seed=3), _r(5, 6, seed=4)
    p1, z1 = p.clone().requires_grad_(), z.clone().requires_grad_()
    loss, new = smog_loss(p1, z1, t, g, 0.9, 0.1)
    p2, z2 = p.clone().requires_grad_(), z.clone().requires_grad_()
    want, want_new = smog_ref(p2, z2, t, g, 0.9, 0.1)
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(new, want_new)
    ga, gb = torch.autograd.grad(loss, [p1, z1]), torch.autograd.grad(want, [p2, z2])
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b)
    assert gb[1].abs().max() > 0  # the loss reaches z through the synchronously updated groups
    empty = smog_group_update(z[:1], g, 0.9)  # one member: every other group keeps its feature
    assert (empty != g).any(1).sum() == 1


LIGHTLY_UPDATE = ["method.group_update=raw", "method.beta_schedule=constant", "method.detach_groups=false"]


def _method(recipe, overrides=()):
    r = load_recipe(recipe, ["model.width=8", "data.image_size=16", *overrides])
    torch.manual_seed(0)
    return build_method(r, 1, 16)


def _views(n=16, k=2, seed=5, size=16):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, 1, size, size, generator=g) for _ in range(k)]


def test_smog_method_updates_groups_swaps_views_and_resets():
    m = _method("smog_digits", ["method.reset_every=3", "method.bank_size=64", "method.n_groups=4",
                              "method.symmetric=false", "method.group_init=uniform", *LIGHTLY_UPDATE])  # lightly's step
    views = _views()
    g0 = m.groups.clone()
    out = m(views)
    out["loss"].backward()
    assert torch.equal(m.groups, g0)  # stored after the step, once
    m.after_step(0.0)
    assert not torch.equal(m.groups, g0) and int(m.bank.count) == 16 and int(m.step) == 1
    with torch.no_grad():  # odd step: view 1 goes through the online network (lightly's swap)
        a = m(views)["feats"]
        assert torch.allclose(a, m.backbone(views[1])) and not torch.allclose(a, m.backbone(views[0]))
    m.after_step(0.0)
    for p in m.projector.parameters():
        p.data.add_(1.0)  # the online network moves away from the momentum encoder
    logs = m.after_step(0.0)  # step 3: k-means reset of the groups and of the momentum encoder
    assert logs.get("group_reset") == 1.0
    online = torch.nn.Sequential(m.backbone, m.projector)
    assert all(torch.equal(a, b) for a, b in zip(m.teacher.module.parameters(), online.parameters()))
    x = F.normalize(m.bank.get(), dim=1)
    assign = (x @ m.groups.T).argmax(1)
    for k in assign.unique():  # the groups are the normalised means of their bank members
        torch.testing.assert_close(m.groups[k], F.normalize(x[assign == k].mean(0), dim=0), atol=1e-4, rtol=1e-4)


def test_smog_symmetric_loss_is_both_directions_of_the_equation():
    """``symmetric: true`` (the official code's pairing): in float64, the loss is smog_ref (loops) over the rows of
    both directions, view a's prediction against view b's target group and view b's against view a's, with the
    groups moved once by both views' online projections; the stored groups are that g'. Fails with each view paired
    with its own momentum target (the teacher given the views in order): loss 1.736 against the reference's 1.606."""
    m = _method("smog_digits", ["method.symmetric=true", "method.n_groups=4", *LIGHTLY_UPDATE]).double()
    views = [v.double() for v in _views()]
    n, g0 = views[0].shape[0], m.groups.clone()
    out = m(views)
    with torch.no_grad():  # one online batch of both views (BatchNorm over 2n rows, as the official code's crops)
        z = m.projector(m.backbone(torch.cat(views)))
        p = m.predictor(z)
        t = m.teacher(torch.cat(views))
        ta, tb = t[:n], t[n:]
    want, want_new = smog_ref(p, z, torch.cat([tb, ta]), g0, m.cfg.beta, m.cfg.temperature)
    torch.testing.assert_close(out["loss"].detach(), want)
    m.after_step(0.0)
    torch.testing.assert_close(m.groups, want_new)
    torch.testing.assert_close(m.bank.get(), z[:n])  # one projection per image enters the bank
    m.step.fill_(1)  # no swap on odd steps: both directions every step
    with torch.no_grad():
        torch.testing.assert_close(m(views)["feats"], m.backbone(torch.cat(views))[:n])


def smog_official_ref(p, z, t, g, beta, tau):
    """The official code's update and scoring by loops: u_i = z_i / |z_i|; S_k = {i: argmax_j cos(z_i, g_j) = k};
    g'_k = w / |w| with w = beta g_k + (1 - beta) mean_{i in S_k} u_i (w = g_k if S_k is empty); CE of
    cos(p_i, g'_k) / tau with g' detached; y_i = argmax_k cos(t_i, g_k)."""
    n, k = p.shape[0], g.shape[0]
    y = [max(range(k), key=lambda j: _cos(t[i], g[j])) for i in range(n)]
    a = [max(range(k), key=lambda j: _cos(z[i], g[j])) for i in range(n)]
    new = []
    for j in range(k):
        members = [z[i] / z[i].norm() for i in range(n) if a[i] == j]
        w = beta * g[j] + (1 - beta) * torch.stack(members).mean(0) if members else g[j]
        new.append(w / w.norm())
    new = torch.stack(new)
    fixed = new.detach()
    loss = 0.0
    for i in range(n):
        logits = torch.stack([p[i] @ fixed[j] / (p[i].norm() * fixed[j].norm()) for j in range(k)]) / tau
        loss = loss - (logits[y[i]] - torch.logsumexp(logits, 0))
    return loss / n, new


def test_smog_official_group_update_and_detached_scoring_match_the_equation():
    """``group_update: normalized`` and ``detach_groups: true`` (the official code's main_SMoG.py and
    MultiPrototypes.forward), in float64 against smog_official_ref (loops): the loss, g' (unit rows) and the
    gradient to p; no gradient reaches z through the detached groups, while the default (raw, attached) does.
    Fails with the projections' normalisation dropped (loss 5.491 against 5.231), the renormalisation dropped (24
    of 30 entries of g' differ) or the groups left attached (a gradient reaches z)."""
    p, z, t = _r(12, 6, seed=1), 3 * _r(12, 6, seed=2), _r(12, 6, seed=3)
    g = F.normalize(_r(5, 6, seed=4), dim=1)
    p1, z1 = p.clone().requires_grad_(), z.clone().requires_grad_()
    loss, new = smog_loss(p1, z1, t, g, 0.7, 0.1, normalize=True, detach_groups=True)
    p2, z2 = p.clone().requires_grad_(), z.clone().requires_grad_()
    want, want_new = smog_official_ref(p2, z2, t, g, 0.7, 0.1)
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(new, want_new)
    torch.testing.assert_close(new.norm(dim=1), torch.ones(5, dtype=torch.float64))
    gp, gz = torch.autograd.grad(loss, [p1, z1], allow_unused=True)
    torch.testing.assert_close(gp, torch.autograd.grad(want, p2)[0])
    assert gz is None or gz.abs().max() == 0  # (c): no gradient through the group features
    z3 = z.clone().requires_grad_()
    attached, _ = smog_loss(p, z3, t, g, 0.7, 0.1, normalize=True)
    assert torch.autograd.grad(attached, z3)[0].abs().max() > 0  # the default keeps it
    empty = smog_group_update(z[:1], 2 * g, 0.7, normalize=True)  # one member: the others only renormalised
    moved = ~torch.isclose(empty, g).all(1)
    assert moved.sum() == 1
    torch.testing.assert_close(empty[~moved], g[~moved])


def test_smog_linear_beta_schedule_falls_from_one_to_beta():
    """``beta_schedule: linear`` (the official code's group momentum, 1.0 to beta over training): at progress 0,
    0.5 and 1 (the fraction of training done, the trainer's progress) the group momentum is 1, 1 - (1 - beta) / 2
    and beta, computed here as 1 - (1 - beta) * progress; the method's update uses it (at progress 0 the
    normalised groups do not move; at 0.5 they move as smog_group_update at that momentum); constant keeps beta.
    Fails with the schedule reversed (beta to 1.0): 0.9 at the start."""
    over = ["method.n_groups=4", "method.group_update=normalized", "method.symmetric=true"]
    m = _method("smog_digits", over + ["method.beta_schedule=linear", "method.beta=0.9"]).double()
    for progress, want in [(0.0, 1.0), (0.5, 1 - (1 - 0.9) * 0.5), (1.0, 0.9)]:
        assert m.group_beta(progress) == pytest.approx(want, abs=1e-12)
    assert _method("smog_digits", ["method.beta=0.9", "method.beta_schedule=constant"]).group_beta(0.5) == 0.9
    views = [v.double() for v in _views()]
    g0 = m.groups.clone()
    m(views, progress=0.0)
    m.after_step(0.0)
    torch.testing.assert_close(m.groups, g0)  # momentum 1: the unit groups stay
    with torch.no_grad():
        z = m.projector(m.backbone(torch.cat(views)))
    m(views, progress=0.5)
    m.after_step(0.5)
    torch.testing.assert_close(m.groups, smog_group_update(z, g0, 0.95, normalize=True))
    assert not torch.allclose(m.groups, g0)


def test_smog_kmeans_init_is_the_seeded_kmeans_of_the_online_projections():
    """``group_init: kmeans`` (the official code's init_memory and first cluster_memory): prepare() puts the online
    projections of the images (BatchNorm with batch statistics, running statistics restored) in the bank and sets
    the groups to their spherical k-means (kmeans_iters rounds) from K rows drawn by a generator seeded by
    kmeans_seed, a buffer drawn from the run's seed: the same seed gives bit-identical groups, the groups and bank
    are in the state dict (a resumed run never calls prepare), and uniform init prepares nothing. Fails with the
    k-means start drawn from a generator seeded by the step alone (kmeans_seed ignored): all 320 group entries differ."""
    over = ["method.group_init=kmeans", "method.bank_size=48", "method.n_groups=5"]
    m = _method("smog_digits", over)
    assert m.prepare_images == 48 and _method("smog_digits", ["method.group_init=uniform"]).prepare_images == 0
    g = torch.Generator().manual_seed(7)
    images = [torch.randn(24, 1, 16, 16, generator=g) for _ in range(2)]
    stats = {k: v.clone() for k, v in m.state_dict().items() if "running" in k}
    probe = _method("smog_digits", over)
    online = torch.nn.Sequential(probe.backbone, probe.projector).train()
    with torch.no_grad():
        want_bank = torch.cat([online(x) for x in images])
    logs = m.prepare(images)
    torch.testing.assert_close(m.bank.get(), want_bank)
    assert all(torch.equal(m.state_dict()[k], v) for k, v in stats.items())
    x = F.normalize(want_bank, dim=1)
    rows = torch.randperm(48, generator=torch.Generator().manual_seed(int(m.kmeans_seed)))[:5]
    want_groups, assign = spherical_kmeans(x, x[rows], m.cfg.kmeans_iters, distributed=False)
    torch.testing.assert_close(m.groups, want_groups)
    assert logs["groups_used"] == float(assign.unique().numel())
    again = _method("smog_digits", over)
    again.prepare(images)
    assert torch.equal(again.groups, m.groups)
    torch.manual_seed(1)
    other = build_method(load_recipe("smog_digits", ["model.width=8", "data.image_size=16", *over]), 1, 16)
    assert int(other.kmeans_seed) != int(m.kmeans_seed)
    other.load_state_dict(m.state_dict())
    assert torch.equal(other.groups, m.groups) and torch.equal(other.bank.get(), m.bank.get())
    with pytest.raises(ValueError, match="raise method.bank_size"):  # fewer bank rows than groups
        _method("smog_digits", ["method.group_init=kmeans", "method.bank_size=4", "method.n_groups=5"])
    with pytest.raises(ValueError, match="lower method.n_groups"):  # fewer training images than groups
        _method("smog_digits", over).prepare([images[0][:3]])


def test_smog_kmeans_symmetric_resume_is_bit_identical(tmp_path):
    """As tests/test_resume.py, with the two official options on: stopped mid-run and resumed into a model built
    from another seed, the run ends bit-identical to the uninterrupted one (prepare's groups, the bank and the
    k-means seed are checkpointed; resets at steps 4, 8 and 12). Fails with kmeans_seed a plain attribute instead of
    a buffer (the resumed model's own seed starts the step-12 k-means)."""
    r = load_recipe("smog_digits", TINY + [f"train.epochs={EPOCHS}", "method.group_init=kmeans", "method.symmetric=true",
                                           "method.bank_size=64", "method.n_groups=6", "method.reset_every=4",
                                           "method.projector=32-16", "method.predictor=32-16"])
    data, quiet = tiny_digits(), (lambda *a: None)
    straight = train(r, run_dir=tmp_path / "a", data=data, method=_fresh(r, 0), log=quiet)
    run = tmp_path / "b"
    train(r, run_dir=run, data=data, method=_fresh(r, 0), stop_after_step=STEPS + 3, log=quiet)
    train(r, run_dir=run, resume=True, data=data, method=_fresh(r, 1), log=quiet)
    _assert_same_run(straight, run)


# ---- All4One ------------------------------------------------------------------------------------------------------

def test_slot_position_encoding_is_the_official_permuted_encoding():
    """PositionalEncodingPermute1D(k) on [B, k, D]: the sinusoid over the D features, channel c of k' = 2 ceil(k/2)
    at frequency 10000^(-2 floor(c/2) / k'), sin for even c and cos for odd c."""
    k, d = 5, 7
    pe = slot_position_encoding(k, d, torch.float64)
    kk = 6
    for c in range(k):
        for j in range(d):
            w = 10000 ** (-(2 * (c // 2)) / kk)
            want = math.sin(j * w) if c % 2 == 0 else math.cos(j * w)
            assert pe[c, j].item() == pytest.approx(want, abs=1e-12)


def feature_ref(m1, z1, m2, z2):
    """Columns normalised over the batch; C1 = m1^T z2, C2 = m2^T z1; 0.5 sqrt(mean of the squared diagonal
    deviations from 1, averaged over C1, C2) + 0.5 sqrt(the same of the squared off-diagonal entries)."""
    def cols(x):
        return torch.stack([x[:, j] / x[:, j].norm() for j in range(x.shape[1])], 1)
    c1, c2 = cols(m1).T @ cols(z2), cols(m2).T @ cols(z1)
    d = c1.shape[0]
    on = [sum((c[j, j] - 1) ** 2 for j in range(d)) / d for c in (c1, c2)]
    off = [sum(c[j, k] ** 2 for j in range(d) for k in range(d) if j != k) / (d * d - d) for c in (c1, c2)]
    return 0.5 * torch.sqrt((on[0] + on[1]) / 2) + 0.5 * torch.sqrt((off[0] + off[1]) / 2)


def nce_ref(a, b, t):
    """InfoNCE of a_i against every b_j (positive j = i), on L2-normalised rows."""
    a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    return sum(-(a[i] @ b[i] / t - torch.logsumexp(a[i] @ b.T / t, 0)) for i in range(a.shape[0])) / a.shape[0]


def test_all4one_loss_matches_the_equations():
    x = [_r(10, 6, seed=s) for s in range(12)]
    out = all4one_loss((x[0], x[1]), (x[2], x[3]), (x[4], x[5]), (x[6], x[7]), (x[8], x[9]), (x[10], x[11]),
                       0.2, 0.1, 10.0, (0.5, 0.3, 0.7), distributed=False)
    cent = 0.5 * (nce_ref(x[0], x[3], 0.1) + nce_ref(x[1], x[2], 0.1))
    nnl = 0.5 * (nce_ref(x[4], x[7], 0.2) + nce_ref(x[5], x[6], 0.2))
    feat = 10 * feature_ref(x[8], x[10], x[9], x[11])
    torch.testing.assert_close(out["loss_centroid"], cent)
    torch.testing.assert_close(out["loss_nn"], nnl)
    torch.testing.assert_close(out["loss_feature"], feat)
    torch.testing.assert_close(out["loss"], 0.5 * cent + 0.3 * nnl + 0.7 * feat)
    torch.testing.assert_close(feature_contrast(x[8], x[10], x[9], x[11]), feat / 10)


def test_all4one_method_queue_centroids_and_transformer_lr():
    m = _method("all4one_digits", ["method.queue_size=64"])
    views = _views()
    out = m(views, labels=torch.zeros(16, dtype=torch.long))
    out["loss"].backward()
    for part in (m.predictor2, m.transformer, m.predictor, m.backbone):  # every term reaches its module
        assert any(p.grad is not None and p.grad.abs().max() > 0 for p in part.parameters())
    assert {"loss_centroid", "loss_nn", "loss_feature", "nn_acc"} <= set(out)
    ptr = int(m.support.ptr)
    m.after_step(0.0)
    with torch.no_grad():
        want = F.normalize(m.teacher(views[0]), dim=1)  # view 1's momentum embeddings, enqueued (teacher moved
    assert int(m.support.ptr) == (ptr + 16) % 64  # by one EMA step since: compare shapes and unit norms)
    torch.testing.assert_close(m.support.bank[:16].norm(dim=1), want.norm(dim=1))
    tr = {id(p) for p in m.transformer.parameters()}
    groups = m.param_groups()
    assert all(g.get("lr_scale") == 0.1 for g in groups if any(id(p) in tr for p in g["params"]))
    assert sum(len(g["params"]) for g in groups if g.get("lr_scale") == 0.1) == len(tr)


# ---- VISReg -------------------------------------------------------------------------------------------------------

def test_visreg_objective_is_the_loss_on_lejepas_slices(monkeypatch):
    m = _method("visreg_digits", ["method.num_slices=32", "views.params.n_local=2"])
    f, z = m.embed(_views(k=4, size=16)[:2] + [torch.randn(16, 1, 12, 12) for _ in range(2)])
    out = m.objective(z)
    slices = m.slices()
    want = visreg_loss(torch.stack(z[:2]), torch.stack(z[2:]), slices, 0.6)
    torch.testing.assert_close(out["loss"], want)
    g = torch.Generator().manual_seed(int(m.slice_seed) ^ (int(m.step) * 0x9E3779B97F4A7C15 % 2**62))
    torch.testing.assert_close(slices, random_slices(64, 32, g))  # LeJEPA's draw: shared by every rank
    m.after_step(0.0)
    assert not torch.equal(m.slices(), slices)  # fresh each step
    per = _method("visreg_digits", ["method.num_slices=32", "method.per_device=true"])
    per.slice_seed.copy_(m.slice_seed)
    per.step.copy_(m.step)
    assert torch.equal(per.slices(), m.slices())  # one device: the paper's variant is the same
    import selfsup.methods.visreg as visreg_module

    monkeypatch.setattr(visreg_module, "rank", lambda: 1)
    assert not torch.equal(per.slices(), m.slices())  # rank 1 draws its own slices


# ---- learning -----------------------------------------------------------------------------------------------------

# VISReg: the 2 global views only, the 4 local crops slow it (see the docstring)
LEARN_B = [pytest.param("all4one_digits", ["optim.lr=1.0", "train.epochs=4"], id="all4one"),
           pytest.param("visreg_digits", ["optim.lr=2.0", "method.num_slices=256", "views.params.n_local=0",
                                          "train.epochs=3"], id="visreg")]


# the short run's measured setting: 30 groups (smog_digits' until session 11; it now keeps the paper's 300)
SMOG_VIEWS = ["views.params.scale=[0.8,1.0]", "views.params.jitter=[0.4,0.4,0.2,0.1,0.0]", "method.n_groups=30"]


def test_smog_short_run_beats_random_init_on_average(tmp_path):
    """smog_digits (the official code's k-means initialised groups and both directions, ``group_init: kmeans``,
    ``symmetric: true``, and since session 10 its normalised group update, linear group momentum and detached
    groups: +0.033 / +0.089 / +0.031 / +0.026 / +0.078 at seeds 0-4, the permviews break +0.019 / +0.010 / -0.014 /
    -0.038 / +0.026; consecutive three-seed means >= +0.045 correct, <= +0.005 broken; the figures below are of
    the two options alone) with milder views (crops 0.8-1, no colour jitter): the mean kNN gain over random init of
    seeds 0 / 1 / 2 must clear MARGIN. A mean over three seeds, because one short run's gain moves by ~0.04 with
    the seed; each seed's baseline is its own backbone at random init.

    Measured (1 thread; kNN top-1 gain, seeds 0 / 1 / 2 / 3 / 4; benchmarks/smog_groups.py and, for the break,
    benchmarks/broken_pairs_knn.py --brk permviews, both with ``method.group_init=kmeans method.symmetric=true`` and
    these views): +0.097 / +0.062 / +0.047 / +0.038 / +0.117 (mean of 0-2 +0.069); broken positive pairs (view 1 of
    each pair taken from another image of the batch) -0.015 / +0.040 / -0.037 / -0.066 / +0.019 (mean of 0-2
    -0.004, fails). So one seed alone would pass by the seed (seed 3 misses by 0.002, the break's seed 1 ties the
    margin); no three consecutive seeds' mean is below +0.049 correct or above +0.015 broken. This test fails with
    the break patched into SMoG.forward (view 1 permuted across the batch by a generator seeded by the step):
    +0.010 / +0.000 / -0.022, mean -0.004.
    Why the milder views: with the recipe's crops 0.3-1 and jitter at 16 px the two views of an image share a group
    of the random-init network for only 0.06-0.11 of the batch (chance 1/30), and the correct run ties the break
    (+0.019 / +0.002 / -0.057 vs +0.008 / +0.037 / +0.009); at crops 0.8-1 without jitter they share one for
    0.12-0.27 (seeds 2-4). With the milder views and lightly's step (uniform groups, one direction): +0.064 / +0.051 / -0.008;
    k-means init alone +0.065 / +0.053 / -0.019; both directions alone +0.056 / +0.050 / +0.025; jitter kept,
    both options: +0.046 / +0.053 / +0.008.
    """
    gains = []
    for seed in (0, 1, 2):
        baseline, trained = short_run_knn("smog_digits", SMOG_VIEWS, tmp_path / str(seed), seed)
        gains.append(trained - baseline)
    mean = sum(gains) / len(gains)
    print(f"smog_digits: gains {' '.join(f'{g:+.3f}' for g in gains)}, mean {mean:+.3f}")
    assert mean >= MARGIN, (f"smog_digits: kNN gains over random init {[f'{g:+.3f}' for g in gains]} (seeds 0-2), "
                            f"mean {mean:+.3f}; a learning run gains more than {MARGIN} on average")


@pytest.mark.parametrize("recipe, extra", LEARN_B)
def test_short_run_beats_random_init(recipe, extra, tmp_path):
    baseline, trained = short_run_knn(recipe, extra, tmp_path)
    assert trained >= baseline + MARGIN, (f"{recipe}: kNN top-1 {trained:.3f} after training vs {baseline:.3f} at "
                                          f"random init; a learning run gains more than {MARGIN}")
