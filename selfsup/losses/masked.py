"""Masked-image-modeling and ViT self-distillation losses: MAE, SimMIM, iBOT / DINOv2 (patch loss,
centering, Sinkhorn teacher, KoLeo), data2vec 2.0 and MSN / PMSN.

Small pure functions; models, masks and EMA teachers live elsewhere. Conventions:

- a patch mask is ``[B, N]`` bool (or 0/1), ``True`` = masked (hidden from the student), as MAE's
  ``mask`` (1 = removed) and ``selfsup.views.masks``;
- every loss runs in float32 under autocast (:func:`~selfsup.losses.precision.fp32_loss`);
- statistics over the batch (centers, Sinkhorn marginals, ME-MAX's mean prediction) are all-reduced,
  so one rank computes what one process would on the global batch; per-sample terms are means over
  this rank's rows (the mean over ranks is the global-batch loss when ranks hold equal shares).
  KoLeo is the documented exception: it is per process, as in DINOv2.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from selfsup.losses.clustering import _all_reduce_max, sinkhorn_knopp
from selfsup.losses.distributed import all_reduce_sum, gather, is_distributed, local_offset
from selfsup.losses.precision import fp32_loss

# --------------------------------------------------------------------------------------------------
# MAE (He et al., 2022, "Masked Autoencoders Are Scalable Vision Learners")
# --------------------------------------------------------------------------------------------------


def patchify(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """``[B, C, H, W]`` images -> ``[B, N, p*p*C]`` patches, ``N = (H/p)(W/p)`` in row-major order.

    MAE's ordering (``models_mae.py``): ``reshape(B, C, h, p, w, p)`` then ``einsum('nchpwq->nhwpqc')``,
    so inside a patch the channel is last (pixel ``(i, j)`` of channel ``c`` is at ``(i*p + j)*C + c``).
    A pure reshape: the dtype is kept. :func:`unpatchify` is its exact inverse.
    """
    if imgs.dim() != 4:
        raise ValueError(f"patchify expects [B, C, H, W] images, got shape {tuple(imgs.shape)}")
    b, c, hh, ww = imgs.shape
    if p <= 0 or hh % p or ww % p:
        raise ValueError(f"patchify: image size {hh}x{ww} is not divisible by the patch size {p}")
    h, w = hh // p, ww // p
    x = imgs.reshape(b, c, h, p, w, p)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(b, h * w, p * p * c)


def unpatchify(x: torch.Tensor, p: int, grid: tuple[int, int] | int | None = None, channels: int = 3) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``[B, N, p*p*C]`` -> ``[B, C, h*p, w*p]`` for ``grid = (h, w)``
    (an int means square; ``None`` means square with ``h = w = sqrt(N)``)."""
    if x.dim() != 3:
        raise ValueError(f"unpatchify expects [B, N, p*p*C] patches, got shape {tuple(x.shape)}")
    b, n, d = x.shape
    if grid is None:
        h = w = math.isqrt(n)
    else:
        h, w = (grid, grid) if isinstance(grid, int) else grid
    if h * w != n or d != p * p * channels:
        raise ValueError(f"unpatchify: {n} patches of {d} values do not fit a {h}x{w} grid of "
                         f"{p}x{p}x{channels} patches")
    x = x.reshape(b, h, w, p, p, channels)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(b, channels, h * p, w * p)


