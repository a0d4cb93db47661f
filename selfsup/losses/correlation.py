"""Canonical-correlation family losses (Cookbook, Section 2.2.3), exact across processes."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.losses.distributed import gather
from selfsup.losses.precision import fp32_loss


@fp32_loss
def off_diagonal(m: torch.Tensor) -> torch.Tensor:
    """Flattened off-diagonal elements of a square matrix."""
    n = m.shape[0]
    return m.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


@fp32_loss
def vicreg_terms(z1: torch.Tensor, z2: torch.Tensor, gamma: float = 1.0, eps: float = 1e-4,
                 distributed: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""The three VICReg terms (Bardes et al., 2022), Eqs. (1)-(4).

    - invariance :math:`s(Z, Z') = \frac{1}{N}\sum_i \|z_i - z'_i\|_2^2 / D` (MSE);
    - variance :math:`v(Z) = \frac{1}{D}\sum_j \max(0, \gamma - \sqrt{\mathrm{Var}(z^j) + \epsilon})`,
      averaged over the two branches as in the official code;
    - covariance :math:`c(Z) = \frac{1}{D}\sum_{i \ne j} C(Z)_{ij}^2`, summed over the two branches.

    Variance and covariance use the global batch under DDP.
    """
    inv = F.mse_loss(z1, z2)
    var = z1.new_zeros(())
    cov = z1.new_zeros(())
    for z in (z1, z2):
        zg = gather(z) if distributed else z
        n, d = zg.shape
        zc = zg - zg.mean(0)
        std = torch.sqrt(zc.var(0) + eps)
        var = var + F.relu(gamma - std).mean() / 2
        c = (zc.T @ zc) / (n - 1)
        cov = cov + off_diagonal(c).pow(2).sum() / d
    return inv, var, cov


@fp32_loss
def vicreg_loss(z1: torch.Tensor, z2: torch.Tensor, lambda_: float = 25.0, mu: float = 25.0, nu: float = 1.0,
                gamma: float = 1.0, eps: float = 1e-4, distributed: bool = True) -> torch.Tensor:
    r"""VICReg: :math:`\lambda s(Z,Z') + \mu [v(Z)+v(Z')]/2 + \nu [c(Z)+c(Z')]` (see :func:`vicreg_terms`)."""
    inv, var, cov = vicreg_terms(z1, z2, gamma=gamma, eps=eps, distributed=distributed)
    return lambda_ * inv + mu * var + nu * cov


@fp32_loss
def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambda_: float = 5e-3, eps: float = 1e-5,
                      distributed: bool = True) -> torch.Tensor:
    r"""Barlow Twins (Zbontar et al., 2021), Eqs. (1)-(2).

    Each embedding dimension is standardised over the (global) batch, as the paper's
    ``BatchNorm1d(affine=False)`` in training mode: :math:`\hat z_{b,i} = (z_{b,i} - \mu_i)/\sqrt{\sigma_i^2 + \epsilon}`
    (biased variance). With the cross-correlation :math:`\mathcal{C}_{ij} = \frac{1}{N}\sum_b \hat z^A_{b,i} \hat z^B_{b,j}`,

    .. math:: \mathcal{L}_{BT} = \sum_i (1 - \mathcal{C}_{ii})^2 + \lambda \sum_i \sum_{j \ne i} \mathcal{C}_{ij}^2.

    Under DDP the embeddings are gathered with gradient, so every rank computes the global-batch loss.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"barlow_twins_loss expects two [N, D] tensors of equal shape, got {tuple(z1.shape)} "
                         f"and {tuple(z2.shape)}")
    g1, g2 = (gather(z1), gather(z2)) if distributed else (z1, z2)
    n = g1.shape[0]
    if n < 2:
        raise ValueError("barlow_twins_loss needs a batch of at least 2 samples to standardise the embeddings")

    def standardise(z: torch.Tensor) -> torch.Tensor:
        return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + eps)

    c = standardise(g1).T @ standardise(g2) / n
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    return on_diag + lambda_ * off_diagonal(c).pow(2).sum()


@fp32_loss
def cholesky_whiten(x: torch.Tensor, eps: float = 0.0) -> torch.Tensor:
    r"""W-MSE's whitening (Ermolov et al., 2021), Eqs. (4)-(6): with :math:`x_c = x - \mu` and
    :math:`\Sigma = x_c^\top x_c/(n-1)` (shrunk to :math:`(1-\epsilon)\Sigma + \epsilon I`), the Cholesky
    factor :math:`\Sigma = LL^\top` gives :math:`W = L^{-1}` and the whitened rows :math:`x_c W^\top`,
    whose covariance is the identity. Differentiable (through the mean, the covariance and the solve)."""
    if x.dim() != 2:
        raise ValueError(f"cholesky_whiten expects [N, D], got shape {tuple(x.shape)}")
    n, d = x.shape
    if n <= d and eps == 0:
        raise ValueError(f"whitening {n} samples of dimension {d} needs more samples than dimensions for a "
                         f"full-rank covariance; use a larger w_size or set w_eps > 0")
    xc = x - x.mean(0)
    cov = xc.T @ xc / (n - 1)
    eye = torch.eye(d, dtype=cov.dtype, device=cov.device)
    cov = (1 - eps) * cov + eps * eye
    chol = torch.linalg.cholesky(cov)
    return torch.linalg.solve_triangular(chol, xc.T, upper=False).T


@fp32_loss
def wmse_loss(views: list[torch.Tensor], w_size: int = 128, w_iter: int = 1, eps: float = 0.0,
              generator: torch.Generator | None = None, distributed: bool = True) -> torch.Tensor:
    r"""W-MSE (Ermolov et al., 2021), Eq. (3) with the paper's batch slicing (Section 4).

    ``w_iter`` times, the (global) batch is split at random into sub-batches of ``w_size`` samples;
    each view of each sub-batch is whitened separately (:func:`cholesky_whiten`); then, for every
    pair of positives :math:`(i, j)`, :math:`\mathrm{MSE}(\bar w_i, \bar w_j) = 2 - 2\cos(w_i, w_j)`
    (normalised, averaged over samples) is averaged over pairs and repetitions.

    Under DDP the embeddings are gathered with gradient and every rank computes the global-batch
    loss; ``generator`` (CPU) must then be seeded identically on every rank so all draw the same split.
    """
    if len(views) < 2 or any(v.shape != views[0].shape or v.dim() != 2 for v in views):
        raise ValueError("wmse_loss expects at least two [N, D] views of equal shape")
    g = [gather(v) for v in views] if distributed else list(views)
    n = g[0].shape[0]
    if w_size <= 0 or n % w_size:
        raise ValueError(f"the global batch ({n}) must be a multiple of w_size ({w_size}); change data.batch_size "
                         f"or method.w_size")
    pairs = [(i, j) for i in range(len(g)) for j in range(i + 1, len(g))]
    loss = 0.0
    for _ in range(w_iter):
        perm = torch.randperm(n, generator=generator).to(g[0].device)
        back = torch.argsort(perm)  # rows of the concatenated groups -> original batch order
        white = [torch.cat([cholesky_whiten(v[idx], eps) for idx in perm.view(-1, w_size)])[back] for v in g]
        for i, j in pairs:
            loss = loss + (2 - 2 * F.cosine_similarity(white[i], white[j], dim=1)).mean()
    return loss / (w_iter * len(pairs))
