"""Prototypes: a bias-free linear layer whose rows live on the unit sphere (SwAV, DeepCluster-v2).

Caron et al. (2020), Section 3.1: the scores of an L2-normalised embedding :math:`z` against the
prototypes :math:`C = [c_1, \\dots, c_K]` are :math:`z^\\top c_k`, i.e. cosine similarities once the
prototypes are normalised too. The official code re-normalises the prototype weights before every
training step; :meth:`Prototypes.normalize_` does that in place.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class Prototypes(nn.Linear):
    """``K`` prototypes of dimension ``dim``: ``forward(z) = z @ C^T`` (a ``Linear`` without bias).

    The weights start L2-normalised; call :meth:`normalize_` before each step (SwAV) or set them
    with :meth:`set_` (DeepCluster-v2's k-means centroids).
    """

    def __init__(self, dim: int, n_prototypes: int) -> None:
        if dim <= 0 or n_prototypes <= 0:
            raise ValueError(f"Prototypes needs dim > 0 and n_prototypes > 0, got dim={dim}, "
                             f"n_prototypes={n_prototypes}")
        super().__init__(dim, n_prototypes, bias=False)
        self.normalize_()

    @property
    def n_prototypes(self) -> int:
        return self.out_features

    @torch.no_grad()
    def normalize_(self) -> None:
        """Project every prototype back onto the unit sphere (in place, no gradient)."""
        self.weight.copy_(F.normalize(self.weight, dim=1))

    @torch.no_grad()
    def set_(self, centroids: torch.Tensor) -> None:
        """Replace the prototypes by ``centroids`` ``[K, dim]`` (normalised here)."""
        if centroids.shape != self.weight.shape:
            raise ValueError(f"centroids must have shape {tuple(self.weight.shape)}, got {tuple(centroids.shape)}")
        self.weight.copy_(F.normalize(centroids.to(self.weight), dim=1))
