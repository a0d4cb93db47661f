"""Pretext-task classification (cookbook, "Origins of SSL"): the network names which transformation made its
input, RotNet's rotation (Gidaris et al. 2018), the jigsaw permutation (Noroozi & Favaro 2016) or the
neighbour's position (Doersch et al. 2015). The transforms are in :mod:`selfsup.views.pretext_spatial`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.losses.instance import npid_nce_loss, npid_softmax_loss
from selfsup.losses.precision import fp32_loss

__all__ = ["pretext_cross_entropy", "pirl_loss", "pirl_softmax_loss"]


@fp32_loss
def pretext_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    r"""Mean cross-entropy of a pretext classifier, ``logits [N, K]``, ``targets [N]`` (the transformation's index).

    RotNet (Gidaris et al. 2018, Eq. 1-2), with all :math:`K = 4` rotations :math:`g(\cdot \mid y)` of image
    :math:`X_i` in the batch:

    .. math:: \mathcal{L} = \frac{1}{N} \sum_{i=1}^{N} \frac{1}{K} \sum_{y=1}^{K} -\log F^{y}(g(X_i \mid y)),
              \qquad F^{y} = \operatorname{softmax}(\text{logits})_y

    The jigsaw (1 of :math:`K` permutations) and relative patch location (1 of 8 neighbours) are the same loss
    over their own classes. Per-row terms only (no batch statistics), so it splits into micro-batches."""
    return F.cross_entropy(logits, targets.long())


@fp32_loss
def pirl_loss(g: torch.Tensor, f: torch.Tensor, bank_rows: torch.Tensor, n: int,
              z: tuple[torch.Tensor | float, torch.Tensor | float] = (1.0, 1.0), temperature: float = 0.07,
              lam: float = 0.5) -> torch.Tensor:
    r"""PIRL's loss (Misra & van der Maaten 2020, Eq. 5): noise-contrastive estimation of each image's memory-bank
    row :math:`m_I` from the jigsaw-transformed image's embedding :math:`g(v_{I^t})` and from the image's own
    :math:`f(v_I)`, against the same :math:`K` memory-bank negatives :math:`m_{I'}`:

    .. math:: \mathcal{L}(I, I^t) = \lambda\, L_{NCE}(m_I, g(v_{I^t})) + (1 - \lambda)\, L_{NCE}(m_I, f(v_I)),

    .. math:: L_{NCE}(m_I, v) = -\log h(m_I, v) - \sum_{I' \in D_N} \log(1 - h(m_{I'}, v)),
              \qquad h(m, v) = \frac{\exp(m^\top v / \tau) / Z}{\exp(m^\top v / \tau) / Z + K / n}

    (Eq. 3-4; cosine similarity of L2-normalised 128-d embeddings, :math:`\tau = 0.07`, :math:`\lambda = 0.5`).
    ``g``, ``f`` ``[B, D]`` (normalised here); ``bank_rows`` ``[B, 1 + K, D]``: each image's own row first, then
    its negatives (no gradient); ``n`` the bank size; ``z`` the normalisers of the two terms (1: the equation as
    printed; NPID's Monte-Carlo estimate, :func:`selfsup.losses.nce_normalizer`, is the PIRL method's default).
    Each term is :func:`selfsup.losses.npid_nce_loss`, averaged over the batch."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"pirl_loss: lam must be in [0, 1], got {lam}")
    return (lam * npid_nce_loss(g, bank_rows, z[0], n, temperature)
            + (1 - lam) * npid_nce_loss(f, bank_rows, z[1], n, temperature))


@fp32_loss
def pirl_softmax_loss(g: torch.Tensor, f: torch.Tensor, bank: torch.Tensor, targets: torch.Tensor,
                      temperature: float = 0.07, lam: float = 0.5) -> torch.Tensor:
    r"""PIRL's Eq. 5 with the exact non-parametric softmax over the whole bank in place of NCE (NPID's Eq. 2, the
    objective NCE approximates; for small training sets):

    .. math:: \lambda\, \ell(g) + (1 - \lambda)\, \ell(f), \qquad
              \ell(v) = -\frac{1}{B} \sum_i \log \frac{\exp(m_{t_i}^\top v_i / \tau)}{\sum_{j=1}^{n}
              \exp(m_j^\top v_i / \tau)},

    ``g``, ``f`` ``[B, D]`` (normalised here), ``bank`` ``[n, D]`` (no gradient), ``targets`` ``[B]`` dataset rows.
    Each term is :func:`selfsup.losses.npid_softmax_loss`."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"pirl_softmax_loss: lam must be in [0, 1], got {lam}")
    return (lam * npid_softmax_loss(g, bank, targets, temperature)
            + (1 - lam) * npid_softmax_loss(f, bank, targets, temperature))
