"""Paper values of issue 11's joint-embedding part A recipes (MoCo v1, ReSSL, NNBYOL, NNSiam, FastSiam), collected
by tests/test_recipes.py: ``(recipe, key, value, citation)`` rows.

Where a paper's own text could not be opened here, the row cites the official code or config the value was read
from (file and argument); where neither gives a value, the row says "selfsup's choice" and names the setup copied.
"""

from __future__ import annotations

from typing import Any

MOCO1 = ("He et al. 2020 (MoCo), Sec. 3.3 and 4.1 (ResNet-50, fc to 128-D, tau 0.07, K 65536, m 0.999, SGD lr 0.03 "
         "at batch 256, wd 1e-4, momentum 0.9, 200 epochs; shuffle-BN over 8 GPUs)")
MOCO1_OPT = ("MoCo official main_moco.py (SGD over model.parameters(): wd 1e-4 on every parameter; lr 0.03 as given, "
             "with no batch scaling, so selfsup's linear rule gives the same 0.03 at batch 256)")
MOCO1_SCHED = ("MoCo official main_moco.py without --cos: adjust_learning_rate multiplies lr by 0.1 at each of "
               "--schedule [120, 160] (per epoch, no warm-up); He et al. 2020 Sec. 4.1")
MOCO1_AUG = ("MoCo official main_moco.py without --aug-plus (RandomResizedCrop scale 0.2-1, RandomGrayscale 0.2, "
             "ColorJitter(0.4, 0.4, 0.4, 0.4) always, flip; no blur)")
RESSL = ("ReSSL official ressl.py (lr 0.05 for 8 GPUs x 32 images, not rescaled; SGD momentum 0.9, wd 1e-4 except BN "
         "and biases; 5 warm-up epochs then cosine; 200 epochs; tau_s 0.1, --t 0.04)")
RESSL_NET = ("ReSSL official network/ressl.py and network/head.py (K=65536*2, m=0.999 constant, ProjectionHead "
             "2048-4096-512 without BN, key batch shuffled across GPUs)")
RESSL_AUG = ("ReSSL official data/augmentation.py (moco_aug: crop 0.2-1, ColorJitter(0.4, 0.4, 0.4, 0.1) p 0.8, gray "
             "0.2, blur 0.5; target_aug: crop 0.2-1 and flip only)")
NNBYOL = ("solo-learn scripts/pretrain/cifar/nnbyol.yaml (ResNet-18, 4096-4096-256, queue 65536, tau 0.99 -> 1, LARS "
          "lr 1.0 eta 0.02, wd 1e-5, batch 256, 1000 epochs)")
NNSIAM = ("solo-learn scripts/pretrain/cifar/nnsiam.yaml (ResNet-18, projector 2048-2048-2048, predictor 4096, queue "
          "65536, SGD lr 0.5, wd 1e-5, batch 256, 1000 epochs) and solo/methods/nnsiam.py (static predictor lr)")
SOLO_LR = "solo-learn solo/args/pretrain.py: lr x batch_size x devices / 256 (linear scaling)"
SOLO_WARMUP = "solo-learn solo/methods/base.py: scheduler.warmup_epochs defaults to 10 (warmup_cosine)"
SOLO_ASYM = ("solo-learn scripts/pretrain/cifar/augmentations/asymmetric.yaml (crop 0.08-1 at 32 px, jitter "
             "0.4/0.4/0.2/0.1 p 0.8, gray 0.2, no blur, solarize 0 / 0.2)")
FAST = "Pototzky et al. 2022 (FastSiam), abstract (25 epochs of pretraining on a single GPU at batch 32)"
FAST_VIEWS = ("lightly 1.6 FastSiamTransform (num_views=4: K+1 with K 3 targets; SimSiam's views: crop 0.2-1, jitter "
              "0.4/0.4/0.4/0.1 p 0.8, gray 0.2, blur 0.5)")
FAST_OURS = ("FastSiam: the method section was not opened here; SimSiam's ImageNet heads and SGD (lr 0.05 x B/256, "
             "wd 1e-4, ResNet-50; selfsup's choice, method docstring)")

_MOCO2_JITTER = (0.4, 0.4, 0.4, 0.1, 0.8)
_BYOL_JITTER = (0.4, 0.4, 0.2, 0.1, 0.8)
_SOLO_ASYM_VIEWS = [("views.kind", "byol"), ("view0.scale", (0.08, 1.0)), ("view0.jitter", _BYOL_JITTER),
                    ("view0.gray_p", 0.2), ("view0.blur_p", 0.0), ("view1.blur_p", 0.0), ("view0.solarize_p", 0.0),
                    ("view1.solarize_p", 0.2), ("view0.size", 32)]


def _rows(recipe: str, cite: str, pairs: list[tuple[str, Any]]) -> list[tuple[str, str, Any, str]]:
    return [(recipe, k, v, cite) for k, v in pairs]


