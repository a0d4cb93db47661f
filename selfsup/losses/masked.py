"""iBOT (Zhou et al., 2022) and DINOv2 (Oquab et al., 2024) masked-token self-distillation losses: the
teacher's centred patch probabilities, the patch loss over masked tokens, DINOv2's Sinkhorn-Knopp teacher and the
KoLeo regulariser. (MAE / SimMIM / data2vec 2.0 are in :mod:`selfsup.losses.masked_regression`, MSN / PMSN in
:mod:`selfsup.losses.masked_siamese`.)

Small pure functions; models, masks and EMA teachers live elsewhere. Conventions:

- a patch mask is ``[B, N]`` bool (or 0/1), ``True`` = masked (hidden from the student), as
  ``selfsup.views.masks``;
- every loss runs in float32 under autocast (:func:`~selfsup.losses.precision.fp32_loss`);
- statistics over the batch (centers, Sinkhorn marginals) are all-reduced, so one rank computes what one
  process would on the global batch; per-sample terms are means over this rank's rows (the mean over ranks is
  the global-batch loss when ranks hold equal shares). KoLeo is the documented exception: it is per process,
  as in DINOv2.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from selfsup.losses.clustering import _all_reduce_max, sinkhorn_knopp
from selfsup.losses.distributed import all_reduce_sum, gather, local_offset
from selfsup.losses.masked_regression import _as_weights
from selfsup.losses.precision import fp32_loss

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
