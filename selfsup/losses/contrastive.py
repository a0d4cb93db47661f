"""Contrastive (InfoNCE-family) losses, exact across processes.

Cookbook, Section 2.2.1 (deep metric learning family).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from selfsup.losses.distributed import gather, local_offset
from selfsup.losses.precision import fp32_loss


@fp32_loss
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
    logits[rows, self_idx] = float("-inf")
    return F.cross_entropy(logits, pos_idx)


@fp32_loss
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
    return F.cross_entropy(logits / temperature, labels)


@fp32_loss
def supcon(views: list[torch.Tensor], labels: torch.Tensor | None, temperature: float = 0.1,
           distributed: bool = True) -> torch.Tensor:
    r"""Supervised contrastive loss :math:`\mathcal{L}^{sup}_{out}` (Khosla et al., 2020, Eq. 2).

    Over the set :math:`I` of all :math:`V \cdot N` views of a batch, with :math:`A(i) = I \setminus \{i\}`
    and the positives :math:`P(i) = \{p \in A(i) : y_p = y_i\}`,

    .. math:: \mathcal{L} = \frac{1}{|I|} \sum_{i \in I} \frac{-1}{|P(i)|} \sum_{p \in P(i)}
              \log \frac{\exp(z_i^\top z_p/\tau)}{\sum_{a \in A(i)} \exp(z_i^\top z_a/\tau)}

    on L2-normalised :math:`z`. ``views`` is a list of ``V >= 2`` tensors ``[N, D]`` (view ``v`` of
    image ``n`` in row ``n``). ``labels=None`` makes every image its own class, which is SimCLR's
    NT-Xent. Under DDP, :math:`A(i)` and :math:`P(i)` run over the global batch.
    """
    if len(views) < 2:
        raise ValueError(f"supcon needs at least 2 views per image, got {len(views)}")
    n = views[0].shape[0]
    if any(v.dim() != 2 or v.shape != views[0].shape for v in views):
        raise ValueError(f"supcon expects views of equal shape [N, D], got {[tuple(v.shape) for v in views]}")
    if labels is not None and labels.shape != (n,):
        raise ValueError(f"supcon labels must have shape ({n},), got {tuple(labels.shape)}")
    device = views[0].device
    z = [F.normalize(v, dim=1) for v in views]
    g = [gather(v) for v in z] if distributed else z
    n_all, off = g[0].shape[0], (local_offset(n) if distributed else 0)
    if labels is None:
        y_local = torch.arange(n, device=device) + off
        y_all = torch.arange(n_all, device=device)
    else:
        y_local = labels
        y_all = gather(labels, grad=False) if distributed else labels
    n_views = len(views)
    logits = torch.cat(z, 0) @ torch.cat(g, 0).T / temperature  # [V n, V N]
    rows = torch.arange(n_views * n, device=device)
    self_idx = (rows // n) * n_all + off + rows % n
    is_self = torch.zeros_like(logits, dtype=torch.bool)
    is_self[rows, self_idx] = True
    logits = logits.masked_fill(is_self, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positive = (y_local.repeat(n_views)[:, None] == y_all.repeat(n_views)[None, :]) & ~is_self
    per_anchor = -torch.where(positive, log_prob, torch.zeros_like(log_prob)).sum(1) / positive.sum(1)
    return per_anchor.mean()


@fp32_loss
def dcl(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1, sigma: float | None = None,
        distributed: bool = True) -> torch.Tensor:
    r"""Decoupled contrastive loss, DCL (Yeh et al., 2021, Eq. 6); DCLW when ``sigma`` is set.

    NT-Xent with the positive pair removed from the denominator. For anchor :math:`z_i^{(1)}`
    (and symmetrically :math:`z_i^{(2)}`), on L2-normalised embeddings,

    .. math:: \ell_i = -w_i \langle z_i^{(1)}, z_i^{(2)} \rangle/\tau
              + \log \sum_{k \ne i,\, l \in \{1,2\}} \exp(\langle z_i^{(1)}, z_k^{(l)} \rangle/\tau),

    averaged over the 2N anchors, with :math:`w_i = 1` (DCL) or the von Mises-Fisher weight of DCLW

    .. math:: w_i = 2 - \frac{\exp(\langle z_i^{(1)}, z_i^{(2)} \rangle/\sigma)}
              {\mathbb{E}_k \exp(\langle z_k^{(1)}, z_k^{(2)} \rangle/\sigma)}

    (expectation over the global batch; as in the authors' code, the weight is not detached).
    The authors sum the two directions; we average them, like :func:`nt_xent`.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"dcl expects two [N, D] tensors of equal shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    g1, g2 = (gather(z1), gather(z2)) if distributed else (z1, z2)
    n, n_all = z1.shape[0], g1.shape[0]
    off = local_offset(n) if distributed else 0
    logits = torch.cat([z1, z2], 0) @ torch.cat([g1, g2], 0).T / temperature  # [2n, 2N]
    idx = torch.arange(n, device=z1.device) + off
    rows = torch.arange(2 * n, device=z1.device)
    drop = torch.zeros_like(logits, dtype=torch.bool)
    drop[rows, torch.cat([idx, idx + n_all])] = True  # the anchor itself
    drop[rows, torch.cat([idx + n_all, idx])] = True  # its positive: decoupled from the denominator
    logits = logits.masked_fill(drop, float("-inf"))
    pos = (z1 * z2).sum(1)
    weight = 1.0
    if sigma is not None:
        pos_all = gather(pos) if distributed else pos
        # 2 - exp(s_i/sigma) / mean_k exp(s_k/sigma), computed in the log domain
        weight = 2 - torch.exp(pos / sigma - torch.logsumexp(pos_all / sigma, 0) + math.log(pos_all.shape[0]))
    positive = (weight * pos / temperature).repeat(2)
    return (torch.logsumexp(logits, dim=1) - positive).mean()


@fp32_loss
def moco_infonce(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    r"""MoCo's InfoNCE (He et al., 2020, Eq. 1): each query's positive is its own key, the negatives
    are the queue :math:`\{n_m\}` (keys of past batches), on L2-normalised vectors:

    .. math:: \ell_i = -\log \frac{\exp(q_i^\top k_i/\tau)}{\exp(q_i^\top k_i/\tau) + \sum_m \exp(q_i^\top n_m/\tau)}.

    Per-sample (no in-batch negatives), so it is exact under DDP without communication; the queue
    is the same on every rank (see :class:`selfsup.nets.MemoryBank`). Keys carry no gradient.
    """
    if q.shape != k.shape or q.dim() != 2 or queue.dim() != 2 or queue.shape[1] != q.shape[1]:
        raise ValueError(f"moco_infonce expects q, k [N, D] and queue [M, D], got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(queue.shape)}")
    q, k = F.normalize(q, dim=1), F.normalize(k.detach(), dim=1)
    neg = F.normalize(queue.detach(), dim=1).to(q.dtype)
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ neg.T], 1)
    labels = torch.zeros(q.shape[0], dtype=torch.long, device=q.device)
    return F.cross_entropy(logits / temperature, labels)


