"""Paper values of the dense methods' recipes (DenseCL, VICRegL, DetCon-S, DetCon-B), collected by
tests/test_recipes.py: ``(recipe, key, value, citation)`` rows. Where the paper's own table could not be opened
here, the row cites the official code or lightly's defaults the value was read from; where neither gives a value,
the row says "selfsup's choice" and names the setup copied.
"""

from __future__ import annotations

from typing import Any

DENSECL = ("Wang et al. 2021 (DenseCL), Sec. 4.1 'Pre-training setup' (follows MoCo v2: ResNet-50, batch 256, SGD lr "
           "0.03 cosine, wd 1e-4, momentum 0.9, 200 epochs, tau 0.2, queue 65536, m 0.999) and Eq. 3 (lambda 0.5)")
DENSECL_HEAD = ("DenseCL official densecl/models/necks.py DenseCLNeck (global and dense heads 2048-128, Linear/1x1 "
                "conv - ReLU - Linear/1x1 conv, no BN; lightly DenseCLProjectionHead the same)")
MOCOV2_AUG = "Chen et al. 2020 (MoCo v2), 'aug+' (crop 0.2-1, jitter 0.4/0.4/0.4/0.1 p 0.8, gray 0.2, blur 0.5)"
VICREGL = ("Bardes et al. 2022 (VICRegL), Sec. 3-4 (alpha 0.75 for the ResNet-50 trade-off, lambda = mu = 25, "
           "nu = 1, gamma 20 for global and 4 for local views) and lightly 1.6 VICRegLLoss defaults")
VICREGL_CROPS = ("lightly 1.6 VICRegLTransform defaults (2 global crops 0.2-1, 6 local crops of 96 px 0.05-0.2, "
                 "flip 0.5), from the official VICRegL code")
VICREGL_HEADS = ("VICRegL official main_vicregl.py (--mlp 8192-8192-8192 global expander, --maps-mlp 512-512-512 "
                 "local expander for ResNet-50)")
VICREGL_OPTIM = ("VICRegL official README.md, 'Multi-node training', ResNet-50 300 epochs (--batch-size 2048 "
                 "--optimizer lars --base-lr 0.2 --weight-decay 1e-06); main_vicregl.py --warmup-epochs 10 and "
                 "--end-lr-ratio 0.001; utils.learning_schedule scales base-lr x B/256; optimizers.LARS eta 1e-3")
OWN_CROPS = ("the method cuts its own crops (their geometry is needed): the trainer's views are BYOL's photometric "
             "pair uncropped and unflipped (Grill et al. 2020, Table 6: jitter 0.4/0.4/0.2/0.1 p 0.8, gray 0.2, "
             "blur 1.0/0.1, solarize 0/0.2)")
DETCON = ("Hénaff et al. 2021 (DetCon), Sec. 3-4 (DetCon-S: SimCLR's objective over mask-pooled features, tau 0.1, "
          "16 masks per image, FH masks, batch 4096, LARS, 1000 epochs; lightly DetConSLoss temperature 0.1)")
DETCON_S_OPT = ("DetCon-S: SimCLR's ImageNet optimisation and crop (Chen et al. 2020, Sec. 2.3 and App. A: LARS lr 0.3 "
                "x B/256, wd 1e-6, 10 warm-up epochs, crop 0.08-1); lr 0.3 at batch 4096 also in lightly-train "
                "src/lightly_train/_methods/detcon/detcon.py DetConSSGDArgs (lr=0.3, 'usually optimized with LARS and "
                "linear scaling'; its weight_decay default 1e-4 differs, SimCLR's 1e-6 is kept); the same 0.08-1 area "
                "crop in the official DetCon code, google-deepmind/detcon utils/tf_image_ops.py get_random_crop_window")
DETCON_S_HEAD = ("lightly-train src/lightly_train/_methods/detcon/detcon.py DetConSArgs (hidden_dim 2048, output_dim "
                 "128, num_layers 2, batch_norm True: SimCLR's 2048-128 projection head; a peer's config, the DetCon "
                 "appendix was not opened here)")
DETCON_B = ("DetCon official code, google-deepmind/detcon detcon_b_config.py (the DetCon-B config: LARS "
            "base_learning_rate 0.2 with scale_by_batch, weight_decay 1.5e-6, eta 1e-3, momentum 0.9, "
            "warmup_epochs 10, batch 4096, mlp_hidden_size 4096 and projection_size 256 for projector and "
            "predictor, base_target_ema 0.996, nce_loss_temperature 0.1, ResNet50, output_image_size 224)")
DETCON_B_MASKS = ("DetCon official code, detcon/detcon_b.py (sample_masks n_random_vectors=16 per image, from the "
                  "Felzenszwalb masks fh_segmentations)")
DETCON_B_EPOCHS = ("DetCon official code, google-deepmind/detcon main_loop.py (flag pretrain_epochs default 1000, "
                   "passed to detcon_b_config.get_config; get_config's own default num_epochs=100 is overridden)")
DETCON_B_CROP = ("DetCon official code, google-deepmind/detcon utils/tf_image_ops.py (preprocess_image with "
                 "spatial_crop='random': get_random_crop_window, area uniform in [0.08, 1] of the image, log-uniform "
                 "aspect 3/4-4/3; random_flip_left_right=True in detcon_b_config.py's pretrain preprocessing: flip "
                 "with probability 0.5, the masks cropped and flipped with the image)")

