"""Paper values of the MAE and SimMIM recipes (collected by tests/test_recipes.py)."""

MAE = "He et al. 2022 (MAE), Table 8 / official PRETRAIN.md (ViT-B/16: AdamW 0.9/0.95, blr 1.5e-4, wd 0.05, B 4096, 40 warmup, 800 ep)"
MAE_ARCH = "He et al. 2022 (MAE), Sec. 3 and Table 1a-c (mask 0.75, decoder 8 blocks x 512, norm-pix targets)"
MAE_AUG = "He et al. 2022 (MAE), Table 1e / main_pretrain.py (RandomResizedCrop(0.2, 1) + flip only)"
MAE_FT = "MAE official FINETUNE.md (ViT-B: layer decay 0.65)"
SIMMIM = "Xie et al. 2022 (SimMIM), Sec. 4.1 / simmim_pretrain__vit_base__img224__800ep.yaml (AdamW, lr 1e-4 per 512, wd 0.05, B 2048, 10 warmup, 800 ep, clip 5)"
SIMMIM_MASK = "Xie et al. 2022 (SimMIM), Table 1 (random masking, 32 px patches, ratio 0.6 best)"
SIMMIM_AUG = "SimMIM official data_simmim.py (RandomResizedCrop(0.67, 1) + flip)"

ROWS = [
    *[("mae", k, v, MAE) for k, v in [
        ("optim.name", "adamw"), ("optim.betas", (0.9, 0.95)), ("optim.lr", 1.5e-4), ("optim.lr_scaling", "linear"),
        ("optim.weight_decay", 0.05), ("data.batch_size", 4096), ("optim.warmup_epochs", 40), ("train.epochs", 800),
        ("optim.final_lr_ratio", 0.0), ("model.vit.pos_embed", "sincos"), ("model.backbone", "timm:vit_base_patch16_224")]],
    *[("mae", k, v, MAE_ARCH) for k, v in [
        ("method.mask_ratio", 0.75), ("method.decoder_depth", 8), ("method.decoder_dim", 512),
        ("method.decoder_heads", 16), ("method.norm_pix_loss", True)]],
    *[("mae", k, v, MAE_AUG) for k, v in [
        ("views.kind", "crop"), ("view0.scale", (0.2, 1.0)), ("view0.flip_p", 0.5), ("view0.jitter", (0.0,) * 5),
        ("view0.blur_p", 0.0), ("views.n_global", 1)]],
    ("mae", "eval.finetune_layer_decay", 0.65, MAE_FT),
    *[("simmim", k, v, SIMMIM) for k, v in [
        ("optim.name", "adamw"), ("optim.betas", (0.9, 0.999)), ("optim.lr", 1e-4), ("optim.lr_reference_batch", 512),
        ("optim.weight_decay", 0.05), ("data.batch_size", 2048), ("optim.warmup_epochs", 10), ("train.epochs", 800),
        ("optim.clip_grad", 5.0), ("model.vit.drop_path_rate", 0.1), ("model.vit.layer_scale", 0.1)]],
    *[("simmim", k, v, SIMMIM_MASK) for k, v in [("method.mask_ratio", 0.6), ("method.mask_patch_size", 32)]],
    *[("simmim", k, v, SIMMIM_AUG) for k, v in [
        ("views.kind", "crop"), ("view0.scale", (0.67, 1.0)), ("view0.flip_p", 0.5), ("view0.jitter", (0.0,) * 5),
        ("view0.blur_p", 0.0)]],
]
