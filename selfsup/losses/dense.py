"""Dense (per-location and per-region) losses: DenseCL, VICRegL, DetCon (cookbook, "Building Feature Extractors
with Localization for Dense Prediction Tasks"). Feature maps come flattened as ``[B, S, D]`` (S locations).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.losses.correlation import off_diagonal
from selfsup.losses.distributed import gather, local_offset
from selfsup.losses.precision import fp32_loss


def cell_centres(boxes: torch.Tensor, flip: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Image coordinates ``[B, h*w, 2]`` (row, column) of the centres of an ``h x w`` feature map's cells, for
    views cropped with ``boxes`` ``[B, 4]`` (top, left, height, width, in image units) and flipped where ``flip``.

    Cell ``(i, j)`` covers ``[(i, i+1)/h] x [(j, j+1)/w]`` of its view, which maps back into the box (the
    columns mirrored when flipped): VICRegL's location-based matching compares these across views.
    """
    boxes = boxes.to(torch.float64)
    top, left, bh, bw = boxes.unbind(1)
    u = (torch.arange(h, dtype=torch.float64, device=boxes.device) + 0.5) / h
    v = (torch.arange(w, dtype=torch.float64, device=boxes.device) + 0.5) / w
    v = torch.where(flip.to(boxes.device)[:, None], 1.0 - v[None], v[None])  # [B, w]
    rows = top[:, None] + bh[:, None] * u[None]  # [B, h]
    cols = left[:, None] + bw[:, None] * v  # [B, w]
    grid = torch.stack([rows[:, :, None].expand(-1, h, w), cols[:, None, :].expand(-1, h, w)], -1)
    return grid.reshape(boxes.shape[0], h * w, 2)


def match_by_similarity(f_q: torch.Tensor, f_k: torch.Tensor) -> torch.Tensor:
    r"""DenseCL's correspondence (Wang et al. 2021, Sec. 3.3): for each location :math:`i` of the query view,
    :math:`j^* = \arg\max_j \cos(f^q_i, f^k_j)` over the key view's locations, from the backbone features
    ``[B, S, C]`` and ``[B, T, C]``. Returns indices ``[B, S]`` (no gradient)."""
    with torch.no_grad():
        sim = F.normalize(f_q.float(), dim=-1) @ F.normalize(f_k.float(), dim=-1).transpose(1, 2)
        return sim.argmax(-1)


@fp32_loss
def densecl_loss(q: torch.Tensor, k: torch.Tensor, match: torch.Tensor, queue: torch.Tensor,
                 temperature: float = 0.2) -> torch.Tensor:
    r"""DenseCL's dense contrastive loss (Wang et al. 2021, Eq. 2). Each query location :math:`r^s` ``[B, S, D]``
    is paired with the key location :math:`t^s_+` = ``k[b, match[b, s]]`` (``k`` ``[B, T, D]``, no gradient), and
    the negatives :math:`t^-` are the dense queue ``[M, D]`` (pooled dense keys of past images):

    .. math:: \mathcal{L}_r = \frac{1}{S}\sum_s -\log \frac{\exp(r^s \cdot t^s_+/\tau)}
              {\exp(r^s \cdot t^s_+/\tau) + \sum_{t^-} \exp(r^s \cdot t^-/\tau)},

    on L2-normalised vectors, averaged over the batch too. Per-image, so exact under DDP without communication.
    """
    if q.dim() != 3 or k.dim() != 3 or match.shape != q.shape[:2] or queue.shape[-1] != q.shape[-1]:
        raise ValueError(f"densecl_loss expects q [B, S, D], k [B, T, D], match [B, S], queue [M, D]; got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(match.shape)}, {tuple(queue.shape)}")
    q = F.normalize(q, dim=-1)
    k = F.normalize(k.detach(), dim=-1)
    pos_k = torch.gather(k, 1, match[..., None].expand(-1, -1, k.shape[-1]))
    pos = (q * pos_k).sum(-1, keepdim=True)  # [B, S, 1]
    neg = q @ F.normalize(queue.detach(), dim=1).to(q.dtype).T  # [B, S, M]
    logits = torch.cat([pos, neg], -1).flatten(0, 1) / temperature
    return F.cross_entropy(logits, torch.zeros(logits.shape[0], dtype=torch.long, device=q.device))


