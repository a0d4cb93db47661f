"""Provenance of the bundled recipes: every paper recipe's key hyperparameters against its paper.

One row per value: (recipe, key, paper value, citation). A key is a dotted path into the validated
recipe (``optim.lr``, ``method.temperature``), ``views.kind`` (the views used: the recipe's kind or
the method's default), ``views.n_global`` / ``views.n_local``, or ``view<i>.<field>`` (a field of the
i-th :class:`selfsup.views.ViewSpec` built from the recipe at its image size; locals follow globals).
The ``*_digits`` variants may differ, and each changed value must be explained in a YAML comment.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml

from selfsup.config import RECIPE_DIR, Recipe, list_recipes, load_recipe, to_dict
from selfsup.methods import METHODS
from selfsup.views import MultiView, build_views

PAPER_RECIPES = sorted(p.stem for p in RECIPE_DIR.glob("*.yaml") if not p.stem.endswith("_digits"))
DIGITS_RECIPES = sorted(p.stem for p in RECIPE_DIR.glob("*_digits.yaml"))

# ---- citations (one line each) -------------------------------------------------------------------
SIMCLR = "Chen et al. 2020 (SimCLR), Sec. 2.3 'Default setting'"
SIMCLR_T = "Chen et al. 2020 (SimCLR), Table 5 (tau 0.1 best with l2-normalised NT-Xent)"
SIMCLR_AUG = "Chen et al. 2020 (SimCLR), App. A (crop 0.08-1, colour strength 1, gray 0.2, blur 0.5)"
SIMCLR_ETA = "SimCLR official lars_optimizer.py (eeta=0.001), the LARS default (You et al. 2017)"
BYOL = "Grill et al. 2020 (BYOL), Sec. 3.3 'Optimization' (1000 epochs, lr 0.2, wd 1.5e-6, tau 0.996)"
BYOL_ARCH = "Grill et al. 2020 (BYOL), Sec. 3.3 'Architecture' (MLP 4096-256)"
BYOL_AUG = "Grill et al. 2020 (BYOL), Table 6 (asymmetric blur 1.0/0.1, solarize 0/0.2)"
BYOL_ETA = "BYOL official byol/configs/byol.py (optimizer_config eta=1e-3)"
MOCO2 = "Chen, Fan, Girshick & He 2020 (MoCo v2), Sec. 2-3 and Table 1 (MLP, tau 0.2, aug+, cosine, 200 ep)"
MOCO2_OPT = "MoCo v2 official main_moco.py (SGD lr 0.03 / batch 256, momentum 0.9, wd 1e-4 on every parameter)"
MOCO1 = "He et al. 2020 (MoCo), Sec. 3.2/4 (m 0.999, queue 65536)"
MOCO3 = "Chen, Xie & He 2021 (MoCo v3), ResNet-50 setup; official CONFIG.md 300-epoch command and main_moco.py"
MOCO3_ETA = "MoCo v3 official moco/optimizer.py (LARS trust_coefficient=0.001)"
SIMSIAM = "Chen & He 2021 (SimSiam), 'Baseline settings' (SGD lr 0.05 x B/256, wd 1e-4, batch 512, 100 ep)"
SIMSIAM_AUG = "Chen & He 2021 (SimSiam), augmentation 'the same as MoCo v2'"
DINO = "Caron et al. 2021 (DINO), Sec. 3.2 'Implementation details' (AdamW, B 1024, lr 5e-4 x B/256, wd 0.04->0.4)"
DINO_T = "Caron et al. 2021 (DINO), Sec. 3.2 (tau_s 0.1, tau_t 0.04->0.07 over 30 epochs, EMA 0.996->1)"
DINO_HEAD = "Caron et al. 2021 (DINO), Sec. 3.1 'Network architecture' (MLP 2048); official bottleneck 256, K 65536"
DINO_BOOST = "DINO official README 'Boosting DINO performance' (ViT-S/16, 300 epochs, norm_last_layer false)"
DINO_AUG = "Caron et al. 2021 (DINO), Sec. 3.1 and DataAugmentationDINO (2x224 at 0.4-1, 8x96 at 0.05-0.4)"
SWAV = "Caron et al. 2020 (SwAV), App. A and official swav_800ep script (LARS 4.8 at 4096, wd 1e-6, 800 ep)"
SWAV_ETA = "SwAV official main_swav.py (LARC trust_coefficient=0.001)"
SWAV_AUG = "Caron et al. 2020 (SwAV), Sec. 3.2 and MultiCropDataset (2x224 0.14-1 + 6x96 0.05-0.14, colour s=1, blur 0.5)"
DC2 = "Caron et al. 2020 (SwAV paper, DeepCluster-v2), official deepclusterv2_800ep script"
BT = "Zbontar et al. 2021 (Barlow Twins), 'Implementation details' (LARS, B 2048, 1000 ep, lr 0.2, wd 1.5e-6)"
BT_AUG = "Zbontar et al. 2021 (Barlow Twins), 'Image augmentations' (BYOL's)"
BT_ETA = "Barlow Twins official main.py (LARS eta=0.001)"
VICREG = "Bardes et al. 2022 (VICReg), 'Implementation details' and App. C (LARS, B 2048, 1000 ep, lr 0.2 x B/256, wd 1e-6)"
VICREG_AUG = "Bardes et al. 2022 (VICReg), App. C (BYOL's augmentations)"
VICREG_ETA = "VICReg official main_vicreg.py (LARS eta=0.001)"
NNCLR = "Dwibedi et al. 2021 (NNCLR), 'Implementation details' (LARS, B 4096, 1000 ep, tau 0.1, queue 98304)"
NNCLR_AUG = "Dwibedi et al. 2021 (NNCLR), 'Implementation details' (BYOL's augmentations)"
MSF = "Koohpayegani et al. 2021 (MSF), experiments (k 5, bank 1.024M, m 0.99, SGD lr 0.05, wd 1e-4, 200 ep)"
MSF_ARCH = "MSF official train_msf.py (MLPs 2x2048 hidden, 2048/4 out; SGD decays every parameter)"
MSF_AUG = "Koohpayegani et al. 2021 (MSF), weak/strong augmentation; train_msf.py --weak_strong"
SUPCON = "Khosla et al. 2020 (SupCon), ImageNet experiments (ResNet-50, batch 6144, 700 epochs, tau 0.1, projector 2048-128)"
SUPCON_OURS = "SupCon: no LARS lr in the main text; SimCLR's 0.3 x B/256 (selfsup's choice, method docstring)"
DCL = "Yeh et al. 2021 (DCL), ImageNet on SimCLR's setup: batch 256, 200 epochs, tau 0.1, sigma 0.5 (DCLW)"
RELIC = "Mitrovic et al. 2021 (ReLIC), BYOL's ImageNet setup (method docstring)"
RELIC_OURS = "ReLIC: alpha and tau not in the main text; selfsup's choice (method docstring)"
DP = "Tian, Chen & Ganguli 2021 (DirectPred), ImageNet experiments and abstract (BYOL's recipe, 300-epoch runs, rho 0.3, eps 0.1)"
WMSE = "Ermolov et al. 2021 (W-MSE), official README CIFAR-10 command (W-MSE 4: lr 3e-3, bs 256, emb 64, w_size 128)"
WMSE_AUG = "W-MSE official cfg.py (jitter 0.4/0.4/0.4/0.1 p 0.8, gray 0.1, crop 0.2-1; no blur on CIFAR)"
OURS_SIMCLR = "no ImageNet recipe in the paper; SimCLR's ImageNet setup (selfsup's choice, method docstring)"

_S_LR = [("optim.name", "lars"), ("optim.lr_scaling", "linear"), ("optim.warmup_epochs", 10)]
_SIMCLR_VIEWS = [("views.kind", "simclr"), ("view0.scale", (0.08, 1.0)), ("view0.jitter", (0.8, 0.8, 0.8, 0.2, 0.8)),
                 ("view0.gray_p", 0.2), ("view0.blur_p", 0.5), ("view1.blur_p", 0.5), ("view0.solarize_p", 0.0)]
_BYOL_VIEWS = [("views.kind", "byol"), ("view0.scale", (0.08, 1.0)), ("view0.jitter", (0.4, 0.4, 0.2, 0.1, 0.8)),
               ("view0.gray_p", 0.2), ("view0.blur_p", 1.0), ("view1.blur_p", 0.1), ("view0.solarize_p", 0.0),
               ("view1.solarize_p", 0.2)]
_MOCO2_VIEWS = [("views.kind", "mocov2"), ("view0.scale", (0.2, 1.0)), ("view0.jitter", (0.4, 0.4, 0.4, 0.1, 0.8)),
                ("view0.gray_p", 0.2), ("view0.blur_p", 0.5), ("view0.blur_sigma", (0.1, 2.0)),
                ("view1.blur_p", 0.5), ("view0.solarize_p", 0.0), ("view0.flip_p", 0.5)]
_SWAV_VIEWS = [("views.kind", "swav_multicrop"), ("views.n_global", 2), ("views.n_local", 6),
               ("view0.size", 224), ("view0.scale", (0.14, 1.0)), ("view2.size", 96), ("view2.scale", (0.05, 0.14)),
               ("view0.jitter", (0.8, 0.8, 0.8, 0.2, 0.8)), ("view2.jitter", (0.8, 0.8, 0.8, 0.2, 0.8)),
               ("view0.gray_p", 0.2), ("view0.blur_p", 0.5), ("view1.blur_p", 0.5), ("view2.blur_p", 0.5),
               ("view0.solarize_p", 0.0), ("view1.solarize_p", 0.0), ("view7.solarize_p", 0.0)]


def _rows(recipe: str, cite: str, pairs: list[tuple[str, Any]]) -> list[tuple[str, str, Any, str]]:
    return [(recipe, k, v, cite) for k, v in pairs]


ROWS: list[tuple[str, str, Any, str]] = [
    # SimCLR
    *_rows("simclr", SIMCLR, [*_S_LR, ("optim.lr", 0.3), ("optim.weight_decay", 1e-6), ("data.batch_size", 4096),
                              ("train.epochs", 100), ("method.projector", "2048-128")]),
    *_rows("simclr", SIMCLR_T, [("method.temperature", 0.1)]),
    *_rows("simclr", SIMCLR_ETA, [("optim.eta", 1e-3)]),
    *_rows("simclr", SIMCLR_AUG, _SIMCLR_VIEWS),
    # BYOL
    *_rows("byol", BYOL, [*_S_LR, ("optim.lr", 0.2), ("optim.weight_decay", 1.5e-6), ("data.batch_size", 4096),
                          ("train.epochs", 1000), ("method.tau_base", 0.996)]),
    *_rows("byol", BYOL_ARCH, [("method.projector", "4096-256"), ("method.predictor", "4096-256")]),
    *_rows("byol", BYOL_ETA, [("optim.eta", 1e-3)]),
    *_rows("byol", BYOL_AUG, _BYOL_VIEWS),
    # MoCo v2
    *_rows("mocov2", MOCO2_OPT, [("optim.name", "sgd"), ("optim.lr", 0.03), ("optim.lr_scaling", "linear"),
                                 ("optim.momentum", 0.9), ("optim.weight_decay", 1e-4), ("data.batch_size", 256),
                                 ("method.decay_all", True)]),
    *_rows("mocov2", MOCO2, [("method.temperature", 0.2), ("method.projector", "2048-128"),
                             ("method.projector_norm", "none"), ("train.epochs", 200), ("optim.warmup_epochs", 0)]),
    *_rows("mocov2", MOCO1, [("method.momentum", 0.999), ("method.queue_size", 65536)]),
    *_rows("mocov2", MOCO2, _MOCO2_VIEWS),
    # MoCo v3 (ResNet-50, 300 epochs)
    *_rows("mocov3", MOCO3, [*_S_LR, ("optim.lr", 0.3), ("optim.weight_decay", 1e-6), ("data.batch_size", 4096),
                             ("train.epochs", 300), ("method.temperature", 1.0), ("method.tau_base", 0.99),
                             ("method.projector", "4096-256"), ("method.predictor", "4096-256")]),
    *_rows("mocov3", MOCO3_ETA, [("optim.eta", 1e-3)]),
    *_rows("mocov3", MOCO3, [("views.kind", "byol"), ("view0.scale", (0.2, 1.0)), ("view0.blur_p", 1.0),
                             ("view1.blur_p", 0.1), ("view1.solarize_p", 0.2), ("view0.jitter", (0.4, 0.4, 0.2, 0.1, 0.8))]),
    # SimSiam
    *_rows("simsiam", SIMSIAM, [("optim.name", "sgd"), ("optim.lr", 0.05), ("optim.lr_scaling", "linear"),
                                ("optim.momentum", 0.9), ("optim.weight_decay", 1e-4), ("optim.warmup_epochs", 0),
                                ("data.batch_size", 512), ("train.epochs", 100), ("method.projector", "2048-2048-2048"),
                                ("method.predictor", "512-2048"), ("method.fixed_predictor_lr", True)]),
    *_rows("simsiam", SIMSIAM_AUG, _MOCO2_VIEWS),
    # DINO (ViT-S/16)
    *_rows("dino", DINO, [("optim.name", "adamw"), ("optim.lr", 5e-4), ("optim.lr_scaling", "linear"),
                          ("optim.warmup_epochs", 10), ("optim.weight_decay", 0.04), ("optim.weight_decay_end", 0.4),
                          ("data.batch_size", 1024), ("optim.clip_grad", 3.0)]),
    *_rows("dino", DINO_T, [("method.student_temp", 0.1), ("method.warmup_teacher_temp", 0.04),
                            ("method.teacher_temp", 0.07), ("method.warmup_teacher_temp_epochs", 30),
                            ("method.tau_base", 0.996), ("method.center_momentum", 0.9)]),
    *_rows("dino", DINO_HEAD, [("method.head", "2048-2048-256"), ("method.out_dim", 65536)]),
    *_rows("dino", DINO_BOOST, [("train.epochs", 300), ("method.norm_last_layer", False)]),
    *_rows("dino", DINO_AUG, [("views.kind", "multicrop"), ("views.n_global", 2), ("views.n_local", 8),
                              ("view0.size", 224), ("view0.scale", (0.4, 1.0)), ("view2.size", 96),
                              ("view2.scale", (0.05, 0.4)), ("view0.blur_p", 1.0), ("view1.blur_p", 0.1),
                              ("view1.solarize_p", 0.2), ("view2.blur_p", 0.5), ("view0.jitter", (0.4, 0.4, 0.2, 0.1, 0.8))]),
    # SwAV
    *_rows("swav", SWAV, [*_S_LR, ("optim.lr", 0.3), ("optim.weight_decay", 1e-6), ("optim.final_lr_ratio", 0.001),
                          ("data.batch_size", 4096), ("train.epochs", 800), ("method.projector", "2048-128"),
                          ("method.nmb_prototypes", 3000), ("method.temperature", 0.1), ("method.epsilon", 0.05),
                          ("method.sinkhorn_iters", 3), ("method.queue_length", 0)]),
    *_rows("swav", SWAV_ETA, [("optim.eta", 1e-3)]),
    *_rows("swav", SWAV_AUG, _SWAV_VIEWS),
    # DeepCluster-v2
    *_rows("deepcluster_v2", DC2, [*_S_LR, ("optim.lr", 0.3), ("optim.weight_decay", 1e-6),
                                   ("optim.final_lr_ratio", 0.001), ("data.batch_size", 4096), ("train.epochs", 800),
                                   ("method.projector", "2048-128"), ("method.nmb_prototypes", [3000, 3000, 3000]),
                                   ("method.temperature", 0.1), ("optim.eta", 1e-3)]),
    *_rows("deepcluster_v2", SWAV_AUG, _SWAV_VIEWS),
    # Barlow Twins
    *_rows("barlow_twins", BT, [*_S_LR, ("optim.lr", 0.2), ("method.bias_lr_scale", 0.0048 / 0.2),
                                ("optim.weight_decay", 1.5e-6), ("optim.final_lr_ratio", 0.001),
                                ("data.batch_size", 2048), ("train.epochs", 1000), ("method.projector", "8192-8192-8192"),
                                ("method.lambda_", 5e-3)]),
    *_rows("barlow_twins", BT_ETA, [("optim.eta", 1e-3)]),
    *_rows("barlow_twins", BT_AUG, _BYOL_VIEWS),
    # VICReg
    *_rows("vicreg", VICREG, [*_S_LR, ("optim.lr", 0.2), ("optim.weight_decay", 1e-6), ("data.batch_size", 2048),
                              ("train.epochs", 1000), ("method.projector", "8192-8192-8192"), ("method.lambda_", 25.0),
                              ("method.mu", 25.0), ("method.nu", 1.0)]),
    *_rows("vicreg", VICREG_ETA, [("optim.eta", 1e-3)]),
    *_rows("vicreg", VICREG_AUG, _BYOL_VIEWS),
    # NNCLR
    *_rows("nnclr", NNCLR, [*_S_LR, ("optim.lr", 0.3), ("optim.weight_decay", 1e-6), ("data.batch_size", 4096),
                            ("train.epochs", 1000), ("method.temperature", 0.1), ("method.queue_size", 98304),
                            ("method.projector", "2048-2048-256"), ("method.predictor", "4096-256")]),
    *_rows("nnclr", SIMCLR_ETA, [("optim.eta", 1e-3)]),
    *_rows("nnclr", NNCLR_AUG, _BYOL_VIEWS),
    # MSF
    *_rows("msf", MSF, [("optim.name", "sgd"), ("optim.lr", 0.05), ("optim.lr_scaling", "linear"),
                        ("optim.momentum", 0.9), ("optim.weight_decay", 1e-4), ("optim.warmup_epochs", 0),
                        ("data.batch_size", 256), ("train.epochs", 200), ("method.k", 5),
                        ("method.queue_size", 1_024_000), ("method.momentum", 0.99)]),
    *_rows("msf", MSF_ARCH, [("method.projector", "4096-512"), ("method.predictor", "4096-512"),
                             ("method.decay_all", True)]),
    *_rows("msf", MSF_AUG, [("views.kind", "msf"), ("view0.scale", (0.2, 1.0)),
                            ("view0.jitter", (0.4, 0.4, 0.4, 0.1, 0.8)), ("view0.gray_p", 0.2), ("view0.blur_p", 0.5),
                            ("view1.scale", (0.2, 1.0)), ("view1.jitter", (0.0, 0.0, 0.0, 0.0, 0.0)),
                            ("view1.gray_p", 0.0), ("view1.blur_p", 0.0), ("view1.flip_p", 0.5)]),
    # SupCon
    *_rows("supcon", SUPCON, [("optim.name", "lars"), ("data.batch_size", 6144), ("train.epochs", 700),
                              ("method.temperature", 0.1), ("method.projector", "2048-128")]),
    *_rows("supcon", SUPCON_OURS, [("optim.lr", 0.3), ("optim.lr_scaling", "linear"), ("optim.weight_decay", 1e-6),
                                   ("optim.warmup_epochs", 10), ("optim.eta", 1e-3)]),
    *_rows("supcon", SIMCLR_AUG, _SIMCLR_VIEWS),
    # DCL / DCLW
    *[row for name in ("dcl", "dclw") for row in [
        *_rows(name, DCL, [("data.batch_size", 256), ("train.epochs", 200), ("method.temperature", 0.1),
                           ("method.projector", "2048-128")]),
        *_rows(name, SIMCLR, [*_S_LR, ("optim.lr", 0.3), ("optim.weight_decay", 1e-6)]),
        *_rows(name, SIMCLR_ETA, [("optim.eta", 1e-3)]),
        *_rows(name, SIMCLR_AUG, _SIMCLR_VIEWS)]],
    *_rows("dclw", DCL, [("method.sigma", 0.5)]),
    # ReLIC
    *_rows("relic", RELIC, [*_S_LR, ("optim.lr", 0.2), ("optim.weight_decay", 1.5e-6), ("data.batch_size", 4096),
                            ("train.epochs", 1000), ("method.tau_base", 0.996), ("method.projector", "4096-256")]),
    *_rows("relic", RELIC_OURS, [("method.temperature", 0.1), ("method.alpha", 1.0)]),
    *_rows("relic", BYOL_ETA, [("optim.eta", 1e-3)]),
    *_rows("relic", BYOL_AUG, _BYOL_VIEWS),
    # DirectPred
    *_rows("directpred", DP, [*_S_LR, ("optim.lr", 0.2), ("optim.weight_decay", 1.5e-6), ("data.batch_size", 4096),
                              ("train.epochs", 300), ("method.tau_base", 0.996), ("method.projector", "4096-256"),
                              ("method.rho", 0.3), ("method.eps", 0.1), ("method.update_every", 1)]),
    *_rows("directpred", BYOL_ETA, [("optim.eta", 1e-3)]),
    *_rows("directpred", BYOL_AUG, _BYOL_VIEWS),
    # W-MSE (CIFAR-10)
    *_rows("wmse", WMSE, [("optim.name", "adamw"), ("optim.lr", 3e-3), ("optim.weight_decay", 1e-6),
                          ("data.batch_size", 256), ("train.epochs", 1000), ("method.projector", "1024-64"),
                          ("method.w_size", 128), ("method.w_iter", 1), ("model.backbone", "resnet18")]),
    *_rows("wmse", WMSE_AUG, [("views.kind", "mocov2"), ("views.n_global", 4), ("views.n_local", 0),
                              ("view0.scale", (0.2, 1.0)), ("view0.jitter", (0.4, 0.4, 0.4, 0.1, 0.8)),
                              ("view0.gray_p", 0.1), ("view0.blur_p", 0.0), ("view3.blur_p", 0.0),
                              ("view0.solarize_p", 0.0), ("view0.flip_p", 0.5)]),
    # unified and dml: SimCLR's setup (our choice; neither paper gives an ImageNet recipe on views)
    *[row for name in ("unified", "dml") for row in [
        *_rows(name, OURS_SIMCLR, [*_S_LR, ("optim.lr", 0.3), ("optim.weight_decay", 1e-6), ("optim.eta", 1e-3),
                                   ("data.batch_size", 4096), ("method.projector", "2048-128")]),
        *_rows(name, SIMCLR_AUG, _SIMCLR_VIEWS)]],
    *_rows("unified", "Tian 2022, InfoNCE on squared distances: tau 0.2 = cosine temperature 0.1 (SimCLR's)",
           [("method.tau", 0.2), ("train.epochs", 100)]),
    *_rows("dml", "Schroff et al. 2015 (FaceNet), Sec. 3.1-3.2 (margin 0.2, semi-hard negatives)",
           [("method.margin", 0.2), ("method.mining", "semihard"), ("train.epochs", 100)]),
]


def _family_rows() -> list[tuple[str, str, Any, str]]:
    """Rows kept beside a method family's own tests: every ``tests/recipe_rows_*.py`` defines ``ROWS``."""
    import importlib.util
    from pathlib import Path

    rows = []
    for path in sorted(Path(__file__).parent.glob("recipe_rows_*.py")):
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        rows += module.ROWS
    return rows


