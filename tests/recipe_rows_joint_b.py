"""Paper values of the SMoG, All4One and VISReg recipes, collected by tests/test_recipes.py: ``(recipe, key,
value, citation)`` rows. None of the three papers could be opened here: each row cites the reference code the
value was read from (file and argument), or says "selfsup's choice" and why.
"""

from __future__ import annotations

from typing import Any

SMOG = ("lightly docs/source/getting_started/benchmarks/cifar10_benchmark.py SMoGModel (ResNet-18, heads 512-2048-128 "
        "and 128-2048-128, 300 groups, beta 0.99, tau 0.1, momentum 0.99, reset every 300 steps 'see Table 7b', "
        "bank 10000, SGD lr 0.01 momentum 0.9 wd 1e-6, cosine; README rows batch 512 x 800 epochs, kNN 0.800)")
SMOG_AUG = ("lightly cifar10_benchmark.py smog_transform = SMoGTransform(crop 32, counts (1, 1), cj_strength 0.5 of "
            "(0.8, 0.8, 0.4, 0.2) p 1.0, gray 0.2, blur 0, scale 0.2-1, solarize (0, 0.2))")
SMOG_SCHED = ("lightly docs/source/getting_started/benchmarks/cifar10_benchmark.py SMoGModel.configure_optimizers "
              "(torch.optim.lr_scheduler.CosineAnnealingLR(optim, max_epochs), eta_min default 0: a cosine to 0 over "
              "the epochs, no warm-up)")
A41 = ("solo-learn scripts/pretrain/cifar/all4one.yaml (ResNet-18, temperature 0.2, proj 2048-2048-256, pred 4096, "
       "queue 98304, tau 0.99 -> 1, LARS lr 1.0 eta 0.02 wd 1e-5, batch 256, 1000 epochs)")
A41_CODE = ("solo-learn solo/methods/all4one.py (k 5 neighbours, 3 transformer layers of 8 heads, centroid term at "
            "nnclr_loss_func's default temperature 0.1, feature term x10, weights 0.5/0.5/0.5, transformer lr 0.1)")
A41_SCHED = "solo-learn solo/methods/base.py (warmup_cosine: warmup_epochs 10 by default) and parse_cfg lr x B/256"
A41_AUG = ("solo-learn scripts/pretrain/cifar/augmentations/asymmetric.yaml (crop 0.08-1, jitter 0.4/0.4/0.2/0.1 "
           "p 0.8, gray 0.2, no blur, solarize 0/0.2, 32 px)")
VIS = ("lightly 1.6 VISRegLoss defaults (num_slices 4096, unit lambda_scale/shape/center, eps 1e-4; its docstring "
       "cites the paper's Tables 3 and 12 and Algorithm 1)")
VIS_SMALL = ("lambda 0.6: the official VISReg code's configs/imagenette.yaml lamb (github HaiyuWu/visreg 074fb51) and "
             "the paper's recommendation for small datasets per lightly's VISRegLoss docstring (0.9 for ImageNet-1K)")
VIS_DDP = "VISReg paper Section 3.2 per lightly's VISRegLoss docstring: per-device slices and batches (per_device)"
VIS_CODE = ("official VISReg Imagenette recipe (github HaiyuWu/visreg 074fb51): train_inet10_toy.py ViTEncoderSmall "
            "(vit_small_patch8_224, drop_path 0.1, MLP 2048-2048-128 with BatchNorm and ReLU), configs/imagenette.yaml "
            "(4 global views at 128 px, no local, bs 64, lr 1e-3, 800 epochs, 1 warm-up epoch, final_lr_div 1000, "
            "clip_grad_norm 1.0), AdamW wd 5e-2 unscaled; visreg/data/imagenette.py views (crop 0.08-1, jitter "
            "0.8/0.8/0.8/0.2 p 0.8, grey 0.2, blur 0.5, solarize 0.2)")
BYOL_JITTER = (0.4, 0.4, 0.2, 0.1, 0.8)


def _rows(recipe: str, cite: str, pairs: list[tuple[str, Any]]) -> list[tuple[str, str, Any, str]]:
    return [(recipe, k, v, cite) for k, v in pairs]


