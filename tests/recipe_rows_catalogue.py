"""Paper values of the second catalogue's joint-embedding recipes (TiCo, MMCR, VIbCReg, FroSSL, LeJEPA, EMP-SSL,
DirectCLR, alignment-uniformity, MACL), collected by tests/test_recipes.py: ``(recipe, key, value, citation)`` rows.

Where a paper's own table could not be opened here, the row cites the official code or config the value was read
from (file and argument); where neither gives a value, the row says "selfsup's choice" and names the setup copied.
"""

from __future__ import annotations

from typing import Any

TICO_LOSS = ("lightly 1.6 TiCoLoss defaults beta 0.9, rho 8 (docstring cites the paper for both; rho was 20 until "
             "lightly deb3c316, PR #1398 'Fix wrong hyperparam', which also runs TiCoLoss(beta=0.9, rho=8.0) in "
             "benchmarks/imagenet/resnet50/tico.py, 49.7 linear top-1 at 100 epochs). Unverified against the paper: "
             "its text and any official code could not be opened here; the unofficial sayannag/TiCo-pytorch that "
             "lightly credits uses rho 20, though its TiCo/main.py --rho help text says the paper recommends 8.0)")
TICO_MOM = "lightly examples/pytorch/tico.py (momentum encoder on the second view, cosine 0.996 -> 1)"
TICO_BENCH = ("lightly benchmarks/imagenet/resnet50/tico.py (a peer's TiCo ImageNet config: ResNet-50, LARS lr 0.2 x "
              "B/256, momentum 0.9, weight_decay 1.5e-6, CosineWarmupScheduler with 10 warm-up epochs, BYOLTransform)")
TICO_HEAD = ("lightly models/modules/heads.py TiCoProjectionHead (hidden_dim 4096 with BN and ReLU, output_dim 256; "
             "its docstring quotes the paper's projector)")
TICO_SUMMARY = ("TiCo batch 4096 and 1000 epochs, BYOL's (Grill et al. 2020), from a third-party summary of the paper, "
                "not its text: R. Schaeffer, 'Cheatsheet - Self-Supervised Learning for Vision' "
                "(rylanschaeffer.github.io, 2022-08-29) lists TiCo 256-d, batch 4096, LARS lr 3.2, wd 1.5e-6, "
                "1000 epochs; the unofficial sayannag/TiCo-pytorch TiCo/main.py defaults to --batch_size 4096. "
                "lightly's benchmark runs 100 epochs at 2 x 128 (benchmarks/imagenet/resnet50/README.md); what was "
                "searched is in tico.yaml")
BYOL_ETA = "BYOL official byol/configs/byol.py (optimizer_config eta=1e-3)"
MMCR = "MMCR official pretrain_imagenet.py (batch 2048, n_aug 8, lr 0.8, tau 0.99, lmbda 0, 100 epochs, MMCR_Momentum)"
MMCR_TRAIN = ("MMCR official mmcr/imagenet/train.py and misc.py (projector 8192-8192-512, lr x batch/256, LARS wd 1e-6 "
              "eta 1e-3, 10 warm-up epochs, cosine alpha_f 0.001, ResNet-50)")
MMCR_AUG = ("MMCR official mmcr/imagenet/data.py Barlow_Transform (crop 0.08-1, jitter 0.4/0.4/0.2/0.1 p 0.8, "
            "gray 0.2, blur 1.0/0.1, solarize 0/0.2, the two alternating over the n_aug views)")
VIBCREG = ("solo-learn scripts/pretrain/imagenet-100/vibcreg.yaml (ResNet-18, 2048-2048-2048 + IterNorm, 25/25/200, "
           "LARS lr 0.3 eta 0.02, wd 1e-4, batch 64 x 2 GPUs, 400 epochs, crop 0.2-1, blur 0.5, solarize 0.1)")
SOLO_LR = "solo-learn main_pretrain.py / parse_cfg: lr x batch_size x devices / 256 (linear scaling)"
FROSSL = ("solo-learn PR #390 scripts/pretrain/imagenet-100/frossl.yaml (ResNet-18, 2048-1024, invariance 1, LARS lr "
          "0.3 eta 0.02, wd 1e-4, batch 256 x 2 GPUs, 400 epochs, precision 32)")
FROSSL_AUG = ("solo-learn scripts/pretrain/imagenet-100/augmentations/symmetric.yaml (SimCLR's: crop 0.08-1, jitter "
              "0.8/0.8/0.8/0.2 p 0.8, gray 0.2, blur 0.5, no solarize, 2 crops)")
