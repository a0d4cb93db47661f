"""Self-distillation losses (Cookbook, Section 2.2.2)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    r"""BYOL regression loss (Grill et al., 2020), Eq. (2):

    .. math:: \mathcal{L} = \| \bar p - \bar z \|_2^2 = 2 - 2 \frac{\langle p, z\rangle}{\|p\|\,\|z\|},

    averaged over the batch. ``z`` (the target) is detached here: gradients flow only
    through the online prediction ``p``. No batch statistics, so no gather is needed.
    """
    return (2 - 2 * F.cosine_similarity(p, z.detach(), dim=-1)).mean()


def negative_cosine(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    r"""SimSiam's symmetric-half loss :math:`-\cos(p, \mathrm{sg}(z))` (Chen & He, 2021), Eq. (1)."""
    return -F.cosine_similarity(p, z.detach(), dim=-1).mean()