ROWS += _family_rows()


def _views(recipe: Recipe) -> MultiView:
    kind = recipe.views.kind or METHODS[recipe.method.name].default_views
    return build_views(kind, recipe.data.image_size, 3, **recipe.views.params)


def resolve(recipe: Recipe, key: str) -> Any:
    """The value ``key`` names in a validated recipe (see the module docstring)."""
    if key == "views.kind":
        return recipe.views.kind or METHODS[recipe.method.name].default_views
    if key in ("views.n_global", "views.n_local"):
        return getattr(_views(recipe), key.split(".")[1])
    m = re.fullmatch(r"view(\d+)\.(\w+)", key)
    if m:
        return getattr(_views(recipe).specs[int(m.group(1))], m.group(2))
    node: Any = recipe
    for part in key.split("."):
        node = getattr(node, part)
    return node


def _same(got: Any, want: Any) -> bool:
    if isinstance(want, (tuple, list)):
        return isinstance(got, (tuple, list)) and len(got) == len(want) and all(_same(g, w) for g, w in zip(got, want))
    if isinstance(want, bool) or isinstance(want, str) or want is None:
        return got == want
    return isinstance(got, (int, float)) and not isinstance(got, bool) and got == pytest.approx(want, rel=1e-9)


@pytest.mark.parametrize("recipe,key,value,cite", ROWS, ids=[f"{r}:{k}" for r, k, _, _ in ROWS])
def test_paper_value(recipe: str, key: str, value: Any, cite: str) -> None:
    got = resolve(load_recipe(recipe), key)
    assert _same(got, value), f"{recipe} {key} = {got!r}, the paper has {value!r} ({cite})"


