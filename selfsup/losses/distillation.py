"""Self-distillation losses (Cookbook, Section 2.2.2)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from selfsup.losses.distributed import all_reduce_sum
from selfsup.losses.precision import fp32_loss


@fp32_loss
def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    r"""BYOL regression loss (Grill et al., 2020), Eq. (2):

    .. math:: \mathcal{L} = \| \bar p - \bar z \|_2^2 = 2 - 2 \frac{\langle p, z\rangle}{\|p\|\,\|z\|},

    averaged over the batch. ``z`` (the target) is detached here: gradients flow only
    through the online prediction ``p``. No batch statistics, so no gather is needed.
    """
    return (2 - 2 * F.cosine_similarity(p, z.detach(), dim=-1)).mean()


@fp32_loss
def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    r"""SimSiam's symmetric-half loss :math:`-\cos(p, \mathrm{sg}(z))` (Chen & He, 2021), Eq. (1)."""
    return -F.cosine_similarity(p, z.detach(), dim=-1).mean()


@fp32_loss
def simsiam_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    r"""SimSiam's symmetric loss (Chen & He, 2021), Eq. (2):

    .. math:: \mathcal{L} = \tfrac12 D(p_1, \mathrm{sg}(z_2)) + \tfrac12 D(p_2, \mathrm{sg}(z_1)),
              \quad D(p, z) = -\frac{\langle p, z\rangle}{\|p\|\,\|z\|},

    averaged over the batch; its minimum is -1. Per-sample, so exact under DDP without a gather.
    """
    return (negative_cosine(p1, z2) + negative_cosine(p2, z1)) / 2


@fp32_loss
def dino_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], center: torch.Tensor,
              student_temp: float = 0.1, teacher_temp: float = 0.04) -> torch.Tensor:
    r"""DINO's multi-crop cross-entropy (Caron et al., 2021), Eq. (3) and Algorithm 1.

    With :math:`P_t^{(i)} = \mathrm{softmax}((g_t(x_i) - c)/\tau_t)` for the teacher's global crops
    and :math:`P_s^{(v)} = \mathrm{softmax}(g_s(x_v)/\tau_s)` for every student crop,

    .. math:: \mathcal{L} = \frac{1}{|\mathcal{P}|} \sum_{(i, v) \in \mathcal{P}}
              \frac1B \sum_b -\sum_k P_{t,bk}^{(i)} \log P_{s,bk}^{(v)},
              \qquad \mathcal{P} = \{(i, v) : i < G,\ v < V,\ v \ne i\},

    i.e. every student crop against every teacher global crop except the same view. Teacher crop
    ``i`` must be the same view as student crop ``i`` (globals first, as multi-crop views come).
    The teacher side is detached. Each term is a mean over this process's rows, so the mean over
    processes equals the full-batch loss; ``center`` is shared (see :func:`dino_center_update`).
    """
    n_s, n_t = len(student), len(teacher)
    if n_t < 1 or n_t > n_s:
        raise ValueError(f"dino_loss needs 1 <= teacher crops <= student crops, got {n_t} and {n_s}")
    if n_s * n_t - n_t == 0:
        raise ValueError("dino_loss needs at least two crops: one teacher crop and a different student crop")
    shapes = {tuple(x.shape) for x in [*student, *teacher]}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ValueError(f"dino_loss: every crop must be a [batch, K] tensor of one shape, got {sorted(shapes)}")
    log_p = F.log_softmax(torch.stack(list(student)) / student_temp, dim=-1)  # [V, B, K]
    with torch.no_grad():
        q = F.softmax((torch.stack(list(teacher)) - center) / teacher_temp, dim=-1)  # [G, B, K]
    batch = log_p.shape[1]
    ce = -q.flatten(1) @ log_p.flatten(1).T / batch  # [G, V]: mean cross-entropy of each (teacher, student) pair
    same_view = torch.eye(n_t, n_s, dtype=torch.bool, device=ce.device)
    return ce.masked_fill(same_view, 0.0).sum() / (n_s * n_t - n_t)