@fp32_loss
def moco_v3_loss(q1: torch.Tensor, q2: torch.Tensor, k1: torch.Tensor, k2: torch.Tensor, temperature: float = 1.0,
                 distributed: bool = True) -> torch.Tensor:
    r"""MoCo v3 (Chen, Xie & He, 2021, Alg. 1): symmetric InfoNCE with in-batch keys, scaled by :math:`2\tau`,

    .. math:: \mathcal{L} = 2\tau\,[\mathrm{ctr}(q_1, k_2) + \mathrm{ctr}(q_2, k_1)],

    where :math:`\mathrm{ctr}(q, k)` is :func:`info_nce` of the queries against the (global) batch of
    momentum keys. Keys are detached (they come from the momentum encoder).
    """
    k1, k2 = k1.detach(), k2.detach()
    return 2 * temperature * (info_nce(q1, k2, None, temperature, distributed)
                              + info_nce(q2, k1, None, temperature, distributed))


@fp32_loss
def relic_terms(z1: torch.Tensor, z2: torch.Tensor, t1: torch.Tensor | None = None, t2: torch.Tensor | None = None,
                temperature: float = 0.1, distributed: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    r"""The two terms of ReLIC (Mitrovic et al., 2021, Eq. 3): instance discrimination and invariance.

    With online embeddings :math:`f(x_i^{a})` (``z1``, ``z2``) and target embeddings
    :math:`h(x_j^{a})` (``t1``, ``t2``; ``None``: :math:`h = f`), L2-normalised, and
    :math:`p^{lk}_i(j) \propto \exp(\langle f(x_i^{a_l}), h(x_j^{a_k})\rangle/\tau)` over the global batch,

    .. math:: \mathcal{L}_{ctr} = \tfrac{1}{2N} \sum_i [-\log p^{12}_i(i) - \log p^{21}_i(i)], \qquad
              \mathcal{L}_{inv} = \tfrac{1}{2N} \sum_i [KL(p^{12}_i \| p^{21}_i) + KL(p^{21}_i \| p^{12}_i)].

    ReLIC's loss is :math:`\mathcal{L}_{ctr} + \alpha \mathcal{L}_{inv}` (see :func:`relic_loss`).
    """
    t1 = z1 if t1 is None else t1
    t2 = z2 if t2 is None else t2
    if not (z1.shape == z2.shape == t1.shape == t2.shape) or z1.dim() != 2:
        raise ValueError(f"relic expects four [N, D] tensors of equal shape, got {tuple(z1.shape)}, {tuple(z2.shape)}, "
                         f"{tuple(t1.shape)}, {tuple(t2.shape)}")
    z1, z2, t1, t2 = (F.normalize(x, dim=1) for x in (z1, z2, t1, t2))
    g1, g2 = (gather(t1), gather(t2)) if distributed else (t1, t2)
    off = local_offset(z1.shape[0]) if distributed else 0
    labels = torch.arange(z1.shape[0], device=z1.device) + off
    logp12 = F.log_softmax(z1 @ g2.T / temperature, dim=1)
    logp21 = F.log_softmax(z2 @ g1.T / temperature, dim=1)
    ctr = (F.nll_loss(logp12, labels) + F.nll_loss(logp21, labels)) / 2
    kl = (logp12.exp() * (logp12 - logp21)).sum(1) + (logp21.exp() * (logp21 - logp12)).sum(1)
    return ctr, kl.mean() / 2


@fp32_loss
def relic_loss(z1: torch.Tensor, z2: torch.Tensor, t1: torch.Tensor | None = None, t2: torch.Tensor | None = None,
               temperature: float = 0.1, alpha: float = 1.0, distributed: bool = True) -> torch.Tensor:
    r"""ReLIC (Mitrovic et al., 2021): :math:`\mathcal{L}_{ctr} + \alpha\,\mathcal{L}_{inv}` (:func:`relic_terms`)."""
    ctr, inv = relic_terms(z1, z2, t1, t2, temperature, distributed)
    return ctr + alpha * inv
