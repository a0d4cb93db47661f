"""Colorization as classification over quantised ab colours (Zhang, Isola & Efros 2016, "Colorful Image
Colorization", ECCV, Sec. 2.1-2.3), as pure functions of tensors.

- :func:`ab_gamut_bins`: the ab plane quantised on a grid of 10; the bins an sRGB colour falls in.
- :func:`soft_encode_ab`: each ground-truth ab to its 5 nearest bins, weighted by a Gaussian (sigma 5).
- :func:`ab_prior` / :func:`rebalancing_weights`: the empirical colour prior and the class-rebalancing weights.
- :func:`colorization_loss`: the class-rebalanced multinomial cross-entropy (Eq. 2).
- :func:`annealed_mean`: the point estimate (Eq. 5), T = 0.38.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from selfsup.colourspace import rgb_to_lab
from selfsup.losses.precision import fp32_loss

__all__ = ["ab_gamut_bins", "soft_encode_ab", "ab_prior", "rebalancing_weights", "colorization_loss",
           "annealed_mean"]


@functools.lru_cache(maxsize=4)
def _gamut_bins(grid: float, levels: int) -> torch.Tensor:
    g = torch.linspace(0, 1, levels, dtype=torch.float64)
    u, v = (t.reshape(-1) for t in torch.meshgrid(g, g, indexing="ij"))
    faces = []
    for axis in range(3):  # the six faces of the RGB cube
        for value in (0.0, 1.0):
            cols = [u, v]
            cols.insert(axis, torch.full_like(u, value))
            faces.append(torch.stack(cols, 0))
    rgb = torch.cat(faces, 1).view(1, 3, 1, -1)
    ab = rgb_to_lab(rgb)[0, 1:, 0].T  # [n, 2]
    cells = torch.unique(torch.round(ab / grid).long(), dim=0)  # sorted by a, then b
    return cells.double() * grid


def ab_gamut_bins(grid: float = 10.0, levels: int = 256) -> torch.Tensor:
    """The in-gamut ab bin centres ``[Q, 2]`` (float64; multiples of ``grid``, sorted by a then b).

    A bin is kept when it is the nearest grid point of at least one 8-bit sRGB colour (``levels`` values per
    channel). Only the surface of the RGB cube is sampled (6 x 256^2 colours): the ab projection of the gamut
    solid equals that of its boundary, since Lab is a homeomorphic image of the cube and every line along L
    meets the solid in a set whose end points lie on its boundary. With grid 10 this gives **Q = 261** bins
    (all 256^3 8-bit colours give the same 261). Zhang et al. keep 313 (``pts_in_hull.npy``, whose derivation
    is not published); their extra 52 bins lie on the edge of the sRGB gamut, e.g. from a looser in-gamut test,
    and receive (almost) no pixels of sRGB images, so they only widen the output layer.
    """
    return _gamut_bins(float(grid), int(levels)).clone()


def soft_encode_ab(ab: torch.Tensor, bins: torch.Tensor, k: int = 5,
                   sigma: float = 5.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft encoding of ground-truth colours (Zhang et al. Sec. 2.1): ``ab [P, 2]`` to its ``k`` nearest bins
    ``idx [P, k]`` (nearest first) with weights ``w [P, k]``,

        w_j = exp(-||ab - c_j||^2 / (2 sigma^2)) / sum_{j' in kNN} exp(-||ab - c_j'||^2 / (2 sigma^2)),

    the row ``Z`` of the paper as a sparse vector (``Z_q = w_j`` for ``q = idx_j``, 0 elsewhere)."""
    d2 = torch.cdist(ab.double(), bins.to(ab.device).double()).square()
    near, idx = d2.topk(k, dim=1, largest=False)
    w = torch.softmax(-near / (2 * sigma ** 2), dim=1)
    return idx, w.to(torch.float64 if ab.dtype == torch.float64 else torch.float32)