# keys every paper recipe must have a row for; method fields below, where the method has them
REQUIRED = ["optim.name", "optim.lr", "optim.weight_decay", "data.batch_size", "train.epochs", "views.kind"]
METHOD_KEYS = ["temperature", "tau", "student_temp", "teacher_temp", "tau_base", "momentum", "projector", "predictor",
               "head", "out_dim", "nmb_prototypes", "queue_size"]


@pytest.mark.parametrize("recipe", PAPER_RECIPES)
def test_every_paper_recipe_is_covered(recipe: str) -> None:
    """A recipe without rows for its key hyperparameters fails here: add the paper's values above."""
    r = load_recipe(recipe)
    keys = {k for name, k, _, _ in ROWS if name == recipe}
    need = list(REQUIRED) + [f"method.{f}" for f in METHOD_KEYS if f in type(r.method).model_fields]
    if r.optim.name == "lars":
        need.append("optim.eta")
    if r.optim.name in ("lars", "sgd"):
        need.append("optim.lr_scaling")
    need += ["view0.scale", "view0.jitter", "view0.blur_p"]
    missing = [k for k in need if k not in keys]
    assert not missing, f"{recipe}: no paper value checked for {missing}"


@pytest.mark.parametrize("recipe", PAPER_RECIPES + DIGITS_RECIPES)
def test_lars_recipes_set_eta_explicitly(recipe: str) -> None:
    """The LARS trust coefficient is part of every LARS recipe, not left to the library default."""
    raw = yaml.safe_load((RECIPE_DIR / f"{recipe}.yaml").read_text())
    if raw.get("optim", {}).get("name", "lars") == "lars":
        assert "eta" in raw.get("optim", {}), f"{recipe}.yaml uses LARS but does not set optim.eta"


