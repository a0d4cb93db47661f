"""PIRL (Misra & van der Maaten 2020, "Self-Supervised Learning of Pretext-Invariant Representations", CVPR):
instead of predicting the jigsaw permutation, make the representation of the shuffled tiles *agree* with the
representation of the image, contrasted against other images' rows of a memory bank.

Two views of each image: ``views[0]`` gives :math:`f(v_I)` (backbone, pooled, linear to 128-d), ``views[1]`` is
cut into a jigsaw (:func:`selfsup.views.pretext_spatial.jigsaw_tiles`: 3 x 3 cells, a random crop of ``crop_frac``
inside each, shuffled by a random permutation per image) and gives :math:`g(v_{I^t})` (every tile through the same
backbone, linear to 128-d each, concatenated, linear to 128-d). The memory bank
(:class:`selfsup.nets.InstanceBank`, shared with NPID) holds :math:`m_I`, one row per dataset image, moved towards
:math:`f(v_I)` with momentum 0.5 after each step. The loss (:func:`selfsup.losses.pirl_loss`, Eq. 5) mixes NCE of
:math:`m_I` from :math:`g` and from :math:`f` with :math:`\\lambda = 0.5`, against ``negatives`` bank rows drawn
uniformly (``objective: softmax``: the exact softmax over the whole bank instead, for small datasets, as NPID's
Eq. 2). The NCE normaliser: NPID's Monte-Carlo estimate from the first batch (``normalizer: estimate``, kept
in the ``nce_z`` buffer; PIRL adopts NPID's memory-bank NCE), the f term's estimate for both terms
(``normalizer: shared``), or 1 as Eq. 3 is printed (``normalizer: none``).

Why ``bank_init: features`` and ``normalizer: shared`` (the digits recipe's under the NCE; see
:mod:`selfsup.nets.instance_bank`): each Z is estimated once against the bank as it is at the first step. Against
random bank rows, or for the g term whose random-init tile embedding is unrelated to the bank's f rows, the estimate
is that of uncorrelated scores (~1.2 n at tau 0.07 and 128-d), while the partition function the terms reach once the
bank holds the correlated features of the network, and g aligns with them, is ~10^4 times larger; with so small a
fixed Z every noise row scores as data and the embeddings collapse (digits: bank rows at cosine 0.95-0.99, kNN
0.34-0.38 vs 0.50 at random init). Starting the bank from the network's own f (:meth:`PIRL.prepare`) and using the f
term's Z for both terms gives kNN 0.556 in the same run.
Per step the trainer draws, in the main process, each image's tile permutation, tile crop offsets and negatives
(:meth:`PIRL.make_masks`).

Recipe defaults (paper Sec. 4 "Implementation details"): ResNet-50, 128-d embeddings, tau 0.07, lambda 0.5,
32,000 negatives, memory momentum 0.5, SGD lr 0.12 at batch 1024, momentum 0.9, weight decay 1e-4, 800 epochs;
tiles: 255 px crops in 85 px cells, a 64 px tile from each (VISSL's ``ImgPatchesFromTensor``), the image augmented
by crops, flips, colour jitter and greyscale. From VISSL's PIRL config (``pirl_jigsaw_4node_resnet.yaml``): a
cosine to 0.001 x without warm-up, and the image's crop 0.08-1, ColorJitter(0.4, 0.4, 0.4, 0.2) on every image,
greyscale 0.2 and flips. VISSL's NCE estimates one Z, from the tile term's first batch, for both terms; selfsup's
``estimate`` gives each term its own.

Checked against VISSL (``vissl/losses/nce_loss.py``, ``models/heads/siamese_concat_view.py``, the config above):
g is built the same way (a bias-carrying linear 2048 -> 128 per tile, no BatchNorm or ReLU, concatenated, linear
1152 -> 128), both embeddings are L2-normalised only where they are scored, and the bank moves towards the
normalised f alone. Where VISSL differs: each term draws its own negatives (here Eq. 5's one set for both), the
jigsaw is cut from its own RandomResizedCrop at scale 0.6-1 (``ImgPilToPatchesAndImage``; here ``views[1]``, a
second view of the recipe's), and ``loss_type: cross_entropy`` offers InfoNCE over the 1 + K rows. On digits
g collapses under the NCE (tests/test_origins_instance.py lists every setting tried), so ``pirl_digits`` trains
with ``objective: softmax``, crops 0.5-1, ``crop_frac`` 0.9 and tau 0.1, which keep g apart (its learning test
asserts it; at full length g's own bank row is in its top 10 for 7x chance, where the NCE's g is at chance).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from selfsup.losses import nce_normalizer, pirl_loss, pirl_softmax_loss
from selfsup.methods.base import Method, MethodConfig, fresh_generator
from selfsup.nets import InstanceBank, initial_features
from selfsup.views.pretext_spatial import jigsaw_geometry, jigsaw_tiles


class PIRLConfig(MethodConfig):
    name: Literal["pirl"] = "pirl"
    dim: int = Field(128, gt=0, description="embedding width of f and g")
    memory_size: int = Field(1_281_167, gt=0, description="rows of the memory bank: the number of training images "
                             "(ImageNet 1,281,167)")
    negatives: int = Field(32000, ge=1, description="memory-bank negatives per image")
    temperature: float = Field(0.07, gt=0, description="tau of the NCE scores")
    lam: float = Field(0.5, ge=0, le=1, description="weight of NCE(m_I, g(tiles)); 1 - lam goes to NCE(m_I, f(image))")
    momentum: float = Field(0.5, ge=0, lt=1, description="memory bank update m <- normalize(m_mom m + (1 - m_mom) f)")
    objective: Literal["nce", "softmax"] = Field("nce", description="nce (K bank negatives, the paper's) or softmax "
                                                 "(the full non-parametric softmax over the bank, for small datasets)")
    normalizer: Literal["estimate", "shared", "none"] = Field("estimate", description="NCE normalisers Z: NPID's "
                                                              "Monte-Carlo estimate from the first batch for each "
                                                              "term, shared (the f term's estimate for both), or "
                                                              "none (Z = 1, Eq. 3 as printed)")
    grid: int = Field(3, ge=2, le=3, description="jigsaw tiles per side")
    crop_frac: float = Field(64 / 85, gt=0, lt=1, description="tile side / cell side (64 px tiles in 85 px cells)")
    tile_size: int | None = Field(None, gt=0, description="resize each tile to this side (null: keep the crop size)")
    tile_normalize: bool = Field(False, description="normalise each tile by its own mean and std (Jigsaw's; not "
                                 "in PIRL)")
    seed: int = Field(0, description="seed of the memory bank's random initialisation")
    bank_init: Literal["random", "features"] = Field("random", description="the memory bank's start: random "
                                                     "(uniform rows, as NPID's) or features (the random-init "
                                                     "network's f of every training image, before step 1)")


class PIRL(Method):
    Config = PIRLConfig
    default_views = "simclr"
    needs_indices = True
    no_accumulation_reason = ("its normaliser is estimated from the first whole batch and its memory bank is "
                              "updated with the whole batch's features after the step")

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: PIRLConfig, epochs: int = 100) -> None:
        super().__init__(backbone, feat_dim, cfg, epochs)
        tiles = cfg.grid ** 2
        self.f_head = nn.Linear(feat_dim, cfg.dim)
        self.g_tile = nn.Linear(feat_dim, cfg.dim)
        self.g_head = nn.Linear(tiles * cfg.dim, cfg.dim)
        self.bank = InstanceBank(cfg.memory_size, cfg.dim, cfg.momentum, cfg.seed)
        self.register_buffer("nce_z", torch.full((2,), -1.0))  # Z of the g and f terms; < 0: not estimated yet
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None
        self.prepare_images = cfg.memory_size if cfg.bank_init == "features" else 0

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """:math:`f(v_I)` ``[B, dim]`` (L2-normalised) of images ``x``."""
        return F.normalize(self.f_head(self.backbone(x)).float(), dim=1)

    @torch.no_grad()
    def prepare(self, images, run_dir=None) -> dict[str, float]:
        """``bank_init: features``: every bank row set to :math:`f` of its image (``images`` all training images in
        row order), so the normalisers are estimated against the features the bank will hold."""
        self.bank.fill(initial_features(self, self.embed, images))
        return {"bank_mean_cosine": float(self.bank.bank.mean(0).square().sum())}

    @classmethod
    def image_size_problem(cls, cfg: PIRLConfig, image_size: int | None) -> str | None:
        if image_size is None:
            return None
        try:
            jigsaw_geometry(image_size, cfg.grid, cfg.crop_frac)
        except ValueError as e:
            return str(e).replace("jigsaw:", "pirl:", 1)
        return None

    def make_masks(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """``(tile order [batch, tiles] (a random permutation each), crop offsets [batch, tiles, 2] in [0, 1),
        negatives [batch, K] (bank rows))`` for the whole global batch. ``objective: softmax`` scores every bank row,
        so it draws no negatives (``[batch, 0]``, which the trainer shards like the others)."""
        tiles = self.cfg.grid ** 2
        order = torch.rand(batch, tiles, generator=generator).argsort(1)
        offsets = torch.rand(batch, tiles, 2, generator=generator)
        if self.cfg.objective == "softmax":
            return order, offsets, torch.empty(batch, 0, dtype=torch.long)
        return order, offsets, InstanceBank.sample(batch, self.cfg.negatives, self.cfg.memory_size, generator)

    def embed_tiles(self, x: torch.Tensor, order: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """:math:`g(v_{I^t})` ``[B, dim]`` (L2-normalised) of the jigsaw of ``x`` shuffled by ``order``."""
        c = self.cfg
        tiles = jigsaw_tiles(x, order, offsets, c.grid, c.crop_frac, c.tile_size, c.tile_normalize)
        b, t = tiles.shape[:2]
        per_tile = self.g_tile(self.backbone(tiles.flatten(0, 1))).view(b, t * c.dim)
        return F.normalize(self.g_head(per_tile).float(), dim=1)

    def forward(self, views, progress=0.0, labels=None, indices=None, masks=None):
        """``indices``: each image's dataset row (its bank row); ``masks``: from :meth:`make_masks` (drawn from a
        fresh generator when called outside the trainer)."""
        if indices is None:
            raise ValueError("pirl needs the dataset row index of each sample: call method(views, progress, labels, "
                             "indices=...) (the selfsup trainer does)")
        x, xt = views[0], views[1] if len(views) > 1 else views[0]
        order, offsets, negatives = masks if masks is not None else self.make_masks(x.shape[0], fresh_generator())
        indices = indices.to(x.device)
        self.bank.check_indices(indices)
        h = self.backbone(x)
        f = F.normalize(self.f_head(h).float(), dim=1)
        g = self.embed_tiles(xt, order.to(x.device), offsets)
        out: dict[str, torch.Tensor] = {}
        if self.cfg.objective == "softmax":
            loss = pirl_softmax_loss(g, f, self.bank.bank, indices, self.cfg.temperature, self.cfg.lam)
        else:
            rows = self.bank.rows(torch.cat([indices[:, None], negatives.to(x.device)], 1))
            z = self.nce_z.detach().clone()
            if self.cfg.normalizer == "none":
                z = torch.ones_like(z)
            elif bool((z < 0).any()):  # the first batch: estimate both, and keep them from the first training step on
                z = torch.stack([nce_normalizer(q, rows, self.cfg.memory_size, self.cfg.temperature) for q in (g, f)])
                if self.cfg.normalizer == "shared":
                    z = z[1].expand(2).clone()
                if self.training:
                    self.nce_z.copy_(z)
            loss = pirl_loss(g, f, rows, self.cfg.memory_size, (z[0], z[1]), self.cfg.temperature, self.cfg.lam)
            out = {"nce_z_tiles": z[0], "nce_z_image": z[1]}
        if self.training:
            self._pending = (indices, f.detach())
        return {"loss": loss, "feats": h.detach(), "emb": f.detach(), **out}

    @torch.no_grad()
    def after_step(self, progress: float) -> dict[str, float]:
        """Move the global batch's bank rows towards :math:`f(v_I)` (gathered over processes)."""
        if self._pending is not None:
            self.bank.update(*self._pending)
            self._pending = None
        return {}
