"""Relative patch location (Doersch, Gupta & Efros 2015, "Unsupervised Visual Representation Learning by Context
Prediction", ICCV): given a centre patch and one of its 8 neighbours, predict which neighbour it is.

The pair (:func:`selfsup.views.pretext_spatial.patch_pair`): ``patch``-px patches of a 3 x 3 arrangement placed at
random in the image, a ``gap`` between them and up to ``jitter`` px of independent jitter per patch, so that
neither continuing lines nor exact alignment solve the task. Against chromatic aberration (the network learning
where a patch sits in the lens), ``colour: drop`` keeps one random channel per patch and replaces the others by
Gaussian noise at 1/100 of its std (:func:`selfsup.views.pretext_spatial.drop_colour`), ``project`` removes the
green-magenta component (:func:`selfsup.views.pretext_spatial.project_colour`); with 1-channel images there is no
colour to drop and nothing is done. Both patches go through the shared backbone; the late-fusion head
(:class:`selfsup.nets.pretext_heads.TileClassifier`: fc6 per patch, concatenated, fc7, fc8) classifies the 8
positions (:func:`selfsup.losses.pretext_cross_entropy`). Every choice (neighbour, position, jitter, kept channel,
noise seed) is drawn per step in the main process (:meth:`RelPatch.make_masks`).

Recipe defaults (paper Sec. 3-4; the official ``cdoersch/deepcontext``): 96 px patches, 48 px gap, jitter up to
7 px, colour dropping, fc6 4096 per patch, fc7 4096; SGD with momentum 0.9, weight decay 5e-4 and batch 128 at a
constant lr (the official solver's ``lr_policy: fixed``) for 100 epochs (the README's ~1M iterations of 128 pairs);
the images resized to 150k-450k pixels become selfsup's 400 px crops.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
from pydantic import Field, field_validator

from selfsup.losses.pretext import pretext_cross_entropy
from selfsup.methods.base import Method, MethodConfig, fresh_generator
from selfsup.nets.pretext_heads import TileClassifier
from selfsup.views.pretext_spatial import drop_colour, patch_pair, patch_pair_span, project_colour


class RelPatchConfig(MethodConfig):
    name: Literal["relpatch"] = "relpatch"
    patch: int = Field(96, gt=0, description="patch side in pixels")
    gap: int = Field(48, ge=0, description="gap between neighbouring patches in pixels")
    jitter: int = Field(7, ge=0, description="largest jitter of each patch on each axis in pixels")
    colour: Literal["drop", "project", "none"] = Field("drop", description="against chromatic aberration: drop 2 "
                                                        "of 3 channels (noise), project out green-magenta, or none")
    tile_dim: int = Field(4096, gt=0, description="per-patch fc6 width")
    head: str = Field("4096", description="hidden widths after concatenating the two patches (fc7); empty: none")

    @field_validator("head", mode="before")
    @classmethod
    def _widths_as_text(cls, v: object) -> object:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v  # head=512 on the command line


class RelPatch(Method):
    Config = RelPatchConfig
    accumulation = "plain"  # per-image cross-entropy; the step's choices are rows of make_masks
    default_views = "crop"

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: RelPatchConfig, epochs: int = 100) -> None:
        super().__init__(backbone, feat_dim, cfg, epochs)
        self.classifier = TileClassifier(feat_dim, 2, cfg.tile_dim, cfg.head, 8)

    @classmethod
    def image_size_problem(cls, cfg: RelPatchConfig, image_size: int | None) -> str | None:
        span = patch_pair_span(cfg.patch, cfg.gap, cfg.jitter)
        if image_size is not None and span > image_size:
            return (f"relpatch: {cfg.patch} px patches, gap {cfg.gap} and jitter {cfg.jitter} need {span} px images, "
                    f"got {image_size}; use data.image_size >= {span} or a smaller method.patch/gap/jitter")
        return None

    def make_masks(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
        """``(neighbour [batch], origin [batch, 2], jitter [batch, 2, 2], kept channel [batch, 2] (of 3),
        noise seed [batch])``; fractions in [0, 1) are scaled to pixels by :func:`patch_pair`."""
        return (torch.randint(8, (batch,), generator=generator), torch.rand(batch, 2, generator=generator),
                torch.rand(batch, 2, 2, generator=generator), torch.randint(3, (batch, 2), generator=generator),
                torch.randint(0, 2**62, (batch,), generator=generator))

    def pair(self, x: torch.Tensor, masks: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """The centre and neighbour patches ``[B, C, p, p]`` of ``x`` for this step's ``masks``, colour handled."""
        neighbour, origin, jitter, keep, seeds = masks
        c = self.cfg
        patches = torch.stack(patch_pair(x, neighbour, origin, jitter, c.patch, c.gap, c.jitter), 1)  # [B, 2, ...]
        if x.shape[1] == 1 or c.colour == "none":
            return patches[:, 0], patches[:, 1]
        flat = patches.flatten(0, 1)
        if c.colour == "project":
            flat = project_colour(flat)
        else:  # per-row generators: the noise depends on the row's seed only, not on the process or batch split
            noise = torch.stack([torch.randn(2, *flat.shape[1:], generator=torch.Generator().manual_seed(int(s)))
                                 for s in seeds.tolist()]).flatten(0, 1)
            flat = drop_colour(flat, keep.to(x.device).flatten() % x.shape[1], noise.to(x.device))
        patches = flat.view_as(patches)
        return patches[:, 0], patches[:, 1]

    def forward(self, views, progress=0.0, labels=None, masks=None):
        x = views[0]
        masks = masks if masks is not None else self.make_masks(x.shape[0], fresh_generator())
        neighbour = masks[0].to(x.device)
        centre, other = self.pair(x, masks)
        b = x.shape[0]
        feats = self.backbone(torch.cat([centre, other])).view(2, b, -1).transpose(0, 1)  # [B, 2, D]
        logits = self.classifier(feats)
        loss = pretext_cross_entropy(logits, neighbour)
        accuracy = (logits.detach().argmax(1) == neighbour).float().mean()
        pooled = feats[:, 0].detach()  # the centre patch's feature, for the online probe and the logs
        return {"loss": loss, "feats": pooled, "emb": pooled, "pretext_acc": accuracy}
