"""ReSSL (Zheng, You, Wang, Qian, Zhang, Wang & Xu, 2021, "ReSSL: Relational Self-Supervised Learning with Weak
Augmentation", NeurIPS): the student's similarities to a queue of past keys are trained to match the momentum
teacher's, computed on a weakly augmented view with a sharper temperature (:func:`selfsup.losses.ressl_loss`).

The student (backbone + MLP projector) sees view 1, the strong view; the teacher, an EMA of backbone + projector,
sees view 2, the weak view, without gradient. The queue starts with random unit vectors and receives the global
batch of normalised teacher keys after each step (:class:`selfsup.nets.MemoryBank`, part of the checkpoint), as in
MoCo (the queue and initialisation are :mod:`selfsup.methods.mocov2`'s). The teacher encodes its batch with
MoCo's shuffle-BN emulation (``bn_splits``, :func:`selfsup.methods.mocov2.split_forward`), as the official code
shuffles the key batch across GPUs; ``bn_splits: 1`` turns it off.

Views (``views.kind: msf``, the same pair as MSF's): view 1 is MoCo v2's strong augmentation, view 2 the weak one,
crop (scale 0.2-1) and flip only (official ``data/augmentation.py``: ``moco_aug`` and ``target_aug``).

Recipe defaults (official ``ressl.py``, ``network/ressl.py``, ``network/head.py``; the paper's text was not opened
here): ResNet-50, projector 4096-512 without BN, tau_s 0.1, tau_t 0.04, queue 131072 (``K=65536*2``), momentum
0.999 (constant), SGD lr 0.05 at batch 256 (not rescaled), weight decay 1e-4 except BN and biases, 5 warm-up
epochs then cosine, 200 epochs. solo-learn's ``ressl.py`` uses queue 65536, projector 4096-256 and a momentum
raised from 0.99 to 1 with a cosine (``momentum_cosine: true``).

On small data a random projector without BN maps all images to nearly one direction (see mocov2.py);
``projector_norm: bn`` is offered and used by ``ressl_digits``.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from selfsup.losses import ressl_loss
from selfsup.methods.base import Method, MethodConfig
from selfsup.methods.mocov2 import random_unit_queue, split_forward
from selfsup.nets import EMA, MemoryBank, cosine_momentum, mlp, out_dim


class ReSSLConfig(MethodConfig):
    name: Literal["ressl"] = "ressl"
    student_temp: float = Field(0.1, gt=0, description="temperature tau_s of the student's relation (strong view)")
    teacher_temp: float = Field(0.04, gt=0, description="temperature tau_t of the teacher's relation (weak view), "
                                "sharper than tau_s")
    queue_size: int = Field(131072, gt=0, description="past teacher keys the relation is computed over (official: "
                            "65536 x 2; solo-learn 65536)")
    momentum: float = Field(0.999, ge=0, le=1, description="teacher EMA momentum m (the start of the cosine when "
                            "momentum_cosine)")
    momentum_cosine: bool = Field(False, description="raise the momentum from m to 1 with BYOL's cosine (solo-learn); "
                                  "false: constant (official code)")
    projector: str = Field("4096-512", description="projection head widths, hidden-...-output (selfsup.nets.mlp)")
    projector_norm: Literal["none", "bn"] = Field("none", description="hidden-layer norm of the MLP (official: none)")
    bn_splits: int = Field(8, ge=1, description="shuffle-BN groups per process for the teacher (and as many plain "
                           "groups for the student); 1: off")


class ReSSL(Method):
    Config = ReSSLConfig
    no_accumulation_reason = "each step enqueues the teacher keys of its one forward"
    default_views = "msf"
    teacher_attr = "teacher"  # evaluated: the student (official linear_eval.py loads encoder_q)
    regularizable = True  # method.regularizers act on the student's q (and the teacher's k, CO2's second view)

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: ReSSLConfig, epochs: int = 100) -> None:
        super().__init__(backbone, feat_dim, cfg, epochs)
        self.projector = mlp(feat_dim, cfg.projector, norm=cfg.projector_norm)
        self.teacher = EMA(nn.Sequential(self.backbone, self.projector))
        self.queue = MemoryBank(cfg.queue_size, out_dim(cfg.projector))
        random_unit_queue(self.queue)
        self._keys: torch.Tensor | None = None

    def forward(self, views, progress=0.0, labels=None):
        splits = self.cfg.bn_splits
        h = split_forward(self.backbone, views[0], splits, shuffle=False)
        q = F.normalize(split_forward(self.projector, h, splits, shuffle=False), dim=1)
        with torch.no_grad():
            k = F.normalize(split_forward(self.teacher, views[1], splits, shuffle=True), dim=1)
        loss = ressl_loss(q, k, self.queue.get(), self.cfg.student_temp, self.cfg.teacher_temp)
        self._keys = k.detach()
        return self.regularize({"loss": loss, "feats": h.detach(), "emb": q.detach()}, [q, k])

    @torch.no_grad()
    def after_step(self, progress: float) -> dict[str, float]:
        m = cosine_momentum(self.cfg.momentum, progress) if self.cfg.momentum_cosine else self.cfg.momentum
        self.teacher.update(nn.Sequential(self.backbone, self.projector), m)
        if self._keys is not None:
            self.queue.enqueue(self._keys)
            self._keys = None
        return {"momentum": m}
