"""Pure loss functions, grouped by family. Each works in any training loop."""

from selfsup.losses.contrastive import info_nce, nt_xent
from selfsup.losses.contrastive import dcl, moco_infonce, moco_v3_loss, relic_loss, relic_terms, supcon
from selfsup.losses.correlation import off_diagonal, vicreg_loss, vicreg_terms
from selfsup.losses.correlation import barlow_twins_loss, cholesky_whiten, wmse_loss
from selfsup.losses.clustering import (nearest_prototype, sinkhorn_knopp, spherical_kmeans, swapped_prediction,
                                       swav_loss)
from selfsup.losses.distillation import byol_loss, negative_cosine
from selfsup.losses.distillation import (DINOLoss, correlation_update, dino_center_update, dino_loss,
                                         directpred_predictor, simsiam_loss)
from selfsup.losses.distributed import all_reduce_mean, all_reduce_sum, gather
from selfsup.losses.metric import (UNIFIED_PRESETS, PhiPsi, batch_margin_contrastive, batch_triplet,
                                  margin_contrastive, triplet, unified_contrastive, unified_preset)
from selfsup.losses.neighbors import msf_loss, nearest_neighbour, nnclr_loss

__all__ = [
    "nt_xent", "info_nce", "vicreg_loss", "vicreg_terms", "off_diagonal", "byol_loss", "negative_cosine",
    "gather", "all_reduce_mean", "all_reduce_sum",
    "supcon", "dcl", "moco_infonce", "moco_v3_loss", "relic_loss", "relic_terms", "nnclr_loss", "nearest_neighbour",
    "msf_loss", "margin_contrastive", "triplet", "batch_margin_contrastive", "batch_triplet", "unified_contrastive",
    "unified_preset", "UNIFIED_PRESETS", "PhiPsi",
    "simsiam_loss", "dino_loss", "dino_center_update", "DINOLoss", "correlation_update", "directpred_predictor",
]
__all__ += ["barlow_twins_loss", "cholesky_whiten", "wmse_loss", "sinkhorn_knopp", "swapped_prediction",
            "swav_loss", "spherical_kmeans", "nearest_prototype"]
from selfsup.losses.masked import (ibot_patch_loss, ibot_teacher_probs, koleo_loss, patch_center_update,
                                   sinkhorn_teacher)
from selfsup.losses.masked_regression import (aim_loss, crossmae_loss, data2vec_loss, data2vec_targets, mae_loss,
                                              nepa_loss, norm_pix_targets, patchify, simmim_loss, unpatchify)
from selfsup.losses.masked_siamese import me_max, msn_loss, pmsn_loss, power_law_prior, prior_kl

__all__ += ["patchify", "unpatchify", "norm_pix_targets", "mae_loss", "crossmae_loss", "aim_loss", "nepa_loss",
            "simmim_loss",
            "ibot_teacher_probs", "patch_center_update", "ibot_patch_loss", "sinkhorn_teacher", "koleo_loss",
            "data2vec_targets", "data2vec_loss", "me_max", "prior_kl", "power_law_prior", "msn_loss", "pmsn_loss"]
from selfsup.losses.covariance import iter_norm, tico_loss, vibcreg_loss
from selfsup.losses.hypersphere import (align_uniform_loss, alignment_loss, co2_loss, directclr_loss, macl_loss,
                                        uniformity_loss)
from selfsup.losses.infomax import emp_ssl_loss, frossl_loss, mmcr_loss, total_coding_rate
from selfsup.losses.isotropic_gaussian import (epps_pulley, lejepa_loss, multiview_invariance, random_slices, sigreg,
                                               visreg_loss, visreg_terms)

__all__ += ["mmcr_loss", "total_coding_rate", "emp_ssl_loss", "frossl_loss", "random_slices", "epps_pulley", "sigreg",
            "multiview_invariance", "lejepa_loss", "visreg_terms", "visreg_loss", "tico_loss", "iter_norm",
            "vibcreg_loss", "alignment_loss", "uniformity_loss", "align_uniform_loss", "directclr_loss", "macl_loss",
            "co2_loss"]
from selfsup.losses.feature_distillation import cosine_distillation_loss, queue_distillation_loss

__all__ += ["queue_distillation_loss", "cosine_distillation_loss"]
from selfsup.losses.instance import nce_normalizer, npid_nce_loss, npid_softmax_loss

__all__ += ["nce_normalizer", "npid_nce_loss", "npid_softmax_loss"]
from selfsup.losses.relational import ressl_loss
from selfsup.losses.siamese import fastsiam_loss, nn_byol_loss, nn_simsiam_loss

__all__ += ["ressl_loss", "nn_byol_loss", "nn_simsiam_loss", "fastsiam_loss"]
from selfsup.losses.dense import (cell_centres, densecl_loss, detcon_loss, mask_pool, match_by_similarity,
                                  nearest_pairs, vicregl_loss)

__all__ += ["densecl_loss", "vicregl_loss", "detcon_loss", "cell_centres", "match_by_similarity", "nearest_pairs",
            "mask_pool"]
from selfsup.losses.pretext import pirl_loss, pirl_softmax_loss, pretext_cross_entropy

__all__ += ["pretext_cross_entropy", "pirl_loss", "pirl_softmax_loss"]
from selfsup.losses.grouping import smog_assign, smog_group_update, smog_loss
from selfsup.losses.neighbor_sets import all4one_loss, feature_contrast, slot_position_encoding

__all__ += ["smog_assign", "smog_group_update", "smog_loss", "all4one_loss", "feature_contrast",
            "slot_position_encoding"]
from selfsup.losses.selfpatch import adjacent_patches, select_positives, selfpatch_loss

__all__ += ["adjacent_patches", "select_positives", "selfpatch_loss"]
from selfsup.losses.colour import (ab_gamut_bins, ab_prior, annealed_mean, colorization_loss, rebalancing_weights,
                                   soft_encode_ab)
from selfsup.losses.restoration import (context_encoder_loss, denoising_loss, inpainting_discriminator_loss,
                                        inpainting_generator_loss, overlap_weights)

__all__ += ["ab_gamut_bins", "soft_encode_ab", "ab_prior", "rebalancing_weights", "colorization_loss",
            "annealed_mean", "overlap_weights", "context_encoder_loss", "denoising_loss", "inpainting_discriminator_loss",
            "inpainting_generator_loss"]
from selfsup.losses.surrogate import exemplar_loss
from selfsup.losses.counting import counting_loss

__all__ += ["exemplar_loss", "counting_loss"]
