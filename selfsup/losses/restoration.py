"""Restoring removed pixels: the context encoder's weighted L2 (Pathak et al. 2016, "Context Encoders: Feature
Learning by Inpainting", CVPR, Sec. 3.2) and the denoising autoencoder's reconstruction error (Vincent et al.
2008, "Extracting and Composing Robust Features with Denoising Autoencoders", ICML; the emphasised variant of
Vincent et al. 2010, JMLR, Sec. 4.3), as pure functions of tensors; with the context encoder's optional
adversarial terms (Pathak et al. Sec. 3.2, Eq. 2: the GAN loss of Goodfellow et al. 2014 on the predicted region).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.losses.precision import fp32_loss

__all__ = ["overlap_weights", "context_encoder_loss", "denoising_loss", "inpainting_discriminator_loss",
           "inpainting_generator_loss"]


def overlap_weights(hole: torch.Tensor, overlap: int, overlap_weight: float = 10.0) -> torch.Tensor:
    """Per-pixel L2 weights ``[B, 1, H, W]`` of the context encoder: 1 inside the dropped ``hole`` (bool
    ``[B, 1, H, W]``), ``overlap_weight`` on the visible band of ``overlap`` pixels around it (its square
    dilation minus the hole), 0 elsewhere. For a central square hole this is the official ``train.lua``'s
    ``wtl2Matrix`` (``overlapPred=4``, ``overlapL2Weight=10``) on the predicted centre, hole plus band."""
    hole = hole.float()
    if overlap <= 0:
        return hole
    region = F.max_pool2d(hole, 2 * overlap + 1, stride=1, padding=overlap)
    return hole + overlap_weight * (region - hole)


@fp32_loss
def context_encoder_loss(pred: torch.Tensor, target: torch.Tensor, hole: torch.Tensor, overlap: int = 0,
                         overlap_weight: float = 10.0) -> torch.Tensor:
    """The context encoder's reconstruction loss (Pathak et al. Eq. 1) with the official border weighting:

        L_rec = 1/B sum_i [ sum_{c,p} W_ip (pred_icp - x_icp)^2 / (C |R_i|) ],

    where ``W`` is :func:`overlap_weights` (1 in the hole, ``overlap_weight`` on the ``overlap``-pixel band
    around it) and ``R_i`` is image i's predicted region (hole plus band). With a central hole this is
    ``train.lua``'s ``(input_center - real_center)^2 * wtl2Matrix`` averaged over the centre crop.

    pred, target: ``[B, C, H, W]``; hole: bool ``[B, 1, H, W]`` (True: dropped from the input).
    """
    w = overlap_weights(hole, overlap, overlap_weight).to(pred.dtype)
    region = (w > 0).flatten(1).sum(1).clamp_min(1) * pred.shape[1]
    err = (w * (pred - target).square()).flatten(1).sum(1)
    return (err / region).mean()


@fp32_loss
def denoising_loss(recon: torch.Tensor, clean: torch.Tensor, corrupted: torch.Tensor, alpha: float = 1.0,
                   beta: float = 1.0) -> torch.Tensor:
    """The denoising autoencoder's squared reconstruction error of the clean input (Vincent et al. 2008,
    Sec. 2.3), with the corrupted components emphasised (Vincent et al. 2010, Sec. 4.3):

        L = 1/(B C H W) sum_i [ alpha sum_{j in J(x~_i)} (z_ij - x_ij)^2 + beta sum_{j not in J(x~_i)} (z_ij - x_ij)^2 ]

    with ``J(x~)`` the corrupted (here: zeroed) pixels, all channels of each. ``alpha = beta = 1`` is the plain
    DAE of the 2008 paper.

    recon, clean: ``[B, C, H, W]``; corrupted: bool ``[B, 1, H, W]``.
    """
    w = torch.where(corrupted, alpha, beta).to(recon.dtype)
    return (w * (recon - clean).square()).mean()


@fp32_loss
def inpainting_discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """The discriminator's side of the context encoder's adversarial loss (Pathak et al. Eq. 2, maximised by D;
    ``train.lua``'s ``fDx``: BCE with label 1 on real, 0 on predicted regions), as a loss to minimise:

        L_D = -1/B sum_i log D(x_i) - 1/B sum_i log(1 - D(F(x'_i))),   D = sigmoid(logit),

    i.e. ``softplus(-real_logits).mean() + softplus(fake_logits).mean()``. ``real_logits``: D's logits ``[B]``
    on the true regions; ``fake_logits``: on the predicted regions (the prediction detached for D's update)."""
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


@fp32_loss
def inpainting_generator_loss(fake_logits: torch.Tensor) -> torch.Tensor:
    """The context encoder's side of the adversarial loss, non-saturating (``train.lua``'s ``fGx``: BCE with
    label 1 on the predicted regions, "fake labels are real for generator cost"):

        L_adv = -1/B sum_i log D(F(x'_i)) = softplus(-fake_logits).mean().

    The joint loss of Pathak et al. Eq. 3 is ``lambda_rec L_rec + lambda_adv L_adv`` (0.999 and 0.001, Sec. 3.4)."""
    return F.softplus(-fake_logits).mean()