def nearest_pairs(a: torch.Tensor, b: torch.Tensor, dist: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """VICRegL's top-gamma matching: each row of ``a`` ``[B, S, D]`` is matched to its nearest row of ``b``
    ``[B, T, D]`` under ``dist`` ``[B, S, T]``, and the ``k`` closest of these pairs are kept, closest first.
    Returns ``(a_kept, b_matched)``, each ``[B, k, D]``."""
    k = min(k, a.shape[1])
    d_nn, j_nn = dist.topk(1, dim=2, largest=False)  # [B, S, 1]
    _, i_keep = d_nn.squeeze(-1).topk(k, dim=1, largest=False)  # [B, k]
    dim = a.shape[-1]
    a_kept = torch.gather(a, 1, i_keep[..., None].expand(-1, -1, dim))
    j_kept = torch.gather(j_nn.squeeze(-1), 1, i_keep)
    return a_kept, torch.gather(b, 1, j_kept[..., None].expand(-1, -1, dim))


def _vicreg_nd(x: torch.Tensor, y: torch.Tensor, lambda_: float, mu: float, nu: float, eps: float,
               cov_mean: bool, distributed: bool) -> torch.Tensor:
    """VICReg on ``[B, ..., D]`` pairs: statistics over the (global) batch axis, one set per leading position."""
    inv = F.mse_loss(x, y)
    var = x.new_zeros(())
    cov = x.new_zeros(())
    for z in (x, y):
        zg = gather(z) if distributed else z
        zc = zg - zg.mean(0)
        var = var + F.relu(1.0 - torch.sqrt(zc.var(0) + eps)).mean() / 2
        c = torch.einsum("b...i,b...j->...ij", zc, zc) / (zg.shape[0] - 1)
        off_sq = c.pow(2).sum((-2, -1)) - torch.diagonal(c, dim1=-2, dim2=-1).pow(2).sum(-1)  # sum_{i != j} C_ij^2
        cov = cov + (off_sq / z.shape[-1]).mean()
    if cov_mean:
        cov = cov / 2
    return lambda_ * inv + mu * var + nu * cov


@fp32_loss
def vicregl_loss(z: list[torch.Tensor], maps: list[torch.Tensor], grids: list[torch.Tensor], n_global: int = 2,
                 alpha: float = 0.75, lambda_: float = 25.0, mu: float = 25.0, nu: float = 1.0,
                 num_matches: tuple[int, int] = (20, 4), matches_by: str = "view", cov_mean: bool = False,
                 eps: float = 1e-4, distributed: bool = True) -> torch.Tensor:
    r"""VICRegL (Bardes, Ponce & LeCun 2022, Eqs. 3-5): VICReg on the global embeddings ``z`` (``[B, D]`` per
    view) plus VICReg on matched local embeddings ``maps`` (``[B, S_v, D_l]`` per view, cell image coordinates
    ``grids`` ``[B, S_v, 2]``), the first ``n_global`` views global:

    .. math:: \mathcal{L} = \alpha\, \ell(z, z') + (1-\alpha)\,\big(\ell_{loc}(y, y') + \ell_{feat}(y, y')\big),

    where :math:`\ell` is VICReg (:math:`\lambda s + \mu v + \nu c`, as :func:`vicreg_terms`: variance averaged
    and covariance summed over the two branches), :math:`\ell_{loc}` matches each cell to the spatially nearest
    cell of the other view (``grids``) and :math:`\ell_{feat}` to the nearest in L2 embedding distance; only the
    top-:math:`\gamma` closest pairs are kept, in both directions (each direction's loss halved). The global term
    averages over ordered view pairs (invariance, global-local included) and over views (variance and
    covariance); the local term over (global, any other view) pairs. Variance and covariance use the global
    batch under DDP, per kept-pair rank for the local terms (as the official code).

    ``matches_by="view"`` (paper, Sec. 3.3): :math:`\gamma` = ``num_matches[0]`` (20) when the searching view is
    global, ``num_matches[1]`` (4) when local. ``"order"`` (official code, lightly): 20 for the first search of a
    pair and 4 for the reverse, whatever the views. ``cov_mean=True``: the official VICRegL code's covariance,
    averaged (not summed) over the branches (lightly's ``nu * 0.5``).
    """
    if not (len(z) == len(maps) == len(grids)) or not 1 <= n_global <= len(z):
        raise ValueError(f"vicregl_loss needs one z, map and grid per view and 1 <= n_global <= views; got "
                         f"{len(z)}, {len(maps)}, {len(grids)} views and n_global={n_global}")
    args = dict(lambda_=lambda_, mu=mu, nu=nu, eps=eps, cov_mean=cov_mean, distributed=distributed)
    n = len(z)
    inv, pairs = z[0].new_zeros(()), 0
    for a in range(n_global):
        for b in range(n):
            if a != b:
                inv, pairs = inv + F.mse_loss(z[a], z[b]), pairs + 1
    var, cov = z[0].new_zeros(()), z[0].new_zeros(())
    for x in z:
        xg = gather(x) if distributed else x
        xc = xg - xg.mean(0)
        var = var + F.relu(1.0 - torch.sqrt(xc.var(0) + eps)).mean()
        cov = cov + off_diagonal(xc.T @ xc / (xg.shape[0] - 1)).pow(2).sum() / x.shape[1]
    cov = cov / n * (1 if cov_mean else 2)  # per branch; the paper's VICReg sums two branches
    glob = lambda_ * inv / max(pairs, 1) + mu * var / n + nu * cov

    def gamma(v: int, first: bool) -> int:
        if matches_by == "order":
            return num_matches[0] if first else num_matches[1]
        return num_matches[0] if v < n_global else num_matches[1]

    local, count = z[0].new_zeros(()), 0
    for a in range(n_global):
        for b in range(n):
            if a == b:
                continue
            for dist_ab in (torch.cdist(maps[a], maps[b]), torch.cdist(grids[a].to(maps[a].dtype),
                                                                        grids[b].to(maps[a].dtype))):
                xa, ya = nearest_pairs(maps[a], maps[b], dist_ab, gamma(a, True))
                xb, yb = nearest_pairs(maps[b], maps[a], dist_ab.transpose(1, 2), gamma(b, False))
                local = local + 0.5 * (_vicreg_nd(xa, ya, **args) + _vicreg_nd(xb, yb, **args))
            count += 1
    return alpha * glob + (1 - alpha) * local / max(count, 1)


@fp32_loss
def mask_pool(fmap: torch.Tensor, masks: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    r"""DetCon's mask pooling: :math:`h_m = \sum_{ij} a_m(i,j) f(i,j) / \sum_{ij} a_m(i,j)` for feature maps
    ``[B, C, h, w]`` and (soft) masks ``[B, M, h, w]`` at the same resolution. Returns ``[B, M, C]``."""
    area = masks.flatten(2).sum(-1, keepdim=True)
    return torch.einsum("bmhw,bchw->bmc", masks, fmap) / area.clamp_min(eps)


@fp32_loss
def detcon_loss(pred0: torch.Tensor, pred1: torch.Tensor, target0: torch.Tensor, target1: torch.Tensor,
                ids0: torch.Tensor, ids1: torch.Tensor, temperature: float = 0.1,
                distributed: bool = True) -> torch.Tensor:
    r"""DetCon's object-level contrastive loss (Hénaff et al. 2021, Eq. 1), symmetrised over the two views. For
    the mask-pooled, projected (``pred*``) and target (``target*``) embeddings ``[B, M, D]`` of each view's
    sampled masks with mask ids ``ids*`` ``[B, M]``, and :math:`v = z/\|z\|`:

    .. math:: \mathcal{L} = \sum_m -\frac{1}{|P_m|}\sum_{p \in P_m}\log\frac{\exp(v_m \cdot v'_p/\tau)}
              {\sum_{n \ne m} \exp(v_m \cdot v_n/\tau)},

    where the candidates :math:`n` are every sampled mask of both views of every image in the (global) batch
    except :math:`m` itself and the same-id masks of its own view, and the positives :math:`P_m` are the masks
    of the other view of the same image with the same id. Each term is weighted by 1 / (how often the id was
    sampled in its view) and by whether it has a positive, and the mean is over the batch and masks, as the
    official code (and lightly's ``DetConBLoss``). DetCon-S (SimCLR) passes ``target = pred``; DetCon-B (BYOL)
    passes the momentum encoder's projections. Exact under DDP: targets are gathered with gradient.
    """
    if pred0.dim() != 3 or ids0.shape != pred0.shape[:2] or not (pred0.shape == pred1.shape == target0.shape
                                                                   == target1.shape) or ids1.shape != ids0.shape:
        raise ValueError(f"detcon_loss expects four [B, M, D] embeddings and two [B, M] id tensors; got "
                         f"{tuple(pred0.shape)}, {tuple(pred1.shape)}, {tuple(target0.shape)}, {tuple(target1.shape)},"
                         f" {tuple(ids0.shape)}, {tuple(ids1.shape)}")
    b, m, _ = pred0.shape
    t0, t1 = (gather(target0), gather(target1)) if distributed else (target0, target1)
    off = local_offset(b) if distributed else 0
    same_img = F.one_hot(torch.arange(b, device=pred0.device) + off, t0.shape[0]).to(pred0.dtype)[:, None, :, None]
    p0, p1 = F.normalize(pred0, dim=-1), F.normalize(pred1, dim=-1)
    t0, t1 = F.normalize(t0, dim=-1), F.normalize(t1, dim=-1)

    def one_side(p, t_same, t_other, ids, ids_other):
        same_self = (ids[:, :, None] == ids[:, None, :]).to(p.dtype)[:, :, None, :]  # [b, m, 1, m]
        pos = same_img * (ids[:, :, None] == ids_other[:, None, :]).to(p.dtype)[:, :, None, :]
        logits_other = torch.einsum("amd,ukd->amuk", p, t_other) / temperature
        logits_same = torch.einsum("amd,ukd->amuk", p, t_same) / temperature - 1e9 * (same_img * same_self)
        logits = torch.cat([logits_other, logits_same], 2).reshape(b, m, -1)
        labels = torch.cat([pos, torch.zeros_like(logits_same)], 2).reshape(b, m, -1)
        n_pos = labels.sum(-1)
        weight = (n_pos > 1e-3).to(p.dtype) / same_self.sum((2, 3)).clamp_min(1e-8)
        ce = -(labels / n_pos.clamp_min(1.0)[..., None] * F.log_softmax(logits, -1)).sum(-1)
        return (weight * ce).mean()

    return one_side(p0, t0, t1, ids0, ids1) + one_side(p1, t1, t0, ids1, ids0)