LEJEPA = ("LeJEPA official MINIMAL.md (ViT-S/8 at 128 px, drop_path 0.1, MLP 2048-2048-16 with BN, V 4, lamb 0.02, "
          "AdamW lr 2e-3 wd 5e-2, bs 256, 800 epochs, 1-epoch warm-up, eta_min 1e-3, 256 slices, 17 knots on [0, 3])")
LEJEPA_AUG = ("LeJEPA official MINIMAL.md HFDataset (crop 0.08-1, jitter 0.8/0.8/0.8/0.2 p 0.8, gray 0.2, blur p 0.5, "
              "solarize 0.2, flip)")
EMP = ("EMP-SSL official main.py (CIFAR-10: 100 patches, patch_sim 200, eps 0.2, bs 100, lr 0.3 unscaled, 30 epochs, "
       "SGD momentum 0.9 wd 1e-4 in LARSWrapper eta 0.005, cosine to 0, no warm-up)")
EMP_ARCH = "EMP-SSL official model/model.py (resnet18-cifar stem, 4096-4096-1024)"
EMP_AUG = ("EMP-SSL official dataset/aug.py ContrastiveLearningViewGenerator (32 px crop of scale 0.25, ratio 1, flip, "
           "jitter 0.4/0.4/0.4/0.2 p 0.8, gray 0.2, blur 0.1 sigma 0.1-2, solarize 0.1)")
EMP_EPS = "Tong et al. 2023 (EMP-SSL), the coding rate with eps^2 as written in the paper (method docstring)"
DCLR = ("DirectCLR official directclr/main.py (--mode directclr --dim 360, tau 0.1, batch 4096, lr 4.8, wd 1e-6, "
        "100 epochs, ResNet-50) and utils.py (LARS eta 1e-3, 10 warm-up epochs, cosine to 0.001 x, lr not scaled)")
DCLR_AUG = "DirectCLR official directclr/utils.py Transform (BYOL's pair: blur 1.0/0.1, solarize 0/0.2)"
AU = ("Wang & Isola official examples/stl10/main.py (align_w 1, unif_w 1, alpha 2, t 2, batch 768, 200 epochs, SGD lr "
      "0.12 x B/256, momentum 0.9, wd 1e-4, feat_dim 128, no warm-up)")
AU_AUG = ("Wang & Isola official examples/stl10/main.py get_data_loader (crop 64 px 0.08-1, flip, "
          "ColorJitter(0.4, 0.4, 0.4, 0.4) always, gray 0.2, no blur)")
MACL_LOSS = "lightly 1.6 MACLLoss defaults (temperature 0.1, alpha 0.5, A_0 0; benchmarks/lightly_parity.py)"
MACL_RUN = ("MACL official release: chenhaoxing/MACL README.md (pre-trained SimCLR-2048-e200; its codes and configs "
            "follow MoCo's and SimCLR's, on MMSelfSup) and its config huggingface.co/HaoxingChen/MACL_ICML23 simclr_2048_e200/"
            "simclr_macl_resnet50_pretrain.py (ResNet-50, NonLinearNeck hid_channels 2048 out_channels 128 "
            "num_layers 2, MaclaHead temperature 0.1, samples_per_gpu 256: batch 2048, 200 epochs)")
MACL_OPT = ("SimCLR's optimiser, which the MACL README says its configs follow (Chen et al. 2020: LARS 0.3 x B/256, "
            "wd 1e-6, 10 warm-up epochs), as in MMSelfSup configs/selfsup/simclr/simclr_resnet50_8xb32-coslr-200e_in1k.py "
            "(LARS lr 0.3 at batch 256, 4.8 at 4096 in the 16xb256 config; weight_decay 1e-6; LinearLR warm-up over "
            "epochs 0-10, then cosine to 0); the optimiser lines of MACL's own config were not readable here")
SIMCLR_AUG = "Chen et al. 2020 (SimCLR), App. A (crop 0.08-1, colour strength 1, gray 0.2, blur 0.5)"
SIMCLR_ETA = "SimCLR official lars_optimizer.py (eeta=0.001)"

_BYOL_JITTER = (0.4, 0.4, 0.2, 0.1, 0.8)
_SIMCLR_JITTER = (0.8, 0.8, 0.8, 0.2, 0.8)
_BYOL_VIEWS = [("views.kind", "byol"), ("view0.scale", (0.08, 1.0)), ("view0.jitter", _BYOL_JITTER),
               ("view0.gray_p", 0.2), ("view0.blur_p", 1.0), ("view1.blur_p", 0.1), ("view0.solarize_p", 0.0),
               ("view1.solarize_p", 0.2)]
