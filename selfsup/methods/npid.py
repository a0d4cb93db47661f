"""NPID, non-parametric instance discrimination (Wu, Xiong, Yu & Lin 2018, "Unsupervised Feature Learning via
Non-Parametric Instance Discrimination", CVPR): every training image is its own class. A linear head maps the
backbone's features to 128-d L2-normalised features ``f``; a memory bank holds one feature per image
(:class:`selfsup.nets.InstanceBank`, row = dataset row index, passed by the trainer as ``indices``), and each
image is scored against its own bank row and ``K`` noise rows with NCE (:func:`selfsup.losses.npid_nce_loss`).

Exactly what happens, in order (``lemniscate.pytorch`` ``main.py``, ``lib/NCEAverage.py``, ``lib/NCECriterion.py``):

1. Noise rows: for the whole global batch, :meth:`NPID.make_masks` draws ``[batch, K]`` row indices uniformly
   from ``[0, memory_size)`` (with replacement; the image's own row may be drawn, as in lemniscate) from the
   trainer's per-step generator in the main process; each process gets its rows of that draw.
2. The normaliser ``Z``: on the first training step (``nce_z < 0``) it is estimated by Monte Carlo from that
   batch, ``Z = n * mean(exp(v . f / tau))`` over every image of the global batch and its 1 + K scored rows
   (:func:`selfsup.losses.nce_normalizer`; lemniscate: ``out.mean() * outputSize``, with the bank still at its
   random init), then kept fixed for the rest of training in the ``nce_z`` buffer (checkpointed, so resume keeps
   it; the paper, Sec. 3.2: "the approximation derived from initial batches [is] sufficient").
3. The loss: NCE with ``P(i | f) = exp(v_i . f / tau) / Z`` and noise ``P_n = 1/n`` (Eq. 4-6), tau 0.07.
4. After the optimizer step, the bank rows of the global batch move to ``normalize(0.5 v + 0.5 f)`` (momentum
   0.5) with the features computed in this step's forward (before the step, as lemniscate's backward does).

``bank_init: features`` starts the bank from the random-init network's features of every training image
(:meth:`NPID.prepare`, before the first step) instead of lemniscate's random rows, so that step 2's ``Z`` is
estimated against the features the bank will hold within an epoch; against random rows it is ~10^4 too small
where the initial features are correlated, and NCE collapses (digits: kNN 0.10; :mod:`selfsup.nets.instance_bank`).

``objective: softmax`` uses the full non-parametric softmax over all ``n`` bank rows (Eq. 2; lemniscate's
``LinearAverage``, used for CIFAR) instead of NCE: exact, O(n) per image, no noise draw and no ``Z``.
The paper's proximal regulariser (Sec. 3.4) is not used by the released ImageNet/CIFAR commands and is not
offered. ``memory_size`` must be the number of training images (ImageNet 1,281,167); an index outside it is a
one-line error.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from selfsup.losses import nce_normalizer, npid_nce_loss, npid_softmax_loss
from selfsup.methods.base import Method, MethodConfig, fresh_generator
from selfsup.nets import InstanceBank, initial_features, mlp, out_dim


class NPIDConfig(MethodConfig):
    name: Literal["npid"] = "npid"
    projector: str = Field("128", description="head widths after the backbone (selfsup.nets.mlp); the paper's is one "
                           "linear layer to 128-d")
    memory_size: int = Field(1_281_167, gt=0, description="rows of the memory bank: the number of training images "
                             "(ImageNet 1,281,167)")
    negatives: int = Field(4096, ge=1, description="K, noise samples per image for NCE (objective: nce)")
    temperature: float = Field(0.07, gt=0, description="tau of the non-parametric softmax")
    momentum: float = Field(0.5, ge=0, lt=1, description="memory bank update v <- normalize(m v + (1 - m) f)")
    objective: Literal["nce", "softmax"] = Field("nce", description="nce (K noise rows, Monte-Carlo Z, the paper's "
                                                 "ImageNet setup) or softmax (full non-parametric softmax, Eq. 2)")
    seed: int = Field(0, description="seed of the memory bank's random initialisation")
    bank_init: Literal["random", "features"] = Field("random", description="the memory bank's start: random "
                                                     "(lemniscate's uniform rows) or features (the random-init "
                                                     "network's features of every training image, before step 1)")


class NPID(Method):
    Config = NPIDConfig
    default_views = "crop"
    needs_indices = True
    no_accumulation_reason = ("its normaliser is estimated from the first whole batch and its memory bank is "
                              "updated with the whole batch's features after the step")

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: NPIDConfig, epochs: int = 100) -> None:
        super().__init__(backbone, feat_dim, cfg, epochs)
        self.projector = mlp(feat_dim, cfg.projector)
        self.bank = InstanceBank(cfg.memory_size, out_dim(cfg.projector), cfg.momentum, cfg.seed)
        self.register_buffer("nce_z", torch.full((), -1.0))  # < 0: not estimated yet
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None
        self.prepare_images = cfg.memory_size if cfg.bank_init == "features" else 0

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The L2-normalised 128-d feature ``f`` of images ``x``."""
        return F.normalize(self.projector(self.backbone(x)).float(), dim=1)

    @torch.no_grad()
    def prepare(self, images, run_dir=None) -> dict[str, float]:
        """``bank_init: features``: every bank row set to the network's feature of its image (``images`` all
        training images in row order), so the normaliser is estimated against the features the bank will hold."""
        self.bank.fill(initial_features(self, self.embed, images))
        return {"bank_mean_cosine": float(self.bank.bank.mean(0).square().sum())}

    def make_masks(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, ...] | None:
        """NCE's noise rows ``[batch, K]`` for the whole global batch (None for the full softmax)."""
        if self.cfg.objective != "nce":
            return None
        return (InstanceBank.sample(batch, self.cfg.negatives, self.cfg.memory_size, generator),)

    def forward(self, views, progress=0.0, labels=None, indices=None, masks=None):
        """``indices``: each image's dataset row (its bank row); ``masks``: ``(noise rows [B, K],)`` from
        :meth:`make_masks` (drawn from a fresh generator when called outside the trainer)."""
        if indices is None:
            raise ValueError("npid needs the dataset row index of each sample: call method(views, progress, labels, "
                             "indices=...) (the selfsup trainer does)")
        x = views[0]
        h = self.backbone(x)
        f = F.normalize(self.projector(h).float(), dim=1)  # self.embed(x), keeping h
        indices = indices.to(x.device)
        self.bank.check_indices(indices)
        out: dict[str, torch.Tensor] = {}
        if self.cfg.objective == "softmax":
            loss = npid_softmax_loss(f, self.bank.bank, indices, self.cfg.temperature)
        else:
            noise = masks[0] if masks is not None else self.make_masks(x.shape[0], fresh_generator())[0]
            rows = self.bank.rows(torch.cat([indices[:, None], noise.to(x.device)], 1))
            z = self.nce_z.detach().clone()
            if z < 0:  # the first batch: estimate Z, and keep it from the first training step on
                z = nce_normalizer(f, rows, self.cfg.memory_size, self.cfg.temperature)
                if self.training:
                    self.nce_z.copy_(z)
            loss = npid_nce_loss(f, rows, z, self.cfg.memory_size, self.cfg.temperature)
            out["nce_z"] = z
        if self.training:
            self._pending = (indices, f.detach())
        return {"loss": loss, "feats": h.detach(), "emb": f.detach(), **out}

    @torch.no_grad()
    def after_step(self, progress: float) -> dict[str, float]:
        """Write the step's features into the bank rows of the global batch (gathered over processes)."""
        if self._pending is not None:
            self.bank.update(*self._pending)
            self._pending = None
        return {}
