"""Paper values of the spatial pretext-task recipes (RotNet, Jigsaw, relative patch location, PIRL), collected by
tests/test_recipes.py: ``(recipe, key, value, citation)`` rows. Where the paper gives no value (or selfsup cannot
express it: step lr schedules, AlexNet/NIN backbones), the row says "selfsup's choice" and what was copied."""

from __future__ import annotations

from typing import Any

ROT = ("gidariss/FeatureLearningRotNet config/CIFAR10_RotNet_NIN4blocks.py (batch 128, 200 epochs, SGD lr 0.1, "
       "momentum 0.9, wd 5e-4, nesterov, LUT_lr steps at 60/120/160)")
ROT_AUG = ("FeatureLearningRotNet dataloader.py (CIFAR-10: RandomCrop(32, padding=4), flip, no colour); selfsup's "
           "nearest view: a square crop of area 0.64-1 (32 of 40 px) and a flip")
ROT_STEPS = ("gidariss/FeatureLearningRotNet config/CIFAR10_RotNet_NIN4blocks.py LUT_lr [(60, 0.1), (120, 0.02), "
             "(160, 0.004), (200, 0.0008)]: x0.2 at epochs 60, 120 and 160, no warm-up (its nesterov is not "
             "expressible: selfsup's SGD is plain momentum)")
ROT_OURS = ("RotNet: selfsup's choice (resnet18 for the NIN, a linear rotation classifier on the pooled features)")
JIG = ("Noroozi & Favaro 2016, Sec. 3.2-4 and bbrattoli/JigsawPuzzlePytorch (1000 permutations from "
       "select_permutations.py, 225 px -> 75 px cells -> 64 px tiles in JigsawImageLoader.py, fc6 1024 per tile and "
       "fc7 4096 in JigsawNetwork.py)")
JIG_SOLVER = ("Noroozi's official Caffe code, MehdiNoroozi/JigsawPuzzleSolver solver_cfn_jps.prototxt (base_lr 0.01, "
              "lr_policy step, gamma 0.1, stepsize 100000, max_iter 350000, momentum 0.9, weight_decay 0.0005) and "
              "train_val_cfn_jps.prototxt (data batch_size 256): 350,000 x 256 / 1,281,167 = 69.9 epochs, x0.1 every "
              "100,000 x 256 / 1,281,167 = 19.98 epochs, no warm-up; bbrattoli's JigsawTrain.py has the same 70 "
              "epochs and x0.1 every 20")
JIG_OURS = ("Jigsaw: selfsup's choice (resnet50 for the AlexNet, a 0.6-1 crop for Resize(256) + RandomCrop(225), no "
            "colour jitter: the per-tile normalisation cancels it)")
RPL = ("Doersch, Gupta & Efros 2015, Sec. 3-4 and cdoersch/deepcontext (96 px patches, 48 px gap, jitter up to "
       "7 px, colour dropping, fc6 4096 per patch, fc7 4096, SGD momentum 0.9, wd 5e-4, batch 128; the released "
       "train.py's solver differs: base_lr 1e-5 on a summed loss, momentum 0, weight_decay 0, BN, up to 512 "
       "patches a batch)")
RPL_RUN = ("cdoersch/deepcontext solver_mko.prototxt (lr_policy fixed: a constant lr) and README.md, Running step 1 "
           "(the paper's model trained for about 1M iterations): 1,000,000 x 128 pairs / 1,281,167 images = 99.9 "
           "epochs, one pair per image per epoch here")
RPL_OURS = ("relpatch: selfsup's choice (resnet50 for the AlexNet-style net, 400 px crops for images resized to "
            "150k-450k pixels, lr 0.01: the code's 1e-5 multiplies an unnormalised sum over a varying number of pairs)")

PIRL = ("Misra & van der Maaten 2020, Sec. 4 'Implementation details' (ResNet-50, 128-d, tau 0.07, lambda 0.5, "
        "32,000 negatives, memory momentum 0.5, SGD lr 0.12 at batch 1024, momentum 0.9, wd 1e-4, 800 epochs)")
PIRL_TILES = ("VISSL ImgPatchesFromTensor for PIRL (255 px crops, 3 x 3 cells of 85 px, 64 px tiles: crop_frac "
              "64/85); the image branch augmented by crops, flips, colour jitter and greyscale (paper Sec. 4)")
PIRL_VISSL = ("VISSL configs/config/pretrain/pirl/pirl_jigsaw_4node_resnet.yaml, Misra's PIRL config (OPTIMIZER "
              "param_schedulers lr: cosine from start_value 0.12 to end_value 0.00012 = 0.001 x, no warm-up; image "
              "TRANSFORMS: crop_scale_image 0.08-1, ColorJitter(0.4, 0.4, 0.4, 0.2) on every image, RandomGrayscale "
              "0.2, RandomHorizontalFlip, no blur; its ImgPilRandomPhotometric has no selfsup counterpart)")
