"""Information-maximisation losses on embedding spectra: MMCR, EMP-SSL's total coding rate, FroSSL.

Each raises the spread of the embedding distribution through a spectral quantity of a batch matrix
(a nuclear norm, a log-determinant, a log Frobenius norm) and pulls the views of one image together.
The spectral terms are batch statistics: under DDP the embeddings are gathered with gradient and every
rank computes the global-batch term (see ``selfsup.losses.distributed``); per-sample terms are a mean
over this rank's rows, whose mean over ranks is the global mean.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.losses.distributed import gather
from selfsup.losses.precision import fp32_loss


def _views_tensor(views: torch.Tensor | list[torch.Tensor] | tuple[torch.Tensor, ...], name: str) -> torch.Tensor:
    z = torch.stack(list(views)) if isinstance(views, (list, tuple)) else views
    if z.dim() != 3 or z.shape[0] < 2:
        raise ValueError(f"{name} expects at least 2 views of shape [N, D] (a [V, N, D] tensor or a list), "
                         f"got shape {tuple(z.shape)}")
    return z


@fp32_loss
def mmcr_loss(views: torch.Tensor, lambda_: float = 0.0, normalize: bool = True,
              distributed: bool = True) -> torch.Tensor:
    r"""Maximum Manifold Capacity Representations, MMCR (Yerxa et al., 2023, "Learning Efficient Coding of
    Natural Images with Maximum Manifold Capacity Representations", NeurIPS).

    ``views`` is ``[N, K, D]``: K augmentations of each of N images, projected to the unit sphere
    (``normalize``). With the centroids :math:`c_i = \frac1K \sum_k z_{i,k}` stacked into
    :math:`C \in \mathbb{R}^{N \times D}` and each image's view matrix :math:`Z_i \in \mathbb{R}^{K \times D}`,

    .. math:: \mathcal{L} = -\lVert C \rVert_* + \frac{\lambda}{N} \sum_{i=1}^N \lVert Z_i \rVert_*,

    with :math:`\lVert\cdot\rVert_*` the nuclear norm (sum of singular values). ``lambda_`` defaults to 0
    as in the official code (``--lmbda 0.0``); lightly's ``MMCRLoss`` uses 5e-3. Under DDP the centroid
    matrix is that of the global batch.
    """
    if views.dim() != 3 or views.shape[1] < 2:
        raise ValueError(f"mmcr_loss expects [N, K >= 2, D] views, got shape {tuple(views.shape)}")
    z = F.normalize(views, dim=-1) if normalize else views
    centroids = z.mean(1)
    c = gather(centroids) if distributed else centroids
    loss = -torch.linalg.svdvals(c).sum()
    if lambda_ != 0.0:
        loss = loss + lambda_ * torch.linalg.svdvals(z).sum(-1).mean()
    return loss


@fp32_loss
def total_coding_rate(z: torch.Tensor, eps: float = 0.2, eps_convention: str = "paper",
                      distributed: bool = True) -> torch.Tensor:
    r"""Total coding rate of a batch (Ma et al., 2007; Yu et al., 2020, MCR²; used by EMP-SSL):

    .. math:: R(Z) = \frac12 \log\det\Big(I_D + \frac{D}{N \epsilon^2} Z^\top Z\Big),
              \qquad Z \in \mathbb{R}^{N \times D},

    the number of bits needed to code the rows of :math:`Z` up to distortion :math:`\epsilon`.
    ``eps_convention="paper"`` uses :math:`\epsilon^2` as written; ``"code"`` uses :math:`\epsilon` in its place,
    as the official EMP-SSL code (``TotalCodingRate``, ``scalar = p / (m * eps)``) and lightly do.
    Under DDP :math:`Z` is the global batch (gathered with gradient; every rank returns the same value).
    """
    if z.dim() != 2:
        raise ValueError(f"total_coding_rate expects [N, D], got shape {tuple(z.shape)}")
    if eps_convention not in ("paper", "code"):
        raise ValueError(f"eps_convention must be 'paper' or 'code', got {eps_convention!r}")
    g = gather(z) if distributed else z
    n, d = g.shape
    scale = d / (n * (eps * eps if eps_convention == "paper" else eps))
    eye = torch.eye(d, dtype=g.dtype, device=g.device)
    return 0.5 * torch.logdet(eye + scale * (g.T @ g))


@fp32_loss
def emp_ssl_loss(patches: torch.Tensor | list[torch.Tensor], lambda_: float = 200.0, eps: float = 0.2,
                 eps_convention: str = "paper", normalize: bool = True, distributed: bool = True) -> torch.Tensor:
    r"""EMP-SSL (Tong et al., 2023, "EMP-SSL: Towards Self-Supervised Learning in One Training Epoch").

    ``patches`` holds the embeddings of P fixed-size crops of each image, ``[P, N, D]`` (or a list of P
    ``[N, D]`` tensors), projected to the unit sphere (``normalize``). With :math:`\bar Z = \frac1P \sum_p Z_p`
    the mean patch embedding and :math:`R` the :func:`total_coding_rate`, the paper maximises
    :math:`\frac1P \sum_p [R(Z_p) + \lambda\, D(Z_p, \bar Z)]`, :math:`D` the mean cosine similarity, so

    .. math:: \mathcal{L} = -\frac1P \sum_{p=1}^P \Big[ R(Z_p) + \frac{\lambda}{N} \sum_{i=1}^N
              \cos(z_{p,i}, \bar z_i) \Big],

    with :math:`\lambda = 200` and :math:`\epsilon = 0.2` (the official ``main.py`` defaults; :math:`\bar Z` is not
    detached there, and detaching it would change nothing: for unit :math:`z_p` the mean cosine has zero
    gradient through :math:`\bar z`). **Convention:** the paper writes :math:`\epsilon^2` inside :math:`R`, the
    official code and lightly use :math:`\epsilon`; this follows the paper by default and
    ``eps_convention="code"`` gives the code's variant (at 0.2 the code's :math:`D/(N \cdot 0.2)` equals the
    paper's with :math:`\epsilon = \sqrt{0.2}`). lightly 1.6's ``EMPSSLLoss`` *adds* :math:`R` (it minimises
    the coding rate); the paper and the official code subtract it, as here. Under DDP every :math:`R(Z_p)`
    uses the global batch.
    """
    z = _views_tensor(patches, "emp_ssl_loss")
    if normalize:
        z = F.normalize(z, dim=-1)
    rate = torch.stack([total_coding_rate(zp, eps, eps_convention, distributed) for zp in z]).mean()
    invariance = F.cosine_similarity(z, z.mean(0, keepdim=True), dim=-1).mean()
    return -rate - lambda_ * invariance


@fp32_loss
def frossl_loss(views: torch.Tensor | list[torch.Tensor], invariance_weight: float = 1.0,
                distributed: bool = True) -> torch.Tensor:
    r"""FroSSL (Skean et al., 2024, "FroSSL: Frobenius Norm Minimization for Efficient Multiview
    Self-Supervised Learning", Eqs. (3) and (6); the authors' ``multiview_frossl_loss_func``).

    Each of the V views ``[N, D]`` is L2-normalised along the batch (every embedding dimension becomes a
    unit vector over the N samples, so :math:`\mathrm{tr}(Z_v^\top Z_v) = D`). With the trace-normalised
    covariance :math:`K_v = Z_v^\top Z_v / \mathrm{tr}(Z_v^\top Z_v)` (or the Gram :math:`Z_v Z_v^\top` when
    :math:`N \le D`; both have the same non-zero spectrum) and the mean view :math:`\bar Z`,

    .. math:: \mathcal{L} = \sum_{v=1}^V \Big[ \log \lVert K_v \rVert_F^2
              + \lambda \frac{V}{N} \sum_{i=1}^N \lVert z_{v,i} - \bar z_i \rVert_2^2 \Big],

    i.e. the authors' ``V * D * mse(Z_v, Z_bar)`` per view (lightly agrees). Minimising the log Frobenius
    norm at fixed trace spreads the covariance eigenvalues (a Rényi-2 entropy). ``invariance_weight`` is
    :math:`\lambda`. Under DDP the normalisation and covariances use the global batch (every rank returns
    the global loss).
    """
    z = _views_tensor(views, "frossl_loss")
    if distributed:
        z = gather(z.transpose(0, 1).contiguous()).transpose(0, 1)  # gather along the batch axis
    n_views, n, d = z.shape
    z = F.normalize(z, dim=1)
    mean_view = z.mean(0)
    loss = z.new_zeros(())
    for zv in z:
        k = zv.T @ zv if n > d else zv @ zv.T
        k = k / torch.diagonal(k).sum()
        loss = loss + torch.log(k.pow(2).sum())
        loss = loss + invariance_weight * n_views * (zv - mean_view).pow(2).sum() / n
    return loss