@fp32_loss
def norm_pix_targets(patches: torch.Tensor, eps: float = 1e-6,
                     unbiased: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""MAE's normalised-pixel targets (``--norm_pix_loss``; He et al., 2022, Section 3 "Reconstruction
    target"): every patch is standardised over all its ``p*p*C`` values,

    .. math:: \hat t = (t - \mu) / \sqrt{\sigma^2 + \epsilon},

    with the **unbiased** variance of the official code (``target.var(-1)``; ``unbiased=False`` gives
    the population variance). Returns ``(targets, mean, std)`` with ``mean, std`` of shape ``[..., 1]``
    and ``std = sqrt(var + eps)``, so a viewer can map a prediction back to pixels with
    ``pred * std + mean``, which uses the ground-truth statistics of each patch (MAE issue #153).
    No gradient (targets).
    """
    t = patches.detach()
    mean = t.mean(-1, keepdim=True)
    std = (t.var(-1, keepdim=True, unbiased=unbiased) + eps).sqrt()
    return (t - mean) / std, mean, std


def _as_weights(mask: torch.Tensor, like: torch.Tensor, name: str, shape: Sequence[int]) -> torch.Tensor:
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name}: mask must be {list(shape)}, got {list(mask.shape)}")
    return mask.detach().to(like.dtype)


@fp32_loss
def mae_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool = False) -> torch.Tensor:
    r"""MAE's reconstruction loss (He et al., 2022, Section 3; ``forward_loss`` of ``models_mae.py``):

    .. math:: \mathcal{L} = \frac{\sum_{b,n} m_{bn}\, \frac1P \sum_{k} (\hat y_{bnk} - t_{bnk})^2}{\sum_{b,n} m_{bn}},

    the per-patch MSE (mean over the ``P = p*p*C`` values) averaged over the **masked** patches only
    (``mask`` ``[B, N]``, ``True``/1 = removed), pooled over the batch as in the code. ``target`` is
    ``[B, N, P]`` (e.g. :func:`patchify` of the input), detached; ``norm_pix=True`` first applies
    :func:`norm_pix_targets`. With no masked patch the loss is 0 (the code would give NaN).
    """
    if pred.shape != target.shape or pred.dim() != 3:
        raise ValueError(f"mae_loss: pred and target must be [B, N, P] of one shape, got {tuple(pred.shape)} "
                         f"and {tuple(target.shape)}")
    m = _as_weights(mask, pred, "mae_loss", pred.shape[:2])
    t = norm_pix_targets(target)[0] if norm_pix else target.detach()
    per_patch = (pred - t).pow(2).mean(-1)
    return (per_patch * m).sum() / m.sum().clamp_min(1)


# --------------------------------------------------------------------------------------------------
# SimMIM (Xie et al., 2022, "SimMIM: A Simple Framework for Masked Image Modeling")
# --------------------------------------------------------------------------------------------------


@fp32_loss
def simmim_loss(pred: torch.Tensor, imgs: torch.Tensor, mask: torch.Tensor, patch_size: int | None = None,
                eps: float = 0.0) -> torch.Tensor:
    r"""SimMIM's L1 loss on masked pixels (Xie et al., 2022, Eq. (1)):

    .. math:: \mathcal{L} = \frac{1}{\Omega(x_M)} \lVert y_M - x_M \rVert_1,

    with :math:`\Omega(x_M)` the number of masked elements, i.e. ``(|y - x| * mask).sum() /
    (n_masked_pixels * C)``. ``pred`` and ``imgs`` are ``[B, C, H, W]`` (targets: the normalised input,
    detached). ``mask`` is either a pixel mask ``[B, 1, H, W]`` / ``[B, H, W]`` or, with ``patch_size``,
    a patch mask ``[B, h, w]`` / ``[B, h*w]`` that is upsampled by ``repeat_interleave`` as the code does.

    The paper's normaliser is used (0 when nothing is masked); ``eps=1e-5`` gives the official code's
    ``(loss * mask).sum() / (mask.sum() + 1e-5) / in_chans`` instead.
    """
    if pred.shape != imgs.shape or pred.dim() != 4:
        raise ValueError(f"simmim_loss: pred and imgs must be [B, C, H, W] of one shape, got {tuple(pred.shape)} "
                         f"and {tuple(imgs.shape)}")
    b, c, hh, ww = pred.shape
    m = mask.detach().to(pred.dtype)
    if patch_size is not None:
        if m.dim() == 2:
            m = m.reshape(b, hh // patch_size, ww // patch_size)
        m = m.repeat_interleave(patch_size, 1).repeat_interleave(patch_size, 2)
    if m.dim() == 3:
        m = m.unsqueeze(1)
    if tuple(m.shape) != (b, 1, hh, ww):
        raise ValueError(f"simmim_loss: mask must give [B, 1, H, W] = {[b, 1, hh, ww]} pixels, got {list(m.shape)}")
    total = (F.l1_loss(pred, imgs.detach(), reduction="none") * m).sum()
    n = m.sum()
    denom = (n + eps) if eps > 0 else n.clamp_min(1)
    return total / denom / c


# --------------------------------------------------------------------------------------------------
# iBOT (Zhou et al., 2022) and DINOv2 (Oquab et al., 2024)
# --------------------------------------------------------------------------------------------------


@fp32_loss
@torch.no_grad()
def ibot_teacher_probs(teacher_logits: torch.Tensor, center: torch.Tensor, temp: float) -> torch.Tensor:
    r"""Centered, sharpened teacher distribution of iBOT / DINOv2 (Zhou et al., 2022, Section 3.2,
    as DINO's Eq. (4)): :math:`P_t = \mathrm{softmax}((g_t(x) - c)/\tau_t)` over the last axis. No gradient."""
    if temp <= 0:
        raise ValueError(f"ibot_teacher_probs needs temp > 0, got {temp}")
    return F.softmax((teacher_logits.detach() - center) / temp, dim=-1)


@fp32_loss
@torch.no_grad()
def patch_center_update(center: torch.Tensor, teacher_patch_logits: torch.Tensor, mask: torch.Tensor | None = None,
                        momentum: float = 0.9) -> torch.Tensor:
    r"""EMA center of the teacher's patch logits: :math:`c \leftarrow m\,c + (1-m)\,\bar g`.

    ``teacher_patch_logits`` is ``[B, N, K]`` (or ``[M, K]``). With ``mask=None``, :math:`\bar g` is the
    mean over **all** patch tokens of the global crops, which is what iBOT does (``update_center`` of
    ``main_ibot.py``: ``teacher_patch.mean(1)`` summed over images, momentum 0.9; the teacher sees the
    unmasked crop). With a ``[B, N]`` ``mask``, only the masked tokens count, which is what DINOv2 does
    (it centers the masked teacher tokens it feeds to the patch loss). Either way the sums and counts
    are all-reduced over processes, so the mean is the exact global one (DINOv2 instead averages the
    per-rank means, which differs when ranks mask different numbers of patches). Returns the new center.
    """
    t = teacher_patch_logits.detach()
    k = t.shape[-1]
    if mask is None:
        t = t.reshape(-1, k)
        sums, count = t.sum(0), t.new_tensor([t.shape[0]])
    else:
        w = _as_weights(mask, t, "patch_center_update", t.shape[:-1]).reshape(-1)
        t = t.reshape(-1, k)
        sums, count = w @ t, w.sum().reshape(1)
    stats = all_reduce_sum(torch.cat([sums, count]))
    mean = stats[:-1] / stats[-1].clamp_min(1)
    if stats[-1] == 0:  # nothing to average anywhere: keep the center
        return center.clone()
    return center * momentum + (1 - momentum) * mean.to(center.dtype)


@fp32_loss
def ibot_patch_loss(student_patch_logits: torch.Tensor, teacher_patch_probs: torch.Tensor, mask: torch.Tensor,
                    student_temp: float = 0.1) -> torch.Tensor:
    r"""iBOT's masked-patch self-distillation loss (Zhou et al., 2022, Eq. (2); DINOv2's ``iBOTPatchLoss``):

    .. math:: \mathcal{L} = \frac1B \sum_{b=1}^{B} \frac{1}{\max(1, n_b)} \sum_{n: m_{bn}=1}
              -\sum_k P_{t,bnk} \log \mathrm{softmax}(s_{bn}/\tau_s)_k, \qquad n_b = \textstyle\sum_n m_{bn},

    i.e. each image's cross-entropy averaged over its masked patches, then averaged over **all** ``B``
    images, including those without a masked patch (they contribute 0). DINOv2 writes it as
    ``-sum(masks_weight * ce) / B`` with ``masks_weight = 1/n_masked(image)``; iBOT's
    ``(loss * mask).sum(-1) / mask.sum(-1).clamp(min=1)`` followed by ``.mean()`` over the batch is
    the same number, so there is no variant to choose. Student logits ``[B, N, K]``, teacher
    probabilities ``[B, N, K]`` (e.g. :func:`ibot_teacher_probs` or :func:`sinkhorn_teacher`; detached),
    ``mask [B, N]`` (``True`` = masked for the student, same view as the teacher's). A per-image mean:
    the mean over ranks is the global-batch loss.
    """
    if student_patch_logits.shape != teacher_patch_probs.shape or student_patch_logits.dim() != 3:
        raise ValueError(f"ibot_patch_loss: student and teacher must be [B, N, K] of one shape, got "
                         f"{tuple(student_patch_logits.shape)} and {tuple(teacher_patch_probs.shape)}")
    m = _as_weights(mask, student_patch_logits, "ibot_patch_loss", student_patch_logits.shape[:2])
    ce = -(teacher_patch_probs.detach() * F.log_softmax(student_patch_logits / student_temp, dim=-1)).sum(-1)
    per_image = (ce * m).sum(-1) / m.sum(-1).clamp_min(1)
    return per_image.mean()


@fp32_loss
@torch.no_grad()
def sinkhorn_teacher(teacher_logits: torch.Tensor, temp: float, n_iters: int = 3,
                     distributed: bool = True) -> torch.Tensor:
    r"""DINOv2's Sinkhorn-Knopp teacher (``sinkhorn_knopp_teacher``; Oquab et al., 2024, Section 4, after
    SwAV): ``n_iters`` alternate normalisations of :math:`Q = \exp(g_t/\tau_t)^\top` so that each prototype
    gets mass :math:`1/K` and each row :math:`1/B`, with :math:`B` the number of rows over all processes.

    Built on :func:`~selfsup.losses.clustering.sinkhorn_knopp` with ``epsilon = temp``: max-shifted
    before ``exp`` (no overflow, dinov2 #360) and all-reduced only when a process group is active
    (runs on one process, dinov2 #590). ``teacher_logits`` is ``[n, K]`` (e.g. this rank's masked
    teacher patch tokens, so ranks may hold different ``n``); returns per-row probabilities (each row
    sums to 1). No gradient.

    Before that, each prototype's column is shifted by its maximum over the global batch. This is
    exact: it scales each prototype's row of :math:`Q` by a constant, which the first row normalisation
    removes, and it keeps every prototype's largest entry at :math:`e^0`, so a prototype whose logits
    all lie far below another's never underflows to zero. (A row whose every logit lies more than
    about ``87 * temp`` below each prototype's batch maximum still underflows in float32; it comes
    back as zeros rather than NaN.)
    """
    if teacher_logits.dim() != 2:
        raise ValueError(f"sinkhorn_teacher expects [n, K] logits, got shape {tuple(teacher_logits.shape)}")
    t = teacher_logits.detach()
    if t.shape[0] > 0:
        top = t.max(0).values
        t = t - (_all_reduce_max(top) if distributed else top)
    return sinkhorn_knopp(t, epsilon=temp, n_iters=n_iters, distributed=distributed)


@fp32_loss
def koleo_loss(x: torch.Tensor, eps: float = 1e-8, distributed: bool = False) -> torch.Tensor:
    r"""KoLeo regulariser (Sablayrolles et al., 2019, "Spreading vectors for similarity search", Eq. (5);
    DINOv2, Oquab et al., 2024, Section 4): on L2-normalised rows :math:`\hat x_i`,

    .. math:: \mathcal{L} = -\frac1n \sum_{i=1}^n \log\big(\rho_i + \epsilon\big),
              \qquad \rho_i = \min_{j \ne i} \lVert \hat x_i - \hat x_j \rVert,

    the Kozachenko-Leonenko differential-entropy estimator, which pushes every point away from its
    nearest neighbour. The neighbour is found from :math:`\hat x \hat x^\top` (diagonal excluded) and the
    distance is recomputed from the difference, in float32 (float64 stays float64).

    **Per process, no gather**: this is DINOv2's behaviour (``KoLeoLoss`` on each GPU's student CLS
    tokens, separately per global crop, so call it once per crop). Under DDP each rank's value is the
    loss of its own shard, not of the global batch, and the nearest neighbour is searched only there.
    ``distributed=True`` instead searches each local row's neighbour in the gathered global batch (with
    gradient), so the mean over ranks equals the single-process loss on the global batch (the
    any-method regulariser, :mod:`selfsup.methods.regularizers`, uses this).

    **Duplicate guard**: exact duplicates have :math:`\rho_i = 0`, whose gradient direction is undefined
    (and with DINOv2's ``PairwiseDistance(eps)`` it is ~1/eps large). Here the distance is
    :math:`\rho_i = \sqrt{\max(\lVert \hat x_i - \hat x_{j^*}\rVert^2, \epsilon^2)}`: the value stays finite,
    :math:`-\log(2\epsilon)` for a duplicated row, and the clamped pair gets a zero (finite) gradient
    through :math:`\rho_i`. Needs ``n >= 2``.
    """
    if x.dim() != 2 or x.shape[0] < 2:
        raise ValueError(f"koleo_loss expects [n >= 2, D] inputs, got shape {tuple(x.shape)}")
    xn = F.normalize(x, dim=-1, eps=eps)
    pool = gather(xn) if distributed else xn
    off = local_offset(xn.shape[0]) if distributed else 0
    with torch.no_grad():
        dots = xn @ pool.T
        rows = torch.arange(xn.shape[0], device=xn.device)
        dots[rows, rows + off] = -math.inf
        nn_idx = dots.argmax(1)
    sq = (xn - pool[nn_idx]).pow(2).sum(-1)
    rho = sq.clamp_min(eps * eps).sqrt()
    return -torch.log(rho + eps).mean()


# --------------------------------------------------------------------------------------------------
# data2vec 2.0 (Baevski et al., 2023, "Efficient Self-supervised Learning with Contextualized Target
# Representations for Vision, Speech and Language")
# --------------------------------------------------------------------------------------------------


@fp32_loss
@torch.no_grad()
def data2vec_targets(layer_outputs: Sequence[torch.Tensor], k: int) -> torch.Tensor:
    r"""data2vec targets (Baevski et al., 2022, Eq. (1)-(2); 2.0 keeps them; ``make_targets`` of fairseq's
    ``data2vec2.py`` with ``instance_norm_target_layer`` and ``layer_norm_targets``):

    .. math:: y_t = \mathrm{LN}\Big(\frac1K \sum_{l=L-K+1}^{L} \mathrm{IN}(a^l)_t\Big),

    where :math:`a^l` is ``[B, T, D]`` (the teacher's block-``l`` output on the unmasked input),
    IN normalises every channel over the **token** axis (``F.instance_norm`` on ``[B, D, T]``) and LN is
    ``F.layer_norm`` over ``D`` without affine parameters, so each target token has zero mean and unit
    (biased) variance over ``D``. Uses the last ``k`` entries of ``layer_outputs``. No gradient.
    """
    if not 1 <= k <= len(layer_outputs):
        raise ValueError(f"data2vec_targets: k must be in 1..{len(layer_outputs)} (the layers given), got {k}")
    top = [a.detach() for a in layer_outputs[-k:]]
    if len({tuple(a.shape) for a in top}) != 1 or top[0].dim() != 3:
        raise ValueError("data2vec_targets: every layer output must be [B, T, D] of one shape")
    y = sum(F.instance_norm(a.transpose(1, 2)).transpose(1, 2) for a in top) / k
    return F.layer_norm(y, y.shape[-1:])


@fp32_loss
def data2vec_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
                  reduction: str = "mean") -> torch.Tensor:
    r"""data2vec 2.0 regression loss (``d2v_loss`` with ``loss_beta = 0``):

    .. math:: \mathcal{L} = \frac{1}{|M|} \sum_{(b,t) \in M} \frac{1}{\sqrt D} \sum_{d=1}^{D}
              (f_{btd} - y_{btd})^2,

    the squared error summed over ``D`` and scaled by :math:`1/\sqrt D`, averaged over the masked tokens
    ``M`` (``mask [B, T]``, ``True`` = masked; ``None`` = every token). fairseq sums over masked tokens and
    lets the trainer divide by ``sample_size`` (the masked tokens over all ranks); here the mean is
    per process (the mean over ranks is the global one when ranks mask equally many tokens).
    ``reduction="sum"`` returns the sum, for normalising by a global count yourself. Targets are detached.
    """
    if pred.shape != target.shape:
        raise ValueError(f"data2vec_loss: pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"data2vec_loss: reduction must be 'mean' or 'sum', got {reduction!r}")
    per_token = (pred - target.detach()).pow(2).sum(-1) / math.sqrt(pred.shape[-1])
    if mask is None:
        m = torch.ones_like(per_token)
    else:
        m = _as_weights(mask, per_token, "data2vec_loss", per_token.shape)
    total = (per_token * m).sum()
    return total if reduction == "sum" else total / m.sum().clamp_min(1)


# --------------------------------------------------------------------------------------------------
# MSN (Assran et al., 2022, "Masked Siamese Networks for Label-Efficient Learning") and PMSN
# (Assran et al., 2023, "The Hidden Uniform Cluster Prior in Self-Supervised Learning")
# --------------------------------------------------------------------------------------------------


def _global_mean(probs: torch.Tensor, distributed: bool) -> torch.Tensor:
    """Mean of the rows over every process, differentiable: ``gather`` of the local sums (its backward
    sums the incoming gradients of all ranks), divided by the all-reduced row count. After DDP's
    gradient averaging this is the single-process full-batch gradient, also for unequal shares."""
    sums = probs.sum(0, keepdim=True)
    if distributed and is_distributed():
        n = all_reduce_sum(probs.new_tensor(float(probs.shape[0])))
        return gather(sums).sum(0) / n
    return sums[0] / probs.shape[0]


def _plogp(p: torch.Tensor) -> torch.Tensor:
    return p * torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))


def power_law_prior(k: int, tau: float = 0.25, dtype: torch.dtype = torch.float32,
                    device: torch.device | str | None = None) -> torch.Tensor:
    r"""PMSN's power-law prior over ``k`` prototypes, :math:`\pi_j \propto j^{-\tau}`, ``j = 1..k``,
    normalised to sum to 1 (Assran et al., 2023, Section 5; lightly's ``_power_law_distribution``)."""
    j = torch.arange(1, k + 1, dtype=torch.float64, device=device)
    prior = j.pow(-tau)
    return (prior / prior.sum()).to(dtype)


@fp32_loss
def me_max(probs: torch.Tensor, distributed: bool = True) -> torch.Tensor:
    r"""MSN's mean-entropy-maximisation regulariser (Assran et al., 2022, Eq. (3)):

    .. math:: \mathcal{R} = -H(\bar p) + \log K = \sum_k \bar p_k \log \bar p_k + \log K,
              \qquad \bar p = \frac1n \sum_i p_i,

    with :math:`\bar p` the mean anchor prediction over the **global** batch (``probs`` ``[n, K]`` are this
    rank's rows; the mean is taken over all ranks, differentiably, as the official ``AllReduce``). It
    is 0 for a uniform :math:`\bar p` and :math:`\log K` for a one-hot one, and equals
    :math:`\mathrm{KL}(\bar p \,\Vert\, \mathcal{U}_K)`. Every rank returns the same value; with DDP's
    gradient averaging the gradient equals the single-process full-batch one. ``0 log 0 = 0``.
    """
    if probs.dim() != 2:
        raise ValueError(f"me_max expects [n, K] probabilities, got shape {tuple(probs.shape)}")
    p_bar = _global_mean(probs, distributed)
    return _plogp(p_bar).sum() + math.log(probs.shape[1])


@fp32_loss
def prior_kl(probs: torch.Tensor, prior: torch.Tensor, distributed: bool = True,
             direction: str = "paper") -> torch.Tensor:
    r"""PMSN's prior-matching regulariser (Assran et al., 2023, Section 5): with :math:`\bar p` the
    global mean anchor prediction (as in :func:`me_max`) and a prior :math:`\pi` (``[K]``, sums to 1, e.g.
    :func:`power_law_prior`),

    .. math:: \mathcal{R} = \mathrm{KL}(\bar p \,\Vert\, \pi) = \sum_k \bar p_k (\log \bar p_k - \log \pi_k),

    which is exactly :func:`me_max` for the uniform prior. ``direction="lightly"`` gives lightly's
    ``PMSNLoss`` instead, ``F.kl_div(p_bar.log(), prior, reduction="sum")`` =
    :math:`\mathrm{KL}(\pi \,\Vert\, \bar p)` (it does not reduce to ME-MAX).
    """
    if probs.dim() != 2 or prior.shape != probs.shape[1:]:
        raise ValueError(f"prior_kl expects [n, K] probabilities and a [K] prior, got {tuple(probs.shape)} "
                         f"and {tuple(prior.shape)}")
    p_bar = _global_mean(probs, distributed)
    prior = prior.detach().to(p_bar.dtype)
    if direction == "paper":
        return (_plogp(p_bar) - p_bar * torch.log(prior)).sum()
    if direction == "lightly":
        return (_plogp(prior) - prior * torch.log(p_bar.clamp_min(torch.finfo(p_bar.dtype).tiny))).sum()
    raise ValueError(f"prior_kl: direction must be 'paper' or 'lightly', got {direction!r}")


@fp32_loss
def msn_loss(anchor: torch.Tensor, target: torch.Tensor, prototypes: torch.Tensor, temp: float = 0.1,
             sharpen_temp: float = 0.25, me_max_weight: float = 1.0, use_sinkhorn: bool = True,
             n_iters: int = 3, prior: str | torch.Tensor = "uniform", power_law_tau: float = 0.25,
             distributed: bool = True) -> torch.Tensor:
    r"""MSN loss (Assran et al., 2022, Eq. (2)-(3); ``init_msn_loss`` of ``facebookresearch/msn``).

    Prototype assignments :math:`p(z) = \mathrm{softmax}(\langle \hat z, \hat q_k \rangle / \tau)` with
    cosine similarities to the prototypes ``[K, D]`` (``temp`` = :math:`\tau`, 0.1). Targets
    :math:`p^+ = \mathrm{sharpen}(p(z^+), T) = p^{1/T} / \sum_k p_k^{1/T}` (``sharpen_temp`` = T, 0.25),
    then, with ``use_sinkhorn``, ``n_iters`` rounds of Sinkhorn-Knopp on the sharpened targets over the
    global batch (as the official ``distributed_sinkhorn``, via :func:`~selfsup.losses.sinkhorn_knopp` on
    :math:`\log p^+` with :math:`\varepsilon = 1`). The loss is

    .. math:: \mathcal{L} = \frac{1}{Mn} \sum_{i} H(p^+_i, p(z_i)) + \lambda\, \mathcal{R}(\bar p),

    with ``anchor`` ``[M*n, D]`` holding ``M`` views per target stacked view-major (the targets are
    repeated ``M`` times, as ``torch.cat([targets] * num_views)``), ``target`` ``[n, D]`` (detached) and
    :math:`\mathcal{R}` = :func:`me_max` (``prior="uniform"``, MSN) or :func:`prior_kl` with the
    power-law prior :math:`\pi_j \propto j^{-\tau}` (``prior="power_law"``, PMSN, ``power_law_tau`` 0.25),
    or with a given ``[K]`` prior tensor. :math:`\lambda` = ``me_max_weight``.
    The cross-entropy is a mean over this rank's anchors; the regulariser uses the global mean.
    """
    if anchor.dim() != 2 or target.dim() != 2 or prototypes.dim() != 2 or target.shape[0] == 0 \
            or anchor.shape[0] % target.shape[0] or anchor.shape[1] != prototypes.shape[1] \
            or target.shape[1] != prototypes.shape[1]:
        raise ValueError(f"msn_loss expects anchor [M*n, D], target [n, D] and prototypes [K, D], got "
                         f"{tuple(anchor.shape)}, {tuple(target.shape)}, {tuple(prototypes.shape)}")
    views = anchor.shape[0] // target.shape[0]
    protos = F.normalize(prototypes, dim=1)
    log_p = F.log_softmax(F.normalize(anchor, dim=1) @ protos.T / temp, dim=1)
    with torch.no_grad():
        log_t = F.log_softmax(F.normalize(target.detach(), dim=1) @ protos.detach().T / temp, dim=1)
        log_sharp = F.log_softmax(log_t / sharpen_temp, dim=1)
        q = sinkhorn_knopp(log_sharp, 1.0, n_iters, distributed) if use_sinkhorn else log_sharp.exp()
        q = q.repeat(views, 1)
    ce = -(q * log_p).sum(1).mean()
    if me_max_weight == 0:
        return ce
    probs = log_p.exp()
    if isinstance(prior, torch.Tensor):
        reg = prior_kl(probs, prior, distributed)
    elif prior == "uniform":
        reg = me_max(probs, distributed)
    elif prior == "power_law":
        reg = prior_kl(probs, power_law_prior(probs.shape[1], power_law_tau, probs.dtype, probs.device), distributed)
    else:
        raise ValueError(f"msn_loss: prior must be 'uniform', 'power_law' or a [K] tensor, got {prior!r}")
    return ce + me_max_weight * reg


@fp32_loss
def pmsn_loss(anchor: torch.Tensor, target: torch.Tensor, prototypes: torch.Tensor, temp: float = 0.1,
              sharpen_temp: float = 0.25, prior_weight: float = 1.0, power_law_tau: float = 0.25,
              use_sinkhorn: bool = True, n_iters: int = 3, distributed: bool = True) -> torch.Tensor:
    r"""PMSN (Assran et al., 2023): :func:`msn_loss` with ME-MAX replaced by
    :math:`\mathrm{KL}(\bar p \,\Vert\, \pi)`, :math:`\pi_j \propto j^{-\tau}` (``power_law_tau`` 0.25, as
    lightly's ``PMSNLoss``; see :func:`prior_kl` for lightly's reversed KL)."""
    return msn_loss(anchor, target, prototypes, temp, sharpen_temp, prior_weight, use_sinkhorn, n_iters,
                    "power_law", power_law_tau, distributed)
