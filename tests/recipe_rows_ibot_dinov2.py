"""Paper values of the iBOT and DINOv2 recipes (collected by tests/test_recipes.py)."""

IBOT_CMD = ("iBOT official README, ViT-S/16 pretraining command (16 GPUs x 64, 800 ep, --teacher_temp 0.07, "
            "--shared_head true, --out_dim 8192, --norm_last_layer false, 10 local crops, scales 0.25-1 / 0.05-0.25, "
            "--pred_ratio 0 0.3 --pred_ratio_var 0 0.2)")
IBOT_ARGS = ("iBOT official main_ibot.py defaults (AdamW, lr 5e-4 x B/256, min_lr 1e-6, 10 warmup, wd 0.04->0.4, "
             "clip 3.0, drop path 0.1, momentum 0.996, head 2048-2048-256, temps 0.1 / 0.04 warmup over 30 ep, "
             "patch temp 0.07, freeze_last_layer 1, lambda1 = lambda2 = 1, center momenta 0.9)")
IBOT_LOSS = "Zhou et al. 2022 (iBOT), Sec. 3.2 Eq. (2) and iBOTLoss (separate CLS / patch centers and temperatures)"
IBOT_MASK = ("iBOT official loader.py ImageFolderMask (BEiT blocks, aspect 0.3-1/0.3, min area (min(H, W) // 3) ** 2 "
             "patches; ratio 0 or U(0.1, 0.5) per crop)")
DINO_AUG = "DataAugmentationDINO / DataAugmentationiBOT (blur 1.0 / 0.1 + solarize 0.2 on the globals, 0.5 locals)"
V2 = "DINOv2 official configs/ssl_default_config.yaml (= vitl16_short.yaml, the smallest from-scratch config)"
V2_RUN = "DINOv2 official README: vitl16_short trained on 4 nodes x 8 A100s, batch_size_per_gpu 64 = 2048"
V2_LR = "DINOv2 ssl_default_config.yaml optim (base_lr 0.004, scaling_rule sqrt_wrt_1024, min_lr 1e-6)"
V2_PAPER = "Oquab et al. 2024 (DINOv2), Sec. 4 (KoLeo weight 0.1; iBOT masking on the student; Sinkhorn-Knopp option)"
V2_AUG = "DINOv2 official data/augmentations.py DataAugmentationDINO (DINO's colour, blur, solarize recipe)"

_MULTICROP_COLOUR = [("view0.blur_p", 1.0), ("view1.blur_p", 0.1), ("view1.solarize_p", 0.2), ("view2.blur_p", 0.5),
                     ("view0.jitter", (0.4, 0.4, 0.2, 0.1, 0.8)), ("view0.gray_p", 0.2), ("view0.flip_p", 0.5)]

ROWS = [
    *[("ibot", k, v, IBOT_CMD) for k, v in [
        ("data.batch_size", 1024), ("train.epochs", 800), ("method.teacher_temp", 0.07), ("method.shared_head", True),
        ("method.out_dim", 8192), ("method.norm_last_layer", False), ("method.warmup_teacher_temp_epochs", 30),
        ("method.pred_ratio", (0.0, 0.3)), ("method.pred_ratio_var", (0.0, 0.2)),
        ("model.backbone", "timm:vit_small_patch16_224"),
        ("views.kind", "multicrop"), ("views.n_global", 2), ("views.n_local", 10), ("view0.size", 224),
        ("view0.scale", (0.25, 1.0)), ("view2.size", 96), ("view2.scale", (0.05, 0.25))]],
    *[("ibot", k, v, IBOT_ARGS) for k, v in [
        ("optim.name", "adamw"), ("optim.lr", 5e-4), ("optim.lr_scaling", "linear"), ("optim.warmup_epochs", 10),
        ("optim.final_lr_ratio", 1e-6 / (5e-4 * 1024 / 256)), ("optim.weight_decay", 0.04),
        ("optim.weight_decay_end", 0.4), ("optim.clip_grad", 3.0), ("model.vit.drop_path_rate", 0.1),
        ("model.vit.drop_path", "linear"), ("method.tau_base", 0.996), ("method.head", "2048-2048-256"),
        ("method.student_temp", 0.1), ("method.warmup_teacher_temp", 0.04), ("method.warmup_teacher_patch_temp", 0.04),
        ("method.teacher_patch_temp", 0.07), ("method.freeze_last_layer_epochs", 1), ("method.lambda1", 1.0),
        ("method.lambda2", 1.0), ("method.center_momentum", 0.9), ("method.patch_center_momentum", 0.9)]],
    ("ibot", "method.n_global", 2, IBOT_LOSS),
    *[("ibot", k, v, IBOT_MASK) for k, v in [("method.pred_aspect_ratio", (0.3, 1 / 0.3)),
                                              ("method.min_block_patches", None)]],
    *[("ibot", k, v, DINO_AUG) for k, v in _MULTICROP_COLOUR],
    # DINOv2
    *[("dinov2", k, v, V2) for k, v in [
        ("method.head", "2048-2048-256"), ("method.out_dim", 65536), ("method.separate_head", False),
        ("method.norm_last_layer", False), ("method.student_temp", 0.1), ("method.warmup_teacher_temp", 0.04),
        ("method.teacher_temp", 0.07), ("method.warmup_teacher_temp_epochs", 30), ("method.centering", "centering"),
        ("method.sinkhorn_iters", 3), ("method.center_momentum", 0.9), ("method.dino_loss_weight", 1.0),
        ("method.ibot_loss_weight", 1.0), ("method.koleo_loss_weight", 0.1), ("method.tau_base", 0.992),
        ("method.freeze_last_layer_epochs", 1), ("method.mask_probability", 0.5), ("method.mask_ratio", (0.1, 0.5)),
        ("method.min_block_patches", 4), ("method.max_block_fraction", 0.5), ("method.n_global", 2),
        ("model.backbone", "timm:vit_large_patch16_224"), ("model.vit.layer_scale", 1e-5),
        ("model.vit.drop_path_rate", 0.3), ("model.vit.drop_path", "uniform"), ("model.vit.registers", 0),
        ("optim.name", "adamw"), ("optim.betas", (0.9, 0.999)), ("optim.weight_decay", 0.04),
        ("optim.weight_decay_end", 0.4), ("optim.warmup_epochs", 10), ("optim.clip_grad", 3.0),
        ("optim.layer_decay", 0.9), ("optim.patch_embed_lr_mult", 0.2), ("train.epochs", 100),
        ("views.kind", "multicrop"), ("views.n_global", 2), ("views.n_local", 8), ("view0.size", 224),
        ("view0.scale", (0.32, 1.0)), ("view2.size", 96), ("view2.scale", (0.05, 0.32))]],
    ("dinov2", "data.batch_size", 2048, V2_RUN),
    *[("dinov2", k, v, V2_LR) for k, v in [
        ("optim.lr", 0.004), ("optim.lr_scaling", "sqrt"), ("optim.lr_reference_batch", 1024),
        ("optim.final_lr_ratio", 1.7678e-4)]],
    ("dinov2", "method.koleo_loss_weight", 0.1, V2_PAPER),
    *[("dinov2", k, v, V2_AUG) for k, v in _MULTICROP_COLOUR],
]
