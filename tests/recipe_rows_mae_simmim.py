"""Paper values of the MAE, CrossMAE, AIM, NEPA and SimMIM recipes (collected by tests/test_recipes.py)."""

MAE = "He et al. 2022 (MAE), Table 8 / official PRETRAIN.md (ViT-B/16: AdamW 0.9/0.95, blr 1.5e-4, wd 0.05, B 4096, 40 warmup, 800 ep)"
MAE_ARCH = "He et al. 2022 (MAE), Sec. 3 and Table 1a-c (mask 0.75, decoder 8 blocks x 512, norm-pix targets)"
MAE_AUG = "He et al. 2022 (MAE), Table 1e / main_pretrain.py (RandomResizedCrop(0.2, 1) + flip only)"
MAE_FT = "MAE official FINETUNE.md (ViT-B: layer decay 0.65)"
CROSSMAE = ("Fu et al. 2025 (CrossMAE), official README ViT-B pre-training command (--mask_ratio 0.75 "
            "--kept_mask_ratio 0.25 --decoder_depth 12 --weight_fm --use_input --norm_pix_loss, blr 1.5e-4, wd 0.05, "
            "B 1024 x 4, 40 warmup, 800 ep) and models_cross.py mae_vit_base_patch16 (decoder 512 wide, 16 heads)")
CROSSMAE_OPT = ("CrossMAE main_pretrain.py: AdamW betas (0.9, 0.95); lr = blr x kept_mask_ratio / mask_ratio x B / 256 "
                "(scale_kmr), so base lr 1.5e-4 x 0.25 / 0.75 = 5e-5; RandomResizedCrop(0.2, 1) + flip")
CROSSMAE_FT = "CrossMAE official README ViT-B fine-tune command (blr 5e-4, layer decay 0.65)"
AIM = ("El-Nouby et al. 2024 (AIM), AIM-0.6B as in lightly 1.6 benchmarks/imagenet/vitb16/aim.py (head and prefix "
       "checked with the AIM authors, lightly PR #1479): ViT 1536 x 24 blocks, 12 heads, patch 14, no cls, sin-cos "
       "positions, mean pooling; head 2048 x 12 blocks; AdamW (0.9, 0.95) lr 1e-3 x B/4096, wd 0.05, clip 1.0, "
       "31,250 warm-up of 125,000 steps at batch 4096 (100 of 400 ImageNet-1k epochs)")
AIM_AUG = "lightly 1.6 AIMTransform (MAE's RandomResizedCrop + flip with min_scale 0.4, citing AIM)"
AIM_OBJ = "El-Nouby et al. 2024 (AIM), Sec. 2 (prefix attention, normalised pixel targets)"
NEPA = ("Xu et al. 2025 (NEPA), Table 4 (AdamW (0.9, 0.95), base lr 3e-4 x B/256, wd 0.05, B 4096, cosine, 40 warmup "
        "epochs, RandomResizedCrop) and Sec. 4.3 (ViT-B, patch 14, 1600 epochs)")
