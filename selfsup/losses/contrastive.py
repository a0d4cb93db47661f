"""Contrastive (InfoNCE-family) losses, exact across processes.

Cookbook, Section 2.2.1 (deep metric learning family).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.losses.distributed import gather, local_offset


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """fp16/bf16 logits -> fp32 for the softmax; fp32/fp64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1, distributed: bool = True) -> torch.Tensor:
    r"""NT-Xent of SimCLR (Chen et al., 2020), Eq. (1).

    With :math:`s_{ij} = z_i^\top z_j / (\|z_i\|\|z_j\|)` over the 2N views of a batch,

    .. math:: \ell(i, j) = -\log \frac{\exp(s_{ij}/\tau)}{\sum_{k \ne i} \exp(s_{ik}/\tau)},

    averaged over all 2N anchors (each view's positive is the other view of the same
    image). Under DDP, ``N`` is the global batch: negatives come from every rank.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"nt_xent expects two [N, D] tensors of equal shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    g1, g2 = (gather(z1), gather(z2)) if distributed else (z1, z2)
    n, n_all = z1.shape[0], g1.shape[0]
    off = local_offset(n) if distributed else 0
    anchors = torch.cat([z1, z2], 0)
    logits = anchors @ torch.cat([g1, g2], 0).T / temperature  # [2n, 2N]
    idx = torch.arange(n, device=z1.device) + off
    self_idx = torch.cat([idx, idx + n_all])
    pos_idx = torch.cat([idx + n_all, idx])
    rows = torch.arange(2 * n, device=z1.device)
    logits = _upcast(logits)
    logits[rows, self_idx] = float("-inf")
    return F.cross_entropy(logits, pos_idx)


def info_nce(query: torch.Tensor, positive: torch.Tensor, negatives: torch.Tensor | None = None,
             temperature: float = 0.2, distributed: bool = True) -> torch.Tensor:
    r"""InfoNCE (van den Oord et al., 2018) with in-batch and optional extra negatives.

    For a query :math:`q_i` with positive :math:`k_i`,

    .. math:: \ell_i = -\log \frac{\exp(q_i^\top k_i/\tau)}{\sum_j \exp(q_i^\top k_j/\tau) + \sum_m \exp(q_i^\top n_m/\tau)},

    where :math:`k_j` runs over the (global) batch of positives and :math:`n_m` over
    ``negatives`` (e.g. a MoCo queue). Inputs are L2-normalised here.
    """
    q, k = F.normalize(query, dim=1), F.normalize(positive, dim=1)
    kg = gather(k) if distributed else k
    off = local_offset(q.shape[0]) if distributed else 0
    logits = q @ kg.T
    if negatives is not None:
        logits = torch.cat([logits, q @ F.normalize(negatives, dim=1).T], 1)
    labels = torch.arange(q.shape[0], device=q.device) + off
    return F.cross_entropy(_upcast(logits) / temperature, labels)
