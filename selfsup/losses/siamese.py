"""Siamese regression losses with other targets than the other view's own embedding: the nearest neighbour
in a support set (NNBYOL, NNSiam; Dwibedi et al., 2021, and solo-learn) and the mean over the other views
(FastSiam; Pototzky et al., 2022).

All are means of per-sample terms with detached targets; the support set is the same on every rank
(:class:`selfsup.nets.MemoryBank`), so each is exact under DDP without communication.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.losses.neighbors import nearest_neighbour
from selfsup.losses.precision import fp32_loss


@fp32_loss
def nn_byol_loss(p1: torch.Tensor, p2: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor,
                 support: torch.Tensor) -> torch.Tensor:
    r"""NNBYOL: BYOL's symmetric regression (Grill et al., 2020, Eq. 2) with each target replaced by its nearest
    neighbour in the support set :math:`Q` (NNCLR's :math:`\mathrm{NN}`, Dwibedi et al., 2021, Eq. 2):

    .. math:: \mathcal{L} = \frac1N\sum_i \big[\|\bar p_{1,i} - \mathrm{NN}(t_{2,i}, Q)\|_2^2
              + \|\bar p_{2,i} - \mathrm{NN}(t_{1,i}, Q)\|_2^2\big],

    :math:`\bar p = p/\|p\|`, :math:`t` the target network's projections, :math:`\mathrm{NN}` on unit vectors
    (the most cosine-similar row of :math:`Q`, normalised, no gradient). As solo-learn's ``nnbyol.py``.
    """
    n2, n1 = nearest_neighbour(t2, support), nearest_neighbour(t1, support)
    return (2 - 2 * (F.normalize(p1, dim=1) * n2).sum(1)).mean() + (2 - 2 * (F.normalize(p2, dim=1) * n1).sum(1)).mean()


@fp32_loss
def nn_simsiam_loss(p1: torch.Tensor, p2: torch.Tensor, z1: torch.Tensor, z2: torch.Tensor,
                    support: torch.Tensor) -> torch.Tensor:
    r"""NNSiam: SimSiam's symmetric loss (Chen & He, 2021, Eq. 2) with the stop-gradient target replaced by its
    nearest neighbour in the support set :math:`Q`:

    .. math:: \mathcal{L} = \tfrac12 D(p_1, \mathrm{NN}(z_2, Q)) + \tfrac12 D(p_2, \mathrm{NN}(z_1, Q)), \quad
              D(p, n) = -\frac{1}{N}\sum_i \frac{\langle p_i, n_i\rangle}{\|p_i\|\,\|n_i\|}.

    Minimum -1. As solo-learn's ``nnsiam.py``.
    """
    n2, n1 = nearest_neighbour(z2, support), nearest_neighbour(z1, support)
    return -((F.normalize(p1, dim=1) * n2).sum(1).mean() + (F.normalize(p2, dim=1) * n1).sum(1).mean()) / 2


@fp32_loss
def fastsiam_loss(p: list[torch.Tensor], z: list[torch.Tensor]) -> torch.Tensor:
    r"""FastSiam (Pototzky, Sultan & Schmidt-Thieme, 2022): with :math:`V = K + 1` views, each view's prediction
    regresses the stop-gradient mean of the other :math:`K` views' projections,

    .. math:: \mathcal{L} = \frac{1}{V}\sum_{v=1}^{V} D\Big(p_v,\ \mathrm{sg}\Big(\frac{1}{V-1}\sum_{u \ne v} z_u\Big)\Big),
              \quad D(p, t) = -\frac1N\sum_i \frac{\langle p_i, t_i\rangle}{\|p_i\|\,\|t_i\|},

    the mean taken over the raw projections (as lightly's ``examples/pytorch/fastsiam.py``). With :math:`V = 2`
    it is SimSiam's symmetric loss. Minimum -1.
    """
    if len(p) != len(z) or len(p) < 2:
        raise ValueError(f"fastsiam_loss needs as many predictions as projections, at least 2, got {len(p)} and {len(z)}")
    zs = torch.stack([x.detach() for x in z])  # [V, N, D]
    total = zs.sum(0)
    v = len(z)
    return sum(-F.cosine_similarity(pv, (total - zs[i]) / (v - 1), dim=-1).mean() for i, pv in enumerate(p)) / v
