"""One precision policy (issue 7, "Numerics"): every loss in ``selfsup.losses`` gives its float32 result
under bf16 autocast, from fp32 inputs and from bf16 inputs alike, and returns float32.

The reference for each case is the same function on the same float32 values with autocast off; the
bf16-input run uses values that are exactly representable in bf16, so both sides see identical
numbers and any difference is rounding inside the loss (a bf16 logit at T = 0.1 is off by ~0.04).
``test_every_public_loss_has_a_precision_case`` makes a new loss without a case fail.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import selfsup.losses as losses
from selfsup.losses import (UNIFIED_PRESETS, DINOLoss, barlow_twins_loss, batch_margin_contrastive, batch_triplet,
                            byol_loss, cholesky_whiten, correlation_update, dcl, dino_center_update, dino_loss,
                            directpred_predictor, info_nce, margin_contrastive, moco_infonce, moco_v3_loss, msf_loss,
                            nearest_neighbour, nearest_prototype, negative_cosine, nnclr_loss, nt_xent, off_diagonal,
                            relic_loss, relic_terms, simsiam_loss, sinkhorn_knopp, spherical_kmeans,
                            swapped_prediction, swav_loss, supcon, triplet, unified_contrastive, unified_preset,
                            vicreg_loss, vicreg_terms, wmse_loss)
from selfsup.losses.masked import ibot_patch_loss, ibot_teacher_probs, koleo_loss, patch_center_update, sinkhorn_teacher
from selfsup.losses.masked_regression import (aim_loss, crossmae_loss, data2vec_loss, data2vec_targets, mae_loss,
                                              nepa_loss, norm_pix_targets, simmim_loss)
from selfsup.losses.masked_siamese import me_max, msn_loss, pmsn_loss, power_law_prior, prior_kl
from selfsup.losses.neighbors import msf_neighbours, msf_regression

N, D, K = 32, 16, 24  # batch, embedding dim, prototypes / bank rows

# Names that are not losses and do no arithmetic on embeddings in one process.
NOT_LOSSES = {
    "is_distributed": "process-group query", "world_size": "process-group query", "rank": "process-group query",
    "local_offset": "integer offset", "gather": "identity in one process (a collective otherwise)",
    "all_reduce_mean": "identity in one process", "all_reduce_sum": "identity in one process",
    "fp32_loss": "the precision policy itself",
    "adjacent_patches": "integer neighbour indices of a patch grid, no float inputs",
    "patchify": "pure reshape (keeps the dtype)", "unpatchify": "pure reshape (keeps the dtype)",
    "power_law_prior": "a constant prior, no inputs",
    "random_slices": "random directions drawn in float64 from a generator, no inputs",
    "ab_gamut_bins": "a constant table of bin centres, no inputs",
    "ab_prior": "a histogram of nearest bins (float64 shares, no gradient)",
    "rebalancing_weights": "float64 class weights from a float64 prior (no embeddings)",
    "overlap_weights": "a weight map of a bool mask",
    "cell_centres": "crop geometry in float64 (no embeddings)", "match_by_similarity": "argmax indices, no gradient",
    "nearest_pairs": "index selection (keeps the dtype)",
    "slot_position_encoding": "a constant sinusoidal encoding, no inputs",
}
# Names exercised through another name's cases.
COVERED_BY = {"UNIFIED_PRESETS": "unified_contrastive", "unified_preset": "unified_contrastive",
              "PhiPsi": "unified_contrastive"}


@dataclass(frozen=True)
class Case:
    name: str  # the public name this case covers
    fn: Callable[..., Any]
    inputs: Callable[[torch.Generator], tuple]  # fp32 tensors (or lists of them), longs and bools


def _emb(g: torch.Generator, n: int = N, d: int = D) -> torch.Tensor:
    return torch.randn(n, d, generator=g)


def _pair(g: torch.Generator) -> tuple:
    return _emb(g), _emb(g)


def _unit(g: torch.Generator, n: int) -> torch.Tensor:
    return F.normalize(_emb(g, n), dim=1)


def _scores(g: torch.Generator, crops: int) -> list[torch.Tensor]:
    protos = _unit(g, K)
    return [_unit(g, N) @ protos.T for _ in range(crops)]


def _dino_module(student: list[torch.Tensor], teacher: list[torch.Tensor], center: torch.Tensor):
    crit = DINOLoss(K, student_temp=0.1)
    crit.center.copy_(center.detach().float())
    return crit(student, teacher, teacher_temp=0.04), crit.center.clone()


def _wmse(*views: torch.Tensor) -> torch.Tensor:
    return wmse_loss(list(views), w_size=32, generator=torch.Generator().manual_seed(3))


def _bmask(g: torch.Generator, *shape: int) -> torch.Tensor:
    m = torch.rand(*shape, generator=g) < 0.5
    m.view(-1)[0] = True
    return m


def _patches(g: torch.Generator) -> tuple:  # student, teacher [B=4, N=8, K], mask [4, 8]
    return _emb(g, 32, K).view(4, 8, K), _emb(g, 32, K).view(4, 8, K), _bmask(g, 4, 8)


def _msn_inputs(g: torch.Generator) -> tuple:  # 2 anchor views per target
    return _emb(g, 2 * N, D), _emb(g, N, D), _emb(g, K, D)


_MIM_CASES: list[Case] = [
    Case("norm_pix_targets", norm_pix_targets, lambda g: (_emb(g, 4 * 8, 12).view(4, 8, 12),)),
    Case("mae_loss", mae_loss, lambda g: (_emb(g, 32, 12).view(4, 8, 12), _emb(g, 32, 12).view(4, 8, 12),
                                          _bmask(g, 4, 8))),
    Case("mae_loss", lambda p, t, m: mae_loss(p, t, m, norm_pix=True),
         lambda g: (_emb(g, 32, 12).view(4, 8, 12), _emb(g, 32, 12).view(4, 8, 12), _bmask(g, 4, 8))),
    Case("crossmae_loss", lambda p, t, i: crossmae_loss(p, t, i, norm_pix=True),
         lambda g: (_emb(g, 12, 12).view(4, 3, 12), _emb(g, 32, 12).view(4, 8, 12),
                    torch.stack([torch.randperm(8, generator=g)[:3] for _ in range(4)]))),
    Case("aim_loss", aim_loss, lambda g: (_emb(g, 28, 12).view(4, 7, 12), _emb(g, 32, 12).view(4, 8, 12),
                                          torch.arange(8)[None] >= torch.tensor([[1], [3], [7], [5]]))),
    Case("nepa_loss", nepa_loss, lambda g: (_emb(g, 32, D).view(4, 8, D), _emb(g, 32, D).view(4, 8, D))),
    Case("simmim_loss", simmim_loss,
         lambda g: (torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g), _bmask(g, 2, 1, 8, 8))),
    Case("simmim_loss", lambda p, x, m: simmim_loss(p, x, m, patch_size=4, eps=1e-5),
         lambda g: (torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g), _bmask(g, 2, 4))),
    Case("ibot_teacher_probs", lambda t, c: ibot_teacher_probs(t, c, 0.04),
         lambda g: (_emb(g, 32, K).view(4, 8, K), 0.1 * torch.randn(K, generator=g))),
    Case("patch_center_update", lambda c, t: patch_center_update(c, t, None, 0.9),
         lambda g: (torch.randn(K, generator=g), _emb(g, 32, K).view(4, 8, K))),
    Case("patch_center_update", lambda c, t, m: patch_center_update(c, t, m, 0.9),
         lambda g: (torch.randn(K, generator=g), _emb(g, 32, K).view(4, 8, K), _bmask(g, 4, 8))),
    Case("ibot_patch_loss", lambda s, t, m: ibot_patch_loss(s, t, m, 0.1),
         lambda g: (lambda s, t, m: (s, F.softmax(t / 0.07, -1), m))(*_patches(g))),
    Case("sinkhorn_teacher", lambda t: sinkhorn_teacher(t, 0.05, 3), lambda g: (_scores(g, 1)[0],)),
    Case("koleo_loss", koleo_loss, lambda g: (_emb(g),)),
    Case("data2vec_targets", lambda *a: data2vec_targets(list(a), 2),
         lambda g: tuple(_emb(g, 32, D).view(4, 8, D) for _ in range(3))),
    Case("data2vec_loss", data2vec_loss, lambda g: (_emb(g, 32, D).view(4, 8, D), _emb(g, 32, D).view(4, 8, D),
                                                    _bmask(g, 4, 8))),
    Case("me_max", me_max, lambda g: (F.softmax(_emb(g, N, K) / 0.5, 1),)),
    Case("prior_kl", lambda p: prior_kl(p, power_law_prior(K)), lambda g: (F.softmax(_emb(g, N, K) / 0.5, 1),)),
    Case("prior_kl", lambda p: prior_kl(p, power_law_prior(K), direction="lightly"),
         lambda g: (F.softmax(_emb(g, N, K) / 0.5, 1),)),
    Case("msn_loss", msn_loss, _msn_inputs),
    Case("msn_loss", lambda a, t, p: msn_loss(a, t, p, use_sinkhorn=False, prior="power_law"), _msn_inputs),
    Case("pmsn_loss", pmsn_loss, _msn_inputs),
]

_SLICES = losses.random_slices(D, 64, torch.Generator().manual_seed(0))


def _views(g: torch.Generator, v: int) -> torch.Tensor:
    return torch.randn(v, N, D, generator=g)


# issue 11's joint-embedding losses (selfsup.losses.{infomax,isotropic_gaussian,covariance,hypersphere})
_CATALOGUE_CASES: list[Case] = [
    Case("mmcr_loss", lambda v: losses.mmcr_loss(v, 0.1), lambda g: (_views(g, 2).transpose(0, 1),)),
    Case("total_coding_rate", losses.total_coding_rate, lambda g: (_emb(g),)),
    Case("emp_ssl_loss", losses.emp_ssl_loss, lambda g: (_views(g, 4),)),
    Case("frossl_loss", lambda a, b: losses.frossl_loss([a, b]), _pair),
    Case("epps_pulley", losses.epps_pulley, lambda g: (_emb(g),)),
    Case("sigreg", lambda z: losses.sigreg(z, _SLICES), lambda g: (_views(g, 2),)),
    Case("multiview_invariance", losses.multiview_invariance, lambda g: (_views(g, 2), _views(g, 3))),
    Case("lejepa_loss", lambda a, b: losses.lejepa_loss(a, b, _SLICES), lambda g: (_views(g, 2), _views(g, 3))),
    Case("visreg_terms", lambda z: losses.visreg_terms(z, _SLICES), lambda g: (_views(g, 2),)),
    Case("visreg_loss", lambda a, b: losses.visreg_loss(a, b, _SLICES), lambda g: (_views(g, 2), _views(g, 1))),
    Case("tico_loss", losses.tico_loss, lambda g: (*_pair(g), 0.1 * torch.eye(D))),
    Case("iter_norm", lambda x: losses.iter_norm(x, 4), lambda g: (_emb(g, 64, D),)),
    Case("vibcreg_loss", losses.vibcreg_loss, _pair),
    Case("alignment_loss", losses.alignment_loss, _pair),
    Case("uniformity_loss", losses.uniformity_loss, lambda g: (_emb(g),)),
    Case("align_uniform_loss", losses.align_uniform_loss, _pair),
    Case("directclr_loss", lambda a, b: losses.directclr_loss(a, b, 8), _pair),
    Case("macl_loss", losses.macl_loss, _pair),
    Case("co2_loss", losses.co2_loss, _pair),
    Case("co2_loss", losses.co2_loss, lambda g: (*_pair(g), _emb(g, K))),
]

# issue 10's teacher distillation (selfsup.losses.feature_distillation): student, teacher, queue of teacher rows
_DISTILL_CASES: list[Case] = [
    Case("queue_distillation_loss", losses.queue_distillation_loss,
         lambda g: (*_pair(g), F.normalize(_emb(g, K), dim=1))),
    Case("cosine_distillation_loss", losses.cosine_distillation_loss, _pair),
]

# issue 11's instance discrimination (selfsup.losses.instance): features, bank rows [B, 1 + K, D], targets
_INSTANCE_CASES: list[Case] = [
    Case("nce_normalizer", lambda f, r: losses.nce_normalizer(f, r, K, 0.07),
         lambda g: (_emb(g), F.normalize(torch.randn(N, 5, D, generator=g), dim=2))),
    Case("npid_nce_loss", lambda f, r: losses.npid_nce_loss(f, r, 2.0 * K, K, 0.07),
         lambda g: (_emb(g), F.normalize(torch.randn(N, 5, D, generator=g), dim=2))),
    Case("npid_softmax_loss", lambda f, b, t: losses.npid_softmax_loss(f, b, t, 0.07),
         lambda g: (_emb(g), _unit(g, K), torch.randint(0, K, (N,), generator=g))),
    Case("exemplar_loss", losses.exemplar_loss, lambda g: (_emb(g, N, K), torch.randint(-1, K, (N,), generator=g))),
    Case("counting_loss", lambda d, t, y: losses.counting_loss(d, t, y, 10.0),
         lambda g: (_emb(g), torch.randn(N, 4, D, generator=g), _emb(g))),
]

# issue 11's spatial pretext tasks (selfsup.losses.pretext): logits and targets; PIRL's g, f, bank rows / bank
_PRETEXT_CASES: list[Case] = [
    Case("pretext_cross_entropy", losses.pretext_cross_entropy,
         lambda g: (_emb(g, N, 8), torch.randint(0, 8, (N,), generator=g))),
    Case("pirl_loss", lambda a, b, r: losses.pirl_loss(a, b, r, K, (2.0 * K, 3.0 * K), 0.07, 0.5),
         lambda g: (*_pair(g), F.normalize(torch.randn(N, 5, D, generator=g), dim=2))),
    Case("pirl_softmax_loss", lambda a, b, m, t: losses.pirl_softmax_loss(a, b, m, t, 0.07, 0.5),
         lambda g: (*_pair(g), _unit(g, K), torch.randint(0, K, (N,), generator=g))),
]


# issue 11's SelfPatch (selfsup.losses.selfpatch): patch logits per view [B, N, K] and the patch center; tokens
_SELFPATCH_CASES: list[Case] = [
    Case("selfpatch_loss", lambda s, t, c: losses.selfpatch_loss(s, t, c, 0.1, 0.04),
         lambda g: ([_emb(g, 32, K).view(4, 8, K), _emb(g, 8, K).view(4, 2, K)],
                    [_emb(g, 32, K).view(4, 8, K), _emb(g, 8, K).view(4, 2, K)], _emb(g, 1, K)[0])),
    Case("select_positives", lambda t: losses.select_positives(t, (3, 4), 4), lambda g: (_emb(g, 24, D).view(2, 12, D),)),
]


def _all4one(*x: torch.Tensor) -> tuple:
    pairs = [tuple(x[i:i + 2]) for i in range(0, 12, 2)]
    return tuple(losses.all4one_loss(*pairs).values())


# issue 11's SMoG and All4One (selfsup.losses.{grouping,neighbor_sets})
_JOINT_B_CASES: list[Case] = [
    Case("smog_assign", losses.smog_assign, lambda g: (_emb(g), _emb(g, 5))),
    Case("smog_group_update", lambda z, c: losses.smog_group_update(z, c, 0.9), lambda g: (_emb(g), _emb(g, 5))),
    Case("smog_loss", lambda p, z, t, c: losses.smog_loss(p, z, t, c, 0.9, 0.1),
         lambda g: (*_pair(g), _emb(g), _emb(g, 5))),
    Case("feature_contrast", losses.feature_contrast, lambda g: (*_pair(g), *_pair(g))),
    Case("all4one_loss", _all4one, lambda g: tuple(_emb(g) for _ in range(12))),
]

# issue 11's joint-embedding part A (selfsup.losses.{relational,siamese}): embeddings and a queue / support set
_CATALOGUE_B_CASES: list[Case] = [
    Case("ressl_loss", losses.ressl_loss, lambda g: (*_pair(g), _emb(g, K))),
    Case("nn_byol_loss", losses.nn_byol_loss, lambda g: (*_pair(g), *_pair(g), _emb(g, K))),
    Case("nn_simsiam_loss", losses.nn_simsiam_loss, lambda g: (*_pair(g), *_pair(g), _emb(g, K))),
    Case("fastsiam_loss", losses.fastsiam_loss, lambda g: ([_emb(g) for _ in range(4)], [_emb(g) for _ in range(4)])),
]

# issue 11's dense methods (selfsup.losses.dense): feature maps flattened to [B, S, D]
_DENSE_CASES: list[Case] = [
    Case("densecl_loss", lambda q, k, m, n: losses.densecl_loss(q, k, m, n, 0.2),
         lambda g: (_emb(g).view(4, 8, D), _emb(g, 24).view(4, 6, D), torch.randint(0, 6, (4, 8), generator=g),
                    _emb(g, K))),
    Case("vicregl_loss", lambda z, m, c: losses.vicregl_loss(z, m, c, 2, num_matches=(4, 2)),
         lambda g: ([_emb(g), _emb(g)], [_emb(g, N * 6, 4).view(N, 6, 4) for _ in range(2)],
                    [torch.rand(N, 6, 2, generator=g) for _ in range(2)])),
    Case("detcon_loss", lambda a, b, i: losses.detcon_loss(a, b, a, b, i, i, 0.1),
         lambda g: (_emb(g).view(8, 4, D), _emb(g).view(8, 4, D), torch.randint(0, 3, (8, 4), generator=g))),
    Case("mask_pool", losses.mask_pool, lambda g: (torch.randn(2, D, 4, 4, generator=g),
                                                   torch.rand(2, 5, 4, 4, generator=g))),
]

# issue 11's pixel-restoring origins (selfsup.losses.{colour,restoration}): bin logits, ab colours, images, masks
def _bins() -> torch.Tensor:
    return losses.ab_gamut_bins().float()  # cached after the first call


_ORIGINS_PIXEL_CASES: list[Case] = [
    Case("colorization_loss", lambda lg, ab, w: losses.colorization_loss(lg, ab, _bins(), w),
         lambda g: (torch.randn(2, len(_bins()), 3, 3, generator=g), 80 * torch.rand(2, 2, 3, 3, generator=g) - 40,
                    0.5 + torch.rand(len(_bins()), generator=g))),
    Case("soft_encode_ab", lambda ab: losses.soft_encode_ab(ab, _bins())[1],
         lambda g: (80 * torch.rand(N, 2, generator=g) - 40,)),
    Case("annealed_mean", lambda lg: losses.annealed_mean(lg, _bins()),
         lambda g: (torch.randn(2, len(_bins()), 3, 3, generator=g),)),
    Case("context_encoder_loss", lambda p, x, h: losses.context_encoder_loss(p, x, h, 1),
         lambda g: (torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g),
                    torch.rand(2, 1, 8, 8, generator=g) < 0.3)),
    Case("denoising_loss", lambda z, x, j: losses.denoising_loss(z, x, j, 2.0, 0.5),
         lambda g: (torch.randn(2, 3, 8, 8, generator=g), torch.randn(2, 3, 8, 8, generator=g),
                    torch.rand(2, 1, 8, 8, generator=g) < 0.25)),
    Case("inpainting_discriminator_loss", losses.inpainting_discriminator_loss,
         lambda g: (3 * torch.randn(N, generator=g), 3 * torch.randn(N, generator=g))),
    Case("inpainting_generator_loss", losses.inpainting_generator_loss, lambda g: (3 * torch.randn(N, generator=g),)),
]

CASES: list[Case] = [
    Case("nt_xent", lambda a, b: nt_xent(a, b, 0.1), _pair),
    Case("info_nce", lambda q, k, n: info_nce(q, k, n, 0.1), lambda g: (*_pair(g), _emb(g, K))),
    Case("supcon", lambda v, y: supcon(v, y, 0.1), lambda g: ([_emb(g), _emb(g), _emb(g)],
                                                             torch.randint(0, 4, (N,), generator=g))),
    Case("supcon", lambda v: supcon(v, None, 0.1), lambda g: ([_emb(g), _emb(g)],)),
    Case("dcl", lambda a, b: dcl(a, b, 0.1), _pair),
    Case("dcl", lambda a, b: dcl(a, b, 0.1, sigma=0.5), _pair),
    Case("moco_infonce", lambda q, k, m: moco_infonce(q, k, m, 0.1), lambda g: (*_pair(g), _emb(g, K))),
    Case("moco_v3_loss", lambda *x: moco_v3_loss(*x, temperature=0.2), lambda g: (*_pair(g), *_pair(g))),
    Case("relic_terms", lambda *x: relic_terms(*x, temperature=0.1), lambda g: (*_pair(g), *_pair(g))),
    Case("relic_loss", lambda a, b: relic_loss(a, b, temperature=0.1, alpha=0.5), _pair),
    Case("margin_contrastive", margin_contrastive, lambda g: (*_pair(g), torch.rand(N, generator=g) < 0.5)),
    Case("triplet", triplet, lambda g: (*_pair(g), _emb(g))),
    Case("batch_margin_contrastive", batch_margin_contrastive, _pair),
    *[Case("batch_triplet", lambda a, b, m=m: batch_triplet(a, b, mining=m), _pair) for m in ("all", "hard", "semihard")],
    *[Case("unified_contrastive", lambda a, b, p=p: unified_contrastive(a, b, unified_preset(p, tau=0.1)), _pair)
      for p in UNIFIED_PRESETS],
    Case("unified_contrastive", lambda a, b: unified_contrastive(a, b, torch.log, torch.exp, negatives="other"), _pair),
    Case("nearest_neighbour", lambda z, s: nearest_neighbour(z, s, return_index=True),
         lambda g: (_emb(g), _emb(g, K))),
    Case("nnclr_loss", lambda z, p, s: nnclr_loss(z, p, s, 0.1), lambda g: (*_pair(g), _emb(g, K))),
    Case("msf_neighbours", lambda t, b, c: msf_neighbours(t, b, c, k=3), lambda g: (_emb(g), _unit(g, K), _unit(g, N))),
    Case("msf_regression", msf_regression,
         lambda g: (_emb(g), _unit(g, K), _unit(g, N), torch.randint(0, K + N, (N, 3), generator=g))),
    Case("msf_loss", lambda q, t, b: msf_loss(q, t, b, k=3), lambda g: (*_pair(g), _emb(g, K))),
    Case("byol_loss", byol_loss, _pair),
    Case("negative_cosine", negative_cosine, _pair),
    Case("simsiam_loss", simsiam_loss, lambda g: (*_pair(g), *_pair(g))),
    Case("dino_loss", lambda s, t, c: dino_loss(s, t, c, 0.1, 0.04),
         lambda g: ([_emb(g, N, K) for _ in range(4)], [_emb(g, N, K) for _ in range(2)], 0.1 * torch.randn(K, generator=g))),
    Case("dino_center_update", lambda c, t: dino_center_update(c, t, 0.9),
         lambda g: (torch.randn(K, generator=g), [_emb(g, N, K), _emb(g, N, K)])),
    Case("DINOLoss", _dino_module,
         lambda g: ([_emb(g, N, K) for _ in range(3)], [_emb(g, N, K) for _ in range(2)], 0.1 * torch.randn(K, generator=g))),
    Case("correlation_update", lambda c, z: correlation_update(c, z, 0.3),
         lambda g: (torch.eye(D) + 0.1 * torch.randn(D, D, generator=g), _emb(g))),
    Case("directpred_predictor", lambda c: directpred_predictor(c, 0.1),
         lambda g: ((lambda a: a @ a.T / N)(_emb(g, D, N)),)),
    Case("off_diagonal", off_diagonal, lambda g: (_emb(g, D, D),)),
    Case("vicreg_terms", vicreg_terms, _pair),
    Case("vicreg_loss", vicreg_loss, _pair),
    Case("barlow_twins_loss", barlow_twins_loss, _pair),
    Case("cholesky_whiten", cholesky_whiten, lambda g: (_emb(g, 64, 8),)),
    Case("wmse_loss", _wmse, lambda g: (_emb(g, 64, 8), _emb(g, 64, 8))),
    Case("sinkhorn_knopp", lambda s: sinkhorn_knopp(s, 0.05, 3), lambda g: (_scores(g, 1)[0],)),
    Case("swapped_prediction", lambda s, c: swapped_prediction(s, c, 0.1),
         lambda g: (_scores(g, 3), [F.softmax(x / 0.05, 1) for x in _scores(g, 2)])),
    Case("swav_loss", lambda s: swav_loss(s, n_assign=2, temperature=0.1), lambda g: (_scores(g, 3),)),
    Case("swav_loss", lambda s, q: swav_loss(s, 2, 0.1, queue_scores=[q, None]),
         lambda g: (_scores(g, 2), _scores(g, 1)[0])),
    Case("nearest_prototype", nearest_prototype, lambda g: (_unit(g, N), _unit(g, K))),
    Case("spherical_kmeans", lambda x, c: spherical_kmeans(x, c, n_iters=3), lambda g: (_unit(g, N), _unit(g, 5))),
    *_MIM_CASES,
    *_ORIGINS_PIXEL_CASES,
    *_CATALOGUE_CASES,
    *_DISTILL_CASES,
    *_INSTANCE_CASES,
    *_SELFPATCH_CASES,
    *_PRETEXT_CASES,
    *_DENSE_CASES,
    *_CATALOGUE_B_CASES,
    *_JOINT_B_CASES,
]


def public_names() -> set[str]:
    """``selfsup.losses.__all__`` plus every public function or class defined in a ``selfsup.losses`` module."""
    names = set(losses.__all__)
    for info in pkgutil.iter_modules(losses.__path__):
        module = importlib.import_module(f"selfsup.losses.{info.name}")
        names |= {name for name, obj in vars(module).items()
                  if not name.startswith("_") and (inspect.isfunction(obj) or inspect.isclass(obj))
                  and obj.__module__ == module.__name__}
    return names


def test_every_public_loss_has_a_precision_case():
    covered = {c.name for c in CASES}
    missing = sorted(public_names() - covered - set(NOT_LOSSES) - set(COVERED_BY))
    assert not missing, f"add a case to tests/test_loss_precision.py for: {', '.join(missing)}"
    assert set(COVERED_BY.values()) <= covered


def _map(x: Any, f: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Apply ``f`` to every floating tensor of a (nested) list/tuple of arguments."""
    if isinstance(x, torch.Tensor):
        return f(x) if x.is_floating_point() else x
    if isinstance(x, (list, tuple)):
        return type(x)(_map(v, f) for v in x)
    return x


