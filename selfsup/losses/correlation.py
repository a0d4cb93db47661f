"""Canonical-correlation family losses (Cookbook, Section 2.2.3), exact across processes."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.losses.distributed import gather


def off_diagonal(m: torch.Tensor) -> torch.Tensor:
    """Flattened off-diagonal elements of a square matrix."""
    n = m.shape[0]
    return m.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


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


def vicreg_loss(z1: torch.Tensor, z2: torch.Tensor, lambda_: float = 25.0, mu: float = 25.0, nu: float = 1.0,
                gamma: float = 1.0, eps: float = 1e-4, distributed: bool = True) -> torch.Tensor:
    r"""VICReg: :math:`\lambda s(Z,Z') + \mu [v(Z)+v(Z')]/2 + \nu [c(Z)+c(Z')]` (see :func:`vicreg_terms`)."""
    inv, var, cov = vicreg_terms(z1, z2, gamma=gamma, eps=eps, distributed=distributed)
    return lambda_ * inv + mu * var + nu * cov
