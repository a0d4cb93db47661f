"""DINO's projection head: MLP, L2-normalised bottleneck, weight-normalised prototypes (Caron et al., 2021)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.parametrizations import weight_norm

from selfsup.nets.heads import parse_spec


class DINOHead(nn.Module):
    r"""``x -> W_K \bar y`` with :math:`\bar y = y / \|y\|_2` and :math:`y = \mathrm{MLP}(x)`.

    - ``spec``: MLP widths ending with the bottleneck, e.g. ``"2048-2048-256"`` (DINO's default);
      hidden layers are Linear -> [BN] -> GELU, weights truncated-normal (std 0.02), biases 0.
    - ``out_dim``: the number of prototypes K (65536 in the paper).
    - ``norm_last_layer``: the last layer is weight-normalised (:math:`w_k = g_k v_k / \|v_k\|`) with
      :math:`g_k = 1`; True freezes g (unit-norm prototypes, more stable), False lets it train.

    The last layer's parameters are named ``last_layer.*`` (DINO freezes them in the first epoch).
    """

    def __init__(self, in_dim: int, out_dim: int = 65536, spec: str | int = "2048-2048-256", use_bn: bool = False,
                 norm_last_layer: bool = True) -> None:
        super().__init__()
        if out_dim <= 0:
            raise ValueError(f"DINOHead out_dim (number of prototypes) must be positive, got {out_dim}")
        dims = [in_dim] + parse_spec(spec)
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(dims) - 2:
                if use_bn:
                    layers.append(nn.BatchNorm1d(b))
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = weight_norm(nn.Linear(dims[-1], out_dim, bias=False))
        g = self.last_layer.parametrizations.weight.original0
        with torch.no_grad():
            g.fill_(1.0)
        g.requires_grad_(not norm_last_layer)

    def bottleneck(self, x: torch.Tensor) -> torch.Tensor:
        """The L2-normalised MLP output (the input of the prototypes)."""
        return F.normalize(self.mlp(x), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(self.bottleneck(x))
