"""Exemplar CNN (Dosovitskiy, Springenberg, Riedmiller & Brox 2014, "Discriminative Unsupervised Feature Learning
with Convolutional Neural Networks", NeurIPS): surrogate classes from transformed seed patches. Each of ``N`` seed
images is its own class; the network classifies heavily transformed samples of the seeds into their seed's class
(:func:`selfsup.losses.exemplar_loss`) through a linear classifier over the ``N`` classes on the backbone features.

How the seeds are chosen: the class of a sample is its dataset row index (the trainer passes ``indices``,
``needs_indices``). ``n_classes: null`` makes every training image a seed (``N = num_images``); a smaller
``n_classes`` picks a fixed seeded subset of ``N`` rows (``randperm(num_images, seed)[:N]``, in the buffer
``class_of_row``, checkpointed) and the other images add nothing to the loss (they still count in the batch mean,
so the loss stays a mean of per-sample terms). The paper draws N = 8,000-16,000 32 x 32 seed patches from STL-10's
unlabelled split (16,000 for its best STL-10 numbers) and precomputes K = 100-300 transformed samples per seed;
here the transforms are drawn online by the views (``views.kind: simclr``, both views classified: crops for
translation and scale, flips, colour jitter for the paper's contrast and colour transforms; the paper's rotation
of up to 20 degrees has no equivalent in selfsup's views), so every epoch sees new samples (K unbounded).

Scaling limits: the classifier holds ``N x feat_dim`` weights and every step a ``B x N`` softmax. The paper used
8,000-16,000 seeds; with many more, seeds become near duplicates of one another and transfer degrades (cookbook:
"too many classes leading performance to degrade"); NPID's memory bank is the answer to larger datasets. Keep ``N`` in the thousands to tens of thousands; ImageNet's 1.28 M images as classes would need a
2.6 G-parameter head for a ResNet-50.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn
from pydantic import Field, PositiveInt

from selfsup.losses import exemplar_loss
from selfsup.methods.base import Method, MethodConfig, encode_views


class ExemplarConfig(MethodConfig):
    name: Literal["exemplar"] = "exemplar"
    num_images: PositiveInt = Field(100_000, description="rows of the training set (STL-10 unlabelled: 100,000); "
                                    "a dataset row index outside it is an error")
    n_classes: PositiveInt | None = Field(16_000, description="N surrogate classes: a seeded subset of N seed images "
                                          "(null: every training image is a class)")
    hidden: str | None = Field(None, description="hidden widths of the classifier before the N-way layer (e.g. "
                               "'512'); null: linear on the backbone features")
    seed: int = Field(0, description="seed of the choice of seed images")


class Exemplar(Method):
    Config = ExemplarConfig
    default_views = "simclr"
    needs_indices = True
    accumulation = "plain"  # a mean of per-sample cross-entropies; no batch statistics, no state updates

    def __init__(self, backbone: nn.Module, feat_dim: int, cfg: ExemplarConfig, epochs: int = 100) -> None:
        super().__init__(backbone, feat_dim, cfg, epochs)
        n = cfg.num_images if cfg.n_classes is None else cfg.n_classes
        if n > cfg.num_images:
            raise ValueError(f"exemplar: n_classes={n} exceeds num_images={cfg.num_images}; lower method.n_classes "
                             f"or set it to null (every image a class)")
        self.n_classes = n
        class_of_row = torch.full((cfg.num_images,), -1, dtype=torch.long)
        seeds = torch.randperm(cfg.num_images, generator=torch.Generator().manual_seed(cfg.seed))[:n]
        class_of_row[seeds] = torch.arange(n)
        self.register_buffer("class_of_row", class_of_row)
        layers: list[nn.Module] = []
        d = feat_dim
        for w in (int(x) for x in cfg.hidden.split("-")) if cfg.hidden else ():
            layers += [nn.Linear(d, w), nn.ReLU(inplace=True)]
            d = w
        self.classifier = nn.Sequential(*layers, nn.Linear(d, n))

    def targets(self, indices: torch.Tensor) -> torch.Tensor:
        """Surrogate classes of dataset rows ``indices`` (-1: not a seed); a row outside the set is an error."""
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.cfg.num_images):
            raise ValueError(f"exemplar: dataset row index {int(indices.max())} is outside num_images="
                             f"{self.cfg.num_images}; set method.num_images to the number of training images")
        return self.class_of_row[indices.to(self.class_of_row.device)]

    def forward(self, views, progress=0.0, labels=None, indices=None):
        """``indices``: each sample's dataset row (its surrogate class)."""
        if indices is None:
            raise ValueError("exemplar needs the dataset row index of each sample: call method(views, progress, "
                             "labels, indices=...) (the selfsup trainer does)")
        h = encode_views(self.backbone, views)
        logits = self.classifier(torch.cat(h))
        t = self.targets(indices).repeat(len(views))
        loss = exemplar_loss(logits, t)
        seeded = t >= 0
        acc = (logits.detach().argmax(1) == t)[seeded].float().mean() if seeded.any() else logits.new_zeros(())
        return {"loss": loss, "feats": h[0].detach(), "emb": h[0].detach(), "pretext_acc": acc}
