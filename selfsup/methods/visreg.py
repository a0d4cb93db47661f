"""VISReg (Wu, Balestriero & Levine, 2026, "VISReg: Variance-Invariance-Sketching Regularization for JEPA
training", arXiv 2606.02572): LeJEPA's multi-view prediction loss with SIGReg replaced by three decoupled
regularisers (:func:`selfsup.losses.visreg_loss`, Algorithm 1): a scale term pulling each dimension's std to 1,
a sliced 2-Wasserstein shape term on the std-normalised embeddings (stop-gradient on the std, so shape does not
fight scale) and a center term on the batch mean,
:math:`(1-\\lambda)\\mathcal{L}_{pred} + \\lambda(w_{scale}\\mathcal{L}_{scale} + w_{shape}\\mathcal{L}_{shape}
+ w_{center}\\mathcal{L}_{center})`.

The network, the views and the slices are LeJEPA's (:class:`selfsup.methods.lejepa.LeJEPA`): fresh unit slices
each step from a generator seeded by ``slice_seed`` and ``step`` (buffers: resume draws the same slices).

**Distributed** (the sound formulation). The paper draws different slices on each device and regularises each
device's batch (Section 3.2, as lightly's ``VISRegLoss`` documents it): the DDP loss is then not the loss of the
global batch, and it changes with the number of devices. ``per_device: false`` (this class's default) is exact:
the statistics and the sort use the global batch with the same slices on every rank, so two processes give the
single-process loss and gradient. ``per_device: true`` is the paper's variant: each rank mixes its rank into
the slice seed and regularises its own rows (identical to ``false`` on one device).

Values (lightly's ``VISRegLoss``, which cites the paper's Tables 3 and 12 and Algorithm 1; the paper's text
could not be opened here): lambda 0.9 and unit weights for ImageNet-scale data (the paper recommends lambda 0.6
for small datasets), 4096 slices, eps 1e-4. The ``visreg`` recipe's network, views and
optimisation are the official code's Imagenette setup (github HaiyuWu/visreg, ``train_inet10_toy.py`` with
``configs/imagenette.yaml``), lambda 0.6 included; its provenance rows cite them.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from selfsup.losses import multiview_invariance, random_slices, visreg_loss, visreg_terms
from selfsup.losses.distributed import rank
from selfsup.methods.base import MethodConfig
from selfsup.methods.lejepa import LeJEPA
from selfsup.nets import out_dim


class VISRegConfig(MethodConfig):
    name: Literal["visreg"] = "visreg"
    projector: str = Field("2048-2048-16", description="projection head widths, hidden-...-output (selfsup.nets.mlp)")
    lambda_: float = Field(0.9, ge=0, le=1, description="regulariser weight; the prediction loss has 1 - lambda "
                                                        "(the paper: 0.9 for ImageNet, 0.6 for small datasets)")
    num_slices: int = Field(4096, gt=0, description="random 1-D projections per step for the shape term")
    scale_weight: float = Field(1.0, ge=0, description="weight of the scale term (per-dimension std to 1)")
    shape_weight: float = Field(1.0, ge=0, description="weight of the sliced-Wasserstein shape term")
    center_weight: float = Field(1.0, ge=0, description="weight of the center term (batch mean to 0)")
    eps: float = Field(1e-4, gt=0, description="added to the stop-gradient std before normalising for the shape term")
    per_device: bool = Field(False, description="the paper's DDP variant: per-rank slices and per-rank statistics "
                                                "(false: the global batch with shared slices, exact under DDP)")


class VISReg(LeJEPA):
    Config = VISRegConfig
    default_views = "multicrop"
    accumulation = "exact"  # batch statistics and a sort over the batch: gradient caching

    def slices(self) -> torch.Tensor:
        """This step's ``[D, num_slices]`` unit directions: the same on every process (and on resume), or, with
        ``per_device``, different on each rank (the paper's setting)."""
        if not self.cfg.per_device:
            return super().slices()
        seed = int(self.slice_seed) ^ (int(self.step) * 0x9E3779B97F4A7C15 % 2**62)
        g = torch.Generator().manual_seed(seed ^ (rank() * 0x5851F42D4C957F2D % 2**62))
        return random_slices(out_dim(self.cfg.projector), self.cfg.num_slices, g, device=self.slice_seed.device)

    def objective(self, z, labels=None):
        g, local = torch.stack(z[:self._n_global]), z[self._n_global:]
        loc = torch.stack(local) if local else None
        cfg, slices = self.cfg, self.slices()
        dist = not cfg.per_device
        loss = visreg_loss(g, loc, slices, cfg.lambda_, cfg.scale_weight, cfg.shape_weight, cfg.center_weight,
                           cfg.eps, distributed=dist)
        with torch.no_grad():
            views = g if loc is None else torch.cat([g, loc])
            scale, shape, center = visreg_terms(views, slices, cfg.eps, distributed=dist)
            inv = multiview_invariance(g, loc)
        return {"loss": loss, "scale": scale, "shape": shape, "center": center, "inv": inv}
