"""Masked-image-modeling / ViT-distillation losses (``selfsup.losses.masked``, ``.masked_regression`` and
``.masked_siamese``) against references written from the papers' equations with plain loops in float64, plus
closed-form cases."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from selfsup.losses import (data2vec_loss, data2vec_targets, ibot_patch_loss, ibot_teacher_probs, koleo_loss,
                            mae_loss, me_max, msn_loss, norm_pix_targets, patch_center_update, patchify, pmsn_loss,
                            power_law_prior, prior_kl, simmim_loss, sinkhorn_teacher, unpatchify)

DT = torch.float64


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(g, *shape):
    return torch.randn(*shape, generator=g, dtype=DT)


def close(a, b, **kw):
    torch.testing.assert_close(torch.as_tensor(a, dtype=DT), torch.as_tensor(b, dtype=DT), rtol=1e-9, atol=1e-10, **kw)


# ---------------------------------------------------------------- patchify / norm_pix / MAE


def test_patchify_order_and_roundtrip():
    g = gen()
    b, c, hh, ww, p = 2, 3, 8, 12, 4
    imgs = randn(g, b, c, hh, ww)
    x = patchify(imgs, p)
    assert x.shape == (b, (hh // p) * (ww // p), p * p * c)
    for n in range(b):
        for i in range(hh // p):
            for j in range(ww // p):
                for a in range(p):
                    for q in range(p):
                        for ch in range(c):
                            assert x[n, i * (ww // p) + j, (a * p + q) * c + ch] == imgs[n, ch, i * p + a, j * p + q]
    assert torch.equal(unpatchify(x, p, (hh // p, ww // p), c), imgs)
    sq = randn(g, 2, 3, 8, 8)
    assert torch.equal(unpatchify(patchify(sq, 2), 2, channels=3), sq)
    assert patchify(sq.bfloat16(), 2).dtype == torch.bfloat16  # a pure reshape keeps the dtype
    with pytest.raises(ValueError):
        patchify(imgs, 5)


def test_norm_pix_targets_unbiased_and_invertible():
    g = gen(1)
    x = randn(g, 2, 5, 12) * 3 + 1
    t, mean, std = norm_pix_targets(x)
    for b in range(2):
        for n in range(5):
            v = x[b, n].tolist()
            mu = sum(v) / len(v)
            var = sum((e - mu) ** 2 for e in v) / (len(v) - 1)  # unbiased, as MAE's code
            close(mean[b, n, 0], mu)
            close(std[b, n, 0], math.sqrt(var + 1e-6))
            for k in range(12):
                close(t[b, n, k], (v[k] - mu) / math.sqrt(var + 1e-6))
    close(t * std + mean, x)
    biased = norm_pix_targets(x, unbiased=False)[2]
    close(biased, (x.var(-1, unbiased=False, keepdim=True) + 1e-6).sqrt())


def _mae_ref(pred, target, mask):
    num, den = 0.0, 0.0
    for b in range(pred.shape[0]):
        for n in range(pred.shape[1]):
            if mask[b, n]:
                sq = [(pred[b, n, k].item() - target[b, n, k].item()) ** 2 for k in range(pred.shape[2])]
                num += sum(sq) / len(sq)
                den += 1
    return num / den


def test_mae_loss_reference_and_masked_only():
    g = gen(2)
    pred, target = randn(g, 3, 6, 8), randn(g, 3, 6, 8)
    mask = torch.rand(3, 6, generator=g) < 0.6
    mask[0, 0] = True
    close(mae_loss(pred, target, mask), _mae_ref(pred, target, mask))
    # zero when the masked patches are reconstructed exactly, whatever the visible ones predict
    exact = torch.where(mask[..., None], target, randn(g, 3, 6, 8))
    close(mae_loss(exact, target, mask), 0.0)
    # independent of the unmasked patches (value and gradient)
    other = torch.where(mask[..., None], pred, pred + 5 * randn(g, 3, 6, 8)).requires_grad_()
    loss = mae_loss(other, target, mask)
    close(loss, mae_loss(pred, target, mask))
    loss.backward()
    assert other.grad[~mask].abs().max() == 0
    # norm_pix uses the normalised patches as targets
    close(mae_loss(pred, target, mask, norm_pix=True), _mae_ref(pred, norm_pix_targets(target)[0], mask))
    close(mae_loss(pred, target, torch.zeros_like(mask)), 0.0)


# ---------------------------------------------------------------- SimMIM


def test_simmim_loss_reference_patch_mask_and_code_variant():
    g = gen(3)
    b, c, hh, ww, p = 2, 3, 8, 8, 4
    pred, imgs = randn(g, b, c, hh, ww), randn(g, b, c, hh, ww)
    patch_mask = torch.rand(b, hh // p, ww // p, generator=g) < 0.5
    patch_mask[0, 0, 0] = True
    pix = patch_mask.repeat_interleave(p, 1).repeat_interleave(p, 2)
    num, n_pix = 0.0, 0
    for n in range(b):
        for y in range(hh):
            for x in range(ww):
                if pix[n, y, x]:
                    n_pix += 1
                    num += sum(abs(pred[n, ch, y, x].item() - imgs[n, ch, y, x].item()) for ch in range(c))
    want = num / (n_pix * c)
    close(simmim_loss(pred, imgs, pix[:, None]), want)
    close(simmim_loss(pred, imgs, pix), want)
    close(simmim_loss(pred, imgs, patch_mask, patch_size=p), want)
    close(simmim_loss(pred, imgs, patch_mask.flatten(1), patch_size=p), want)
    close(simmim_loss(pred, imgs, pix[:, None], eps=1e-5), num / (n_pix + 1e-5) / c)  # the official code
    # unmasked pixels do not matter
    noisy = torch.where(pix[:, None], pred, pred + 10 * randn(g, b, c, hh, ww))
    close(simmim_loss(noisy, imgs, pix[:, None]), want)
    close(simmim_loss(pred, imgs, torch.zeros_like(pix)), 0.0)


# ---------------------------------------------------------------- iBOT / DINOv2


def test_ibot_teacher_probs_and_patch_loss_reference():
    g = gen(4)
    b, n, k, ts, tt = 4, 5, 7, 0.1, 0.07
    s, t, center = randn(g, b, n, k), randn(g, b, n, k), randn(g, k)
    mask = torch.rand(b, n, generator=g) < 0.5
    mask[1] = False  # an image with no masked patch still counts in the denominator
    mask[0, :2] = True
    q = ibot_teacher_probs(t, center, tt)
    for i in range(b):
        for j in range(n):
            z = [math.exp((t[i, j, c] - center[c]).item() / tt) for c in range(k)]
            for c in range(k):
                close(q[i, j, c], z[c] / sum(z))
    total = 0.0
    for i in range(b):
        n_masked = int(mask[i].sum())
        acc = 0.0
        for j in range(n):
            if mask[i, j]:
                lse = math.log(sum(math.exp(s[i, j, c].item() / ts) for c in range(k)))
                acc += -sum(q[i, j, c].item() * (s[i, j, c].item() / ts - lse) for c in range(k))
        total += acc / max(1, n_masked)
    close(ibot_patch_loss(s, q, mask, ts), total / b)
    # DINOv2's masks_weight form gives the same number
    w = (1 / mask.sum(-1).to(DT).clamp(min=1.0))[:, None].expand(b, n)[mask]
    ce = -(q * F.log_softmax(s / ts, -1)).sum(-1)[mask]
    close(ibot_patch_loss(s, q, mask, ts), (w * ce).sum() / b)
    close(ibot_patch_loss(s, q, torch.zeros_like(mask), ts), 0.0)


def test_patch_center_update_all_tokens_and_masked():
    g = gen(5)
    b, n, k = 3, 4, 6
    t, c0 = randn(g, b, n, k), randn(g, k)
    mask = torch.rand(b, n, generator=g) < 0.5
    mask[0, 0] = True
    for use_mask in (False, True):
        rows = [t[i, j] for i in range(b) for j in range(n) if (mask[i, j] or not use_mask)]
        mean = sum(rows) / len(rows)
        close(patch_center_update(c0, t, mask if use_mask else None, 0.9), 0.9 * c0 + 0.1 * mean)
    close(patch_center_update(c0, t, torch.zeros_like(mask), 0.9), c0)


def _sinkhorn_ref(q_kb, n_iters):
    """The official loop (SwAV / DINOv2 / MSN): Q is K x B, rows -> 1/K, columns -> 1/B, then * B."""
    q = [row[:] for row in q_kb]
    kk, bb = len(q), len(q[0])
    tot = sum(map(sum, q))
    q = [[v / tot for v in row] for row in q]
    for _ in range(n_iters):
        q = [[v / sum(row) / kk for v in row] for row in q]
        cols = [sum(q[r][c] for r in range(kk)) for c in range(bb)]
        q = [[q[r][c] / cols[c] / bb for c in range(bb)] for r in range(kk)]
    return [[q[r][c] * bb for r in range(kk)] for c in range(bb)]  # B x K


def test_sinkhorn_teacher_matches_dinov2_and_is_stable():
    g = gen(6)
    logits, temp = randn(g, 9, 5) * 0.1, 0.07
    ref = _sinkhorn_ref([[math.exp(logits[b, k].item() / temp) for b in range(9)] for k in range(5)], 3)
    got = sinkhorn_teacher(logits, temp, 3)
    close(got, ref)
    close(got.sum(1), torch.ones(9))
    # fp32 logits around 6 at temp 0.04: DINOv2's exp(150) is inf in float32 (NaN after normalising)
    big = (6 + 0.5 * randn(g, 9, 5)).float()
    assert not torch.isfinite(torch.exp(big / 0.04)).all()
    got = sinkhorn_teacher(big, 0.04)
    assert got.dtype == torch.float32 and torch.isfinite(got).all()
    torch.testing.assert_close(got.sum(1), torch.ones(9))
    ref = _sinkhorn_ref([[math.exp((big[b, k].item() - 6) / 0.04) for b in range(9)] for k in range(5)], 3)
    torch.testing.assert_close(got.double(), torch.tensor(ref, dtype=DT), rtol=1e-4, atol=1e-6)
    # the per-prototype shift is exact: same codes as the unshifted float64 loop on moderate logits
    close(sinkhorn_teacher(logits + torch.linspace(-3, 3, 5, dtype=DT), temp), _sinkhorn_ref(
        [[math.exp((logits[b, k].item() + (-3 + 1.5 * k)) / temp) for b in range(9)] for k in range(5)], 3))


def _koleo_ref(x, eps=1e-8):
    rows = [[v / math.sqrt(sum(u * u for u in r)) for v in r] for r in x.tolist()]
    total = 0.0
    for i, a in enumerate(rows):
        d = min(math.sqrt(sum((u - v) ** 2 for u, v in zip(a, b))) for j, b in enumerate(rows) if j != i)
        total += math.log(d + eps)
    return -total / len(rows)


def test_koleo_reference_simplex_and_duplicates():
    g = gen(7)
    x = randn(g, 10, 4)
    close(koleo_loss(x), _koleo_ref(x))
    # a regular simplex of n points on the unit sphere: every distance is sqrt(2n/(n-1))
    n = 5
    e = torch.eye(n, dtype=DT)
    simplex = 3.0 * (e - e.mean(0))  # scale does not matter (L2-normalised)
    close(koleo_loss(simplex), -math.log(math.sqrt(2 * n / (n - 1)) + 1e-8))
    # exact duplicates: finite value and finite gradient
    dup = torch.cat([x[:6], x[:2]]).requires_grad_()
    loss = koleo_loss(dup)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(dup.grad).all()
    # the guard: each of the four duplicated rows contributes -log(eps + eps) instead of -log(0 + eps)
    close(loss, _koleo_ref(dup.detach()) - 4 * math.log(2) / 8)
    dup32 = torch.cat([x[:6], x[:2]]).float().requires_grad_()
    koleo_loss(dup32).backward()
    assert torch.isfinite(dup32.grad).all()
    with pytest.raises(ValueError):
        koleo_loss(x[:1])


# ---------------------------------------------------------------- data2vec 2.0


def test_data2vec_targets_reference_and_normalised():
    g = gen(8)
    b, t, d, layers, k = 2, 6, 5, 4, 3
    outs = [randn(g, b, t, d) * (i + 1) + i for i in range(layers)]
    y = data2vec_targets(outs, k)
    for bi in range(b):
        for ti in range(t):
            avg = []
            for di in range(d):
                acc = 0.0
                for a in outs[-k:]:
                    col = [a[bi, tj, di].item() for tj in range(t)]
                    mu = sum(col) / t
                    var = sum((v - mu) ** 2 for v in col) / t
                    acc += (a[bi, ti, di].item() - mu) / math.sqrt(var + 1e-5)
                avg.append(acc / k)
            mu = sum(avg) / d
            var = sum((v - mu) ** 2 for v in avg) / d
            for di in range(d):
                close(y[bi, ti, di], (avg[di] - mu) / math.sqrt(var + 1e-5))
    close(y.mean(-1), torch.zeros(b, t))
    torch.testing.assert_close(y.var(-1, unbiased=False), torch.ones(b, t, dtype=DT), rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError):
        data2vec_targets(outs, layers + 1)


def test_data2vec_loss_reference():
    g = gen(9)
    b, t, d = 2, 5, 6
    pred, target = randn(g, b, t, d), randn(g, b, t, d)
    mask = torch.rand(b, t, generator=g) < 0.5
    mask[0, 0] = True
    tot, cnt = 0.0, 0
    for bi in range(b):
        for ti in range(t):
            if mask[bi, ti]:
                tot += sum((pred[bi, ti, di].item() - target[bi, ti, di].item()) ** 2 for di in range(d)) / math.sqrt(d)
                cnt += 1
    close(data2vec_loss(pred, target, mask), tot / cnt)
    close(data2vec_loss(pred, target, mask, reduction="sum"), tot)
    close(data2vec_loss(pred, target), ((pred - target) ** 2).sum(-1).mean() / math.sqrt(d))


# ---------------------------------------------------------------- MSN / PMSN


def test_me_max_closed_forms_and_reference():
    k = 6
    close(me_max(torch.full((4, k), 1 / k, dtype=DT)), 0.0)
    close(me_max(F.one_hot(torch.tensor([2, 2, 2]), k).to(DT)), math.log(k))
    # a batch of one-hots spread evenly is uniform on average
    close(me_max(F.one_hot(torch.arange(k), k).to(DT)), 0.0)
    g = gen(10)
    p = F.softmax(randn(g, 7, k), 1)
    pbar = [sum(p[i, c].item() for i in range(7)) / 7 for c in range(k)]
    close(me_max(p), sum(v * math.log(v) for v in pbar) + math.log(k))


def test_prior_kl_and_power_law():
    k = 5
    pri = power_law_prior(k, 0.25, DT)
    z = sum(j ** -0.25 for j in range(1, k + 1))
    close(pri, [j ** -0.25 / z for j in range(1, k + 1)])
    g = gen(11)
    p = F.softmax(randn(g, 8, k), 1)
    pbar = p.mean(0)
    close(prior_kl(p, torch.full((k,), 1 / k, dtype=DT)), me_max(p))
    close(prior_kl(p, pri), sum(pbar[c] * math.log(pbar[c] / pri[c]) for c in range(k)))
    close(prior_kl(p, pri, direction="lightly"), F.kl_div(pbar.log(), pri, reduction="sum"))
    close(prior_kl(pri[None].expand(3, k), pri), 0.0)


def _msn_ref(anchor, target, protos, temp, T, lam, sinkhorn, prior=None):
    def probs(z):
        zn = z / z.norm()
        out = []
        for q in protos:
            out.append(math.exp((zn @ (q / q.norm())).item() / temp))
        return [v / sum(out) for v in out]

    n, k = target.shape[0], protos.shape[0]
    tgt = []
    for i in range(n):
        p = probs(target[i])
        s = [v ** (1 / T) for v in p]
        tgt.append([v / sum(s) for v in s])
    if sinkhorn:
        tgt = _sinkhorn_ref([[tgt[i][c] for i in range(n)] for c in range(k)], 3)
    m = anchor.shape[0] // n
    ce, pbar = 0.0, [0.0] * k
    for r in range(anchor.shape[0]):
        p = probs(anchor[r])
        ce += -sum(tgt[r % n][c] * math.log(p[c]) for c in range(k))
        pbar = [a + b / anchor.shape[0] for a, b in zip(pbar, p)]
    ce /= anchor.shape[0]
    if prior is None:
        reg = sum(v * math.log(v) for v in pbar) + math.log(k)
    else:
        reg = sum(v * math.log(v / prior[c].item()) for c, v in enumerate(pbar))
    assert m * n == anchor.shape[0]
    return ce + lam * reg


@pytest.mark.parametrize("sinkhorn", [False, True])
def test_msn_and_pmsn_reference(sinkhorn):
    g = gen(12)
    n, m, d, k = 4, 3, 5, 6
    anchor, target, protos = randn(g, m * n, d), randn(g, n, d), randn(g, k, d)
    close(msn_loss(anchor, target, protos, 0.1, 0.25, 1.0, sinkhorn),
          _msn_ref(anchor, target, protos, 0.1, 0.25, 1.0, sinkhorn))
    close(msn_loss(anchor, target, protos, 0.1, 0.25, 0.0, sinkhorn),
          _msn_ref(anchor, target, protos, 0.1, 0.25, 0.0, sinkhorn))
    pri = power_law_prior(k, 0.25, DT)
    want = _msn_ref(anchor, target, protos, 0.1, 0.25, 0.7, sinkhorn, prior=pri)
    close(pmsn_loss(anchor, target, protos, 0.1, 0.25, 0.7, use_sinkhorn=sinkhorn), want)
    close(msn_loss(anchor, target, protos, 0.1, 0.25, 0.7, sinkhorn, prior="power_law"), want)
    close(msn_loss(anchor, target, protos, 0.1, 0.25, 0.7, sinkhorn, prior=pri), want)


def test_msn_gradients_flow_to_anchor_and_prototypes_only():
    g = gen(13)
    anchor, target, protos = (randn(g, *s).requires_grad_() for s in ((8, 5), (4, 5), (6, 5)))
    msn_loss(anchor, target, protos).backward()
    assert anchor.grad.abs().sum() > 0 and protos.grad.abs().sum() > 0
    assert target.grad is None
    with pytest.raises(ValueError):
        msn_loss(anchor[:7], target, protos)
