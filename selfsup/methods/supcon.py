"""SupCon (Khosla et al., 2020): supervised contrastive learning, the labels define the positives.

Every view of every image with the same label is a positive of an anchor, over the global batch
(:func:`selfsup.losses.supcon`, the paper's :math:`\\mathcal{L}^{sup}_{out}`). With all views of
the batch as anchors this is SimCLR's NT-Xent when every image has its own label.

Recipe defaults (paper, ImageNet): ResNet-50, projector 2048-128, temperature 0.1, batch 6144,
LARS, 700 epochs, then a linear classifier on the frozen encoder. The paper does not state a base
learning rate for LARS in the main text; the recipe uses SimCLR's 0.3 x batch/256.
"""

from __future__ import annotations

from typing import Literal

import torch.nn as nn
from pydantic import Field

from selfsup.losses import supcon
from selfsup.methods.base import Method, MethodConfig, encode_views
from selfsup.nets import mlp


class SupConConfig(MethodConfig):
    name: Literal["supcon"] = "supcon"
    temperature: float = Field(0.1, gt=0, description="SupCon temperature tau")
    projector: str = Field("2048-128", description="projection head widths, hidden-...-output (selfsup.nets.mlp)")


class SupCon(Method):
    Config = SupConConfig
    default_views = "simclr"
    needs_labels = True
    accumulation = "exact"  # in-batch positives and negatives: gradient caching

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: SupConConfig, epochs: int = 100) -> None:
        super().__init__(backbone, feat_dim, cfg, epochs)
        self.projector = mlp(feat_dim, cfg.projector)

    def embed(self, views):
        h = encode_views(self.backbone, views)
        return h[0], [self.projector(x) for x in h]

    def objective(self, z, labels=None):
        if labels is None:
            raise ValueError("supcon needs the labels of the batch: call method(views, progress, labels)")
        return {"loss": supcon(z, labels, self.cfg.temperature)}