NEPA_CODE = ("NEPA official configs/pretrain/nepa-base-patch14-224/config.json (layerscale 1e-5, qk_norm, causal, "
             "GELU) and run_nepa.py (torchvision RandomResizedCrop at its default scale (0.08, 1) + flip)")
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
    *[("crossmae", k, v, CROSSMAE) for k, v in [
        ("method.mask_ratio", 0.75), ("method.predict_ratio", 0.25), ("method.decoder_depth", 12),
        ("method.decoder_dim", 512), ("method.decoder_heads", 16), ("method.inter_block", True),
        ("method.use_input", True), ("method.self_attn", False), ("method.norm_pix_loss", True),
        ("optim.weight_decay", 0.05), ("data.batch_size", 4096), ("optim.warmup_epochs", 40), ("train.epochs", 800),
        ("optim.final_lr_ratio", 0.0), ("model.vit.pos_embed", "sincos"),
        ("model.backbone", "timm:vit_base_patch16_224")]],
    *[("crossmae", k, v, CROSSMAE_OPT) for k, v in [
        ("optim.name", "adamw"), ("optim.betas", (0.9, 0.95)), ("optim.lr", 5e-5), ("optim.lr_scaling", "linear"),
        ("views.kind", "crop"), ("view0.scale", (0.2, 1.0)), ("view0.flip_p", 0.5), ("view0.jitter", (0.0,) * 5),
        ("view0.blur_p", 0.0), ("views.n_global", 1)]],
    *[("crossmae", k, v, CROSSMAE_FT) for k, v in [("eval.finetune_layer_decay", 0.65), ("eval.finetune_lr", 5e-4)]],
    *[("aim", k, v, AIM) for k, v in [
        ("model.backbone", "timm:vit_huge_patch14_224"), ("model.vit.embed_dim", 1536), ("model.vit.depth", 24),
        ("model.vit.num_heads", 12), ("model.vit.class_token", False), ("model.vit.pool", "avg"),
        ("model.vit.pos_embed", "sincos"), ("method.head_dim", 2048), ("method.head_blocks", 12),
        ("optim.name", "adamw"), ("optim.betas", (0.9, 0.95)), ("optim.lr", 1e-3), ("optim.lr_reference_batch", 4096),
        ("optim.weight_decay", 0.05), ("optim.clip_grad", 1.0), ("data.batch_size", 4096),
        ("optim.warmup_epochs", 100), ("train.epochs", 400)]],
    *[("aim", k, v, AIM_AUG) for k, v in [("views.kind", "crop"), ("view0.scale", (0.4, 1.0)), ("view0.flip_p", 0.5),
                                          ("view0.jitter", (0.0,) * 5), ("view0.blur_p", 0.0)]],
    *[("aim", k, v, AIM_OBJ) for k, v in [("method.prefix", True), ("method.norm_pix_loss", True)]],
    *[("nepa", k, v, NEPA) for k, v in [
        ("optim.name", "adamw"), ("optim.betas", (0.9, 0.95)), ("optim.lr", 3e-4), ("optim.lr_scaling", "linear"),
        ("optim.weight_decay", 0.05), ("data.batch_size", 4096), ("optim.warmup_epochs", 40), ("train.epochs", 1600),
        ("optim.final_lr_ratio", 0.0), ("model.backbone", "timm:vit_base_patch16_224"), ("model.vit.patch_size", 14),
        ("method.shift", True)]],
    *[("nepa", k, v, NEPA_CODE) for k, v in [
        ("model.vit.layer_scale", 1e-5), ("model.vit.qk_norm", True), ("views.kind", "crop"),
        ("view0.scale", (0.08, 1.0)), ("view0.flip_p", 0.5), ("view0.jitter", (0.0,) * 5), ("view0.blur_p", 0.0)]],
    *[("simmim", k, v, SIMMIM) for k, v in [
        ("optim.name", "adamw"), ("optim.betas", (0.9, 0.999)), ("optim.lr", 1e-4), ("optim.lr_reference_batch", 512),
        ("optim.weight_decay", 0.05), ("data.batch_size", 2048), ("optim.warmup_epochs", 10), ("train.epochs", 800),
        ("optim.clip_grad", 5.0), ("model.vit.drop_path_rate", 0.1), ("model.vit.layer_scale", 0.1)]],
    *[("simmim", k, v, SIMMIM_MASK) for k, v in [("method.mask_ratio", 0.6), ("method.mask_patch_size", 32)]],
    *[("simmim", k, v, SIMMIM_AUG) for k, v in [
        ("views.kind", "crop"), ("view0.scale", (0.67, 1.0)), ("view0.flip_p", 0.5), ("view0.jitter", (0.0,) * 5),
        ("view0.blur_p", 0.0)]],
]
