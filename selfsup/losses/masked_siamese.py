"""MSN (Assran et al., 2022, "Masked Siamese Networks for Label-Efficient Learning") and PMSN (Assran et al.,
2023, "The Hidden Uniform Cluster Prior in Self-Supervised Learning"): prototype assignments of a masked anchor
matched to sharpened targets of the unmasked view, with a prior on the mean assignment (ME-MAX or a power law).

Pure functions; every loss runs in float32 under autocast (:func:`~selfsup.losses.precision.fp32_loss`). The mean
prediction is all-reduced, so one rank computes what one process would on the global batch; per-sample terms are
means over this rank's rows.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from selfsup.losses.clustering import sinkhorn_knopp
from selfsup.losses.distributed import all_reduce_sum, gather, is_distributed
from selfsup.losses.precision import fp32_loss

# --------------------------------------------------------------------------------------------------
# MSN (Assran et al., 2022, "Masked Siamese Networks for Label-Efficient Learning") and PMSN
# (Assran et al., 2023, "The Hidden Uniform Cluster Prior in Self-Supervised Learning")
# --------------------------------------------------------------------------------------------------


def _global_mean(probs: torch.Tensor, distributed: bool) -> torch.Tensor:
    """Mean of the rows over every process, differentiable: ``gather`` of the local sums (its backward
    sums the incoming gradients of all ranks), divided by the all-reduced row count. After DDP's
    gradient averaging this is the single-process full-batch gradient, also for unequal shares."""
    sums = probs.sum(0, keepdim=True)
    if distributed and is_distributed():
        n = all_reduce_sum(probs.new_tensor(float(probs.shape[0])))
        return gather(sums).sum(0) / n
    return sums[0] / probs.shape[0]


def _plogp(p: torch.Tensor) -> torch.Tensor:
    return p * torch.log(p.clamp_min(torch.finfo(p.dtype).tiny))


def power_law_prior(k: int, tau: float = 0.25, dtype: torch.dtype = torch.float32,
                    device: torch.device | str | None = None) -> torch.Tensor:
    r"""PMSN's power-law prior over ``k`` prototypes, :math:`\pi_j \propto j^{-\tau}`, ``j = 1..k``,
    normalised to sum to 1 (Assran et al., 2023, Section 5; lightly's ``_power_law_distribution``)."""
    j = torch.arange(1, k + 1, dtype=torch.float64, device=device)
    prior = j.pow(-tau)
    return (prior / prior.sum()).to(dtype)


@fp32_loss
def me_max(probs: torch.Tensor, distributed: bool = True) -> torch.Tensor:
    r"""MSN's mean-entropy-maximisation regulariser (Assran et al., 2022, Eq. (3)):

    .. math:: \mathcal{R} = -H(\bar p) + \log K = \sum_k \bar p_k \log \bar p_k + \log K,
              \qquad \bar p = \frac1n \sum_i p_i,

    with :math:`\bar p` the mean anchor prediction over the **global** batch (``probs`` ``[n, K]`` are this
    rank's rows; the mean is taken over all ranks, differentiably, as the official ``AllReduce``). It
    is 0 for a uniform :math:`\bar p` and :math:`\log K` for a one-hot one, and equals
    :math:`\mathrm{KL}(\bar p \,\Vert\, \mathcal{U}_K)`. Every rank returns the same value; with DDP's
    gradient averaging the gradient equals the single-process full-batch one. ``0 log 0 = 0``.
    """
    if probs.dim() != 2:
        raise ValueError(f"me_max expects [n, K] probabilities, got shape {tuple(probs.shape)}")
    p_bar = _global_mean(probs, distributed)
    return _plogp(p_bar).sum() + math.log(probs.shape[1])


@fp32_loss
def prior_kl(probs: torch.Tensor, prior: torch.Tensor, distributed: bool = True,
             direction: str = "paper") -> torch.Tensor:
    r"""PMSN's prior-matching regulariser (Assran et al., 2023, Section 5): with :math:`\bar p` the
    global mean anchor prediction (as in :func:`me_max`) and a prior :math:`\pi` (``[K]``, sums to 1, e.g.
    :func:`power_law_prior`),

    .. math:: \mathcal{R} = \mathrm{KL}(\bar p \,\Vert\, \pi) = \sum_k \bar p_k (\log \bar p_k - \log \pi_k),

    which is exactly :func:`me_max` for the uniform prior. ``direction="lightly"`` gives lightly's
    ``PMSNLoss`` instead, ``F.kl_div(p_bar.log(), prior, reduction="sum")`` =
    :math:`\mathrm{KL}(\pi \,\Vert\, \bar p)` (it does not reduce to ME-MAX).
    """
    if probs.dim() != 2 or prior.shape != probs.shape[1:]:
        raise ValueError(f"prior_kl expects [n, K] probabilities and a [K] prior, got {tuple(probs.shape)} "
                         f"and {tuple(prior.shape)}")
    p_bar = _global_mean(probs, distributed)
    prior = prior.detach().to(p_bar.dtype)
    if direction == "paper":
        return (_plogp(p_bar) - p_bar * torch.log(prior)).sum()
    if direction == "lightly":
        return (_plogp(prior) - prior * torch.log(p_bar.clamp_min(torch.finfo(p_bar.dtype).tiny))).sum()
    raise ValueError(f"prior_kl: direction must be 'paper' or 'lightly', got {direction!r}")


@fp32_loss
def msn_loss(anchor: torch.Tensor, target: torch.Tensor, prototypes: torch.Tensor, temp: float = 0.1,
             sharpen_temp: float = 0.25, me_max_weight: float = 1.0, use_sinkhorn: bool = True,
             n_iters: int = 3, prior: str | torch.Tensor = "uniform", power_law_tau: float = 0.25,
             distributed: bool = True) -> torch.Tensor:
    r"""MSN loss (Assran et al., 2022, Eq. (2)-(3); ``init_msn_loss`` of ``facebookresearch/msn``).

    Prototype assignments :math:`p(z) = \mathrm{softmax}(\langle \hat z, \hat q_k \rangle / \tau)` with
    cosine similarities to the prototypes ``[K, D]`` (``temp`` = :math:`\tau`, 0.1). Targets
    :math:`p^+ = \mathrm{sharpen}(p(z^+), T) = p^{1/T} / \sum_k p_k^{1/T}` (``sharpen_temp`` = T, 0.25),
    then, with ``use_sinkhorn``, ``n_iters`` rounds of Sinkhorn-Knopp on the sharpened targets over the
    global batch (as the official ``distributed_sinkhorn``, via :func:`~selfsup.losses.sinkhorn_knopp` on
    :math:`\log p^+` with :math:`\varepsilon = 1`). The loss is

    .. math:: \mathcal{L} = \frac{1}{Mn} \sum_{i} H(p^+_i, p(z_i)) + \lambda\, \mathcal{R}(\bar p),

    with ``anchor`` ``[M*n, D]`` holding ``M`` views per target stacked view-major (the targets are
    repeated ``M`` times, as ``torch.cat([targets] * num_views)``), ``target`` ``[n, D]`` (detached) and
    :math:`\mathcal{R}` = :func:`me_max` (``prior="uniform"``, MSN) or :func:`prior_kl` with the
    power-law prior :math:`\pi_j \propto j^{-\tau}` (``prior="power_law"``, PMSN, ``power_law_tau`` 0.25),
    or with a given ``[K]`` prior tensor. :math:`\lambda` = ``me_max_weight``.
    The cross-entropy is a mean over this rank's anchors; the regulariser uses the global mean.
    """
    if anchor.dim() != 2 or target.dim() != 2 or prototypes.dim() != 2 or target.shape[0] == 0 \
            or anchor.shape[0] % target.shape[0] or anchor.shape[1] != prototypes.shape[1] \
            or target.shape[1] != prototypes.shape[1]:
        raise ValueError(f"msn_loss expects anchor [M*n, D], target [n, D] and prototypes [K, D], got "
                         f"{tuple(anchor.shape)}, {tuple(target.shape)}, {tuple(prototypes.shape)}")
    views = anchor.shape[0] // target.shape[0]
    protos = F.normalize(prototypes, dim=1)
    log_p = F.log_softmax(F.normalize(anchor, dim=1) @ protos.T / temp, dim=1)
    with torch.no_grad():
        log_t = F.log_softmax(F.normalize(target.detach(), dim=1) @ protos.detach().T / temp, dim=1)
        log_sharp = F.log_softmax(log_t / sharpen_temp, dim=1)
        q = sinkhorn_knopp(log_sharp, 1.0, n_iters, distributed) if use_sinkhorn else log_sharp.exp()
        q = q.repeat(views, 1)
    ce = -(q * log_p).sum(1).mean()
    if me_max_weight == 0:
        return ce
    probs = log_p.exp()
    if isinstance(prior, torch.Tensor):
        reg = prior_kl(probs, prior, distributed)
    elif prior == "uniform":
        reg = me_max(probs, distributed)
    elif prior == "power_law":
        reg = prior_kl(probs, power_law_prior(probs.shape[1], power_law_tau, probs.dtype, probs.device), distributed)
    else:
        raise ValueError(f"msn_loss: prior must be 'uniform', 'power_law' or a [K] tensor, got {prior!r}")
    return ce + me_max_weight * reg


@fp32_loss
def pmsn_loss(anchor: torch.Tensor, target: torch.Tensor, prototypes: torch.Tensor, temp: float = 0.1,
              sharpen_temp: float = 0.25, prior_weight: float = 1.0, power_law_tau: float = 0.25,
              use_sinkhorn: bool = True, n_iters: int = 3, distributed: bool = True) -> torch.Tensor:
    r"""PMSN (Assran et al., 2023): :func:`msn_loss` with ME-MAX replaced by
    :math:`\mathrm{KL}(\bar p \,\Vert\, \pi)`, :math:`\pi_j \propto j^{-\tau}` (``power_law_tau`` 0.25, as
    lightly's ``PMSNLoss``; see :func:`prior_kl` for lightly's reversed KL)."""
    return msn_loss(anchor, target, prototypes, temp, sharpen_temp, prior_weight, use_sinkhorn, n_iters,
                    "power_law", power_law_tau, distributed)
