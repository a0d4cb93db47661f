"""Learning to count (Noroozi, Pirsiavash & Favaro 2017, "Representation Learning by Learning to Count", ICCV):
a counting vector ``phi`` (backbone, then a head ending in a ReLU so counts are non-negative) must satisfy
``phi(D(x)) = sum_j phi(T_j(x))`` for the 2 x 2 tiles ``T_j`` of an image and the whole image downsampled ``D`` to
the tiles' size, with the contrastive term ``max(0, M - ||phi(D(y)) - sum_j phi(T_j(x))||^2)`` against another
image ``y`` so that ``phi = 0`` is not a solution (:func:`selfsup.losses.counting_loss`, Eq. 5).

Per step, :meth:`Counting.make_masks` draws in the main process, for the whole global batch, each image's
downsampling filter (the paper picks one of several per image so that the network cannot tell ``D(x)`` from a
tile by its filtering; here bilinear, bicubic or area, antialiased) and its partner ``y``: another image of the same
process's batch, ``(i + 1 + floor(u (b - 1))) mod b`` for a uniform ``u``, never ``i`` itself. The tiles and
``D(x)`` go through one backbone pass at half the view's size; the online probe and the logs see the whole view
(no gradient). Recipe defaults: counting vector of 1,000 (the paper's AlexNet ``fc8``), ``M = 10``; the view is
a crop of the image (the paper's 228 px crop of a 256 px image, tiles and ``D(x)`` of 114 px).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from selfsup.losses import counting_loss
from selfsup.methods.base import Method, MethodConfig, fresh_generator
from selfsup.nets import mlp

FILTERS = ("bilinear", "bicubic", "area")


class CountingConfig(MethodConfig):
    name: Literal["counting"] = "counting"
    head: str = Field("4096-4096-1000", description="counting head widths after the backbone (selfsup.nets.mlp), "
                      "followed by a ReLU; the last is the counting vector's size (the paper's AlexNet fc6-fc8)")
    margin: float = Field(10.0, gt=0, description="M of the contrastive term max(0, M - ||phi(D(y)) - sum t||^2)")
    relu: bool = Field(True, description="end the head with a ReLU (non-negative counts, the paper's); false: "
                       "linear counts")
    filters: list[Literal["bilinear", "bicubic", "area"]] = Field(default_factory=lambda: list(FILTERS), min_length=1,
                                                                  description="downsampling filters, one drawn per image")


class Counting(Method):
    Config = CountingConfig
    default_views = "crop"
    no_accumulation_reason = "each image's contrastive partner is another image of the same batch"

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: CountingConfig, epochs: int = 100) -> None:
        super().__init__(backbone, feat_dim, cfg, epochs)
        self.projector = nn.Sequential(mlp(feat_dim, cfg.head), nn.ReLU() if cfg.relu else nn.Identity())

    def make_masks(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``(filter index [batch] into cfg.filters, partner draw u [batch] in [0, 1))``."""
        return (torch.randint(len(self.cfg.filters), (batch,), generator=generator),
                torch.rand(batch, generator=generator))

    def downsample(self, x: torch.Tensor, filters: torch.Tensor, size: int) -> torch.Tensor:
        """``x`` resized to ``size`` px, image ``i`` with filter ``cfg.filters[filters[i]]``."""
        out = x.new_empty(*x.shape[:2], size, size)
        for k, name in enumerate(self.cfg.filters):
            rows = (filters == k).nonzero().flatten()
            if rows.numel():
                kw = {} if name == "area" else {"align_corners": False, "antialias": True}
                out[rows] = F.interpolate(x[rows], size=(size, size), mode=name, **kw)
        return out

    def forward(self, views, progress=0.0, labels=None, masks=None):
        """``masks``: ``(filter index [B], partner draw [B])`` from :meth:`make_masks`."""
        x = views[0]
        b, s = x.shape[0], x.shape[-1] // 2
        if b < 2 or x.shape[-2] != x.shape[-1] or s < 2:
            raise ValueError(f"counting needs square views of at least 4 px and 2 images per process, got a batch "
                             f"{tuple(x.shape)}; raise data.batch_size or data.image_size")
        filters, u = masks if masks is not None else self.make_masks(b, fresh_generator())
        filters, u = filters.to(x.device), u.to(x.device)
        tiles = torch.stack([x[..., i * s:(i + 1) * s, j * s:(j + 1) * s] for i in (0, 1) for j in (0, 1)], 1)
        down = self.downsample(x, filters, s)
        phi = self.projector(self.backbone(torch.cat([down, tiles.flatten(0, 1)])))
        phi_d, phi_t = phi[:b], phi[b:].view(b, 4, -1)
        partner = (torch.arange(b, device=x.device) + 1 + (u * (b - 1)).long().clamp_max(b - 2)) % b
        loss = counting_loss(phi_d, phi_t, phi_d[partner], self.cfg.margin)
        with torch.no_grad():  # the whole view, for the online probe and the logs
            whole = self.backbone(x)
            mismatch = (phi_d - phi_t.sum(1)).pow(2).sum(1).mean()
        return {"loss": loss, "feats": whole, "emb": phi_d.detach(), "count_mismatch": mismatch,
                "count_norm": phi_d.detach().norm(dim=1).mean()}
