r"""Exemplar-CNN's surrogate-class objective (Dosovitskiy, Springenberg, Riedmiller & Brox 2014, "Discriminative
Unsupervised Feature Learning with Convolutional Neural Networks", NeurIPS, Eq. 1): each seed image
:math:`x_i` defines a class :math:`i`, and the network is trained to classify every transformed sample
:math:`T x_i` into its seed's class,

.. math:: L(X) = \sum_{x_i \in X} \sum_{T \in \mathcal{T}_i} \ell(i, T x_i),

with :math:`\ell` the multinomial negative log likelihood (softmax cross-entropy) over the :math:`N` surrogate
classes. The average here is per transformed sample over the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.losses.precision import fp32_loss


@fp32_loss
def exemplar_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    r"""Cross-entropy of ``logits`` ``[B, N]`` against surrogate classes ``targets`` ``[B]``; a target of -1 marks a
    sample whose image is not a seed (a seeded subset of seeds): it adds 0 and still counts in the batch mean,

    .. math:: \frac{1}{B} \sum_{b:\, t_b \ge 0} -\log \frac{\exp(s_{b, t_b})}{\sum_{c=1}^{N} \exp(s_{b, c})},

    so the value is a mean of per-sample terms, exact under DDP (equal batches per process) and under
    gradient accumulation."""
    if logits.dim() != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(f"exemplar_loss expects logits [B, N] and targets [B], got {tuple(logits.shape)} and "
                         f"{tuple(targets.shape)}")
    ce = F.cross_entropy(logits, targets.clamp_min(0).to(logits.device), reduction="none")
    return (ce * (targets >= 0).to(ce.dtype)).sum() / logits.shape[0]
