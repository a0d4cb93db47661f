"""FastSiam (Pototzky, Sultan & Schmidt-Thieme, 2022, "FastSiam: Resource-Efficient Self-supervised Learning on a
Single GPU", GCPR): SimSiam with more than two views, each view's prediction regressing the stop-gradient mean of
the other views' projections (:func:`selfsup.losses.fastsiam_loss`), a steadier target than one view.

The projector, predictor and parameter groups (the predictor keeps the peak lr) are
:class:`selfsup.methods.simsiam.SimSiam`'s; every view at the first view's resolution is used (``views.kind:
mocov2`` with ``views.params.n_views``; 4 views, K = 3 targets per prediction, as lightly's
``FastSiamTransform``). With 2 views it is SimSiam. Per-image loss: plain gradient accumulation is exact up to
BatchNorm statistics, as SimSiam's.

Recipe defaults: 25 epochs at batch 32 on one GPU (the paper's abstract), ResNet-50; the paper's method section
could not be opened here, so heads, optimizer and views are SimSiam's (SGD lr 0.05 x batch/256, weight decay
1e-4, projector 2048-2048-2048, predictor 512-2048, MoCo v2 views; lightly's FastSiamTransform uses the same
views), selfsup's choice; the recipe's provenance rows say which is which.
"""

from __future__ import annotations

from typing import Literal

from selfsup.losses import fastsiam_loss
from selfsup.methods.base import encode_views, n_global_views
from selfsup.methods.simsiam import SimSiam, SimSiamConfig


class FastSiamConfig(SimSiamConfig):
    name: Literal["fastsiam"] = "fastsiam"  # type: ignore[assignment]


class FastSiam(SimSiam):
    Config = FastSiamConfig
    regularizable = True  # method.regularizers act on every view's projection z (CO2: views 0 and 1)

    def forward(self, views, progress=0.0, labels=None):
        h = encode_views(self.backbone, views[:n_global_views(views)])
        z = [self.projector(x) for x in h]
        p = [self.predictor(x) for x in z]
        return self.regularize({"loss": fastsiam_loss(p, z), "feats": h[0].detach(), "emb": z[0].detach()}, z)
