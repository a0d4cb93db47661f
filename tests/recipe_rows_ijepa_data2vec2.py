"""Paper values of the I-JEPA and data2vec 2.0 recipes (collected by tests/test_recipes.py and checked in
tests/test_recipes_ijepa_data2vec2.py): ``(recipe, key, value, citation)`` rows."""

from __future__ import annotations

from typing import Any

IJEPA = "I-JEPA official configs/in1k_vith14_ep300.yaml"
IJEPA_PAPER = "Assran et al. 2023 (I-JEPA), Sec. 3 (4 target blocks 0.15-0.2, aspect 0.75-1.5; context 0.85-1.0)"
IJEPA_LOSS = "I-JEPA official src/train.py (F.smooth_l1_loss); the paper's Eq. 1 (L2) is method.loss=l2"
IJEPA_ARCH = "I-JEPA official src/models/vision_transformer.py (no cls token, fixed sin-cos positions); ijepa#55 (avg pool)"
IJEPA_DERIVED = "I-JEPA final_lr 1e-6 / lr 1e-3; lr 1e-3 is the peak at batch 2048 (128 x 16 GPUs), not per 256"
D2V = "data2vec 2.0 fairseq examples/data2vec/config/v2/base_images_only_task.yaml"
D2V_DERIVED = ("data2vec 2.0 base_images_only_task.yaml, derived: 16 images/GPU x 16 GPUs = 256 per update; max_update "
               "375300 and warmup_updates 50040 at 256/update over 1.28M images = 75 and 10 epochs; "
               "ema_anneal_end_step 100000 = 20 epochs; fairseq cosine warms up from 0 and decays to min_lr 0")
D2V_ARCH = "data2vec 2.0 ViT-B/16 (depth 12 = prenet_depth 2 + depth 10; num_extra_tokens 1; fixed positions)"
D2V_VIEWS = "fairseq mae_image_pretraining task: MAE's RandomResizedCrop(0.2, 1) + flip, no colour"
D2V_CLS = "fairseq data2vec2.py: cls loss x (cls_loss x sample_size) / sample_size = a sum over the instances"


def _rows(recipe: str, cite: str, pairs: list[tuple[str, Any]]) -> list[tuple[str, str, Any, str]]:
    return [(recipe, k, v, cite) for k, v in pairs]


ROWS: list[tuple[str, str, Any, str]] = [
    *_rows("ijepa", IJEPA, [("optim.name", "adamw"), ("optim.lr", 1e-3), ("optim.warmup_epochs", 40),
                            ("optim.weight_decay", 0.04), ("optim.weight_decay_end", 0.4), ("optim.betas", (0.9, 0.999)),
                            ("data.batch_size", 2048), ("train.epochs", 300), ("train.precision", "bf16"),
                            ("method.tau_base", 0.996), ("method.tau_end", 1.0), ("method.predictor_dim", 384),
                            ("method.predictor_depth", 12), ("method.n_targets", 4), ("method.min_keep", 10),
                            ("model.backbone", "timm:vit_huge_patch14_224"), ("data.image_size", 224),
                            ("views.kind", "crop"), ("view0.scale", (0.3, 1.0)), ("view0.flip_p", 0.0),
                            ("view0.jitter", (0.0, 0.0, 0.0, 0.0, 0.0)), ("view0.blur_p", 0.0),
                            ("view0.gray_p", 0.0), ("view0.solarize_p", 0.0), ("views.n_global", 1)]),
    *_rows("ijepa", IJEPA_PAPER, [("method.target_scale", (0.15, 0.2)), ("method.target_aspect", (0.75, 1.5)),
                                  ("method.context_scale", (0.85, 1.0)), ("method.context_aspect", (1.0, 1.0))]),
    *_rows("ijepa", IJEPA_LOSS, [("method.loss", "smooth_l1")]),
    *_rows("ijepa", IJEPA_ARCH, [("model.vit.class_token", False), ("model.vit.pool", "avg"),
                                 ("model.vit.pos_embed", "sincos")]),
    *_rows("ijepa", IJEPA_DERIVED, [("optim.final_lr_ratio", 1e-3), ("optim.lr_scaling", "none")]),
    *_rows("data2vec2", D2V, [("optim.name", "adamw"), ("optim.betas", (0.9, 0.95)), ("optim.lr", 1e-3),
                              ("optim.weight_decay", 0.05), ("optim.clip_grad", 4.0), ("method.mask_prob", 0.8),
                              ("method.mask_length", 3), ("method.mask_prob_adjust", 0.07), ("method.clone_batch", 16),
                              ("method.average_top_k_layers", 10), ("method.mask_noise_std", 0.01),
                              ("method.decoder_layers", 6), ("method.decoder_dim", 768), ("method.decoder_kernel", 3),
                              ("method.decoder_groups", 16), ("method.cls_loss", 0.01), ("method.tau_base", 0.9998),
                              ("method.tau_end", 0.99999)]),
    *_rows("data2vec2", D2V_DERIVED, [("data.batch_size", 256), ("optim.lr_scaling", "linear"),
                                      ("train.epochs", 75), ("optim.warmup_epochs", 10), ("optim.final_lr_ratio", 0.0),
                                      ("method.ema_anneal_epochs", 20)]),
    *_rows("data2vec2", D2V_ARCH, [("model.backbone", "timm:vit_base_patch16_224"), ("model.vit.class_token", True),
                                   ("model.vit.pos_embed", "sincos"), ("data.image_size", 224)]),
    *_rows("data2vec2", D2V_CLS, [("method.cls_reduction", "sum")]),
    *_rows("data2vec2", D2V_VIEWS, [("views.kind", "crop"), ("view0.scale", (0.2, 1.0)), ("view0.flip_p", 0.5),
                                    ("view0.jitter", (0.0, 0.0, 0.0, 0.0, 0.0)), ("view0.blur_p", 0.0),
                                    ("view0.gray_p", 0.0), ("views.n_global", 1)]),
]