def test_lars_default_is_the_papers() -> None:
    """1e-3, the trust coefficient of SimCLR, BYOL, SwAV, Barlow Twins, VICReg and MoCo v3 (rows above)."""
    from selfsup.config import OptimConfig

    assert OptimConfig().eta == 1e-3


def _flat(d: dict, pre: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{pre}{k}."))
        else:
            out[f"{pre}{k}"] = v
    return out


def _comments(text: str) -> str:
    return "\n".join(line.split("#", 1)[1] for line in text.splitlines() if "#" in line)


@pytest.mark.parametrize("recipe", DIGITS_RECIPES)
def test_digits_changes_are_explained(recipe: str) -> None:
    """Every method/optim/views value a digits variant changes from its paper recipe is named in one of
    its YAML comments (which say why), and the file has a comment at all."""
    paper = recipe.removesuffix("_digits")
    text = (RECIPE_DIR / f"{recipe}.yaml").read_text()
    comments = _comments(text)
    assert comments.strip(), f"{recipe}.yaml has no comment saying what it changes from {paper}.yaml and why"
    a, b = _flat(to_dict(load_recipe(paper))), _flat(to_dict(load_recipe(recipe)))
    changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k.split(".")[0] in ("method", "optim", "views"))
    if "views.kind" not in changed and resolve(load_recipe(paper), "views.kind") != resolve(load_recipe(recipe), "views.kind"):
        changed.append("views.kind")
    unexplained = [k for k in changed if not re.search(rf"\b{re.escape(k.split('.')[-1])}\b", comments)]
    assert not unexplained, f"{recipe}.yaml changes {unexplained} from {paper}.yaml without a comment naming them"


