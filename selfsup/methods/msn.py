"""MSN (Assran et al., 2022, "Masked Siamese Networks for Label-Efficient Learning") and PMSN (Assran et
al., 2023, "The Hidden Uniform Cluster Prior in Self-Supervised Learning").

Per image, a target view (unmasked, through the EMA target encoder) and anchor views: ``rand_views``
full-size crops with ``patch_drop`` of their patch tokens dropped (MAE-style random drop, per image)
plus the unmasked small "focal" crops. Anchor and target representations (backbone cls token ->
projection head) are soft-assigned to learnable prototypes; the anchors are trained to predict the
sharpened (and Sinkhorn-balanced) target assignment, with ME-MAX (MSN) or a power-law prior KL (PMSN)
on the mean anchor prediction: :func:`selfsup.losses.msn_loss` / :func:`selfsup.losses.pmsn_loss`.

Views (``views.kind: multicrop``): the leading full-size views are ``[target, anchor_1..anchor_R]``
(``n_global = 1 + rand_views``), then the focal views. The official code also draws a separate crop
for the target (``make_transforms(rand_views=rand_views + 1)``; paper Fig. 1: "two views ... a random
mask is applied to the anchor view").

Recipe defaults (official ``configs/pretrain/msn_vits16.yaml``, ViT-S/16): 1024 prototypes initialised
uniform(+-1/sqrt(256)), trained, no weight decay; head 2048-2048-256 with BN and GELU (trunc-normal
0.02 init); temperature 0.1, sharpening T 0.25 (constant: start = final), ME-MAX weight 1, Sinkhorn on
the targets (3 iterations); patch_drop 0.15 on the single masked 224 px anchor; 10 focal views of 96 px;
crops: rand scale 0.3-1, focal 0.05-0.3 (``make_transforms`` defaults), SimCLR colour distortion at
strength 0.5 (jitter 0.4/0.4/0.4/0.1 p 0.8, grayscale 0.2) and blur p 0.5; AdamW lr 1e-3 (no batch
scaling) with 15 warmup epochs, cosine to 1e-6, weight decay 0.04 -> 0.4 (cosine), clip 3.0, 800
epochs, batch 64 x 16 GPUs = 1024 (README: 2 nodes x 8 GPUs). The probe uses the **target** encoder
(official ``linear_eval.py`` / ``logistic_eval.py`` load ``target_encoder``): ``eval_encoder = "teacher"``.

Paper vs code, and the choices here:

- EMA: 0.996 -> 1. The code raises it **linearly** over ``1.25 x`` the training iterations, so training
  ends at ~0.9992 (its lr and weight-decay cosines also span 1.25 x, not reproduced). Default here:
  linear to exactly 1 at the end (``ema_horizon: 1.0``); ``ema_horizon: 1.25`` gives the code's
  schedule, ``ema_schedule: cosine`` the BYOL/DINO cosine. ``tau_final`` (default 1) is where either ramp
  ends, as iBOT's and DINOv2's ``tau_final``; ``tau_final = tau_base`` keeps the momentum constant.
- Patch drop: the code keeps ``floor(N (1 - patch_drop))`` patches with **one** permutation shared by
  the whole batch; here the same count, but a fresh random subset per image (the paper's "random
  masking", as MAE), drawn by the trainer from (seed, epoch, step).
- Warmup: the code warms up linearly from ``start_lr`` 2e-4; the trainer's warmup starts at 0.
- Prototype gradients: the code sums them over GPUs (``AllReduceSum``), i.e. world_size x the gradient
  a single process would get; here they are averaged by DDP like every parameter (single-process
  semantics). Clipping here covers every parameter (the code clips the encoder only).
- BatchNorm: the code runs the head once per crop resolution (as here) with SyncBatchNorm under DDP.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Literal

import torch
import torch.nn as nn
from pydantic import Field

from selfsup.losses.masked_siamese import msn_loss, pmsn_loss
from selfsup.methods.base import Method, MethodConfig, encode_views, fresh_generator, n_global_views, require_vit
from selfsup.nets import EMA, cosine_momentum
from selfsup.views.masks import random_mask


class MSNConfig(MethodConfig):
    name: Literal["msn"] = "msn"
    hidden_dim: int = Field(2048, gt=0, description="projection head hidden width (two hidden layers)")
    output_dim: int = Field(256, gt=0, description="projection head output width = prototype width")
    use_bn: bool = Field(True, description="BatchNorm after each hidden Linear of the head (official use_bn)")
    num_proto: int = Field(1024, gt=1, description="number of learnable prototypes K")
    freeze_proto: bool = Field(False, description="keep the prototypes at their random init")
    temperature: float = Field(0.1, gt=0, description="softmax temperature of the prototype assignments")
    sharpen_temp: float = Field(0.25, gt=0, le=1, description="target sharpening temperature T")
    me_max_weight: float = Field(1.0, ge=0, description="weight of ME-MAX (MSN) / the prior KL (PMSN)")
    use_sinkhorn: bool = Field(True, description="Sinkhorn-Knopp on the sharpened targets")
    sinkhorn_iters: int = Field(3, ge=1, description="Sinkhorn-Knopp iterations of the targets")
    patch_drop: float = Field(0.15, ge=0, lt=1, description="fraction of patch tokens dropped from the masked anchors")
    rand_views: int = Field(1, ge=1, description="masked full-size anchor views (views.params.n_global = 1 + this)")
    tau_base: float = Field(0.996, ge=0, le=1, description="EMA momentum of the target encoder at the start")
    tau_final: float = Field(1.0, ge=0, le=1, description="EMA momentum at the end of the ramp (the paper's 1; "
                             "tau_base here: a constant momentum)")
    ema_schedule: Literal["linear", "cosine"] = Field("linear", description="momentum ramp to tau_final (code: linear)")
    ema_horizon: float = Field(1.0, ge=1.0, description="the ramp spans this many runs (official code 1.25: "
                               "ends at ~0.9992)")


class PMSNConfig(MSNConfig):
    name: Literal["pmsn"] = "pmsn"
    power_law_tau: float = Field(0.25, gt=0, description="power-law prior exponent: pi_k ~ k^-tau")


def msn_head(in_dim: int, hidden: int, out: int, use_bn: bool = True) -> nn.Sequential:
    """MSN's projection head (official ``init_model``): Linear-BN-GELU, Linear-BN-GELU, Linear, every
    Linear trunc-normal(0.02) with zero bias."""
    layers: OrderedDict[str, nn.Module] = OrderedDict(fc1=nn.Linear(in_dim, hidden))
    if use_bn:
        layers["bn1"] = nn.BatchNorm1d(hidden)
    layers["gelu1"] = nn.GELU()
    layers["fc2"] = nn.Linear(hidden, hidden)
    if use_bn:
        layers["bn2"] = nn.BatchNorm1d(hidden)
    layers["gelu2"] = nn.GELU()
    layers["fc3"] = nn.Linear(hidden, out)
    head = nn.Sequential(layers)
    for m in head.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
    return head


def msn_momentum(tau_base: float, progress: float, schedule: str = "linear", horizon: float = 1.0,
                 tau_final: float = 1.0) -> float:
    """Target-encoder momentum at ``progress``: from ``tau_base`` to ``tau_final`` (the paper's 1) over ``horizon``
    runs, linearly (the official ``momentum_scheduler``; horizon 1.25 there) or with BYOL's cosine. With a horizon
    above 1 training stops before the ramp's end: at ``tau_base + (tau_final - tau_base) / horizon`` (linear)."""
    p = min(max(progress, 0.0), horizon) / horizon
    if schedule == "linear":
        return tau_base + (tau_final - tau_base) * p
    if schedule == "cosine":
        return cosine_momentum(tau_base, p, tau_final)
    raise ValueError(f"ema_schedule must be 'linear' or 'cosine', got {schedule!r}")


def n_dropped(n_patches: int, patch_drop: float) -> int:
    """Patches dropped from an ``n_patches`` anchor: ``N - floor(N (1 - patch_drop))`` (official ``T_H``)."""
    return n_patches - math.floor(n_patches * (1.0 - patch_drop) + 1e-9)


class MSN(Method):
    Config = MSNConfig
    no_accumulation_reason = "ME-MAX and Sinkhorn use the whole batch"
    default_views = "multicrop"
    teacher_attr = "target_encoder"
    eval_encoder = "teacher"  # the target encoder (official linear_eval.py / logistic_eval.py)

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: MSNConfig, epochs: int = 100) -> None:
        super().__init__(backbone, feat_dim, cfg, epochs)
        require_vit(backbone, cfg.name)
        self.projector = msn_head(feat_dim, cfg.hidden_dim, cfg.output_dim, cfg.use_bn)
        bound = 1.0 / math.sqrt(cfg.output_dim)
        self.prototypes = nn.Parameter(torch.empty(cfg.num_proto, cfg.output_dim).uniform_(-bound, bound),
                                       requires_grad=not cfg.freeze_proto)
        self.target_encoder = EMA(nn.Sequential(self.backbone, self.projector))

    def make_masks(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, ...] | None:
        """One bool ``[batch, N]`` drop mask per masked anchor view (True = dropped), exactly
        :func:`n_dropped` patches per image of the full-size grid, each image its own random subset."""
        h, w = self.backbone.base_grid
        k = n_dropped(h * w, self.cfg.patch_drop)
        if k == 0:
            return None
        return tuple(random_mask(batch, (h, w), k / (h * w), generator).mask for _ in range(self.cfg.rand_views))

    def loss(self, anchors: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        return msn_loss(anchors, targets, self.prototypes, c.temperature, c.sharpen_temp, c.me_max_weight,
                        c.use_sinkhorn, c.sinkhorn_iters, "uniform")

    def forward(self, views, progress=0.0, labels=None, masks=None):
        """``views``: ``[target, masked anchors..., focal views...]`` (the first ``1 + rand_views`` at full size)."""
        n_global, r = n_global_views(views), self.cfg.rand_views
        if n_global != 1 + r:
            raise ValueError(f"{self.cfg.name} needs 1 target + {r} masked anchor view(s) at full size "
                             f"(views.params.n_global={1 + r}), got {n_global}")
        b = views[0].shape[0]
        if masks is None and self.cfg.patch_drop > 0:
            masks = self.make_masks(b, fresh_generator())
        rand = torch.cat(views[1:n_global])
        mask = torch.cat(masks) if masks else None
        gh, gw = self.backbone.grid(tuple(rand.shape[-2:]))
        if mask is not None and tuple(mask.shape) != (rand.shape[0], gh * gw):
            raise ValueError(f"{self.cfg.name}: masks must be {r} bool [B, N] tensors for the anchor views, got "
                             f"{tuple(mask.shape)} for {r} x {b} images")
        z = [self.projector(self.backbone(rand, mask, "drop"))]  # the head runs once per crop resolution, as MSN
        if len(views) > n_global:
            z.append(self.projector(torch.cat(encode_views(self.backbone, views[n_global:]))))
        anchors = torch.cat(z)
        with torch.no_grad():
            target_backbone, target_head = self.target_encoder.module
            h = target_backbone(views[0])
            targets = target_head(h)
        loss = self.loss(anchors, targets)
        return {"loss": loss, "feats": h.detach(), "emb": targets.detach()}

    @torch.no_grad()
    def after_step(self, progress: float) -> dict[str, float]:
        c = self.cfg
        m = msn_momentum(c.tau_base, progress, c.ema_schedule, c.ema_horizon, c.tau_final)
        self.target_encoder.update(nn.Sequential(self.backbone, self.projector), m)
        return {"momentum": m}

    def param_groups(self) -> list[dict]:
        """The default groups, with the prototypes moved to the no-decay group (official ``init_opt``:
        ``WD_exclude`` for the prototypes)."""
        groups = super().param_groups()
        for g in groups:
            g["params"] = [p for p in g["params"] if p is not self.prototypes]
        if self.prototypes.requires_grad:
            next(g for g in groups if g.get("no_decay"))["params"].append(self.prototypes)
        return groups


class PMSN(MSN):
    """PMSN: MSN with ME-MAX's uniform prior replaced by a power-law prior :math:`\\pi_k \\propto k^{-\\tau}`
    (``power_law_tau`` 0.25), KL(p_bar || pi) weighted by ``me_max_weight``; everything else is MSN's
    (the PMSN paper trains with MSN's recipe)."""

    Config = PMSNConfig

    def loss(self, anchors: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        c = self.cfg
        return pmsn_loss(anchors, targets, self.prototypes, c.temperature, c.sharpen_temp, c.me_max_weight,
                         c.power_law_tau, c.use_sinkhorn, c.sinkhorn_iters)
