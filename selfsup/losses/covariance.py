"""Covariance-regularised joint-embedding losses: TiCo and VIbCReg (with IterNorm whitening).

TiCo's running covariance is an explicit input and output (a pure function: the caller keeps the state).
Batch statistics use the global batch under DDP (see ``selfsup.losses.distributed``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.losses.distributed import gather, local_offset
from selfsup.losses.precision import fp32_loss


@fp32_loss
def tico_loss(z1: torch.Tensor, z2: torch.Tensor, cov: torch.Tensor | None, beta: float = 0.9, rho: float = 8.0,
              grad_through_batch: bool = False,
              distributed: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    r"""TiCo, transformation invariance and covariance contrast (Zhu et al., 2022, arXiv 2206.10698).

    On L2-normalised embeddings :math:`z_i, z'_i` of two views, the running covariance of the first branch
    :math:`C_t = \beta C_{t-1} + (1-\beta) \frac1N \sum_i z_i z_i^\top` (``cov`` is :math:`C_{t-1}`, ``None``
    = zeros at the first step) and

    .. math:: \mathcal{L} = -\frac1N \sum_i z_i^\top z'_i + \frac{\rho}{N} \sum_i z_i^\top C_t z_i .

    Returns ``(loss, C_t)``; pass ``C_t`` (detached) back in at the next step. :math:`C_t` acts as an implicit
    memory bank of all past batches (the paper's MoCo reading), so by default it is a constant of the loss
    (the batch term is detached, as lightly's ``TiCoLoss``); ``grad_through_batch=True`` lets the gradient
    flow through the current batch's term. :math:`\beta = 0.9`, :math:`\rho = 8` (lightly's value, which
    it corrected from 20 "to the paper"); lightly adds the constant 1 to the loss. Under DDP :math:`C_t`
    uses the global batch.
    """
    if z1.shape != z2.shape or z1.dim() != 2 or z1.shape[0] < 2:
        raise ValueError(f"tico_loss expects two [N >= 2, D] tensors of equal shape, got {tuple(z1.shape)} and "
                         f"{tuple(z2.shape)}")
    z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    d = z1.shape[1]
    if cov is None:
        cov = z1.new_zeros(d, d)
    elif cov.shape != (d, d):
        raise ValueError(f"tico_loss: cov must be [{d}, {d}], got shape {tuple(cov.shape)}")
    g1 = gather(z1, grad=grad_through_batch) if distributed else z1
    if not grad_through_batch:
        g1 = g1.detach()
    c = beta * cov.detach().to(z1.dtype) + (1 - beta) * (g1.T @ g1) / g1.shape[0]
    invariance = -(z1 * z2).sum(1).mean()
    contrast = rho * ((z1 @ c) * z1).sum(1).mean()
    return invariance + contrast, c.detach()


def _group_channels(d: int, num_groups: int) -> int:
    """Channels per IterNorm group, as the reference ``IterNorm``: ceil(d / num_groups), halved until it
    divides d."""
    channels = (d - 1) // num_groups + 1
    while d % channels:
        channels //= 2
    return channels


@fp32_loss
def iter_norm(x: torch.Tensor, num_groups: int = 64, iterations: int = 5, eps: float = 1e-5,
              distributed: bool = True) -> torch.Tensor:
    r"""IterNorm whitening in training mode (Huang et al., 2019, "Iterative Normalization: Beyond
    Standardization towards Efficient Whitening", Algorithm 1), the last projector layer of VIbCReg.

    The D channels are split into groups (``num_groups`` 64 as solo-learn's VIbCReg; channels per group
    :math:`\lceil D/64 \rceil`). Per group, with the centred batch :math:`X_c` (``[c, N]``),
    :math:`\Sigma = \epsilon I + \frac1N X_c X_c^\top` and :math:`\Sigma_N = \Sigma / \mathrm{tr}\,\Sigma`,
    ``iterations`` (T = 5) Newton steps :math:`P_0 = I`, :math:`P_{k+1} = \frac12 (3 P_k - P_k^3 \Sigma_N)`
    approximate :math:`\Sigma_N^{-1/2}`, and the output is :math:`\hat X = P_T X_c / \sqrt{\mathrm{tr}\,\Sigma}`.
    Differentiable by autograd (the reference's hand-written backward is the same derivative). The Newton
    iteration is not self-correcting: far more than ~10 steps amplify rounding, so keep the paper's T = 5. Under DDP
    the mean and covariance are those of the global batch (solo-learn's layer uses each GPU's batch); the
    result has this rank's rows. No running statistics: this is a loss-side function, not an eval layer.
    """
    if x.dim() != 2 or x.shape[0] < 2:
        raise ValueError(f"iter_norm expects [N >= 2, D], got shape {tuple(x.shape)}")
    n_local, d = x.shape
    g = gather(x) if distributed else x
    n = g.shape[0]
    c = _group_channels(d, num_groups)
    xg = g.T.reshape(d // c, c, n)  # [groups, c, N]
    xc = xg - xg.mean(-1, keepdim=True)
    eye = torch.eye(c, dtype=x.dtype, device=x.device).expand(d // c, c, c)
    sigma = eps * eye + xc @ xc.transpose(1, 2) / n
    trace = torch.diagonal(sigma, dim1=1, dim2=2).sum(-1)[:, None, None]
    sigma_n = sigma / trace
    p = eye
    for _ in range(iterations):
        p = 1.5 * p - 0.5 * torch.linalg.matrix_power(p, 3) @ sigma_n
    white = (p / trace.sqrt()) @ xc  # [groups, c, N]
    out = white.reshape(d, n).T
    if distributed and n != n_local:
        off = local_offset(n_local)
        out = out[off:off + n_local]
    return out


@fp32_loss
def vibcreg_loss(z1: torch.Tensor, z2: torch.Tensor, sim_weight: float = 25.0, var_weight: float = 25.0,
                 cov_weight: float = 200.0, eps: float = 1e-4, distributed: bool = True) -> torch.Tensor:
    r"""VIbCReg, variance-invariance-better-covariance regularisation (Lee & Aune, 2021, arXiv 2109.00783;
    solo-learn ``vibcreg_loss_func``). On the (IterNorm-whitened, :func:`iter_norm`) projector outputs:

    .. math:: \mathcal{L} = \lambda\, \frac{1}{ND}\sum_i \lVert z_i - z'_i \rVert^2
              + \mu\, [v(Z) + v(Z')] + \nu\, [c(Z) + c(Z')],

    with VICReg's :math:`v(Z) = \frac1D \sum_j \max(0, 1 - \sqrt{\mathrm{Var}(z^j) + \epsilon})` (unbiased
    variance) and the *normalised* covariance :math:`c(Z) = \frac{1}{D^2} \sum_{j \ne k} \hat C_{jk}^2`,
    where :math:`\hat C = \hat Z^\top \hat Z` is computed from the centred embeddings L2-normalised along the
    batch, i.e. the correlation matrix, so :math:`c` does not depend on the scale of :math:`Z` (VICReg's
    covariance term does). :math:`\lambda = \mu = 25`, :math:`\nu = 200`. Unlike VICReg's official code the
    variance terms of the two branches are summed, not averaged (as the paper and solo-learn). Variance and
    covariance use the global batch under DDP.
    """
    if z1.shape != z2.shape or z1.dim() != 2:
        raise ValueError(f"vibcreg_loss expects two [N, D] tensors of equal shape, got {tuple(z1.shape)} and "
                         f"{tuple(z2.shape)}")
    invariance = F.mse_loss(z1, z2)
    variance = z1.new_zeros(())
    covariance = z1.new_zeros(())
    for z in (z1, z2):
        g = gather(z) if distributed else z
        if g.shape[0] < 2:
            raise ValueError("vibcreg_loss needs a (global) batch of at least 2 samples")
        variance = variance + F.relu(1 - torch.sqrt(g.var(0) + eps)).mean()
        zn = F.normalize(g - g.mean(0), dim=0)
        corr = zn.T @ zn
        off = corr - torch.diag_embed(torch.diagonal(corr))
        covariance = covariance + off.pow(2).mean()
    return sim_weight * invariance + var_weight * variance + cov_weight * covariance