ROWS: list[tuple[str, str, Any, str]] = [
    # MoCo v1
    *_rows("mocov1", MOCO1, [("optim.name", "sgd"), ("optim.lr", 0.03), ("optim.momentum", 0.9),
                             ("optim.weight_decay", 1e-4), ("data.batch_size", 256), ("train.epochs", 200),
                             ("method.temperature", 0.07), ("method.queue_size", 65536), ("method.momentum", 0.999),
                             ("method.projector", "128"), ("method.bn_splits", 8), ("model.backbone", "resnet50"),
                             ("optim.warmup_epochs", 0)]),
    *_rows("mocov1", MOCO1_OPT, [("optim.lr_scaling", "linear"), ("method.decay_all", True)]),
    *_rows("mocov1", MOCO1_SCHED, [("optim.lr_schedule", "step"), ("optim.lr_milestones", [120, 160]),
                                   ("optim.lr_gamma", 0.1)]),
    *_rows("mocov1", MOCO1_AUG, [("views.kind", "mocov1"), ("view0.scale", (0.2, 1.0)),
                                 ("view0.jitter", (0.4, 0.4, 0.4, 0.4, 1.0)), ("view0.gray_p", 0.2),
                                 ("view0.blur_p", 0.0), ("view1.blur_p", 0.0), ("view0.flip_p", 0.5)]),
    # ReSSL
    *_rows("ressl", RESSL, [("optim.name", "sgd"), ("optim.lr", 0.05), ("optim.lr_scaling", "none"),
                            ("optim.momentum", 0.9), ("optim.weight_decay", 1e-4), ("optim.warmup_epochs", 5),
                            ("data.batch_size", 256), ("train.epochs", 200), ("method.student_temp", 0.1),
                            ("method.teacher_temp", 0.04), ("model.backbone", "resnet50")]),
    *_rows("ressl", RESSL_NET, [("method.queue_size", 131072), ("method.momentum", 0.999),
                                ("method.momentum_cosine", False), ("method.projector", "4096-512"),
                                ("method.projector_norm", "none"), ("method.bn_splits", 8)]),
    *_rows("ressl", RESSL_AUG, [("views.kind", "msf"), ("view0.scale", (0.2, 1.0)), ("view0.jitter", _MOCO2_JITTER),
                                ("view0.gray_p", 0.2), ("view0.blur_p", 0.5), ("view1.scale", (0.2, 1.0)),
                                ("view1.jitter", (0.0, 0.0, 0.0, 0.0, 0.0)), ("view1.gray_p", 0.0),
                                ("view1.blur_p", 0.0), ("view1.flip_p", 0.5)]),
    # NNBYOL
    *_rows("nnbyol", NNBYOL, [("optim.name", "lars"), ("optim.lr", 1.0), ("optim.eta", 0.02),
                              ("optim.weight_decay", 1e-5), ("data.batch_size", 256), ("train.epochs", 1000),
                              ("method.projector", "4096-256"), ("method.predictor", "4096-256"),
                              ("method.tau_base", 0.99), ("method.queue_size", 65536), ("model.backbone", "resnet18"),
                              ("data.image_size", 32)]),
    *_rows("nnbyol", SOLO_LR, [("optim.lr_scaling", "linear")]),
    *_rows("nnbyol", SOLO_WARMUP, [("optim.warmup_epochs", 10)]),
    *_rows("nnbyol", SOLO_ASYM, _SOLO_ASYM_VIEWS),
    # NNSiam
    *_rows("nnsiam", NNSIAM, [("optim.name", "sgd"), ("optim.lr", 0.5), ("optim.weight_decay", 1e-5),
                              ("data.batch_size", 256), ("train.epochs", 1000), ("method.projector", "2048-2048-2048"),
                              ("method.predictor", "4096-2048"), ("method.queue_size", 65536),
                              ("method.fixed_predictor_lr", True), ("model.backbone", "resnet18"),
                              ("data.image_size", 32)]),
    *_rows("nnsiam", SOLO_LR, [("optim.lr_scaling", "linear")]),
    *_rows("nnsiam", SOLO_WARMUP, [("optim.warmup_epochs", 10)]),
    *_rows("nnsiam", SOLO_ASYM, _SOLO_ASYM_VIEWS),
    # FastSiam
    *_rows("fastsiam", FAST, [("train.epochs", 25), ("data.batch_size", 32)]),
    *_rows("fastsiam", FAST_VIEWS, [("views.kind", "mocov2"), ("views.n_global", 4), ("view0.scale", (0.2, 1.0)),
                                    ("view0.jitter", _MOCO2_JITTER), ("view0.gray_p", 0.2), ("view0.blur_p", 0.5),
                                    ("view3.blur_p", 0.5)]),
    *_rows("fastsiam", FAST_OURS, [("optim.name", "sgd"), ("optim.lr", 0.05), ("optim.lr_scaling", "linear"),
                                   ("optim.momentum", 0.9), ("optim.weight_decay", 1e-4), ("optim.warmup_epochs", 0),
                                   ("method.projector", "2048-2048-2048"), ("method.predictor", "512-2048"),
                                   ("method.fixed_predictor_lr", True), ("model.backbone", "resnet50")]),
]