_SIMCLR_VIEWS = [("views.kind", "simclr"), ("view0.scale", (0.08, 1.0)), ("view0.jitter", _SIMCLR_JITTER),
                 ("view0.gray_p", 0.2), ("view0.blur_p", 0.5), ("view1.blur_p", 0.5), ("view0.solarize_p", 0.0)]
_LARS = [("optim.name", "lars"), ("optim.lr_scaling", "linear")]


def _rows(recipe: str, cite: str, pairs: list[tuple[str, Any]]) -> list[tuple[str, str, Any, str]]:
    return [(recipe, k, v, cite) for k, v in pairs]


ROWS: list[tuple[str, str, Any, str]] = [
    # TiCo
    *_rows("tico", TICO_LOSS, [("method.beta", 0.9), ("method.rho", 8.0)]),
    *_rows("tico", TICO_MOM, [("method.momentum_encoder", True), ("method.tau_base", 0.996)]),
    *_rows("tico", TICO_BENCH, [*_LARS, ("optim.lr", 0.2), ("optim.weight_decay", 1.5e-6), ("optim.warmup_epochs", 10),
                                ("model.backbone", "resnet50"), *_BYOL_VIEWS]),
    *_rows("tico", TICO_HEAD, [("method.projector", "4096-256")]),
    *_rows("tico", TICO_SUMMARY, [("data.batch_size", 4096), ("train.epochs", 1000)]),
    *_rows("tico", BYOL_ETA, [("optim.eta", 1e-3)]),
    # MMCR
    *_rows("mmcr", MMCR, [("data.batch_size", 2048), ("views.n_global", 8), ("views.n_local", 0), ("optim.lr", 0.8),
                          ("method.tau", 0.99), ("method.lambda_", 0.0), ("method.momentum_encoder", True),
                          ("train.epochs", 100)]),
    *_rows("mmcr", MMCR_TRAIN, [*_LARS, ("method.projector", "8192-8192-512"), ("optim.weight_decay", 1e-6),
                                ("optim.eta", 1e-3), ("optim.warmup_epochs", 10), ("optim.final_lr_ratio", 0.001),
                                ("model.backbone", "resnet50")]),
    *_rows("mmcr", MMCR_AUG, [("views.kind", "multicrop"), ("view0.scale", (0.08, 1.0)), ("view0.jitter", _BYOL_JITTER),
                              ("view0.gray_p", 0.2), ("view0.blur_p", 1.0), ("view0.solarize_p", 0.0),
                              ("view1.blur_p", 0.1), ("view1.solarize_p", 0.2), ("view7.blur_p", 0.1),
                              ("view7.scale", (0.08, 1.0))]),
    # VIbCReg
    *_rows("vibcreg", VIBCREG, [("optim.name", "lars"), ("optim.lr", 0.3), ("optim.eta", 0.02),
                                ("optim.weight_decay", 1e-4), ("data.batch_size", 128), ("train.epochs", 400),
                                ("method.projector", "2048-2048-2048"), ("method.sim_weight", 25.0),
                                ("method.var_weight", 25.0), ("method.cov_weight", 200.0), ("method.iternorm", True),
                                ("model.backbone", "resnet18"), ("views.kind", "byol"), ("view0.scale", (0.2, 1.0)),
                                ("view0.jitter", _BYOL_JITTER), ("view0.gray_p", 0.2), ("view0.blur_p", 0.5),
                                ("view1.blur_p", 0.5), ("view0.solarize_p", 0.1), ("view1.solarize_p", 0.1)]),
    *_rows("vibcreg", SOLO_LR, [("optim.lr_scaling", "linear")]),
    # FroSSL
    *_rows("frossl", FROSSL, [("optim.name", "lars"), ("optim.lr", 0.3), ("optim.eta", 0.02),
                              ("optim.weight_decay", 1e-4), ("data.batch_size", 512), ("train.epochs", 400),
                              ("method.projector", "2048-1024"), ("method.invariance_weight", 1.0),
                              ("model.backbone", "resnet18"), ("train.precision", "fp32")]),
    *_rows("frossl", SOLO_LR, [("optim.lr_scaling", "linear")]),
    *_rows("frossl", FROSSL_AUG, [*_SIMCLR_VIEWS, ("views.n_global", 2)]),
    # LeJEPA
    *_rows("lejepa", LEJEPA, [("optim.name", "adamw"), ("optim.lr", 2e-3), ("optim.lr_scaling", "none"),
                              ("optim.weight_decay", 0.05), ("optim.warmup_epochs", 1), ("optim.final_lr_ratio", 0.5),
                              ("data.batch_size", 256), ("train.epochs", 800), ("data.image_size", 128),
                              ("model.backbone", "timm:vit_small_patch8_224"), ("model.vit.drop_path_rate", 0.1),
                              ("method.projector", "2048-2048-16"), ("method.lambda_", 0.02),
                              ("method.num_slices", 256), ("method.knots", 17), ("method.t_max", 3.0),
                              ("views.n_global", 4), ("views.n_local", 0)]),
    *_rows("lejepa", LEJEPA_AUG, [("views.kind", "swav_multicrop"), ("view0.scale", (0.08, 1.0)),
                                  ("view0.jitter", _SIMCLR_JITTER), ("view0.gray_p", 0.2), ("view0.blur_p", 0.5),
                                  ("view0.solarize_p", 0.2), ("view3.solarize_p", 0.2), ("view0.flip_p", 0.5),
                                  ("view0.size", 128)]),
    # EMP-SSL
    *_rows("emp_ssl", EMP, [("optim.name", "lars"), ("optim.lr", 0.3), ("optim.lr_scaling", "none"),
                            ("optim.momentum", 0.9), ("optim.weight_decay", 1e-4), ("optim.eta", 0.005),
                            ("optim.warmup_epochs", 0), ("optim.final_lr_ratio", 0.0), ("data.batch_size", 100),
                            ("train.epochs", 30), ("method.lambda_", 200.0), ("method.eps", 0.2),
                            ("views.n_global", 100), ("data.image_size", 32)]),
    *_rows("emp_ssl", EMP_ARCH, [("method.projector", "4096-4096-1024"), ("model.backbone", "resnet18")]),
    *_rows("emp_ssl", EMP_EPS, [("method.eps_convention", "paper")]),
    *_rows("emp_ssl", EMP_AUG, [("views.kind", "mocov2"), ("view0.size", 32), ("view0.scale", (0.25, 0.25)),
                                ("view0.ratio", (1.0, 1.0)), ("view0.flip_p", 0.5),
                                ("view0.jitter", (0.4, 0.4, 0.4, 0.2, 0.8)), ("view0.gray_p", 0.2),
                                ("view0.blur_p", 0.1), ("view0.blur_sigma", (0.1, 2.0)), ("view0.solarize_p", 0.1),
                                ("view99.solarize_p", 0.1)]),
    # DirectCLR
    *_rows("directclr", DCLR, [("optim.name", "lars"), ("optim.lr", 4.8), ("optim.lr_scaling", "none"),
                               ("optim.weight_decay", 1e-6), ("optim.eta", 1e-3), ("optim.warmup_epochs", 10),
                               ("optim.final_lr_ratio", 0.001), ("data.batch_size", 4096), ("train.epochs", 100),
                               ("method.dim0", 360), ("method.temperature", 0.1), ("method.negatives", "cross_view"),
                               ("model.backbone", "resnet50")]),
    *_rows("directclr", DCLR_AUG, _BYOL_VIEWS),
    # alignment and uniformity (STL-10)
    *_rows("align_uniform", AU, [("optim.name", "sgd"), ("optim.lr", 0.12), ("optim.lr_scaling", "linear"),
                                 ("optim.momentum", 0.9), ("optim.weight_decay", 1e-4), ("optim.warmup_epochs", 0),
                                 ("data.batch_size", 768), ("train.epochs", 200), ("method.projector", "128"),
                                 ("method.lambda_", 1.0), ("method.alpha", 2.0), ("method.t", 2.0)]),
    *_rows("align_uniform", AU_AUG, [("views.kind", "simclr"), ("view0.size", 64), ("view0.scale", (0.08, 1.0)),
                                     ("view0.flip_p", 0.5), ("view0.jitter", (0.4, 0.4, 0.4, 0.4, 1.0)),
                                     ("view0.gray_p", 0.2), ("view0.blur_p", 0.0), ("view1.blur_p", 0.0),
                                     ("view0.solarize_p", 0.0)]),
    # MACL
    *_rows("macl", MACL_LOSS, [("method.temperature", 0.1), ("method.alpha", 0.5), ("method.a0", 0.0)]),
    *_rows("macl", MACL_RUN, [("data.batch_size", 2048), ("train.epochs", 200), ("method.projector", "2048-128"),
                              ("model.backbone", "resnet50")]),
    *_rows("macl", MACL_OPT, [*_LARS, ("optim.lr", 0.3), ("optim.weight_decay", 1e-6), ("optim.warmup_epochs", 10)]),
    *_rows("macl", SIMCLR_ETA, [("optim.eta", 1e-3)]),
    *_rows("macl", SIMCLR_AUG, _SIMCLR_VIEWS),
]
