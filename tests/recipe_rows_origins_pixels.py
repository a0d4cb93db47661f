"""Paper values of the colorization, context-encoder and denoising-autoencoder recipes (collected by
tests/test_recipes.py). "selfsup's choice" marks values the paper does not give for this setting."""

ZHANG = "Zhang et al. 2016 (Colorful Image Colorization), Sec. 2.1-2.3 (grid 10, 5-NN soft encoding sigma 5, lambda 0.5, T 0.38, output at 1/4)"
ZHANG_OPT = ("Zhang et al. 2016, Sec. 3 / supplementary (Adam beta 0.9/0.99, wd 1e-3, lr 3e-5 -> 1e-5 -> 3e-6, batch 40, "
             "450k iterations = 14 ImageNet epochs)")
ZHANG_AUG = "richzhang/colorization training prototxt (176 px crops of 256 px images, mirrored; no colour jitter)"
PATHAK = "Pathak et al. 2016 (Context Encoders), Sec. 3.3 / train.lua (central 64 of 128 px, overlapPred 4, overlapL2Weight 10)"
PATHAK_OPT = "pathak22/context-encoder train.lua (optim.adam lr 2e-4, beta1 0.5, batchSize 64, niter 25, no weight decay)"
PATHAK_ADV = ("Pathak et al. 2016, Sec. 3.2 / 3.4 (joint loss 0.999 L2 + 0.001 adversarial, used for inpainting only: "
              "the features are learnt with L2 alone, AlexNet diverging with the joint loss)")
PATHAK_D = "pathak22/context-encoder train.lua (netD: ndf 64 on the 64 px centre of a 128 px crop, no context)"
PATHAK_AUG = "pathak22/context-encoder donkey_folder.lua (128 px random crop of the 350 px loaded image, flip 0.5)"
VINCENT = "Vincent et al. 2008 (DAE), Sec. 2.3 / Table 1 (masking noise, destruction fraction 25%; plain squared error)"
VINCENT_AUG = "Vincent et al. 2008: no augmentation, the corruption is the only transform"
OURS = "selfsup's choice: the paper trains single layers by SGD (no deep-backbone optimiser to copy)"

ROWS = [
    *[("colorization", k, v, ZHANG) for k, v in [
        ("method.grid", 10.0), ("method.neighbours", 5), ("method.sigma", 5.0), ("method.lam", 0.5),
        ("method.rebalance", True), ("method.temperature", 0.38), ("method.out_stride", 4)]],
    *[("colorization", k, v, ZHANG_OPT) for k, v in [
        ("optim.name", "adamw"), ("optim.betas", (0.9, 0.99)), ("optim.lr", 3e-5), ("optim.lr_scaling", "none"),
        ("optim.weight_decay", 1e-3), ("data.batch_size", 40), ("train.epochs", 14), ("optim.warmup_epochs", 0)]],
    *[("colorization", k, v, ZHANG_AUG) for k, v in [
        ("data.image_size", 176), ("views.kind", "crop"), ("view0.scale", (0.47, 0.47)), ("view0.ratio", (1.0, 1.0)),
        ("view0.flip_p", 0.5), ("view0.jitter", (0.0,) * 5), ("view0.blur_p", 0.0)]],
    *[("context_encoder", k, v, PATHAK) for k, v in [
        ("method.region", "central"), ("method.region_size", 0.5), ("method.overlap", 4 / 128),
        ("method.overlap_weight", 10.0)]],
    ("context_encoder", "method.adversarial_weight", 0.0, PATHAK_ADV),
    *[("context_encoder", k, v, PATHAK_D) for k, v in [
        ("method.discriminator_width", 64), ("method.discriminator_size", 64)]],
    *[("context_encoder", k, v, PATHAK_OPT) for k, v in [
        ("optim.name", "adamw"), ("optim.betas", (0.5, 0.999)), ("optim.lr", 2e-4), ("optim.lr_scaling", "none"),
        ("optim.weight_decay", 0.0), ("data.batch_size", 64), ("train.epochs", 25), ("optim.final_lr_ratio", 1.0)]],
    *[("context_encoder", k, v, PATHAK_AUG) for k, v in [
        ("data.image_size", 128), ("views.kind", "crop"), ("view0.scale", (0.1337, 0.1337)),
        ("view0.ratio", (1.0, 1.0)), ("view0.flip_p", 0.5), ("view0.jitter", (0.0,) * 5), ("view0.blur_p", 0.0)]],
    *[("denoising_ae", k, v, VINCENT) for k, v in [
        ("method.noise", 0.25), ("method.alpha", 1.0), ("method.beta", 1.0)]],
    *[("denoising_ae", k, v, VINCENT_AUG) for k, v in [
        ("views.kind", "crop"), ("view0.scale", (1.0, 1.0)), ("view0.flip_p", 0.0), ("view0.jitter", (0.0,) * 5),
        ("view0.blur_p", 0.0)]],
    *[("denoising_ae", k, v, OURS) for k, v in [
        ("optim.name", "adamw"), ("optim.lr", 1e-3), ("optim.weight_decay", 0.0), ("data.batch_size", 256),
        ("train.epochs", 100)]],
]
