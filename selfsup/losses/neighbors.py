"""Losses whose targets are nearest neighbours from a memory bank: NNCLR and MSF (mean shift).

The bank (a :class:`selfsup.nets.MemoryBank`) is the same on every rank, so the look-ups are
per-sample and exact under DDP; only NNCLR's in-batch softmax needs the global batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.losses.contrastive import info_nce
from selfsup.losses.distributed import gather
from selfsup.losses.precision import fp32_loss


@fp32_loss
def nearest_neighbour(z: torch.Tensor, support: torch.Tensor, return_index: bool = False):
    r"""NNCLR's :math:`\mathrm{NN}(z, Q) = \arg\min_{q \in Q} \|z - q\|_2` on L2-normalised vectors
    (the most cosine-similar row of ``support``), returned normalised and without gradient
    (with the row indices too when ``return_index``)."""
    if support.dim() != 2 or support.shape[0] == 0 or support.shape[1] != z.shape[1]:
        raise ValueError(f"nearest_neighbour needs a non-empty support set [M, {z.shape[1]}], "
                         f"got {tuple(support.shape)}")
    support = F.normalize(support.detach(), dim=1).to(z.dtype)
    idx = (F.normalize(z.detach(), dim=1) @ support.T).argmax(1)
    return (support[idx], idx) if return_index else support[idx]


@fp32_loss
def nnclr_loss(z: torch.Tensor, p: torch.Tensor, support: torch.Tensor, temperature: float = 0.1,
               distributed: bool = True) -> torch.Tensor:
    r"""NNCLR (Dwibedi et al., 2021, Eq. 2): the nearest neighbour of :math:`z_i` in the support set
    is the anchor, the other view's prediction :math:`p_i^+` its positive, the batch's :math:`p_k^+`
    the contrast set (global batch under DDP):

    .. math:: \ell_i = -\log \frac{\exp(\mathrm{NN}(z_i, Q)^\top p_i^+/\tau)}
              {\sum_k \exp(\mathrm{NN}(z_i, Q)^\top p_k^+/\tau)}.

    The symmetric loss of the paper is ``(nnclr_loss(z1, p2, Q) + nnclr_loss(z2, p1, Q)) / 2``.
    """
    return info_nce(nearest_neighbour(z, support), p, None, temperature, distributed)


@fp32_loss
def msf_neighbours(target: torch.Tensor, bank: torch.Tensor, current: torch.Tensor, k: int) -> torch.Tensor:
    """Indices ``[N, k]`` of the ``k`` entries most cosine-similar to each normalised target, in the
    search set ``cat([bank, current])`` (indexed without building it: the bank can be 1M rows).
    ``bank`` and ``current`` (the global batch of targets) must hold L2-normalised rows."""
    m = bank.shape[0] + current.shape[0]
    if k <= 0 or m < k:
        raise ValueError(f"msf needs 0 < k <= {m} entries in the bank and the batch, got k={k}")
    v = F.normalize(target.detach(), dim=1)
    sim = torch.cat([v @ bank.to(v.dtype).T, v @ current.to(v.dtype).T], 1)
    return sim.topk(k, dim=1).indices


@fp32_loss
def msf_regression(query: torch.Tensor, bank: torch.Tensor, current: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    r""":math:`\frac{1}{N}\sum_i \frac{1}{k}\sum_{j} \|u_i - b_{idx_{ij}}\|^2
    = 2 - \frac{2}{Nk}\sum_{ij} u_i^\top b_{idx_{ij}}` for the normalised query :math:`u` and the
    rows :math:`b` of ``cat([bank, current])`` (L2-normalised, no gradient)."""
    u = F.normalize(query, dim=1)
    n_bank = bank.shape[0]
    in_bank = idx < n_bank
    b = u.new_empty(*idx.shape, u.shape[1])  # [N, k, D]: the selected rows, without concatenating the bank
    b[in_bank] = bank.detach()[idx[in_bank]].to(u.dtype)
    b[~in_bank] = current.detach()[idx[~in_bank] - n_bank].to(u.dtype)
    return (2 - 2 * torch.einsum("nd,nkd->nk", u, b)).mean()


@fp32_loss
def msf_loss(query: torch.Tensor, target: torch.Tensor, bank: torch.Tensor, k: int = 5, normalize_bank: bool = True,
             distributed: bool = True) -> torch.Tensor:
    r"""Mean shift, MSF (Koohpayegani et al., 2021, Eq. 2): pull the query towards the ``k`` nearest
    neighbours of its target in the memory bank (searched with the target, not the query):

    .. math:: \mathcal{L} = \frac{1}{N}\sum_i \frac{1}{k} \sum_{b \in \mathrm{NN}_k(v_i)} \|u_i - b\|_2^2,

    with :math:`u = q/\|q\|`, :math:`v = t/\|t\|`, the search set holding the bank's normalised past
    targets plus the current global batch of targets (the paper enqueues the batch before searching,
    so each target is its own first neighbour; with ``k = 1`` this is BYOL's loss).
    ``normalize_bank=False`` skips normalising a bank whose rows already have unit norm.
    """
    bank = F.normalize(bank.detach(), dim=1) if normalize_bank else bank.detach()
    v = F.normalize(target.detach(), dim=1)
    current = gather(v, grad=False) if distributed else v
    return msf_regression(query, bank, current, msf_neighbours(v, bank, current, k))
