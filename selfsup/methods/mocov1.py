"""MoCo v1 (He, Fan, Wu, Xie & Girshick, 2020, "Momentum Contrast for Unsupervised Visual Representation
Learning"): a momentum key encoder and a queue of negative keys, with a linear head and no MLP.

MoCo v2 (:mod:`selfsup.methods.mocov2`) is this method plus an MLP head, a higher temperature, stronger
augmentation and a cosine schedule, so MoCo v1 reuses its module whole (InfoNCE against the key and the queue,
:func:`selfsup.losses.moco_infonce`; the EMA key encoder; the :class:`selfsup.nets.MemoryBank` queue started
with random unit vectors; ``decay_all``) and changes only the defaults and the views:

- the head is one linear layer, feature -> 128 ("fc ... to a 128-D output", Sec. 3.3), then L2 normalisation;
- temperature 0.07, queue 65536, momentum 0.999 (Sec. 3.3 and 4.1);
- the views (``views.kind: mocov1``, official ``main_moco.py`` without ``--aug-plus``): crop scale 0.2-1,
  grayscale 0.2, ``ColorJitter(0.4, 0.4, 0.4, 0.4)`` always applied, flip, no blur.

Shuffle-BN (Sec. 3.3): the paper shuffles the key batch across 8 GPUs so that a query and its key are
normalised with different BatchNorm statistics. selfsup does, on one GPU or many, what
:func:`selfsup.methods.mocov2.split_forward` does: each process encodes its queries in ``bn_splits`` (8)
consecutive chunks and its keys in 8 chunks of a random permutation, each chunk with its own statistics (as 8
GPUs with 32 images each at batch 256). Under DDP each process does so on its own rows; ``bn_splits: 1`` turns
it off.

The recipe drops the lr by 10x at epochs 120 and 160, as the paper (``optim.lr_schedule: step``). Difference from
the paper, in the recipe's comments: the views apply grayscale after colour jitter (the official transform list
applies ``RandomGrayscale`` before ``ColorJitter``).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from selfsup.methods.mocov2 import MoCoV2, MoCoV2Config


class MoCoV1Config(MoCoV2Config):
    name: Literal["mocov1"] = "mocov1"  # type: ignore[assignment]
    temperature: float = Field(0.07, gt=0, description="InfoNCE temperature tau (paper: 0.07)")
    projector: str = Field("128", description="head widths, hidden-...-output; paper: one linear layer to 128 "
                           "(selfsup.nets.mlp)")


class MoCoV1(MoCoV2):
    Config = MoCoV1Config
    default_views = "mocov1"
