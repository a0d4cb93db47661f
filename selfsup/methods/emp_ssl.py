"""EMP-SSL (Tong, Chen, Ma & LeCun, 2023, "EMP-SSL: Towards Self-Supervised Learning in One Training Epoch"):
many small fixed-size patches of each image, the total coding rate of each patch's batch of embeddings
maximised and every patch pulled to the image's mean patch embedding (:func:`selfsup.losses.emp_ssl_loss`).

The patches are a view kind's views: ``mocov2`` with ``n_views`` = the number of patches and the official
patch transform as overrides (a RandomResizedCrop of fixed area 0.25 and aspect 1, flip, jitter, grayscale,
blur 0.1, solarize 0.1; ``dataset/aug.py::ContrastiveLearningViewGenerator``). The coding rate uses the paper's
:math:`\\epsilon^2` (``eps_convention: paper``); ``code`` is the official code's and lightly's :math:`\\epsilon`.

Recipe defaults (official ``main.py``, CIFAR-10): ResNet-18 (CIFAR stem), projector 4096-4096-1024, 100
patches, lambda 200, eps 0.2, batch 100, 30 epochs, SGD lr 0.3 (momentum 0.9, Nesterov, weight decay 1e-4)
under LARS with eta 0.005, cosine to 0 without warmup.
"""

from __future__ import annotations

from typing import Literal

import torch.nn as nn
from pydantic import Field

from selfsup.losses import emp_ssl_loss
from selfsup.methods.base import MethodConfig, ProjectedViewsMethod
from selfsup.nets import mlp


class EMPSSLConfig(MethodConfig):
    name: Literal["emp_ssl"] = "emp_ssl"
    projector: str = Field("4096-4096-1024", description="projection head widths, hidden-...-output (selfsup.nets.mlp)")
    lambda_: float = Field(200.0, ge=0, description="weight of the patch invariance (official --patch_sim)")
    eps: float = Field(0.2, gt=0, description="distortion of the total coding rate")
    eps_convention: Literal["paper", "code"] = Field("paper", description="paper: eps^2 in the coding rate; "
                                                     "code: eps (official code, lightly)")


class EMPSSL(ProjectedViewsMethod):
    Config = EMPSSLConfig
    default_views = "mocov2"  # the recipes set n_views (patches) and the patch transform
    accumulation = "exact"  # the coding rate is a log-determinant of the batch: gradient caching
    embedded_views = None  # every view

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: EMPSSLConfig, epochs: int = 100) -> None:
        super().__init__(backbone, feat_dim, cfg, epochs)
        self.projector = mlp(feat_dim, cfg.projector)

    def objective(self, z, labels=None):
        return {"loss": emp_ssl_loss(z, self.cfg.lambda_, self.cfg.eps, self.cfg.eps_convention)}
