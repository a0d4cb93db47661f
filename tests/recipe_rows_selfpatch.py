"""Paper values of the SelfPatch recipe (collected by tests/test_recipes.py)."""

SP_CMD = ("SelfPatch official README, pretraining command (8 GPUs x --batch_size_per_gpu 128, --epoch 200, "
          "--arch vit_small --patch_size 16, --local_crops_number 8, --out_dim_selfpatch 4096, --k_num 4)")
SP_ARGS = ("SelfPatch official main_selfpatch.py defaults (AdamW, lr 5e-4 x B/256, min_lr 1e-6, 10 warm-up epochs, "
           "wd 0.04 -> 0.4, clip 3.0, momentum 0.996, out_dim 65536, norm_last_layer true, teacher temp 0.04 without "
           "warm-up, freeze_last_layer 1, crops 0.25-1 / 0.05-0.25, drop path 0.1)")
SP_LOSS = ("SelfPatch official main_selfpatch.py DINOLoss (student temp 0.1, center momentum 0.9, c_loss + 0.1 p_loss) "
           "and SelfPatchHead (2 class-attention blocks, 3x3 neighbourhood); Yun et al. 2022 Sec. 3.2 (k = 4 of the "
           "8 adjacent patches)")
SP_HEAD = "SelfPatch official selfpatch_vision_transformer.py DINOHead (nlayers 3, hidden 2048, bottleneck 256)"
SP_AUG = "SelfPatch official DataAugmentationDINO (DINO's: blur 1.0 / 0.1 + solarize 0.2 on the globals, jitter 0.8)"

ROWS = [
    *[("selfpatch", k, v, SP_CMD) for k, v in [
        ("data.batch_size", 1024), ("train.epochs", 200), ("model.backbone", "timm:vit_small_patch16_224"),
        ("views.n_local", 8), ("method.patch_out_dim", 4096), ("method.k", 4)]],
    *[("selfpatch", k, v, SP_ARGS) for k, v in [
        ("optim.name", "adamw"), ("optim.lr", 5e-4), ("optim.lr_scaling", "linear"), ("optim.warmup_epochs", 10),
        ("optim.final_lr_ratio", 1e-6 / (5e-4 * 1024 / 256)), ("optim.weight_decay", 0.04),
        ("optim.weight_decay_end", 0.4), ("optim.clip_grad", 3.0), ("method.tau_base", 0.996),
        ("method.out_dim", 65536), ("method.norm_last_layer", True), ("method.warmup_teacher_temp", 0.04),
        ("method.teacher_temp", 0.04), ("method.warmup_teacher_temp_epochs", 0),
        ("method.freeze_last_layer_epochs", 1), ("model.vit.drop_path_rate", 0.1), ("views.kind", "multicrop"),
        ("views.n_global", 2), ("view0.size", 224), ("view0.scale", (0.25, 1.0)), ("view2.size", 96),
        ("view2.scale", (0.05, 0.25))]],
    *[("selfpatch", k, v, SP_LOSS) for k, v in [
        ("method.student_temp", 0.1), ("method.center_momentum", 0.9), ("method.patch_weight", 0.1),
        ("method.aggregation_depth", 2)]],
    ("selfpatch", "method.head", "2048-2048-256", SP_HEAD),
    *[("selfpatch", k, v, SP_AUG) for k, v in [
        ("view0.blur_p", 1.0), ("view1.blur_p", 0.1), ("view1.solarize_p", 0.2),
        ("view0.jitter", (0.4, 0.4, 0.2, 0.1, 0.8)), ("view0.gray_p", 0.2), ("view0.flip_p", 0.5)]],
]