PIRL_OURS = ("PIRL: selfsup's choice (NPID's Monte-Carlo NCE normaliser per term; VISSL's vissl/losses/nce_loss.py "
             "NCEAverage, with norm_constant -1, estimates one Z from the first batch of the first term, the "
             "tiles', and uses it for both)")

_NO_COLOUR = [("view0.jitter", (0.0, 0.0, 0.0, 0.0, 0.0)), ("view0.blur_p", 0.0), ("view0.gray_p", 0.0),
              ("view0.flip_p", 0.5)]


def _rows(recipe: str, cite: str, pairs: list[tuple[str, Any]]) -> list[tuple[str, str, Any, str]]:
    return [(recipe, k, v, cite) for k, v in pairs]


ROWS: list[tuple[str, str, Any, str]] = [
    # RotNet (CIFAR-10)
    *_rows("rotnet", ROT, [("optim.name", "sgd"), ("optim.lr", 0.1), ("optim.lr_scaling", "none"),
                           ("optim.momentum", 0.9), ("optim.weight_decay", 5e-4), ("data.batch_size", 128),
                           ("train.epochs", 200), ("data.image_size", 32)]),
    *_rows("rotnet", ROT_AUG, [("views.kind", "crop"), ("view0.scale", (0.64, 1.0)), ("view0.ratio", (1.0, 1.0)),
                               *_NO_COLOUR]),
    *_rows("rotnet", ROT_STEPS, [("optim.warmup_epochs", 0), ("optim.lr_schedule", "step"),
                                 ("optim.lr_milestones", [60, 120, 160]), ("optim.lr_gamma", 0.2)]),
    *_rows("rotnet", ROT_OURS, [("model.backbone", "resnet18"), ("method.head", "")]),
    # Jigsaw (ImageNet)
    *_rows("jigsaw", JIG, [("method.grid", 3), ("method.n_permutations", 1000), ("method.crop_frac", 64 / 75),
                           ("method.tile_normalize", True), ("method.tile_dim", 1024), ("method.head", "4096"),
                           ("data.image_size", 225)]),
    *_rows("jigsaw", JIG_SOLVER, [("optim.name", "sgd"), ("optim.lr", 0.01), ("optim.lr_scaling", "none"),
                                  ("optim.momentum", 0.9), ("optim.weight_decay", 5e-4), ("data.batch_size", 256),
                                  ("train.epochs", 70), ("optim.warmup_epochs", 0), ("optim.lr_schedule", "step"),
                                  ("optim.lr_milestones", [20, 40, 60]), ("optim.lr_gamma", 0.1)]),
    *_rows("jigsaw", JIG_OURS, [("model.backbone", "resnet50"), ("views.kind", "crop"), ("view0.scale", (0.6, 1.0)), ("method.tile_size", None),
                                ("method.permutation_seed", 0), *_NO_COLOUR]),
    # relative patch location (ImageNet)
    *_rows("relpatch", RPL, [("method.patch", 96), ("method.gap", 48), ("method.jitter", 7),
                             ("method.colour", "drop"), ("method.tile_dim", 4096), ("method.head", "4096"),
                             ("optim.name", "sgd"), ("optim.momentum", 0.9), ("optim.weight_decay", 5e-4),
                             ("data.batch_size", 128)]),
    *_rows("relpatch", RPL_RUN, [("optim.lr_schedule", "cosine"), ("optim.final_lr_ratio", 1.0),
                                 ("optim.warmup_epochs", 0), ("train.epochs", 100)]),
    *_rows("relpatch", RPL_OURS, [("model.backbone", "resnet50"), ("data.image_size", 400), ("optim.lr", 0.01),
                                  ("optim.lr_scaling", "none"), ("views.kind", "crop"), ("view0.scale", (0.5, 1.0)), *_NO_COLOUR]),
    # PIRL (ImageNet)
    *_rows("pirl", PIRL, [("method.dim", 128), ("method.temperature", 0.07), ("method.lam", 0.5),
                          ("method.negatives", 32000), ("method.momentum", 0.5), ("method.memory_size", 1281167),
                          ("model.backbone", "resnet50"), ("optim.name", "sgd"), ("optim.lr", 0.12),
                          ("optim.lr_scaling", "none"), ("data.batch_size", 1024), ("optim.momentum", 0.9),
                          ("optim.weight_decay", 1e-4), ("train.epochs", 800), ("method.objective", "nce")]),
    *_rows("pirl", PIRL_TILES, [("method.grid", 3), ("method.crop_frac", 64 / 85), ("data.image_size", 255),
                                ("method.tile_normalize", False)]),
    *_rows("pirl", PIRL_OURS, [("method.normalizer", "estimate")]),
    *_rows("pirl", PIRL_VISSL, [("optim.warmup_epochs", 0), ("optim.lr_schedule", "cosine"),
                                ("optim.final_lr_ratio", 0.001), ("views.kind", "crop"), ("view0.scale", (0.08, 1.0)),
                                ("view0.jitter", (0.4, 0.4, 0.4, 0.2, 1.0)), ("view0.gray_p", 0.2),
                                ("view0.blur_p", 0.0), ("view0.flip_p", 0.5)]),
]
