"""Paper values of the MSN, PMSN and BEiT recipes (collected by tests/test_recipes.py)."""

MSN_CFG = "MSN official configs/pretrain/msn_vits16.yaml (ViT-S/16, criterion/data/meta/optimization)"
MSN_OPT = "MSN official msn_vits16.yaml optimization (AdamW lr 1e-3 unscaled, 15 warmup, final_lr 1e-6, wd 0.04->0.4, clip 3, 800 ep)"
MSN_BATCH = "MSN official msn_vits16.yaml (batch_size 64 per GPU) x README (ViT-S/16 on 2 nodes x 8 GPUs) = 1024"
MSN_AUG = "MSN official src/data_manager.py make_transforms (rand 224 at 0.3-1, focal 96 at 0.05-0.3, colour s=0.5, gray 0.2, blur 0.5)"
MSN_VIEWS = "MSN official msn_train.py (rand_views + 1 crops: target + 1 masked anchor) and Assran et al. 2022, Fig. 1"
MSN_EMA = "MSN official msn_train.py momentum_scheduler (0.996 -> 1, linear)"
PMSN = "Assran et al. 2023 (PMSN), Sec. 5 power-law prior tau 0.25 (lightly PMSNLoss power_law_exponent 0.25)"
BEIT = "Bao et al. 2022 (BEiT), App. (ViT-B/16: batch 2048, lr 1.5e-3, 10 warmup, 800 ep, wd 0.05, Adam betas 0.9/0.999)"
BEIT_RUN = "BEiT official pretraining command (--clip_grad 3.0 --drop_path 0.1 --layer_scale_init_value 0.1 --min_lr 1e-5, 128 x 16 GPUs)"
BEIT_MASK = "Bao et al. 2022 (BEiT), Sec. 2.2 / masking_generator.py (75 of 196 patches, min 16 per block, aspect 0.3-1/0.3)"
BEIT_AUG = "BEiT official datasets.py DataAugmentationForBEiT (ColorJitter(0.4, 0.4, 0.4), flip 0.5, RandomResizedCrop 0.08-1)"
BEIT_VOCAB = "Bao et al. 2022 (BEiT), Sec. 2.1 (visual token vocabulary 8192, the DALL-E dVAE codebook)"

_MSN = [
    *[(k, v, MSN_CFG) for k, v in [
        ("method.num_proto", 1024), ("method.output_dim", 256), ("method.hidden_dim", 2048), ("method.use_bn", True),
        ("method.temperature", 0.1), ("method.sharpen_temp", 0.25), ("method.me_max_weight", 1.0),
        ("method.use_sinkhorn", True), ("method.patch_drop", 0.15), ("method.rand_views", 1),
        ("model.backbone", "timm:vit_small_patch16_224")]],
    *[(k, v, MSN_OPT) for k, v in [
        ("optim.name", "adamw"), ("optim.lr", 1e-3), ("optim.lr_scaling", "none"), ("optim.warmup_epochs", 15),
        ("optim.final_lr_ratio", 1e-3), ("optim.weight_decay", 0.04), ("optim.weight_decay_end", 0.4),
        ("optim.clip_grad", 3.0), ("train.epochs", 800)]],
    ("data.batch_size", 1024, MSN_BATCH),
    ("method.tau_base", 0.996, MSN_EMA), ("method.ema_schedule", "linear", MSN_EMA),
    *[(k, v, MSN_VIEWS) for k, v in [("views.kind", "multicrop"), ("views.n_global", 2), ("views.n_local", 10)]],
    *[(k, v, MSN_AUG) for k, v in [
        ("view0.size", 224), ("view0.scale", (0.3, 1.0)), ("view1.scale", (0.3, 1.0)), ("view2.size", 96),
        ("view2.scale", (0.05, 0.3)), ("view0.jitter", (0.4, 0.4, 0.4, 0.1, 0.8)), ("view0.gray_p", 0.2),
        ("view0.blur_p", 0.5), ("view1.blur_p", 0.5), ("view11.blur_p", 0.5), ("view0.solarize_p", 0.0),
        ("view1.solarize_p", 0.0), ("view0.flip_p", 0.5)]],
]

ROWS = [
    *[("msn", k, v, c) for k, v, c in _MSN],
    *[("pmsn", k, v, c) for k, v, c in _MSN],
    ("pmsn", "method.power_law_tau", 0.25, PMSN),
    *[("beit", k, v, BEIT) for k, v in [
        ("optim.name", "adamw"), ("optim.betas", (0.9, 0.999)), ("optim.lr", 1.5e-3 * 256 / 2048),
        ("optim.lr_scaling", "linear"), ("data.batch_size", 2048), ("optim.warmup_epochs", 10),
        ("train.epochs", 800), ("optim.weight_decay", 0.05), ("optim.weight_decay_end", None),
        ("model.backbone", "timm:vit_base_patch16_224")]],
    *[("beit", k, v, BEIT_RUN) for k, v in [
        ("optim.clip_grad", 3.0), ("model.vit.drop_path_rate", 0.1), ("model.vit.layer_scale", 0.1),
        ("optim.final_lr_ratio", 1e-5 / 1.5e-3)]],
    *[("beit", k, v, BEIT_MASK) for k, v in [
        ("method.num_masked", 75), ("method.min_patches", 16), ("method.aspect", (0.3, 1 / 0.3)),
        ("method.max_patches", None)]],
    ("beit", "method.vocab_size", 8192, BEIT_VOCAB),
    *[("beit", k, v, BEIT_AUG) for k, v in [
        ("views.kind", "crop"), ("views.n_global", 1), ("views.n_local", 0), ("view0.scale", (0.08, 1.0)),
        ("view0.jitter", (0.4, 0.4, 0.4, 0.0, 1.0)), ("view0.flip_p", 0.5), ("view0.blur_p", 0.0),
        ("view0.gray_p", 0.0)]],
]
