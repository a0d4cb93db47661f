"""SMoG, synchronous momentum grouping (Pang, Zhang, Cheng, Zhang, Ouyang & Wang, 2022, "Unsupervised Visual
Representation Learning by Synchronous Momentum Grouping", ECCV, arXiv 2207.06167): contrast at the level of
groups instead of instances. The group features move with momentum inside each step, synchronously with the
representation learning.

The paper's text could not be opened here; the equations follow lightly's ``SMoGPrototypes`` and
``examples/pytorch/smog.py`` (the reference lightly ships, which cites the paper's Table 7b for the resets).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.losses.distributed import gather
from selfsup.losses.precision import fp32_loss


@fp32_loss
@torch.no_grad()
def smog_assign(x: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Group of each row of ``x`` ``[n, D]``: :math:`\\arg\\max_k \\cos(x_i, g_k)` over ``groups`` ``[K, D]``."""
    return (F.normalize(x.detach(), dim=1) @ F.normalize(groups.detach(), dim=1).T).argmax(1)


@fp32_loss
def smog_group_update(z: torch.Tensor, groups: torch.Tensor, beta: float = 0.99,
                      distributed: bool = True, normalize: bool = False) -> torch.Tensor:
    r"""Synchronous momentum update of the group features by the online embeddings ``z`` ``[n, D]``:

    .. math:: g_k' = \beta g_k + (1 - \beta) \frac{1}{|S_k|} \sum_{i \in S_k} z_i, \qquad
              S_k = \{i : \arg\max_j \cos(z_i, g_j) = k\},

    for every group with members (the others keep :math:`g_k`). The means are of the raw embeddings and keep
    their gradient (lightly's ``get_updated_group_features``: the step's loss is computed against
    :math:`g'`, so it reaches :math:`z` through the groups too). Under DDP :math:`S_k` and the means are over
    the global batch (``z`` gathered with gradient), so every rank gets the same :math:`g'`.

    ``normalize=True`` (the official code's ``main_SMoG.py``): the means are of the L2-normalised embeddings and
    every group is renormalised, :math:`g_k' = \mathrm{norm}(\beta g_k + (1 - \beta) \frac{1}{|S_k|}
    \sum_{i \in S_k} z_i / \|z_i\|)` (:math:`\mathrm{norm}(g_k)` for a group without members)."""
    zg = gather(z) if distributed else z
    if normalize:
        zg = F.normalize(zg, dim=1)
    a = smog_assign(zg, groups)
    k = groups.shape[0]
    sums = torch.zeros(k, z.shape[1], dtype=zg.dtype, device=z.device).index_add(0, a, zg)
    counts = torch.bincount(a, minlength=k).to(zg.dtype)
    has = (counts > 0)[:, None]
    g = groups.detach().to(zg.dtype)
    new = torch.where(has, beta * g + (1 - beta) * sums / counts.clamp_min(1)[:, None], g)
    return F.normalize(new, dim=1) if normalize else new


@fp32_loss
def smog_loss(p: torch.Tensor, z: torch.Tensor, target: torch.Tensor, groups: torch.Tensor, beta: float = 0.99,
              temperature: float = 0.1, distributed: bool = True, normalize: bool = False,
              detach_groups: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    r"""SMoG's group-contrastive loss for one direction (view a predicts the group of view b):

    .. math:: \mathcal{L} = -\frac1n \sum_i \log \frac{\exp(\cos(p_i, g'_{y_i}) / \tau)}
              {\sum_{k=1}^K \exp(\cos(p_i, g'_k) / \tau)}, \qquad y_i = \arg\max_k \cos(t_i, g_k),

    with ``p`` the predictor outputs of view a, ``z`` its projections (which move the groups to :math:`g'`,
    :func:`smog_group_update`), ``target`` :math:`t` the momentum encoder's projections of view b, assigned to
    the groups *before* the update, and :math:`\tau = 0.1`. Returns ``(loss, g')``; store :math:`g'` (detached)
    as the next step's groups, once per optimizer step. ``normalize``: :func:`smog_group_update`'s;
    ``detach_groups=True`` (the official code's ``MultiPrototypes.forward``): the logits use :math:`g'` detached,
    so no gradient reaches ``z`` through the groups (only through ``p``)."""
    if p.dim() != 2 or p.shape != z.shape or target.shape != z.shape or groups.shape[1] != z.shape[1]:
        raise ValueError(f"smog_loss expects p, z, target [n, D] and groups [K, D], got {tuple(p.shape)}, "
                         f"{tuple(z.shape)}, {tuple(target.shape)}, {tuple(groups.shape)}")
    y = smog_assign(target, groups)
    new = smog_group_update(z, groups, beta, distributed, normalize)
    logits = F.normalize(p, dim=1) @ F.normalize(new.detach() if detach_groups else new, dim=1).T / temperature
    return F.cross_entropy(logits, y), new