@fp32_loss
@torch.no_grad()
def dino_center_update(center: torch.Tensor, teacher: Sequence[torch.Tensor] | torch.Tensor,
                       momentum: float = 0.9) -> torch.Tensor:
    r"""DINO's center (Caron et al., 2021), Eq. (4): :math:`c \leftarrow m\,c + (1-m)\,\frac1B\sum_b g_t(x_b)`.

    The mean runs over the global batch (all processes: the sums and counts are all-reduced) and
    over every teacher crop. Returns the new center; nothing is updated in place and no gradient flows.
    """
    t = torch.cat(list(teacher)) if isinstance(teacher, (list, tuple)) else teacher
    t = t.detach().flatten(0, -2)
    stats = torch.cat([t.sum(0), t.new_tensor([t.shape[0]])])
    stats = all_reduce_sum(stats)
    return center * momentum + (1 - momentum) * (stats[:-1] / stats[-1]).to(center.dtype)


class DINOLoss(nn.Module):
    """:func:`dino_loss` with its running center held in a buffer (checkpointed with the model).

    ``forward`` returns the loss computed with the current center, then (in training mode)
    moves the center towards this batch's teacher mean, as in DINO's ``DINOLoss``.
    """

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9) -> None:
        super().__init__()
        if out_dim <= 0 or student_temp <= 0 or not 0 <= center_momentum <= 1:
            raise ValueError(f"DINOLoss needs out_dim > 0, student_temp > 0 and center_momentum in [0, 1], got "
                             f"{out_dim}, {student_temp}, {center_momentum}")
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(out_dim))

    def forward(self, student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor],
                teacher_temp: float) -> torch.Tensor:
        loss = dino_loss(student, teacher, self.center, self.student_temp, teacher_temp)
        if self.training:
            self.center.copy_(dino_center_update(self.center, teacher, self.center_momentum))
        return loss


@fp32_loss
@torch.no_grad()
def correlation_update(corr: torch.Tensor, z: torch.Tensor, rho: float) -> torch.Tensor:
    r"""DirectPred's running correlation (Tian et al., 2021), Eq. (19):

    .. math:: \hat F \leftarrow \rho \hat F + (1-\rho)\,\mathbb{E}_B[z z^\top],

    with the expectation over the global batch (sums and counts all-reduced over processes).
    ``z`` is ``[batch, d]`` (detached here); returns the new ``[d, d]`` matrix.
    """
    z = z.detach()
    d = z.shape[1]
    if corr.shape != (d, d):
        raise ValueError(f"correlation_update: corr must be [{d}, {d}] for {d}-d inputs, got {list(corr.shape)}")
    zz = z.T @ z
    stats = all_reduce_sum(torch.cat([zz.flatten(), z.new_tensor([z.shape[0]])]))
    return rho * corr + (1 - rho) * (stats[:-1].view(d, d) / stats[-1]).to(corr.dtype)


@fp32_loss
@torch.no_grad()
def directpred_predictor(corr: torch.Tensor, eps: float = 0.1) -> torch.Tensor:
    r"""DirectPred's linear predictor (Tian et al., 2021), Eq. (18): with :math:`\hat F = U\,\mathrm{diag}(s)\,U^\top`,

    .. math:: W_p = U\,\mathrm{diag}(p)\,U^\top, \qquad p_j = \frac{\sqrt{s_j}}{\max_{j'} \sqrt{s_{j'}}} + \epsilon.

    Negative eigenvalues (rounding) count as 0. ``W_p`` is symmetric, so ``z @ W_p`` applies it to rows.
    """
    s, u = torch.linalg.eigh((corr + corr.T) / 2)
    s = s.clamp(min=0)
    p = (s / s.max().clamp(min=torch.finfo(s.dtype).tiny)).sqrt() + eps
    return (u * p) @ u.T
