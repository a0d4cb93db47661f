"""Paper values of the instance-level origins recipes (NPID, Exemplar CNN, learning to count), collected by
tests/test_recipes.py: ``(recipe, key, value, citation)`` rows. Where a value is selfsup's choice (the paper's
solver or network was not reproduced), the row says so and names what was copied."""

from __future__ import annotations

from typing import Any

NPID = ("NPID official lemniscate.pytorch main.py (ImageNet: --low-dim 128, --nce-k 4096, --nce-t 0.07, --nce-m 0.5, "
        "lr 0.03, momentum 0.9, weight decay 5e-4, batch 256, 200 epochs, ResNet-50) and lib/NCEAverage.py")
NPID_PAPER = "Wu et al. 2018 (NPID), Sec. 3.2 and 4 (tau 0.07, K 4096, memory momentum 0.5, 128-d features)"
NPID_AUG = ("NPID official main.py train transforms (RandomResizedCrop 224 scale 0.2-1, RandomGrayscale 0.2, "
            "ColorJitter(0.4, 0.4, 0.4, 0.4), RandomHorizontalFlip)")
NPID_SCHED = ("NPID official lemniscate.pytorch main.py adjust_learning_rate: lr 0.03, x0.1 from epoch 120 and x0.01 "
              "from epoch 160 of 200, no warm-up")
EXEMPLAR = ("Dosovitskiy et al. 2014 (Exemplar CNN), Sec. 3-4: N = 16,000 surrogate classes of 32 x 32 seed patches "
            "from STL-10's 100,000 unlabelled images")
EXEMPLAR_CODE = ("Dosovitskiy's released NIPS 2014 Exemplar CNN code (readme.txt 'Code used in the paper'; "
                 "mirror github ethanhe42/Exemplar-CNN): code/training/demo_train_net.sh runs "
                 "train_nn_pretrain_distr.sh with lr 0.01, weight decay 0.004, momentum 0.9, batch 128, then "
                 "1.2 M + 120k + 120k + 60k + 60k iterations at x1, x0.4, x0.1, x0.04, x0.01 "
                 "(result/solver0-4.prototxt, Caffe SGD, lr_policy fixed, no warm-up); fc6 512 in "
                 "data/nets_config/64c5-128c5-256c5-512f/result/train.prototxt")
EXEMPLAR_SCHED = ("the code's schedule (EXEMPLAR_CODE) at its fractions of training, 1.2/1.32/1.44/1.5 M of 1.56 M "
                  "iterations, with selfsup's one gamma sqrt(0.1): x0.1 and x0.01 after the 2nd and 4th steps as the "
                  "code, x0.316 and x0.0316 for its x0.4 and x0.04")
EXEMPLAR_OURS = ("selfsup's choice (the 64c5-128c5-256c5-512f Caffe network is not built in; the code's 1.56 M x 128 "
                 "samples do not map to selfsup's epochs, see exemplar.yaml): CIFAR-style ResNet-18, 100 epochs, "
                 "SimCLR's views for the online transforms")
SIMCLR_AUG = ("Chen et al. 2020 (SimCLR), App. A (crop 0.08-1, colour strength 1, gray 0.2) and App. B.9 (no blur on "
              "32 px CIFAR images; selfsup's simclr views drop it at 32 px)")
COUNT = ("Noroozi et al. 2017 (learning to count), Sec. 4: AlexNet counting vector fc6-fc8 4096-4096-1000 with ReLU, "
         "M = 10, 228 px crops, tiles and downsampled image of 114 px")
COUNT_OURS = ("selfsup's choice (the paper's solver was not found; what was searched is in counting.yaml): ResNet-50, "
              "SGD lr 0.1 momentum 0.9 wd 1e-4, batch 256, 100 epochs, crops of scale 0.6-1 without colour")


def _rows(recipe: str, cite: str, pairs: list[tuple[str, Any]]) -> list[tuple[str, str, Any, str]]:
    return [(recipe, k, v, cite) for k, v in pairs]


ROWS: list[tuple[str, str, Any, str]] = [
    # NPID
    *_rows("npid", NPID_PAPER, [("method.temperature", 0.07), ("method.negatives", 4096), ("method.momentum", 0.5),
                                ("method.projector", "128"), ("method.objective", "nce")]),
    *_rows("npid", NPID, [("optim.name", "sgd"), ("optim.lr", 0.03), ("optim.lr_scaling", "linear"),
                          ("data.batch_size", 256), ("optim.momentum", 0.9), ("optim.weight_decay", 5e-4),
                          ("train.epochs", 200), ("model.backbone", "resnet50"), ("method.memory_size", 1_281_167)]),
    *_rows("npid", NPID_SCHED, [("optim.warmup_epochs", 0), ("optim.lr_schedule", "step"),
                                ("optim.lr_milestones", [120, 160]), ("optim.lr_gamma", 0.1)]),
    *_rows("npid", NPID_AUG, [("views.kind", "crop"), ("view0.scale", (0.2, 1.0)), ("view0.jitter", (0.4, 0.4, 0.4, 0.4, 1.0)),
                              ("view0.gray_p", 0.2), ("view0.blur_p", 0.0), ("view0.flip_p", 0.5), ("data.image_size", 224)]),
    # Exemplar CNN
    *_rows("exemplar", EXEMPLAR, [("method.n_classes", 16_000), ("method.num_images", 100_000), ("data.image_size", 32)]),
    *_rows("exemplar", EXEMPLAR_CODE, [("optim.name", "sgd"), ("optim.lr", 0.02), ("optim.lr_scaling", "linear"),
                                       ("optim.momentum", 0.9), ("optim.weight_decay", 4e-3), ("data.batch_size", 128),
                                       ("optim.warmup_epochs", 0), ("method.hidden", "512")]),
    *_rows("exemplar", EXEMPLAR_SCHED, [("optim.lr_schedule", "step"), ("optim.lr_gamma", 0.316),
                                        ("optim.lr_milestones", [76.9, 84.6, 92.3, 96.2])]),
    *_rows("exemplar", EXEMPLAR_OURS, [("train.epochs", 100), ("model.backbone", "resnet18")]),
    *_rows("exemplar", SIMCLR_AUG, [("views.kind", "simclr"), ("view0.scale", (0.08, 1.0)),
                                    ("view0.jitter", (0.8, 0.8, 0.8, 0.2, 0.8)), ("view0.blur_p", 0.0)]),
    # learning to count
    *_rows("counting", COUNT, [("method.head", "4096-4096-1000"), ("method.relu", True), ("method.margin", 10.0),
                               ("data.image_size", 228)]),
    *_rows("counting", COUNT_OURS, [("optim.name", "sgd"), ("optim.lr", 0.1), ("optim.lr_scaling", "linear"),
                                    ("optim.momentum", 0.9), ("optim.weight_decay", 1e-4), ("data.batch_size", 256),
                                    ("train.epochs", 100), ("model.backbone", "resnet50"), ("views.kind", "crop"),
                                    ("view0.scale", (0.6, 1.0)), ("view0.jitter", (0.0, 0.0, 0.0, 0.0, 0.0)),
                                    ("view0.blur_p", 0.0)]),
]
