"""Jigsaw puzzles (Noroozi & Favaro 2016, "Unsupervised Learning of Visual Representations by Solving Jigsaw
Puzzles", ECCV): cut the image into 3 x 3 tiles, shuffle them by one of ``n_permutations`` fixed permutations, and
classify which permutation was used.

The tiles (:func:`selfsup.views.pretext_spatial.jigsaw_tiles`): the centred grid of ``grid x grid`` cells, a random
crop of ``crop_frac`` of each cell (the gap that hides edge continuity: 64 px inside 75 px cells), optionally
resized to ``tile_size``, each normalised by its own mean and std (against low-level statistics shortcuts). The
per-channel colour jitter of the official loader is left out: the per-tile, per-channel normalisation cancels a
per-channel affine jitter exactly (up to uint8 clipping). The permutation set is chosen greedily for maximal mean
Hamming distance (:func:`selfsup.views.pretext_spatial.permutation_set`, seeded by ``permutation_seed``) and kept in
a buffer (``perms``, part of the checkpoint). Each tile goes through the shared backbone (the siamese
"context-free network"); :class:`selfsup.nets.pretext_heads.TileClassifier` concatenates them and predicts the
permutation (:func:`selfsup.losses.pretext_cross_entropy`). Per step the trainer draws, from its seeded generator in
the main process (:meth:`Jigsaw.make_masks`), one permutation index per image and one crop offset per tile.

Recipe defaults (paper Sec. 3.2-4 and the official ``bbrattoli/JigsawPuzzlePytorch``: ``JigsawImageLoader.py``,
``select_permutations.py``, ``JigsawNetwork.py``): 1000 permutations, 225 px images in 75 px cells with 64 px
tiles, fc6 1024 per tile, fc7 4096; the solver of Noroozi's official Caffe code (``MehdiNoroozi/JigsawPuzzleSolver``
``solver_cfn_jps.prototxt``): SGD lr 0.01, x0.1 every 100k iterations, momentum 0.9, weight decay 5e-4, batch 256,
350k iterations: 70 epochs of ImageNet with x0.1 at epochs 20, 40 and 60.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
from pydantic import Field, field_validator

from selfsup.losses.pretext import pretext_cross_entropy
from selfsup.methods.base import Method, MethodConfig, fresh_generator
from selfsup.nets.pretext_heads import TileClassifier
from selfsup.views.pretext_spatial import jigsaw_geometry, jigsaw_tiles, permutation_set


class JigsawConfig(MethodConfig):
    name: Literal["jigsaw"] = "jigsaw"
    grid: int = Field(3, ge=2, le=3, description="tiles per side (3: the paper's 3 x 3 puzzle)")
    n_permutations: int = Field(1000, ge=2, description="size of the permutation set (classes)")
    permutation_seed: int = Field(0, ge=0, description="seed of the greedy maximal-Hamming permutation set")
    crop_frac: float = Field(64 / 75, gt=0, lt=1, description="tile side / cell side (the gap: 64 px in 75 px cells)")
    tile_size: int | None = Field(None, gt=0, description="resize each tile to this side (null: keep the crop size)")
    tile_normalize: bool = Field(True, description="normalise each tile by its own per-channel mean and std")
    tile_dim: int = Field(1024, gt=0, description="per-tile fc6 width")
    head: str = Field("4096", description="hidden widths after concatenating the tiles (fc7); empty: none")

    @field_validator("head", mode="before")
    @classmethod
    def _widths_as_text(cls, v: object) -> object:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v  # head=512 on the command line


class Jigsaw(Method):
    Config = JigsawConfig
    accumulation = "plain"  # per-image cross-entropy; the step's choices are rows of make_masks
    default_views = "crop"

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: JigsawConfig, epochs: int = 100) -> None:
        super().__init__(backbone, feat_dim, cfg, epochs)
        tiles = cfg.grid ** 2
        self.register_buffer("perms", permutation_set(cfg.n_permutations, tiles, cfg.permutation_seed))
        self.classifier = TileClassifier(feat_dim, tiles, cfg.tile_dim, cfg.head, cfg.n_permutations)

    @classmethod
    def image_size_problem(cls, cfg: JigsawConfig, image_size: int | None) -> str | None:
        if image_size is None:  # the data's native size: checked when the tiles are cut
            return None
        try:
            jigsaw_geometry(image_size, cfg.grid, cfg.crop_frac)
        except ValueError as e:
            return str(e)
        return None

    def make_masks(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``(permutation index [batch], crop offsets [batch, tiles, 2] in [0, 1))``."""
        index = torch.randint(self.cfg.n_permutations, (batch,), generator=generator)
        return index, torch.rand(batch, self.cfg.grid ** 2, 2, generator=generator)

    def puzzle(self, x: torch.Tensor, index: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """The shuffled, normalised tiles ``[B, T, C, t, t]`` of ``x`` under permutations ``perms[index]``."""
        c = self.cfg
        return jigsaw_tiles(x, self.perms[index.to(self.perms.device)], offsets, c.grid, c.crop_frac, c.tile_size,
                            c.tile_normalize)

    def forward(self, views, progress=0.0, labels=None, masks=None):
        x = views[0]
        index, offsets = masks if masks is not None else self.make_masks(x.shape[0], fresh_generator())
        index = index.to(x.device)
        tiles = self.puzzle(x, index, offsets)
        b, t = tiles.shape[:2]
        feats = self.backbone(tiles.flatten(0, 1)).view(b, t, -1)
        logits = self.classifier(feats)
        loss = pretext_cross_entropy(logits, index)
        accuracy = (logits.detach().argmax(1) == index).float().mean()
        pooled = feats.detach().mean(1)  # the mean tile feature, for the online probe and the logs
        return {"loss": loss, "feats": pooled, "emb": pooled, "pretext_acc": accuracy}
