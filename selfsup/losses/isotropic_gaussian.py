"""Sketched isotropic-Gaussian regularisers: SIGReg of LeJEPA and VISReg.

Both test the embedding distribution against :math:`\\mathcal{N}(0, I)` along random 1-D projections
(Cramér-Wold: a distribution is determined by all of its 1-D marginals). The projections ("slices") are an
explicit input, drawn by :func:`random_slices` from a generator in the main process: seed it identically
on every rank (e.g. with the global step) and every rank tests the same directions, so the DDP statistic
equals the single-process one on the global batch.
"""

from __future__ import annotations

import math

import torch

from selfsup.losses.distributed import gather
from selfsup.losses.precision import fp32_loss


def random_slices(dim: int, num_slices: int, generator: torch.Generator | None = None,
                  dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> torch.Tensor:
    """``[dim, num_slices]`` directions uniform on the unit sphere (normalised Gaussian columns), drawn on the
    CPU from ``generator`` (the same numbers on every rank and device when it is seeded the same)."""
    a = torch.randn(dim, num_slices, generator=generator, dtype=torch.float64)
    return (a / a.norm(dim=0, keepdim=True)).to(dtype=dtype, device=device)


def _views(z: torch.Tensor, name: str) -> torch.Tensor:
    if z.dim() == 2:
        z = z.unsqueeze(0)
    if z.dim() != 3 or z.shape[1] < 2:
        raise ValueError(f"{name} expects embeddings [N >= 2, D] or [V, N >= 2, D], got shape {tuple(z.shape)}")
    return z


def _gather_batch(z: torch.Tensor) -> torch.Tensor:
    """Gather ``[V, n, D]`` along the batch axis (with gradient)."""
    return gather(z.transpose(0, 1).contiguous()).transpose(0, 1)


@fp32_loss
def epps_pulley(x: torch.Tensor, knots: int = 17, t_max: float = 3.0, distributed: bool = True) -> torch.Tensor:
    r"""Epps-Pulley statistic of each column of ``x`` (``[..., N, M]``: N samples of M 1-D projections) against
    :math:`\mathcal{N}(0, 1)` (Epps & Pulley, 1983; LeJEPA, Balestriero & LeCun, 2025, Section 4.2):

    .. math:: T = N \int_{-t_{max}}^{t_{max}} \big|\hat\varphi_N(t) - \varphi(t)\big|^2 w(t)\, dt,
              \qquad \hat\varphi_N(t) = \frac1N \sum_{i=1}^N e^{\mathrm{i} t x_i},
              \quad \varphi(t) = w(t) = e^{-t^2/2},

    by the trapezoidal rule on ``knots`` points of :math:`[0, t_{max}]`, doubled (the integrand is even), as
    the official ``lejepa`` ``EppsPulley`` (17 knots, :math:`t_{max} = 3`). Returns ``[..., M]``. Under DDP
    :math:`\hat\varphi_N` and :math:`N` are those of the global batch (the per-rank sums of
    :math:`\cos tx, \sin tx` are gathered with gradient).
    """
    if knots < 2 or t_max <= 0:
        raise ValueError(f"epps_pulley needs knots >= 2 and t_max > 0, got {knots} and {t_max}")
    t = torch.linspace(0.0, t_max, knots, dtype=x.dtype, device=x.device)
    phi = torch.exp(-t.square() / 2)
    weights = torch.full_like(t, 2 * t_max / (knots - 1))
    weights[0] = weights[-1] = t_max / (knots - 1)
    xt = x.unsqueeze(-1) * t  # [..., N, M, knots]
    cos_sum, sin_sum = xt.cos().sum(-3), xt.sin().sum(-3)
    n = x.shape[-2]
    if distributed:
        sums = gather(torch.stack([cos_sum, sin_sum]).unsqueeze(0))  # [world, 2, ..., M, knots]
        n = n * sums.shape[0]
        cos_sum, sin_sum = sums.sum(0)
    err = (cos_sum / n - phi).square() + (sin_sum / n).square()
    return n * (err * weights * phi).sum(-1)


@fp32_loss
def sigreg(z: torch.Tensor, slices: torch.Tensor, knots: int = 17, t_max: float = 3.0,
           distributed: bool = True) -> torch.Tensor:
    r"""SIGReg, sketched isotropic Gaussian regularisation (LeJEPA, Balestriero & LeCun, 2025, Section 4):
    the :func:`epps_pulley` statistic of the embeddings projected on each slice, averaged over the M slices
    (and over the views when ``z`` is ``[V, N, D]``; each view is its own sample):

    .. math:: \mathrm{SIGReg}(Z) = \frac1M \sum_{m=1}^M T\big(\{a_m^\top z_i\}_{i=1}^N\big).

    ``slices`` ``[D, M]`` are unit directions from :func:`random_slices` (paper default M = 1024), fresh each
    step and identical on all ranks. :math:`T \approx 0` for Gaussian samples and grows with N for any
    other distribution (a collapsed batch gives :math:`T \approx N \int (1-\varphi)^2 \varphi`).
    """
    z = _views(z, "sigreg")
    if slices.dim() != 2 or slices.shape[0] != z.shape[-1]:
        raise ValueError(f"sigreg: slices must be [D={z.shape[-1]}, M], got shape {tuple(slices.shape)}")
    return epps_pulley(z @ slices.to(z.dtype), knots, t_max, distributed).mean()


@fp32_loss
def multiview_invariance(global_views: torch.Tensor, local_views: torch.Tensor | None = None) -> torch.Tensor:
    r"""LeJEPA's prediction loss (Balestriero & LeCun, 2025; the official ``MINIMAL.md`` loop): every view,
    global and local, is
    pulled to the mean :math:`\mu_i` of the :math:`V_g` global views of its image,
    :math:`\frac{1}{V N D} \sum_{v,i} \lVert z_{v,i} - \mu_i \rVert^2` over all :math:`V = V_g + V_l` views."""
    g = _views(global_views, "multiview_invariance")
    views = g if local_views is None else torch.cat([g, _views(local_views, "multiview_invariance")])
    return (views - g.mean(0)).square().mean()


@fp32_loss
def lejepa_loss(global_views: torch.Tensor, local_views: torch.Tensor | None, slices: torch.Tensor,
                lambda_: float = 0.05, knots: int = 17, t_max: float = 3.0, distributed: bool = True) -> torch.Tensor:
    r"""LeJEPA (Balestriero & LeCun, 2025; the official ``MINIMAL.md`` loop):
    :math:`(1-\lambda)\,\mathcal{L}_{pred} + \lambda\, \mathrm{SIGReg}`, with :func:`multiview_invariance` as
    :math:`\mathcal{L}_{pred}` and :func:`sigreg` over all views (``[Vg, N, D]`` global, ``[Vl, N, D]`` local
    or ``None``); :math:`\lambda = 0.05`, 17 knots, :math:`t_{max} = 3`, 1024 slices by default."""
    views = global_views if local_views is None else torch.cat([global_views, local_views])
    reg = sigreg(views, slices, knots, t_max, distributed)
    return (1 - lambda_) * multiview_invariance(global_views, local_views) + lambda_ * reg


@fp32_loss
def visreg_terms(z: torch.Tensor, slices: torch.Tensor, eps: float = 1e-4,
                 distributed: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""The three VISReg regularisers (Wu, Balestriero & Levine, 2026, "VISReg: Variance-Invariance-Sketching
    Regularization for JEPA training", arXiv 2606.02572) of ``z`` ``[V, N, D]`` (each view its own sample set).
    Provenance: the scale term and the scale/shape decoupling are as on the paper's project page; the shape
    and center terms follow lightly's ``VISRegLoss``, which cites the paper's Eqs. (2), (5), (6) and
    Algorithm 1 (the paper's full text and official code could not be opened here).

    - scale :math:`\frac1D \sum_j (1 - \sigma_j(Z))^2` (biased per-dimension std);
    - shape: the squared 1-D 2-Wasserstein distance between each slice of the standardised embeddings
      :math:`\tilde z = (z - \mu)/(\mathrm{sg}[\sigma] + \epsilon)` and :math:`\mathcal{N}(0, 1)`,
      :math:`\frac{1}{MN} \sum_{m,k} (\tilde x^{(m)}_{(k)} - \Phi^{-1}(\frac{k}{N+1}))^2` with
      :math:`\tilde x_{(k)}` the k-th smallest projection (stop-gradient on :math:`\sigma`, so shape does not
      fight scale);
    - center :math:`\frac1D \sum_j \mu_j^2`.

    Returns ``(scale, shape, center)``. Under DDP the statistics and the sort use the global batch.
    """
    z = _views(z, "visreg_terms")
    if slices.dim() != 2 or slices.shape[0] != z.shape[-1]:
        raise ValueError(f"visreg_terms: slices must be [D={z.shape[-1]}, M], got shape {tuple(slices.shape)}")
    if distributed:
        z = _gather_batch(z)
    n = z.shape[1]
    mean = z.mean(1, keepdim=True)
    std = z.std(1, unbiased=False, keepdim=True)
    scale = (1 - std).square().mean()
    center = mean.square().mean()
    proj = ((z - mean) / (std.detach() + eps)) @ slices.to(z.dtype)
    k = torch.arange(1, n + 1, dtype=torch.float64, device=z.device) / (n + 1)
    quantiles = (math.sqrt(2) * torch.erfinv(2 * k - 1)).to(z.dtype)
    shape = (proj.sort(dim=1).values - quantiles[:, None]).square().mean()
    return scale, shape, center


@fp32_loss
def visreg_loss(global_views: torch.Tensor, local_views: torch.Tensor | None, slices: torch.Tensor,
                lambda_: float = 0.9, scale_weight: float = 1.0, shape_weight: float = 1.0,
                center_weight: float = 1.0, eps: float = 1e-4, distributed: bool = True) -> torch.Tensor:
    r"""VISReg (Wu et al., 2026, Algorithm 1): :math:`(1-\lambda)\,\mathcal{L}_{pred} + \lambda\,(w_{scale}
    \mathcal{L}_{scale} + w_{shape} \mathcal{L}_{shape} + w_{center} \mathcal{L}_{center})`, with LeJEPA's
    :func:`multiview_invariance` and the :func:`visreg_terms` over all views. Defaults: :math:`\lambda = 0.9`,
    unit weights; the paper (and lightly's ``VISRegLoss``) use 4096 slices. The paper draws different slices
    on each device and regularises each device's batch; ``distributed=True`` instead regularises the global
    batch with the same slices everywhere (exact DDP parity); ``False`` with per-rank generators gives the
    paper's per-device variant."""
    views = global_views if local_views is None else torch.cat([global_views, local_views])
    scale, shape, center = visreg_terms(views, slices, eps, distributed)
    reg = scale_weight * scale + shape_weight * shape + center_weight * center
    return (1 - lambda_) * multiview_invariance(global_views, local_views) + lambda_ * reg
