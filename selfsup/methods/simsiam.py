"""SimSiam (Chen & He, 2021): a predictor and a stop-gradient, no EMA target and no negatives.

Recipe defaults (paper, ImageNet): SGD, base lr 0.05 x batch/256, momentum 0.9, weight decay
1e-4 on every parameter, batch 512, cosine decay without warmup, 100 epochs; projector
2048-2048-2048 with BN on every layer (the last one without affine), predictor 512-2048
bottleneck; the predictor keeps the peak lr (Section 4.2: "fixed lr for the predictor");
MoCo v2 views (crop scale 0.2-1, jitter 0.4/0.4/0.4/0.1, blur 0.5).
"""

from __future__ import annotations

from typing import Literal

import torch.nn as nn
from pydantic import Field, model_validator

from selfsup.losses import simsiam_loss
from selfsup.methods.base import Method, MethodConfig, encode_views
from selfsup.nets import mlp, out_dim


class SimSiamConfig(MethodConfig):
    name: Literal["simsiam"] = "simsiam"
    projector: str = Field("2048-2048-2048", description="projection head widths, hidden-...-output (selfsup.nets.mlp)")
    predictor: str = Field("512-2048", description="predictor head widths, hidden-...-output")
    fixed_predictor_lr: bool = Field(True, description="the predictor keeps the peak lr, no cosine decay "
                                     "(SimSiam Sec. 4.4)")

    @model_validator(mode="after")
    def _check_dims(self) -> "SimSiamConfig":
        if out_dim(self.predictor) != out_dim(self.projector):
            raise ValueError(f"predictor '{self.predictor}' must end with the projector's output width "
                             f"{out_dim(self.projector)}")
        return self


class SimSiam(Method):
    Config = SimSiamConfig
    accumulation = "plain"  # per-image negative cosine
    default_views = "mocov2"
    regularizable = True  # method.regularizers act on the projections z

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: SimSiamConfig, epochs: int = 100) -> None:
        super().__init__(backbone, feat_dim, cfg, epochs)
        self.projector = mlp(feat_dim, cfg.projector, last_norm=True)
        self.predictor = mlp(out_dim(cfg.projector), cfg.predictor)

    def forward(self, views, progress=0.0, labels=None):
        h = encode_views(self.backbone, views[:2])
        z = [self.projector(x) for x in h]
        p = [self.predictor(x) for x in z]
        loss = simsiam_loss(p[0], p[1], z[0], z[1])
        return self.regularize({"loss": loss, "feats": h[0].detach(), "emb": z[0].detach()}, z)

    def param_groups(self) -> list[dict]:
        """Two groups, both with weight decay as in the paper (every parameter is decayed); the
        predictor's group has ``fixed_lr`` when ``fixed_predictor_lr`` (the trainer keeps its peak lr)."""
        pred = {id(p) for p in self.predictor.parameters()}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in pred]
        return [{"params": rest},
                {"params": list(self.predictor.parameters()), "fixed_lr": self.cfg.fixed_predictor_lr}]