def ab_prior(ab: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """The empirical colour distribution ``p [Q]`` (float64, sums to 1): the share of ``ab [P, 2]`` pixels whose
    nearest bin is each bin (Zhang et al. Sec. 2.2, estimated on ImageNet's training set there)."""
    nearest = torch.cdist(ab.double(), bins.to(ab.device).double()).argmin(1)
    counts = torch.bincount(nearest, minlength=bins.shape[0]).double()
    return counts / counts.sum().clamp_min(1)


def rebalancing_weights(prior: torch.Tensor, bins: torch.Tensor, lam: float = 0.5,
                        sigma: float = 5.0) -> torch.Tensor:
    """Class-rebalancing weights ``w [Q]`` (Zhang et al. Eq. 4):

        p~ = normalise(G_sigma * p),   w ∝ ((1 - lam) p~ + lam / Q)^-1,   E_{p~}[w] = sum_q p~_q w_q = 1,

    where ``G_sigma * p`` smooths the prior with a Gaussian of ``sigma`` over the bin centres (the prior on the
    ab grid convolved with the kernel, then restricted to the in-gamut bins and renormalised)."""
    bins = bins.to(prior.device).double()
    kernel = torch.exp(-torch.cdist(bins, bins).square() / (2 * sigma ** 2))
    smooth = kernel @ prior.double()
    smooth = smooth / smooth.sum()
    w = 1.0 / ((1 - lam) * smooth + lam / bins.shape[0])
    return w / (smooth * w).sum()


@fp32_loss
def colorization_loss(logits: torch.Tensor, ab: torch.Tensor, bins: torch.Tensor,
                      class_weights: torch.Tensor | None = None, k: int = 5, sigma: float = 5.0) -> torch.Tensor:
    """The class-rebalanced multinomial cross-entropy (Zhang et al. Eq. 2), averaged over pixels and images:

        L = -1/(B h w) sum_{b,h,w} v(Z_{h,w}) sum_q Z_{h,w,q} log Zhat_{h,w,q},   v(Z) = w_{argmax_q Z_q},

    with ``Zhat = softmax(logits)`` over ``Q`` bins, ``Z`` the soft encoding of the true ``ab``
    (:func:`soft_encode_ab`, ``k`` nearest bins, Gaussian ``sigma``) and ``w`` the class weights
    (:func:`rebalancing_weights`; None: all 1). The paper sums over pixels; the mean differs by the constant
    ``h w`` and keeps the scale independent of the resolution.

    logits: ``[B, Q, h, w]``; ab: ``[B, 2, h, w]`` (the target colours at the prediction's resolution); bins:
    ``[Q, 2]``; class_weights: ``[Q]``.
    """
    b, q, h, w = logits.shape
    if ab.shape != (b, 2, h, w) or bins.shape != (q, 2):
        raise ValueError(f"colorization_loss: logits {tuple(logits.shape)}, ab {tuple(ab.shape)} and bins "
                         f"{tuple(bins.shape)} disagree (want [B, Q, h, w], [B, 2, h, w], [Q, 2])")
    logp = F.log_softmax(logits, dim=1).permute(0, 2, 3, 1).reshape(-1, q)
    idx, z = soft_encode_ab(ab.permute(0, 2, 3, 1).reshape(-1, 2), bins, k, sigma)
    ce = -(z.to(logp.dtype) * logp.gather(1, idx)).sum(1)
    if class_weights is not None:
        ce = ce * class_weights.to(logp)[idx[:, 0]]
    return ce.mean()


@fp32_loss
def annealed_mean(logits: torch.Tensor, bins: torch.Tensor, temperature: float = 0.38) -> torch.Tensor:
    """The annealed-mean colour (Zhang et al. Eq. 5): ``ab [B, 2, h, w] = sum_q f_T(Zhat)_q c_q`` with

        f_T(z) = exp(log z / T) / sum_q exp(log z_q / T),

    i.e. ``softmax(logits / T)`` when ``Zhat = softmax(logits)``; T = 1 is the mean, T -> 0 the mode."""
    p = torch.softmax(logits / temperature, dim=1)
    return torch.einsum("bqhw,qc->bchw", p, bins.to(p))