ROWS: list[tuple[str, str, Any, str]] = [
    *_rows("smog", SMOG, [("model.backbone", "resnet18"), ("method.projector", "2048-128"),
                          ("method.predictor", "2048-128"), ("method.n_groups", 300), ("method.beta", 0.99),
                          ("method.temperature", 0.1), ("method.momentum", 0.99), ("method.reset_every", 300),
                          ("method.bank_size", 10000), ("optim.name", "sgd"), ("optim.lr", 0.01),
                          ("optim.lr_scaling", "none"), ("optim.momentum", 0.9), ("optim.weight_decay", 1e-6),
                          ("data.batch_size", 512), ("train.epochs", 800), ("data.image_size", 32)]),
    *_rows("smog", SMOG_SCHED, [("optim.warmup_epochs", 0), ("optim.final_lr_ratio", 0.0)]),
    *_rows("smog", SMOG_AUG, [("views.kind", "byol"), ("view0.size", 32), ("view0.scale", (0.2, 1.0)),
                              ("view0.jitter", (0.4, 0.4, 0.2, 0.1, 1.0)), ("view0.gray_p", 0.2),
                              ("view0.blur_p", 0.0), ("view1.blur_p", 0.0), ("view0.solarize_p", 0.0),
                              ("view1.solarize_p", 0.2)]),
    *_rows("all4one", A41, [("model.backbone", "resnet18"), ("method.temperature", 0.2),
                            ("method.projector", "2048-2048-256"), ("method.predictor", "4096-256"),
                            ("method.queue_size", 98304), ("method.tau_base", 0.99), ("optim.name", "lars"),
                            ("optim.lr", 1.0), ("optim.eta", 0.02), ("optim.weight_decay", 1e-5),
                            ("data.batch_size", 256), ("train.epochs", 1000), ("data.image_size", 32)]),
    *_rows("all4one", A41_CODE, [("method.neighbors", 5), ("method.transformer_layers", 3),
                                 ("method.transformer_heads", 8), ("method.centroid_temperature", 0.1),
                                 ("method.feature_weight", 10.0), ("method.weights", (0.5, 0.5, 0.5)),
                                 ("method.transformer_lr_scale", 0.1)]),
    *_rows("all4one", A41_SCHED, [("optim.warmup_epochs", 10), ("optim.lr_scaling", "linear")]),
    *_rows("all4one", A41_AUG, [("views.kind", "byol"), ("view0.scale", (0.08, 1.0)), ("view0.jitter", BYOL_JITTER),
                                ("view0.gray_p", 0.2), ("view0.blur_p", 0.0), ("view1.blur_p", 0.0),
                                ("view0.solarize_p", 0.0), ("view1.solarize_p", 0.2), ("view0.size", 32)]),
    *_rows("visreg", VIS, [("method.num_slices", 4096), ("method.scale_weight", 1.0),
                           ("method.shape_weight", 1.0), ("method.center_weight", 1.0), ("method.eps", 1e-4)]),
    *_rows("visreg", VIS_SMALL, [("method.lambda_", 0.6)]),
    *_rows("visreg", VIS_DDP, [("method.per_device", True)]),
    *_rows("visreg", VIS_CODE, [("model.backbone", "timm:vit_small_patch8_224"), ("method.projector", "2048-2048-128"),
                                ("optim.name", "adamw"), ("optim.lr", 1e-3), ("optim.lr_scaling", "none"),
                                ("optim.weight_decay", 0.05), ("data.batch_size", 64), ("train.epochs", 800),
                                ("optim.warmup_epochs", 1), ("optim.final_lr_ratio", 0.001), ("optim.clip_grad", 1.0),
                                ("views.kind", "swav_multicrop"), ("views.n_global", 4), ("views.n_local", 0),
                                ("view0.size", 128), ("view0.scale", (0.08, 1.0)),
                                ("view0.jitter", (0.8, 0.8, 0.8, 0.2, 0.8)), ("view0.gray_p", 0.2),
                                ("view0.blur_p", 0.5), ("view0.solarize_p", 0.2)]),
]
