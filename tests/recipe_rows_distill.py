"""lightly-train's distillation (v1) values in the distill recipe (collected by tests/test_recipes.py)."""

LT = "lightly-train _methods/distillation/distillation.py DistillationArgs (temperature 0.07, sqrt lr scaling, reference batch 1536)"
LT_QUEUE = "lightly-train distillation.py DistillationArgs.resolve_auto (queue 8192 for >= 20,000 images)"
LT_LARS = "lightly-train distillation.py DistillationLARSArgs (lr 1.8 = 0.3 x 1536 / 256, momentum 0.9, wd 1e-6, trust 0.001)"
LT_CLIP = "lightly-train distillation.py Distillation.configure_gradient_clipping (norm 1.0)"
LT_STEP = "lightly-train distillation.py Distillation.training_step_impl (one view, mixup)"
LT_AUG = ("lightly-train _methods/distillation/distillation_transform.py (crop min_scale 0.14, jitter strength 0.5 x "
          "(0.8, 0.8, 0.4, 0.2) p 0.8, gray 0.2, blur p 1.0)")
LT_EPOCHS = "lightly-train _commands/train.py (epochs='auto' = 100 for methods other than DINOv2; anchor peers-2026-12.md 2.2)"
LT_MODEL = "lightly-train docs/source/methods/distillation.md example (model='torchvision/resnet18')"

ROWS = [
    ("distill", "method.temperature", 0.07, LT),
    ("distill", "method.loss", "queue_kl", LT),
    ("distill", "optim.lr_scaling", "sqrt", LT),
    ("distill", "optim.lr_reference_batch", 1536, LT),
    ("distill", "data.batch_size", 1536, LT),
    ("distill", "method.queue_size", 8192, LT_QUEUE),
    *[("distill", k, v, LT_LARS) for k, v in [("optim.name", "lars"), ("optim.lr", 1.8), ("optim.momentum", 0.9),
                                              ("optim.weight_decay", 1e-6), ("optim.eta", 0.001)]],
    ("distill", "optim.clip_grad", 1.0, LT_CLIP),
    ("distill", "method.mixup", True, LT_STEP),
    ("distill", "views.kind", "crop", LT_STEP),
    *[("distill", k, v, LT_AUG) for k, v in [("view0.scale", (0.14, 1.0)), ("view0.jitter", (0.4, 0.4, 0.2, 0.1, 0.8)),
                                             ("view0.gray_p", 0.2), ("view0.blur_p", 1.0), ("view0.flip_p", 0.5),
                                             ("view0.solarize_p", 0.0)]],
    ("distill", "train.epochs", 100, LT_EPOCHS),
    ("distill", "model.backbone", "resnet18", LT_MODEL),
]
