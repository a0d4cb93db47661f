r"""Non-parametric instance discrimination (NPID, Wu, Xiong, Yu & Lin 2018, "Unsupervised Feature Learning via
Non-Parametric Instance Discrimination", CVPR, Sec. 3): every image is its own class, represented by its row
:math:`v_i` in a memory bank (:class:`selfsup.nets.instance_bank.InstanceBank`), and a feature :math:`f` is
scored against the bank with the non-parametric softmax

.. math:: P(i \mid f) = \frac{\exp(v_i^\top f / \tau)}{Z}, \qquad Z = \sum_{j=1}^{n} \exp(v_j^\top f / \tau).

The full softmax (Eq. 2) costs :math:`O(n)` per image; NCE (Eq. 3-6) replaces it with a binary problem of
data against :math:`K` noise samples from :math:`P_n = 1/n`, with :math:`Z` a constant estimated by Monte Carlo
(Eq. 7). Every function is a mean of per-image terms against a bank that is identical on every rank, so it is
exact under DDP with no communication (except :func:`nce_normalizer`, which all-reduces its mean).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from selfsup.losses.distributed import all_reduce_mean
from selfsup.losses.precision import fp32_loss


def _check(f: torch.Tensor, bank_rows: torch.Tensor, name: str) -> None:
    if f.dim() != 2 or bank_rows.dim() != 3 or bank_rows.shape[0] != f.shape[0] or bank_rows.shape[2] != f.shape[1]:
        raise ValueError(f"{name} expects f [B, D] and bank rows [B, 1 + K, D], got {tuple(f.shape)} and "
                         f"{tuple(bank_rows.shape)}")


@fp32_loss
def nce_normalizer(f: torch.Tensor, bank_rows: torch.Tensor, n: int, temperature: float = 0.07) -> torch.Tensor:
    r"""NPID's Monte-Carlo estimate of the normaliser (Eq. 7), treated as a constant afterwards:

    .. math:: Z \approx \tilde Z = n\, \mathbb{E}_j\!\left[\exp(v_j^\top f_i / \tau)\right]
              \approx \frac{n}{m} \sum_{k=1}^{m} \exp(v_{j_k}^\top f_i / \tau),

    the mean taken over every image of the batch and every one of its scored bank rows ``bank_rows``
    ``[B, 1 + K, D]`` (positive and negatives, as ``lemniscate.pytorch`` ``NCEAverage.forward``:
    ``Z = out.mean() * outputSize`` on the first batch). Under DDP the mean is over the global batch. No gradient."""
    _check(f, bank_rows, "nce_normalizer")
    with torch.no_grad():
        f = F.normalize(f.detach(), dim=1)
        scores = torch.einsum("bkd,bd->bk", bank_rows.detach().to(f.dtype), f) / temperature
        return all_reduce_mean(scores.exp().mean()) * n


@fp32_loss
def npid_nce_loss(f: torch.Tensor, bank_rows: torch.Tensor, z: torch.Tensor | float, n: int,
                  temperature: float = 0.07) -> torch.Tensor:
    r"""NPID's NCE loss (Eq. 4-6). ``bank_rows[:, 0]`` is each image's own bank row :math:`v_i` (the data
    sample), ``bank_rows[:, 1:]`` the :math:`K` noise rows :math:`v_{j}, j \sim P_n`; ``f`` ``[B, D]`` (L2-normalised
    here); ``z`` the fixed normaliser (:func:`nce_normalizer`); ``n`` the bank size. With
    :math:`P(i \mid f) = \exp(v_i^\top f/\tau)/Z` and :math:`P_n = 1/n`,

    .. math:: h(i, f) = \frac{P(i \mid f)}{P(i \mid f) + K P_n(i)},\qquad
              J_{NCE} = -\,\mathbb{E}\big[\log h(i, f_i)\big] - K\,\mathbb{E}_{j \sim P_n}\big[\log(1 - h(j, f_i))\big],

    estimated per image as :math:`-\log h(i, f_i) - \sum_{k=1}^{K} \log(1 - h(j_k, f_i))` and averaged over the
    batch (``NCECriterion``: the sum over the batch divided by the batch size). Computed in log space,
    :math:`\log h = s - \mathrm{logaddexp}(s, \log K P_n)` with :math:`s = v^\top f/\tau - \log Z`, so there is no
    ``eps`` (lemniscate adds 1e-7 to both denominators). Bank rows carry no gradient."""
    _check(f, bank_rows, "npid_nce_loss")
    k = bank_rows.shape[1] - 1
    if k < 1:
        raise ValueError("npid_nce_loss needs at least one noise row: bank_rows [B, 1 + K, D] with K >= 1")
    f = F.normalize(f, dim=1)
    z = torch.as_tensor(z, dtype=f.dtype, device=f.device).detach()
    s = torch.einsum("bkd,bd->bk", bank_rows.detach().to(f.dtype), f) / temperature - z.log()
    log_kpn = torch.full_like(s, math.log(k / n))
    denom = torch.logaddexp(s, log_kpn)
    log_h_data = s[:, 0] - denom[:, 0]
    log_1mh_noise = (log_kpn[:, 1:] - denom[:, 1:]).sum(1)
    return -(log_h_data + log_1mh_noise).mean()


@fp32_loss
def npid_softmax_loss(f: torch.Tensor, bank: torch.Tensor, targets: torch.Tensor,
                      temperature: float = 0.07) -> torch.Tensor:
    r"""NPID's full non-parametric softmax (Eq. 2), the exact objective NCE approximates: cross-entropy of each
    image's own bank row among all :math:`n` rows,

    .. math:: -\frac{1}{B} \sum_i \log \frac{\exp(v_{t_i}^\top f_i/\tau)}{\sum_{j=1}^{n} \exp(v_j^\top f_i/\tau)},

    ``f`` ``[B, D]`` (L2-normalised here), ``bank`` ``[n, D]`` (no gradient), ``targets`` ``[B]`` dataset row
    indices. :math:`O(nD)` per image: for small training sets (lemniscate's CIFAR ``LinearAverage``)."""
    if f.dim() != 2 or bank.dim() != 2 or bank.shape[1] != f.shape[1] or targets.shape != f.shape[:1]:
        raise ValueError(f"npid_softmax_loss expects f [B, D], bank [n, D], targets [B], got {tuple(f.shape)}, "
                         f"{tuple(bank.shape)}, {tuple(targets.shape)}")
    f = F.normalize(f, dim=1)
    return F.cross_entropy(f @ bank.detach().to(f.dtype).T / temperature, targets.to(f.device))