_BYOL_JITTER = (0.4, 0.4, 0.2, 0.1, 0.8)
_UNCROPPED = [("views.kind", "byol"), ("view0.scale", (1.0, 1.0)), ("view0.ratio", (1.0, 1.0)),
              ("view0.flip_p", 0.0), ("view1.flip_p", 0.0), ("view0.jitter", _BYOL_JITTER), ("view0.gray_p", 0.2),
              ("view0.blur_p", 1.0), ("view1.blur_p", 0.1), ("view0.solarize_p", 0.0), ("view1.solarize_p", 0.2)]


def _rows(recipe: str, cite: str, pairs: list[tuple[str, Any]]) -> list[tuple[str, str, Any, str]]:
    return [(recipe, k, v, cite) for k, v in pairs]


ROWS: list[tuple[str, str, Any, str]] = [
    *_rows("densecl", DENSECL, [("method.temperature", 0.2), ("method.queue_size", 65536), ("method.momentum", 0.999),
                                ("method.loss_lambda", 0.5), ("model.backbone", "resnet50"), ("optim.name", "sgd"),
                                ("optim.lr", 0.03), ("optim.lr_scaling", "linear"), ("optim.weight_decay", 1e-4),
                                ("optim.momentum", 0.9), ("data.batch_size", 256), ("train.epochs", 200)]),
    *_rows("densecl", "MoCo v2 / DenseCL official code: shuffle-BN over 8 GPUs (emulated per process, method docstring)",
           [("method.bn_splits", 8)]),
    *_rows("densecl", DENSECL_HEAD, [("method.projector", "2048-128"), ("method.projector_norm", "none")]),
    *_rows("densecl", MOCOV2_AUG, [("views.kind", "mocov2"), ("view0.scale", (0.2, 1.0)),
                                   ("view0.jitter", (0.4, 0.4, 0.4, 0.1, 0.8)), ("view0.gray_p", 0.2),
                                   ("view0.blur_p", 0.5)]),
    *_rows("vicregl", VICREGL, [("method.alpha", 0.75), ("method.lambda_", 25.0), ("method.mu", 25.0),
                                ("method.nu", 1.0), ("method.num_matches", (20, 4)), ("method.matches_by", "view"),
                                ("method.cov_mean", False)]),
    *_rows("vicregl", VICREGL_CROPS, [("method.crop_scale", (0.2, 1.0)), ("method.n_local", 6),
                                      ("method.local_scale", (0.05, 0.2)), ("method.local_size", 96 / 224),
                                      ("method.flip_p", 0.5), ("data.image_size", 224)]),
    *_rows("vicregl", VICREGL_HEADS, [("method.projector", "8192-8192-8192"),
                                      ("method.local_projector", "512-512-512"), ("model.backbone", "resnet50")]),
    *_rows("vicregl", VICREGL_OPTIM, [("optim.name", "lars"), ("optim.lr", 0.2), ("optim.lr_scaling", "linear"),
                                      ("optim.weight_decay", 1e-6), ("optim.eta", 1e-3), ("optim.warmup_epochs", 10),
                                      ("optim.final_lr_ratio", 0.001), ("data.batch_size", 2048),
                                      ("train.epochs", 300)]),
    *_rows("vicregl", OWN_CROPS, _UNCROPPED),
    *_rows("detcon", DETCON, [("method.temperature", 0.1), ("method.n_masks", 16),
                              ("method.segmentation", "felzenszwalb"), ("data.batch_size", 4096),
                              ("optim.name", "lars"), ("train.epochs", 1000), ("model.backbone", "resnet50")]),
    *_rows("detcon", DETCON_S_OPT, [("optim.lr", 0.3), ("optim.lr_scaling", "linear"), ("optim.weight_decay", 1e-6),
                                    ("optim.eta", 1e-3), ("optim.warmup_epochs", 10),
                                    ("method.crop_scale", (0.08, 1.0))]),
    *_rows("detcon", DETCON_S_HEAD, [("method.projector", "2048-128")]),
    *_rows("detcon", OWN_CROPS, _UNCROPPED),
    *_rows("detcon_b", DETCON_B, [("optim.name", "lars"), ("optim.lr", 0.2), ("optim.lr_scaling", "linear"),
                                  ("optim.weight_decay", 1.5e-6), ("optim.eta", 1e-3), ("optim.momentum", 0.9),
                                  ("optim.warmup_epochs", 10), ("data.batch_size", 4096), ("data.image_size", 224),
                                  ("method.projector", "4096-256"), ("method.predictor", "4096-256"),
                                  ("method.tau_base", 0.996), ("method.temperature", 0.1),
                                  ("model.backbone", "resnet50")]),
    *_rows("detcon_b", DETCON_B_MASKS, [("method.n_masks", 16), ("method.segmentation", "felzenszwalb")]),
    *_rows("detcon_b", DETCON_B_EPOCHS, [("train.epochs", 1000)]),
    *_rows("detcon_b", DETCON_B_CROP, [("method.crop_scale", (0.08, 1.0)), ("method.flip_p", 0.5)]),
    *_rows("detcon_b", OWN_CROPS, _UNCROPPED),
]
