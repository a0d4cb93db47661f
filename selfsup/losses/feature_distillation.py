"""Feature distillation from a frozen teacher: a student learns to match the teacher's features.

The queue loss is lightly-train's ``distillation`` (v1) loss, after "Knowledge distillation: A good
teacher is patient and consistent" (Beyer et al., 2022) without labels: a queue of the teacher's past
features plays the classifier, and the student's similarities to it must match the teacher's.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.losses.precision import fp32_loss


@fp32_loss
def queue_distillation_loss(student: torch.Tensor, teacher: torch.Tensor, queue: torch.Tensor,
                            temperature: float = 0.07) -> torch.Tensor:
    r"""KL between the teacher's and the student's softmax similarities to a queue of teacher features.

    With L2-normalised student features :math:`s_i` (projected to the teacher's width), teacher features
    :math:`t_i` and queue rows :math:`q_m` (teacher features of this and past batches),

    .. math:: p_{im} = \mathrm{softmax}_m(t_i^\top q_m / \tau), \qquad
              r_{im} = \mathrm{softmax}_m(s_i^\top q_m / \tau),

    .. math:: \mathcal{L} = \frac{1}{B} \sum_i \mathrm{KL}(p_i \,\|\, r_i)
              = \frac{1}{B} \sum_i \sum_m p_{im} (\log p_{im} - \log r_{im}),

    with one temperature :math:`\tau` = 0.07 for both (lightly-train ``DistillationLoss``,
    ``KLDivLoss(reduction="batchmean")``). ``student`` ``[B, D]``, ``teacher`` ``[B, D]`` and ``queue``
    ``[M, D]`` are normalised here; the teacher and the queue carry no gradient. Per-image terms: exact under
    DDP and gradient accumulation for a given queue.
    """
    if student.dim() != 2 or student.shape != teacher.shape or queue.dim() != 2 or queue.shape[1] != student.shape[1]:
        raise ValueError(f"queue_distillation_loss expects student and teacher [B, D] and queue [M, D], got "
                         f"{tuple(student.shape)}, {tuple(teacher.shape)}, {tuple(queue.shape)}")
    s = F.normalize(student, dim=1)
    t = F.normalize(teacher.detach(), dim=1).to(s.dtype)
    q = F.normalize(queue.detach(), dim=1).to(s.dtype)
    log_p = F.log_softmax(t @ q.T / temperature, dim=1)
    log_r = F.log_softmax(s @ q.T / temperature, dim=1)
    return (log_p.exp() * (log_p - log_r)).sum(1).mean()


@fp32_loss
def cosine_distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    r"""Cosine regression of the student's (projected) features onto the teacher's:

    .. math:: \mathcal{L} = \frac{1}{B} \sum_i \left(1 - \frac{s_i^\top t_i}{\|s_i\|\,\|t_i\|}\right).

    The teacher carries no gradient.
    """
    if student.dim() != 2 or student.shape != teacher.shape:
        raise ValueError(f"cosine_distillation_loss expects two [B, D] tensors of equal shape, got "
                         f"{tuple(student.shape)} and {tuple(teacher.shape)}")
    return (1 - F.cosine_similarity(student, teacher.detach(), dim=1)).mean()
