"""Clustering losses of the canonical-correlation family (Cookbook, Section 2.2.3): SwAV's
Sinkhorn-Knopp codes and swapped prediction, DeepCluster-v2's spherical k-means.

All are exact across processes: Sinkhorn's marginals and k-means' centroid sums are all-reduced,
so each rank gets the codes / centroids that one process would compute on the global batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.nn.functional as F

from selfsup.losses.distributed import all_reduce_sum, is_distributed, rank, world_size
from selfsup.losses.precision import fp32_loss


def _all_reduce_max(x: torch.Tensor) -> torch.Tensor:
    if not is_distributed():
        return x
    x = x.detach().clone()
    dist.all_reduce(x, op=dist.ReduceOp.MAX)
    return x


@fp32_loss
@torch.no_grad()
def sinkhorn_knopp(scores: torch.Tensor, epsilon: float = 0.05, n_iters: int = 3,
                   distributed: bool = True) -> torch.Tensor:
    r"""SwAV's online codes (Caron et al., 2020, Eq. (3)-(4) and Appendix A.1).

    For prototype scores :math:`S = C^\top Z` of the batch (``[B, K]``, rows = samples), the codes

    .. math:: Q^* = \mathrm{Diag}(u)\, \exp(S^\top/\varepsilon)\, \mathrm{Diag}(v)

    maximise :math:`\mathrm{Tr}(Q^\top C^\top Z) + \varepsilon H(Q)` over the transportation polytope
    :math:`\{Q \in \mathbb{R}_+^{K\times B}: Q 1_B = \tfrac{1}{K} 1_K,\ Q^\top 1_K = \tfrac{1}{B} 1_B\}`
    (equal partition of the batch over the prototypes). ``n_iters`` rounds of alternate row and column
    normalisation approximate :math:`u, v`; the last step is a column normalisation, so each returned
    code (``[B_local, K]``, scaled by :math:`B`) sums to exactly 1, while each prototype receives about
    :math:`B/K` of the mass. Under DDP, :math:`B` is the global batch and the prototype (row) sums
    and the total are all-reduced. Computed in float32 (or float64 for float64 input), no gradient.
    """
    if scores.dim() != 2:
        raise ValueError(f"sinkhorn_knopp expects [B, K] scores, got shape {tuple(scores.shape)}")
    if epsilon <= 0 or n_iters < 0:
        raise ValueError(f"sinkhorn_knopp needs epsilon > 0 and n_iters >= 0, got {epsilon} and {n_iters}")
    reduce = all_reduce_sum if distributed else (lambda t: t)
    s = scores.detach()
    top = _all_reduce_max(s.max()) if distributed else s.max()
    q = torch.exp((s - top) / epsilon).T  # [K, B]; the max shift cancels in the normalisations
    k = q.shape[0]
    b = reduce(torch.tensor(float(q.shape[1]), dtype=q.dtype, device=q.device))
    q = q / reduce(q.sum())
    tiny = torch.finfo(q.dtype).tiny
    for _ in range(n_iters):
        q = q / reduce(q.sum(1, keepdim=True)).clamp_min(tiny) / k  # each prototype gets mass 1/K
        q = q / q.sum(0, keepdim=True).clamp_min(tiny) / b  # each sample gets mass 1/B
    return (q * b).T


@fp32_loss
def swapped_prediction(scores: Sequence[torch.Tensor], codes: Sequence[torch.Tensor],
                       temperature: float = 0.1) -> torch.Tensor:
    r"""SwAV's swapped prediction loss with multi-crop (Caron et al., 2020, Eq. (1)-(2), Section 3.2).

    With :math:`p_v = \mathrm{softmax}(s_v/\tau)` the prediction of crop :math:`v` and :math:`q_i` the
    code of crop :math:`i \in A` (``codes[i]`` belongs to ``scores[i]``),

    .. math:: \mathcal{L} = \frac{1}{|A|} \sum_{i \in A} \frac{1}{V-1} \sum_{v \ne i}
              \frac{1}{B}\sum_b \Big(-\sum_k q_{i,bk} \log p_{v,bk}\Big),

    over :math:`V` = ``len(scores)`` crops. Codes are targets (no gradient). A per-sample mean, so
    the mean over ranks of the local losses is the global-batch loss.
    """
    if len(codes) < 1 or len(scores) < 2 or len(codes) > len(scores):
        raise ValueError(f"swapped_prediction needs >= 2 crops and 1..{len(scores)} codes, "
                         f"got {len(scores)} crops and {len(codes)} codes")
    loss = scores[0].new_zeros(())
    log_p = [F.log_softmax(s / temperature, dim=1) for s in scores]
    for i, q in enumerate(codes):
        q = q.detach()
        sub = sum(-(q * log_p[v]).sum(1).mean() for v in range(len(scores)) if v != i)
        loss = loss + sub / (len(scores) - 1)
    return loss / len(codes)


@fp32_loss
def swav_loss(scores: Sequence[torch.Tensor], n_assign: int = 2, temperature: float = 0.1, epsilon: float = 0.05,
              n_iters: int = 3, queue_scores: Sequence[torch.Tensor | None] | None = None,
              distributed: bool = True) -> torch.Tensor:
    r"""SwAV (Caron et al., 2020): codes of the first ``n_assign`` crops by :func:`sinkhorn_knopp`, then
    :func:`swapped_prediction` against every other crop.

    ``queue_scores[i]`` (optional, ``[M, K]``) are the current prototypes' scores of a queue of past
    embeddings for crop ``i``, prepended to the batch before Sinkhorn (only the batch's codes are
    kept). The queue is the same on every rank (:class:`~selfsup.nets.MemoryBank` gathers it), so
    under DDP each rank feeds its share of rows ``rank::world_size``: the all-reduced marginals then
    count every queue row exactly once, as one process with the whole queue would.
    """
    if not 1 <= n_assign <= len(scores):
        raise ValueError(f"n_assign must be in 1..{len(scores)} (the number of crops), got {n_assign}")
    codes = []
    for i in range(n_assign):
        s = scores[i].detach()
        n = s.shape[0]
        q = queue_scores[i] if queue_scores is not None and i < len(queue_scores) else None
        if q is not None and q.shape[0] > 0:
            q = q.detach()
            if distributed and is_distributed():
                q = q[rank()::world_size()]
            s = torch.cat([q.to(s.dtype), s])
        codes.append(sinkhorn_knopp(s, epsilon, n_iters, distributed)[-n:])
    return swapped_prediction(scores, codes, temperature)


@fp32_loss
@torch.no_grad()
def nearest_prototype(x: torch.Tensor, centroids: torch.Tensor, chunk: int = 65536) -> torch.Tensor:
    """Index of the most similar centroid (largest dot product) for every row of ``x``, in chunks of
    ``chunk`` rows so a large memory bank never materialises the full ``[N, K]`` score matrix."""
    out = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    for i in range(0, x.shape[0], chunk):
        out[i:i + chunk] = (x[i:i + chunk] @ centroids.T).argmax(1)
    return out


@fp32_loss
@torch.no_grad()
def spherical_kmeans(x: torch.Tensor, init: torch.Tensor, n_iters: int = 10, distributed: bool = True,
                     chunk: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Spherical k-means of DeepCluster-v2 (Caron et al., 2020, Appendix A.2; the official ``cluster_memory``).

    ``n_iters`` rounds of

    - E-step: :math:`a_n = \arg\max_k \langle x_n, c_k\rangle`;
    - M-step: :math:`c_k \leftarrow \mathrm{normalize}\big(\sum_{n: a_n=k} x_n / |\{n: a_n=k\}|\big)` for every
      non-empty cluster (an empty one keeps its centroid),

    from ``init`` (``[K, D]``, the same on every rank). ``x`` holds this rank's rows (L2-normalised);
    under DDP the per-cluster sums and counts are all-reduced, so the centroids equal those of one
    process on the concatenated rows. Returns ``(centroids [K, D], assignments of x [N_local])``, the
    assignments under the final centroids.
    """
    if x.dim() != 2 or init.dim() != 2 or x.shape[1] != init.shape[1]:
        raise ValueError(f"spherical_kmeans expects x [N, D] and init [K, D], got {tuple(x.shape)} and "
                         f"{tuple(init.shape)}")
    reduce = all_reduce_sum if distributed else (lambda t: t)
    c = init.detach().to(x.dtype).clone()
    k = c.shape[0]
    for _ in range(n_iters):
        a = nearest_prototype(x, c, chunk)
        sums = reduce(torch.zeros_like(c).index_add_(0, a, x))
        counts = reduce(torch.bincount(a, minlength=k).to(x.dtype))
        full = counts > 0
        c[full] = sums[full] / counts[full, None]
        c = F.normalize(c, dim=1)
    return c, nearest_prototype(x, c, chunk)
