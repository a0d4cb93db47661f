r"""Deep metric learning losses: the classic margin losses and Tian's unified contrastive family.

Cookbook, Section 2.2.1 and "Unified contrastive losses". Tian (2022, "Understanding Deep
Contrastive Learning via Coordinate-wise Optimization", Eq. 1 and Table 1) writes many
contrastive losses as

.. math:: \mathcal{L}_{\phi,\psi} = \sum_i \phi\Big(\sum_{j \ne i} \psi(d_i^2 - d_{ij}^2)\Big),
          \quad d_i^2 = \|z_i - z_{i'}\|_2^2,\; d_{ij}^2 = \|z_i - z_j\|_2^2,

for monotonically increasing :math:`\phi, \psi`. :func:`unified_contrastive` takes any
:math:`(\phi, \psi)`; :data:`UNIFIED_PRESETS` / :func:`unified_preset` give Table 1's rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from selfsup.losses.distributed import gather, local_offset
from selfsup.losses.precision import fp32_loss

Fn = Callable[[torch.Tensor], torch.Tensor]


@fp32_loss
def margin_contrastive(x1: torch.Tensor, x2: torch.Tensor, same: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    r"""The contrastive loss of Hadsell, Chopra & LeCun (2006), Eq. (4), averaged over pairs:

    .. math:: \ell = \tfrac12 [\text{same}]\, D^2 + \tfrac12 [\text{not same}]\, \max(0, m - D)^2,
              \quad D = \|x_1 - x_2\|_2.

    ``same`` is a boolean per pair (the paper's :math:`Y = 0`); embeddings are used as given.
    """
    if x1.shape != x2.shape or same.shape != x1.shape[:1]:
        raise ValueError(f"margin_contrastive expects x1, x2 [N, D] and same [N], got {tuple(x1.shape)}, "
                         f"{tuple(x2.shape)}, {tuple(same.shape)}")
    d = torch.linalg.vector_norm(x1 - x2, dim=1)
    return torch.where(same.bool(), d.pow(2), F.relu(margin - d).pow(2)).mean() / 2


@fp32_loss
def triplet(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, margin: float = 0.2) -> torch.Tensor:
    r"""The triplet loss of FaceNet (Schroff et al., 2015, Eq. 1; Weinberger & Saul, 2009), averaged:

    .. math:: \ell = \big[\|a - p\|_2^2 - \|a - n\|_2^2 + \alpha\big]_+ .

    FaceNet L2-normalises the embeddings first (pass ``F.normalize(x, dim=1)``); margin 0.2.
    """
    if not anchor.shape == positive.shape == negative.shape:
        raise ValueError(f"triplet expects three tensors of equal shape, got {tuple(anchor.shape)}, "
                         f"{tuple(positive.shape)}, {tuple(negative.shape)}")
    d_ap = (anchor - positive).pow(2).sum(-1)
    d_an = (anchor - negative).pow(2).sum(-1)
    return F.relu(d_ap - d_an + margin).mean()


def _batch_distances(z1: torch.Tensor, z2: torch.Tensor, normalize: bool, distributed: bool):
    """Anchors (both views), their positives, squared distances to every candidate of the global batch
    (both views) and the mask of valid negatives (not the anchor itself, not its positive)."""
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"expected two [N, D] tensors of equal shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if normalize:
        z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    g1, g2 = (gather(z1), gather(z2)) if distributed else (z1, z2)
    n, n_all = z1.shape[0], g1.shape[0]
    idx = torch.arange(n, device=z1.device) + (local_offset(n) if distributed else 0)
    a, p, c = torch.cat([z1, z2]), torch.cat([z2, z1]), torch.cat([g1, g2])
    d_ap = (a - p).pow(2).sum(1)
    d_an = (a.pow(2).sum(1, keepdim=True) + c.pow(2).sum(1)[None, :] - 2 * a @ c.T).clamp_min(0)
    rows = torch.arange(2 * n, device=z1.device)
    valid = torch.ones_like(d_an, dtype=torch.bool)
    valid[rows, torch.cat([idx, idx + n_all])] = False
    valid[rows, torch.cat([idx + n_all, idx])] = False
    return d_ap, d_an, valid


@fp32_loss
def batch_margin_contrastive(z1: torch.Tensor, z2: torch.Tensor, margin: float = 1.0, normalize: bool = True,
                             distributed: bool = True) -> torch.Tensor:
    r""":func:`margin_contrastive` over a batch of view pairs: the two views of an image are similar,
    every other image's views (global batch, 2N - 2 per anchor) dissimilar; each term is averaged
    over its pairs, :math:`\tfrac12\,\mathrm{mean}_{pos} D^2 + \tfrac12\,\mathrm{mean}_{neg} \max(0, m - D)^2`,
    with anchors from both views."""
    d_ap, d_an, valid = _batch_distances(z1, z2, normalize, distributed)
    d = d_an.clamp_min(1e-12).sqrt()  # finite gradient at D = 0
    neg = torch.where(valid, F.relu(margin - d).pow(2), torch.zeros_like(d)).sum() / valid.sum()
    return (d_ap.mean() + neg) / 2


@fp32_loss
def batch_triplet(z1: torch.Tensor, z2: torch.Tensor, margin: float = 0.2,
                  mining: Literal["all", "hard", "semihard"] = "semihard", normalize: bool = True,
                  distributed: bool = True) -> torch.Tensor:
    r""":func:`triplet` over a batch of view pairs (FaceNet's online mining, Schroff et al., 2015, Sec. 3.2).

    Each view is an anchor, the other view of its image the positive, the views of the other images
    of the global batch the candidate negatives: ``"all"`` averages the hinge over every negative;
    ``"hard"`` takes the closest negative; ``"semihard"`` the closest negative farther than the
    positive (:math:`d_{ap} < d_{an}`), or the farthest negative when there is none (as TensorFlow's
    ``triplet_semihard_loss``). Squared distances of L2-normalised embeddings, as in FaceNet.
    """
    if mining not in ("all", "hard", "semihard"):
        raise ValueError(f"mining must be 'all', 'hard' or 'semihard', got {mining!r}")
    d_ap, d_an, valid = _batch_distances(z1, z2, normalize, distributed)
    if mining == "all":
        hinge = F.relu(d_ap[:, None] - d_an + margin)
        return torch.where(valid, hinge, torch.zeros_like(hinge)).sum() / valid.sum()
    inf = torch.tensor(float("inf"), dtype=d_an.dtype, device=d_an.device)
    hardest = torch.where(valid, d_an, inf).min(1).values
    if mining == "hard":
        d_neg = hardest
    else:
        semi = valid & (d_an > d_ap[:, None])
        closest_semi = torch.where(semi, d_an, inf).min(1).values
        farthest = torch.where(valid, d_an, -inf).max(1).values
        d_neg = torch.where(semi.any(1), closest_semi, farthest)
    return F.relu(d_ap - d_neg + margin).mean()


@dataclass(frozen=True)
class PhiPsi:
    r"""A pair :math:`(\phi, \psi)` for :func:`unified_contrastive`.

    ``log_psi`` and ``log_phi`` are optional log-domain forms (:math:`\log\psi(x)` and
    :math:`l \mapsto \phi(e^l)`); when both are set the inner sum is a log-sum-exp, which keeps
    exponential :math:`\psi` finite for any temperature. They must agree with ``phi`` and ``psi``.
    """

    phi: Fn
    psi: Fn
    log_phi: Fn | None = None
    log_psi: Fn | None = None
    name: str = "custom"


def _infonce(tau: float, eps: float) -> PhiPsi:
    log_eps = math.log(eps) if eps > 0 else float("-inf")
    return PhiPsi(phi=lambda s: tau * torch.log(eps + s), psi=lambda x: torch.exp(x / tau),
                  log_phi=lambda l: tau * torch.logaddexp(l, torch.full_like(l, log_eps)),
                  log_psi=lambda x: x / tau, name="infonce")


def _mine(tau: float, eps: float) -> PhiPsi:
    return PhiPsi(phi=torch.log, psi=torch.exp, log_phi=lambda l: l, log_psi=lambda x: x, name="mine")


def _triplet(tau: float, eps: float) -> PhiPsi:
    return PhiPsi(phi=lambda s: s, psi=lambda x: F.relu(x + eps), name="triplet")


def _soft_triplet(tau: float, eps: float) -> PhiPsi:
    return PhiPsi(phi=lambda s: tau * torch.log1p(s), psi=lambda x: torch.exp(x / tau + eps),
                  log_phi=lambda l: tau * F.softplus(l), log_psi=lambda x: x / tau + eps, name="soft_triplet")


def _tuplet(tau: float, eps: float) -> PhiPsi:
    return PhiPsi(phi=torch.log1p, psi=torch.exp, log_phi=F.softplus, log_psi=lambda x: x, name="tuplet")


def _lifted(tau: float, eps: float) -> PhiPsi:
    return PhiPsi(phi=lambda s: F.relu(torch.log(s)).pow(2), psi=lambda x: torch.exp(x + eps),
                  log_phi=lambda l: F.relu(l).pow(2), log_psi=lambda x: x + eps, name="lifted")


#: Tian (2022), Table 1: name -> (builder(tau, eps), default eps, formula). ``tau`` is used by
#: infonce and soft_triplet; ``eps`` by infonce (the epsilon in the log), triplet and lifted (margins)
#: and soft_triplet (the shift in the exponent).
UNIFIED_PRESETS: dict[str, tuple[Callable[[float, float], PhiPsi], float, str]] = {
    "infonce": (_infonce, 1.0, "phi(x) = tau log(eps + x), psi(x) = exp(x / tau)  (van den Oord et al., 2018)"),
    "mine": (_mine, 0.0, "phi(x) = log x, psi(x) = exp(x)  (Belghazi et al., 2018)"),
    "triplet": (_triplet, 0.2, "phi(x) = x, psi(x) = [x + eps]_+  (Schroff et al., 2015)"),
    "soft_triplet": (_soft_triplet, 0.0, "phi(x) = tau log(1 + x), psi(x) = exp(x / tau + eps)  (Tian et al., 2020)"),
    "tuplet": (_tuplet, 0.0, "phi(x) = log(1 + x), psi(x) = exp(x)  (N+1 tuplet, Sohn, 2016)"),
    "lifted": (_lifted, 1.0, "phi(x) = [log x]_+^2, psi(x) = exp(x + eps)  (lifted structured, Oh Song et al., 2016)"),
}


def unified_preset(name: str, tau: float = 0.2, eps: float | None = None) -> PhiPsi:
    """The :math:`(\\phi, \\psi)` of a row of Tian (2022), Table 1 (see :data:`UNIFIED_PRESETS`)."""
    if name not in UNIFIED_PRESETS:
        raise ValueError(f"unknown unified preset '{name}'; choose one of {', '.join(UNIFIED_PRESETS)}")
    if tau <= 0:
        raise ValueError(f"unified preset needs tau > 0, got {tau}")
    build, default_eps, _ = UNIFIED_PRESETS[name]
    eps = default_eps if eps is None else eps
    if name == "infonce" and eps < 0:
        raise ValueError(f"the infonce preset needs eps >= 0 (inside a log), got {eps}")
    return build(tau, eps)


@fp32_loss
def unified_contrastive(z1: torch.Tensor, z2: torch.Tensor, phi: PhiPsi | Fn, psi: Fn | None = None,
                        negatives: Literal["other", "all"] = "all", normalize: bool = True, symmetric: bool = True,
                        distributed: bool = True) -> torch.Tensor:
    r"""Tian's (2022) unified contrastive loss :math:`\mathcal{L}_{\phi,\psi}`, averaged over anchors:

    .. math:: \mathcal{L} = \frac{1}{N}\sum_i \phi\Big(\sum_{j \in \mathcal{N}(i)} \psi(d_i^2 - d_{ij}^2)\Big),
              \quad d_i^2 = \|z_i - z'_i\|^2,\; d_{ij}^2 = \|z_i - c_j\|^2,

    with anchors :math:`z_i` from ``z1``, positives :math:`z'_i` from ``z2`` and the negatives
    :math:`c_j`: the other images' second views (``negatives="other"``) or both views of the other
    images (``"all"``, SimCLR's 2N - 2). ``symmetric`` averages with the roles of the views swapped.
    Pass a :class:`PhiPsi` (e.g. ``unified_preset("infonce", tau=0.5)``) or two callables
    ``phi, psi`` acting elementwise on tensors. Tian sums over :math:`i`; we average (multiply by
    :math:`N` for the sum). Under DDP the negatives come from the global batch.
    """
    pair = phi if isinstance(phi, PhiPsi) else PhiPsi(phi=phi, psi=psi) if psi is not None else None
    if pair is None:
        raise ValueError("unified_contrastive needs a PhiPsi or both phi and psi callables")
    if negatives not in ("other", "all"):
        raise ValueError(f"negatives must be 'other' or 'all', got {negatives!r}")
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"unified_contrastive expects two [N, D] tensors of equal shape, got {tuple(z1.shape)} "
                         f"and {tuple(z2.shape)}")
    if normalize:
        z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    g1, g2 = (gather(z1), gather(z2)) if distributed else (z1, z2)
    off = local_offset(z1.shape[0]) if distributed else 0
    loss = _one_direction(z1, z2, g1, g2, off, pair, negatives)
    if symmetric:
        loss = (loss + _one_direction(z2, z1, g2, g1, off, pair, negatives)) / 2
    return loss


def _one_direction(a: torch.Tensor, p: torch.Tensor, ga: torch.Tensor, gp: torch.Tensor, off: int, pair: PhiPsi,
                   negatives: str) -> torch.Tensor:
    n, n_all = a.shape[0], gp.shape[0]
    d_pos = (a - p).pow(2).sum(1)  # [n]
    contrast = gp if negatives == "other" else torch.cat([gp, ga], 0)
    d_neg = (a.pow(2).sum(1, keepdim=True) + contrast.pow(2).sum(1)[None, :] - 2 * a @ contrast.T).clamp_min(0)
    x = d_pos[:, None] - d_neg  # [n, M]
    rows = torch.arange(n, device=a.device)
    keep = torch.ones_like(x, dtype=torch.bool)
    keep[rows, rows + off] = False  # j = i in the other view: the positive
    if negatives == "all":
        keep[rows, rows + off + n_all] = False  # the anchor itself
    if pair.log_phi is not None and pair.log_psi is not None:
        log_s = torch.logsumexp(pair.log_psi(x).masked_fill(~keep, float("-inf")), dim=1)
        return pair.log_phi(log_s).mean()
    s = torch.where(keep, pair.psi(x), torch.zeros_like(x)).sum(1)
    return pair.phi(s).mean()
