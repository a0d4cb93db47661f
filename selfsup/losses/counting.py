r"""Learning to count (Noroozi, Pirsiavash & Favaro 2017, "Representation Learning by Learning to Count", ICCV,
Eq. 4-5): a feature :math:`\phi` counts visual primitives, so the count of an image equals the sum of the counts
of its tiles, with the image downsampled (:math:`D`) to the tiles' size,

.. math:: \phi(D \circ x) = \sum_{j=1}^{4} \phi(T_j \circ x),

and the trivial solution :math:`\phi \equiv 0` is ruled out by a contrastive term with another image :math:`y`:

.. math:: \ell_{con}(x, y) = \Big\lVert \phi(D \circ x) - \sum_j \phi(T_j \circ x) \Big\rVert_2^2
          + \max\Big(0,\; M - \Big\lVert \phi(D \circ y) - \sum_j \phi(T_j \circ x) \Big\rVert_2^2\Big).
"""

from __future__ import annotations

import torch

from selfsup.losses.precision import fp32_loss


@fp32_loss
def counting_loss(down_x: torch.Tensor, tiles_x: torch.Tensor, down_y: torch.Tensor,
                  margin: float = 10.0) -> torch.Tensor:
    r"""Eq. 5 averaged over the batch: ``down_x`` :math:`\phi(D \circ x)` ``[B, C]``, ``tiles_x``
    :math:`\phi(T_j \circ x)` ``[B, T, C]`` (summed here over the ``T`` tiles), ``down_y`` :math:`\phi(D \circ y)`
    ``[B, C]`` of another image; ``margin`` :math:`M` (10 in the paper). A mean of per-image terms: exact under DDP."""
    if down_x.dim() != 2 or tiles_x.dim() != 3 or tiles_x.shape[0] != down_x.shape[0] \
            or tiles_x.shape[2] != down_x.shape[1] or down_y.shape != down_x.shape:
        raise ValueError(f"counting_loss expects down_x [B, C], tiles_x [B, T, C], down_y [B, C], got "
                         f"{tuple(down_x.shape)}, {tuple(tiles_x.shape)}, {tuple(down_y.shape)}")
    t = tiles_x.sum(1)
    same = (down_x - t).pow(2).sum(1)
    other = (down_y - t).pow(2).sum(1)
    return (same + (margin - other).clamp_min(0)).mean()