@pytest.mark.parametrize("name", ["mocov2", "msf"])
def test_mocov2_and_msf_decay_every_parameter(name: str) -> None:
    """The official MoCo v2 and MSF code hands every trainable parameter, biases and BN included, to SGD
    with weight decay 1e-4 (``decay_all: true``); ``decay_all: false`` is selfsup's ndim <= 1 exemption."""
    from selfsup.train.loop import build_method

    tiny = ["model.width=4", "data.image_size=16", "method.queue_size=64"]
    m = build_method(load_recipe(name, tiny), 1, 16)
    trainable = {id(p) for p in m.parameters() if p.requires_grad}
    groups = m.param_groups()
    assert len(groups) == 1 and not groups[0].get("no_decay")
    assert {id(p) for p in groups[0]["params"]} == trainable
    assert any(p.ndim <= 1 for p in groups[0]["params"])  # biases and BN are decayed too
    split = build_method(load_recipe(name, tiny + ["method.decay_all=false"]), 1, 16).param_groups()
    assert [g.get("no_decay", False) for g in split] == [False, True]
    assert all(p.ndim <= 1 for p in split[1]["params"]) and all(p.ndim > 1 for p in split[0]["params"])


@pytest.mark.parametrize("recipe", sorted(r for r, _ in list_recipes() if not r.endswith("_digits")))
def test_paper_recipes_stream_image_files_at_full_resolution(recipe: str) -> None:
    """Paper recipes sample RandomResizedCrop from the full-resolution image (SimCLR App. A, BYOL
    App. B, DINO Sec. 3.1 all crop the original ImageNet image): image files stream (data.cache=none)
    instead of being decoded once into image_size squares."""
    assert load_recipe(recipe).data.cache == "none"
