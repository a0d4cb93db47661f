"""BEiT (Bao et al., 2022, "BEiT: BERT Pre-Training of Image Transformers") without the DALL-E tokenizer.

Blockwise masks hide ~40% of the patches (``blockwise_mask``: rectangles of >= 16 patches, aspect
log-uniform in 0.3-1/0.3, topped up to the exact count); the encoder sees every token, masked ones
replaced by the learned mask token plus their position (``mode="replace"``); a linear head on the
patch tokens predicts, at masked positions only, the id of each patch's visual token (softmax
cross-entropy, mean over the batch's masked patches, as ``nn.CrossEntropyLoss()(logits[mask], ids)``).

Targets (``target``):

- ``"kmeans"`` (default): a :class:`~selfsup.nets.tokenizers.KMeansPatchTokenizer` (ClusterMIM-style
  k-means on per-patch-normalised patches) in place of the frozen DALL-E dVAE. It is fitted once, before
  the first epoch of a new run, on ``tokenizer_images`` training images (:meth:`BEiT.prepare`, called by
  ``selfsup.train.loop.train``), cached as ``tokenizer.pt`` in the run directory, and kept in the
  method's buffers, so checkpoints and resume carry it (resume never refits). ``tokenizer_path`` loads
  a tokenizer fitted beforehand (:func:`fit_beit_tokenizer`, the function a ``selfsup tokenizer fit``
  command can call). The tokenizer sees the same normalised image as the encoder (BEiT's dVAE sees a
  112 px lanczos view of the same crop, with ``map_pixels``).
- ``"hog"``: MaskFeat's (Wei et al., 2022) tokenizer-free target, per-patch HOG features
  (:class:`~selfsup.nets.tokenizers.HOGTargets`, 9 bins), regressed with the MSE of masked patches
  (:func:`selfsup.losses.mae_loss`).

Recipe defaults (paper Sec. 2-3 and App.; official run script, ViT-B/16): 75 of 196 patches masked,
min 16 patches per block; lr 1.5e-3 at batch 2048 (= 1.875e-4 per 256 with linear scaling), 10 warmup
epochs, cosine to 1e-5, weight decay 0.05, AdamW betas (0.9, 0.999) (paper; the official argparse
default ``--opt_betas`` is (0.9, 0.98)), clip 3.0, drop path 0.1, LayerScale 0.1, 800 epochs; views:
ColorJitter(0.4, 0.4, 0.4) always applied, flip, RandomResizedCrop (scale 0.08-1). Vocabulary: 8192 in
the paper recipe (the dVAE codebook size, so the head is the paper's); the k-means fit cost grows with
it (MiniBatchKMeans on ``tokenizer_patches`` patches). Paper vs here: BEiT uses a shared relative
position bias and no absolute positions, and rescales ``attn.proj`` / ``fc2`` init by 1/sqrt(2 layer);
the ViT here keeps timm's absolute positions and init.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from pydantic import Field

from selfsup.losses.masked_regression import mae_loss
from selfsup.methods.base import Method, MethodConfig, fresh_generator, require_vit
from selfsup.nets.tokenizers import HOGTargets, KMeansPatchTokenizer, load_tokenizer, save_tokenizer
from selfsup.views.masks import blockwise_mask

#: the file a run directory caches the fitted tokenizer in
TOKENIZER_FILE = "tokenizer.pt"


class BEiTConfig(MethodConfig):
    name: Literal["beit"] = "beit"
    target: Literal["kmeans", "hog"] = Field("kmeans", description="k-means visual tokens (CE) or MaskFeat HOG (MSE)")
    vocab_size: int = Field(8192, ge=2, description="k-means visual tokens (BEiT's dVAE: 8192)")
    mask_ratio: float = Field(0.4, gt=0, lt=1, description="masked fraction when num_masked is null")
    num_masked: int | None = Field(None, ge=1, description="masked patches per image (BEiT: 75 of 196)")
    min_patches: int = Field(16, ge=1, description="minimum patches per mask block")
    max_patches: int | None = Field(None, ge=1, description="maximum new patches per block (null: the budget)")
    aspect: tuple[float, float] = Field((0.3, 1 / 0.3), description="block aspect ratio range (log-uniform)")
    tokenizer_images: int = Field(10000, ge=1, description="training images the k-means tokenizer is fitted on")
    tokenizer_patches: int = Field(200_000, ge=2, description="patches sampled from them for MiniBatchKMeans")
    tokenizer_seed: int = Field(0, ge=0, description="seed of the k-means tokenizer fit")
    tokenizer_path: str | None = Field(None, description="a tokenizer file to load instead of fitting one")
    hog_bins: int = Field(9, ge=1, description="HOG orientation bins (MaskFeat: 9)")
    hog_cell: int | None = Field(None, ge=1, description="HOG cell side (null: largest divisor of the patch <= 8)")


def _patch_size(recipe) -> int:
    """The patch side of a recipe's ViT backbone (``model.vit.patch_size`` or the timm name's ``patchNN``)."""
    p = recipe.model.vit.patch_size
    if p is None:
        m = re.search(r"patch(\d+)", recipe.model.backbone)
        if m is None:
            raise ValueError(f"cannot tell the patch size of {recipe.model.backbone}; set model.vit.patch_size")
        p = int(m.group(1))
    return int(p)


def fit_beit_tokenizer(images: Iterable[torch.Tensor] | torch.Tensor, recipe_cfg, out_path: str | Path
                       ) -> KMeansPatchTokenizer:
    """Fit the k-means tokenizer a BEiT recipe (``recipe_cfg``: a :class:`selfsup.config.Recipe`) would
    fit, on normalised ``images`` (a tensor ``[B, C, H, W]`` or an iterable of batches), and save it to
    ``out_path``; use it with ``method.tokenizer_path``. Returns the tokenizer."""
    c = recipe_cfg.method
    if c.name != "beit" or c.target != "kmeans":
        raise ValueError(f"fit_beit_tokenizer needs a beit recipe with method.target=kmeans, got {c.name}")
    tok = KMeansPatchTokenizer(c.vocab_size, _patch_size(recipe_cfg))
    tok.fit(images, max_patches=c.tokenizer_patches, seed=c.tokenizer_seed)
    save_tokenizer(tok, out_path)
    return tok


class BEiT(Method):
    Config = BEiTConfig
    default_views = "crop"

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: BEiTConfig, epochs: int = 100) -> None:
        super().__init__(backbone, feat_dim, cfg, epochs)
        vit = require_vit(backbone, cfg.name)
        vit.add_mask_token()
        p = vit.patch_size
        in_chans = int(vit.patch_embed.proj.in_channels)
        self.in_chans = in_chans
        if cfg.target == "kmeans":
            out = cfg.vocab_size
            # the tokenizer's state, as buffers (checkpointed): centroids and whether they were fitted
            self.register_buffer("centroids", torch.zeros(cfg.vocab_size, p * p * in_chans))
            self.register_buffer("tokenizer_fitted", torch.zeros((), dtype=torch.bool))
            self.prepare_images = cfg.tokenizer_images
            if cfg.tokenizer_path:
                self.set_tokenizer(load_tokenizer(cfg.tokenizer_path))
                self.prepare_images = 0
        else:
            self.hog = HOGTargets(p, cfg.hog_bins, cfg.hog_cell)
            out = self.hog.feature_dim(in_chans)
        self.head = nn.Linear(feat_dim, out)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    # ---- the tokenizer ------------------------------------------------------------------------------

    def tokenizer(self) -> KMeansPatchTokenizer:
        """The fitted k-means tokenizer over this method's centroid buffer (its device and values)."""
        if self.cfg.target != "kmeans":
            raise ValueError("beit: method.target=hog has no tokenizer")
        if not bool(self.tokenizer_fitted):
            raise ValueError("beit: the k-means tokenizer is not fitted; call method.prepare(images) first "
                             "(selfsup.train.loop.train does) or set method.tokenizer_path")
        tok = KMeansPatchTokenizer(self.cfg.vocab_size, self.backbone.patch_size)
        tok.in_chans, tok.centroids = self.in_chans, self.centroids
        return tok

    @torch.no_grad()
    def set_tokenizer(self, tok: KMeansPatchTokenizer) -> None:
        """Adopt a fitted tokenizer (vocabulary, patch size and channels must match)."""
        want = (self.cfg.vocab_size, self.backbone.patch_size, self.in_chans)
        if not isinstance(tok, KMeansPatchTokenizer) or (tok.vocab_size, tok.patch_size, tok.in_chans) != want:
            raise ValueError(f"beit: the tokenizer must be a fitted KMeansPatchTokenizer with (vocab_size, patch_size, "
                             f"in_chans) = {want}, got {tok!r}")
        self.centroids.copy_(tok.centroids)
        self.tokenizer_fitted.fill_(True)

    @torch.no_grad()
    def prepare(self, images: Iterable[torch.Tensor], run_dir: Path | None = None) -> dict[str, float]:
        """Fit the k-means tokenizer on ``images`` (normalised batches) and cache it as ``run_dir /
        tokenizer.pt``; nothing to do for HOG targets or a tokenizer already fitted or loaded."""
        if self.cfg.target != "kmeans" or bool(self.tokenizer_fitted):
            return {}
        tok = KMeansPatchTokenizer(self.cfg.vocab_size, self.backbone.patch_size)
        tok.fit(images, max_patches=self.cfg.tokenizer_patches, seed=self.cfg.tokenizer_seed)
        self.set_tokenizer(tok)
        if run_dir is not None:
            Path(run_dir).mkdir(parents=True, exist_ok=True)
            save_tokenizer(tok, Path(run_dir) / TOKENIZER_FILE)
        return {"tokenizer_vocab": float(tok.vocab_size)}

    @torch.no_grad()
    def targets(self, images: torch.Tensor) -> torch.Tensor:
        """Token ids ``[B, N]`` (k-means) or HOG features ``[B, N, F]`` of (normalised) ``images``."""
        if self.cfg.target == "kmeans":
            return self.tokenizer()(images.float())
        return self.hog(images.float())

    # ---- masks and the loss -------------------------------------------------------------------------

    def num_masked(self) -> int:
        h, w = self.backbone.base_grid
        return self.cfg.num_masked if self.cfg.num_masked is not None else round(self.cfg.mask_ratio * h * w)

    def make_masks(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """One blockwise bool mask ``[batch, N]`` (True = masked) for the view."""
        c = self.cfg
        return (blockwise_mask(batch, self.backbone.base_grid, self.num_masked(), generator, c.min_patches,
                               tuple(c.aspect), c.max_patches).mask,)

    def predict(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode ``x`` with the masked patches replaced by the mask token: ``(head outputs [B, N, out],
        pooled features [B, D])``."""
        vit = self.backbone
        tokens = vit.encode(vit.mask(vit.embed(x), mask, "replace"))
        return self.head(vit.patches(tokens)), vit.pool(tokens)

    def loss(self, pred: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """CE over the masked positions only (k-means ids) or the masked patches' HOG MSE."""
        if self.cfg.target == "kmeans":
            return F.cross_entropy(pred[mask].float(), targets[mask])
        return mae_loss(pred, targets, mask)

    def forward(self, views, progress=0.0, labels=None, masks=None):
        x = views[0]
        if masks is None:
            masks = self.make_masks(x.shape[0], fresh_generator())
        mask = masks[0].to(x.device)
        pred, feats = self.predict(x, mask)
        loss = self.loss(pred, self.targets(x), mask)
        out = {"loss": loss, "feats": feats.detach(), "emb": feats.detach(),
               "mask_ratio": mask.float().mean().detach()}
        return out
