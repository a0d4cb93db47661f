"""Paper values of the ViT recipes of earlier methods (collected by tests/test_recipes.py)."""

MOCO3_VIT = ("Chen, Xie & He 2021 (MoCo v3), Sec. 4 and Table 9 / official CONFIG.md ViT-B 300-epoch command "
             "(AdamW lr 1.5e-4 x B/256, wd 0.1, B 4096, 40 warmup, tau 0.2, 3-layer projector, --stop-grad-conv1)")
MOCO3_AUG = "MoCo v3 official main_moco.py (BYOL's augmentations; --crop-min 0.08 for ViT)"

ROWS = [
    *[("mocov3_vit", k, v, MOCO3_VIT) for k, v in [
        ("optim.name", "adamw"), ("optim.lr", 1.5e-4), ("optim.lr_scaling", "linear"), ("optim.weight_decay", 0.1),
        ("data.batch_size", 4096), ("optim.warmup_epochs", 40), ("train.epochs", 300), ("method.temperature", 0.2),
        ("method.tau_base", 0.99), ("method.projector", "4096-4096-256"), ("method.predictor", "4096-256"),
        ("model.vit.freeze_patch_embed", True), ("model.vit.pos_embed", "sincos"),
        ("model.backbone", "timm:vit_base_patch16_224")]],
    *[("mocov3_vit", k, v, MOCO3_AUG) for k, v in [
        ("views.kind", "byol"), ("view0.scale", (0.08, 1.0)), ("view0.jitter", (0.4, 0.4, 0.2, 0.1, 0.8)),
        ("view0.blur_p", 1.0), ("view1.blur_p", 0.1), ("view1.solarize_p", 0.2)]],
]
