"""ReSSL's relational loss (Zheng et al., 2021, "ReSSL: Relational Self-Supervised Learning with Weak
Augmentation", NeurIPS): match the student's similarity distribution over a queue of past keys to the teacher's
sharper one.

The queue (a :class:`selfsup.nets.MemoryBank`) is the same on every rank and the loss is a mean of per-sample
terms, so it is exact under DDP without communication (the mean over ranks is the global-batch mean).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.losses.precision import fp32_loss


@fp32_loss
def ressl_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, student_temp: float = 0.1,
               teacher_temp: float = 0.04) -> torch.Tensor:
    r"""ReSSL (Zheng et al., 2021, Eqs. 2-4): with L2-normalised student embeddings :math:`z_i` (strong view),
    teacher embeddings :math:`z'_i` (weak view, momentum encoder, no gradient) and the queue :math:`\{n_m\}`,

    .. math:: p^t_{im} = \frac{\exp(z'^\top_i n_m/\tau_t)}{\sum_{m'} \exp(z'^\top_i n_{m'}/\tau_t)}, \quad
              p^s_{im} = \frac{\exp(z_i^\top n_m/\tau_s)}{\sum_{m'} \exp(z_i^\top n_{m'}/\tau_s)}, \quad
              \mathcal{L} = \frac{1}{N}\sum_i -\sum_m p^t_{im} \log p^s_{im},

    the cross-entropy of the student's relation to the teacher's; :math:`\tau_t < \tau_s` sharpens the target
    (paper: 0.04 and 0.1). The positive pair is not in the relation: only the queue is.
    """
    if q.shape != k.shape or q.dim() != 2 or queue.dim() != 2 or queue.shape[1] != q.shape[1] or queue.shape[0] == 0:
        raise ValueError(f"ressl_loss expects q, k [N, D] and a non-empty queue [M, D], got {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(queue.shape)}")
    bank = F.normalize(queue.detach(), dim=1).to(q.dtype)
    log_p_s = F.log_softmax(F.normalize(q, dim=1) @ bank.T / student_temp, dim=1)
    p_t = F.softmax(F.normalize(k.detach(), dim=1) @ bank.T / teacher_temp, dim=1)
    return -(p_t * log_p_s).sum(1).mean()