def _tensors(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for v in out for t in _tensors(v)] if isinstance(out, (list, tuple)) else []


def _leaves(args: tuple) -> list[torch.Tensor]:
    return [t for t in _tensors(args) if t.requires_grad]


def _check_matches(got: Any, want: Any) -> None:
    got_t, want_t = _tensors(got), _tensors(want)
    assert len(got_t) == len(want_t) > 0
    for a, b in zip(got_t, want_t):
        if b.is_floating_point():
            assert a.dtype == torch.float32, f"output is {a.dtype} under autocast, expected float32"
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        else:
            assert torch.equal(a, b)  # indices / assignments must not change either


@pytest.mark.parametrize("case", CASES, ids=[f"{c.name}-{i}" for i, c in enumerate(CASES)])
def test_loss_under_bf16_autocast_equals_fp32(case: Case):
    inputs = case.inputs(torch.Generator().manual_seed(0))

    # (a) fp32 inputs under autocast: the loss's own matmuls must not drop to bf16; gradients too.
    ref_args = _map(inputs, lambda t: t.clone().requires_grad_())
    want = case.fn(*ref_args)
    amp_args = _map(inputs, lambda t: t.clone().requires_grad_())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = case.fn(*amp_args)
    _check_matches(got, want)
    differentiable = [t for t in _tensors(want) if t.requires_grad]
    if differentiable:
        sum(t.float().sum() for t in differentiable).backward()
        sum(t.float().sum() for t in _tensors(got) if t.requires_grad).backward()
        for a, b in zip(_leaves(amp_args), _leaves(ref_args)):
            if b.grad is not None:
                torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-5)

    # (b) bf16 inputs (what a projector returns under autocast), bf16-exact values on both sides.
    want = case.fn(*_map(inputs, lambda t: t.bfloat16().float()))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = case.fn(*_map(inputs, lambda t: t.bfloat16()))
    _check_matches(got, want)
