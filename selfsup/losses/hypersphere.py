"""Losses on the unit hypersphere: alignment and uniformity, DirectCLR, MACL and the CO2 regulariser.

All L2-normalise their inputs. Batch statistics use the global batch under DDP: each rank computes its
local rows against the gathered batch, or the whole global statistic (see ``selfsup.losses.distributed``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.losses.contrastive import info_nce, nt_xent
from selfsup.losses.distributed import all_reduce_mean, gather, local_offset
from selfsup.losses.precision import fp32_loss


@fp32_loss
def alignment_loss(z1: torch.Tensor, z2: torch.Tensor, alpha: float = 2.0) -> torch.Tensor:
    r"""Alignment (Wang & Isola, 2020, "Understanding Contrastive Representation Learning through Alignment
    and Uniformity on the Hypersphere", Section 4.1):
    :math:`\mathcal{L}_{align} = \mathbb{E}_{(x,y) \sim p_{pos}} \lVert f(x) - f(y) \rVert_2^\alpha`, α = 2."""
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"alignment_loss expects two [N, D] tensors of equal shape, got {tuple(z1.shape)} and "
                         f"{tuple(z2.shape)}")
    return (F.normalize(z1, dim=1) - F.normalize(z2, dim=1)).norm(dim=1).pow(alpha).mean()


@fp32_loss
def uniformity_loss(z: torch.Tensor, t: float = 2.0, distributed: bool = True) -> torch.Tensor:
    r"""Uniformity (Wang & Isola, 2020, Section 4.1), the log of the mean Gaussian potential over distinct pairs:
    :math:`\mathcal{L}_{uniform} = \log \frac{2}{N(N-1)} \sum_{i<j} e^{-t \lVert f(x_i) - f(x_j) \rVert_2^2}`,
    t = 2 (the official ``torch.pdist`` form). Its minimum over the sphere is reached by uniformly spread
    points; two antipodal points give :math:`-4t`. Under DDP the pairs are those of the global batch (every
    rank returns the global value)."""
    if z.dim() != 2 or z.shape[0] < 2:
        raise ValueError(f"uniformity_loss expects [N >= 2, D], got shape {tuple(z.shape)}")
    zn = F.normalize(z, dim=1)
    g = gather(zn) if distributed else zn
    sq = (2 - 2 * g @ g.T).clamp_min(0)
    i, j = torch.triu_indices(g.shape[0], g.shape[0], offset=1, device=g.device)
    return torch.logsumexp(-t * sq[i, j], 0) - torch.log(torch.tensor(float(i.numel()), dtype=g.dtype))


@fp32_loss
def align_uniform_loss(z1: torch.Tensor, z2: torch.Tensor, lambda_: float = 1.0, alpha: float = 2.0,
                       t: float = 2.0, distributed: bool = True) -> torch.Tensor:
    r"""Wang & Isola's objective (their official ``align_loss`` / ``uniform_loss`` combination):
    :math:`\mathcal{L}_{align} + \lambda\, \frac12 [\mathcal{L}_{uniform}(Z) + \mathcal{L}_{uniform}(Z')]`,
    α = 2, t = 2, λ = 1 (lightly's ``HypersphereLoss`` defaults to t = 1)."""
    uniform = uniformity_loss(z1, t, distributed) + uniformity_loss(z2, t, distributed)
    return alignment_loss(z1, z2, alpha) + lambda_ * uniform / 2


@fp32_loss
def directclr_loss(r1: torch.Tensor, r2: torch.Tensor, dim0: int = 360, temperature: float = 0.1,
                   negatives: str = "cross_view", distributed: bool = True) -> torch.Tensor:
    r"""DirectCLR (Jing et al., 2022, "Understanding Dimensional Collapse in Contrastive Self-supervised
    Learning", Section 6): InfoNCE directly on the first :math:`d_0` dimensions of the backbone
    representation, :math:`z = r[:d_0]`, with no projector (:math:`d_0 = 360` of ResNet-50's 2048, τ = 0.1).

    ``negatives="cross_view"`` is the official ``infoNCE``: for each :math:`z_i`, the positive :math:`z'_i`
    and the other view's batch as negatives, symmetrised,
    :math:`\frac12 [\ell(Z, Z') + \ell(Z', Z)]`,
    :math:`\ell = -\frac1N \sum_i [\hat z_i^\top \hat z'_i/\tau - \log \sum_j e^{\hat z_i^\top \hat z'_j/\tau}]`.
    ``"nt_xent"`` is lightly's ``DirectCLRLoss``: SimCLR's NT-Xent with all 2N-2 other views as
    negatives (lightly's defaults are ``loss_dim=64``, τ = 0.5).
    """
    if r1.shape != r2.shape or r1.dim() < 2:
        raise ValueError(f"directclr_loss expects two [N, ...] tensors of equal shape, got {tuple(r1.shape)} and "
                         f"{tuple(r2.shape)}")
    z1, z2 = r1.flatten(1)[:, :dim0], r2.flatten(1)[:, :dim0]
    if negatives == "cross_view":
        return (info_nce(z1, z2, None, temperature, distributed) + info_nce(z2, z1, None, temperature, distributed)) / 2
    if negatives == "nt_xent":
        return nt_xent(z1, z2, temperature, distributed)
    raise ValueError(f"directclr_loss: negatives must be 'cross_view' or 'nt_xent', got {negatives!r}")


@fp32_loss
def macl_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1, alpha: float = 0.5, a0: float = 0.0,
              distributed: bool = True) -> torch.Tensor:
    r"""Model-aware contrastive loss, MACL (Huang et al., 2023, "Model-Aware Contrastive Learning: Towards
    Escaping the Dilemmas", ICML).

    NT-Xent over the 2N views with a temperature set by the current alignment
    :math:`A = \frac{1}{2N} \sum_i \hat z_i^\top \hat z'_i` (no gradient, global batch):
    :math:`\tau_A = \tau_0\, [1 + \alpha (A - A_0)]`. With :math:`P_i` the softmax probability of anchor
    i's positive among its 2N-1 other views at :math:`\tau_A`, the loss is reweighted by the gradient-balancing
    factor :math:`V_i = \mathrm{sg}[1/(1 - P_i)]`:

    .. math:: \mathcal{L} = -\frac{1}{2N} \sum_{i=1}^{2N} V_i \log P_i .

    :math:`\tau_0 = 0.1`, α = 0.5, :math:`A_0 = 0` (lightly's ``MACLLoss`` defaults).
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"macl_loss expects two [N, D] tensors of equal shape, got {tuple(z1.shape)} and "
                         f"{tuple(z2.shape)}")
    if not 0.0 <= alpha <= 1.0 or not 0.0 <= a0 <= 1.0:
        raise ValueError(f"macl_loss: alpha and a0 must lie in [0, 1], got {alpha} and {a0}")
    z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    g1, g2 = (gather(z1), gather(z2)) if distributed else (z1, z2)
    n, n_all = z1.shape[0], g1.shape[0]
    off = local_offset(n) if distributed else 0
    with torch.no_grad():
        align = (z1 * z2).sum(1).mean()
        align = all_reduce_mean(align) if distributed else align
    tau = temperature * (1 + alpha * (align - a0))
    logits = torch.cat([z1, z2]) @ torch.cat([g1, g2]).T / tau  # [2n, 2N]
    idx = torch.arange(n, device=z1.device) + off
    rows = torch.arange(2 * n, device=z1.device)
    logits[rows, torch.cat([idx, idx + n_all])] = float("-inf")
    log_p = logits.log_softmax(1)[rows, torch.cat([idx + n_all, idx])]
    weight = 1 / (1 - log_p.detach().exp() + 1e-8)
    return -(weight * log_p).mean()


def _co2_log_probs(q: torch.Tensor, k: torch.Tensor, bank: torch.Tensor | None, temperature: float,
                   distributed: bool) -> torch.Tensor:
    """log-softmax over [positive, negatives] of query ``q`` with positive ``k``; negatives = ``bank`` or,
    when None, the other rows of the (global) ``k``."""
    pos = (q * k).sum(1, keepdim=True)
    if bank is not None:
        neg = q @ bank.T
    else:
        kg = gather(k) if distributed else k
        off = local_offset(q.shape[0]) if distributed else 0
        neg = q @ kg.T
        keep = torch.ones_like(neg, dtype=torch.bool)
        keep[torch.arange(q.shape[0]), torch.arange(q.shape[0]) + off] = False
        neg = neg[keep].view(q.shape[0], -1)
    return (torch.cat([pos, neg], 1) / temperature).log_softmax(1)


@fp32_loss
def co2_loss(z1: torch.Tensor, z2: torch.Tensor, negatives: torch.Tensor | None = None, temperature: float = 0.05,
             distributed: bool = True) -> torch.Tensor:
    r"""CO2 consistency regulariser (Wei et al., 2021, "CO2: Consistent Contrast for Unsupervised Visual
    Representation Learning", ICLR), added to an instance-discrimination loss with a weight α.

    For the query :math:`q = \hat z_1` and its positive key :math:`p = \hat z_2`, the similarity distributions
    over the positive and the negatives :math:`\{n_k\}` at temperature :math:`\tau_{con}` (0.05),
    :math:`P \propto e^{[q^\top p,\, q^\top n_1, \dots]/\tau_{con}}` and :math:`Q \propto e^{[p^\top q,\, p^\top n_1,
    \dots]/\tau_{con}}`, are made consistent:

    .. math:: \mathcal{L}_{con} = \tfrac12 \mathrm{KL}(P \Vert Q) + \tfrac12 \mathrm{KL}(Q \Vert P),

    averaged over the batch. ``negatives`` ``[K, D]`` is a queue (detached); ``None`` uses the batch as
    lightly's ``CO2Regularizer`` does: the other keys for :math:`P`, the other queries for :math:`Q`
    (global batch under DDP). Differentiable (lightly's returns a detached tensor).
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"co2_loss expects two [N, D] tensors of equal shape, got {tuple(z1.shape)} and "
                         f"{tuple(z2.shape)}")
    q, k = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    bank = None if negatives is None else F.normalize(negatives.detach(), dim=1)
    log_p = _co2_log_probs(q, k, bank, temperature, distributed)
    log_q = _co2_log_probs(k, q, bank, temperature, distributed)
    kl_pq = (log_p.exp() * (log_p - log_q)).sum(1)
    kl_qp = (log_q.exp() * (log_q - log_p)).sum(1)
    return (0.5 * (kl_pq + kl_qp)).mean()
