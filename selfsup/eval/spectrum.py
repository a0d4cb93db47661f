"""Label-free spectral evaluation of embeddings (cookbook, "Evaluation without labels" and
"Dimensional Collapse of Representations"): thresholded rank, alpha-ReQ, spectrum AUC and LiDAR.
The spectrum itself and RankMe, which the trainer needs too, live in :mod:`selfsup.diagnostics.spectra`.

All decompositions run in float64: singular values of fp32 embeddings span many orders of
magnitude, and the entropy / log-log fits below are sensitive to their small end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from selfsup.diagnostics.spectra import entropy_effective_rank, singular_values
from selfsup.diagnostics.validation import check_features


def thresholded_rank(z: Tensor, tol: float | None = None, center: bool = False) -> int:
    """Classical numerical rank (as used by Jing et al., 2022): ``#{k : sigma_k > tol}``.

    Default ``tol = sigma_1 * max(N, D) * eps(z.dtype)``, the rule of ``torch.linalg.matrix_rank``
    but with the machine epsilon of the *input* dtype, because fp32 embeddings carry fp32 rounding
    noise even though the SVD is computed in float64.
    """
    z = check_features(z, "z")
    s = singular_values(z, center=center)
    if tol is None:
        tol = float(s[0]) * max(z.shape) * torch.finfo(z.dtype).eps
    elif tol < 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    return int((s > tol).sum())


@dataclass(frozen=True)
class PowerLawFit:
    """Least-squares line ``log y_k = intercept + slope * log k`` and its coefficient of determination."""

    slope: float
    intercept: float
    r2: float


def powerlaw_fit(spectrum: Tensor | Sequence[float], k_min: int = 1, k_max: int | None = None) -> PowerLawFit:
    """Fit ``y_k ∝ k^slope`` to a positive spectrum ``y_1..y_n`` by least squares in log-log space.

    Uses ranks ``k_min..k_max`` (1-based, inclusive; default all). A spectrum decaying as
    ``k^-alpha`` gives ``slope = -alpha``.
    """
    y = torch.as_tensor(spectrum, dtype=torch.float64).flatten()
    k_max = y.numel() if k_max is None else int(k_max)
    if not 1 <= k_min < k_max <= y.numel():
        raise ValueError(f"need 1 <= k_min < k_max <= {y.numel()} (spectrum length), got k_min={k_min}, k_max={k_max}")
    y = y[k_min - 1 : k_max]
    if bool((y <= 0).any()) or not bool(torch.isfinite(y).all()):
        raise ValueError("powerlaw_fit needs strictly positive, finite values in the fitted range; shrink k_max")
    x = torch.log(torch.arange(k_min, k_max + 1, dtype=torch.float64))
    ly = torch.log(y)
    design = torch.stack([x, torch.ones_like(x)], dim=1)
    sol = torch.linalg.lstsq(design, ly.unsqueeze(1)).solution.squeeze(1)
    slope, intercept = float(sol[0]), float(sol[1])
    residual = ly - (slope * x + intercept)
    ss_tot = float(((ly - ly.mean()) ** 2).sum())
    r2 = 1.0 - float((residual**2).sum()) / ss_tot if ss_tot > 0 else 1.0
    return PowerLawFit(slope=slope, intercept=intercept, r2=r2)


def covariance_eigenvalues(z: Tensor) -> Tensor:
    """Eigenvalues ``lambda_1 >= ...`` of the sample covariance of ``z`` (float64, via the SVD)."""
    n = z.shape[0]
    if n < 2:
        raise ValueError("need at least 2 embeddings to estimate a covariance spectrum")
    return singular_values(z, center=True) ** 2 / (n - 1)


def alpha_req(
    z: Tensor, k_min: int = 1, k_max: int | None = None, rel_floor: float | None = None, return_r2: bool = False
) -> float | tuple[float, float]:
    """alpha-ReQ (Agrawal et al., 2022): power-law decay exponent of the eigenspectrum.

    Fits ``lambda_k ∝ k^-alpha`` to the covariance eigenvalues by least squares on
    ``log lambda_k = c - alpha log k`` and returns ``alpha`` (and the fit's r^2 if ``return_r2``).
    Range: ranks ``k_min..k_max``; by default ``k_max`` is the last eigenvalue above the numerical
    floor ``lambda_1 * rel_floor`` with ``rel_floor = max(N, D) * eps(z.dtype)`` (eigenvalues below it
    are rounding noise of the input precision, not signal). Note that with N close to D the
    sample spectrum's tail is biased downwards (Marchenko-Pastur), steepening the fit; use
    N >> D or restrict ``k_max``.
    """
    z = check_features(z, "z")
    lam = covariance_eigenvalues(z)
    if rel_floor is None:
        rel_floor = max(z.shape) * torch.finfo(z.dtype).eps
    above = int((lam > lam[0] * rel_floor).sum())
    k_hi = above if k_max is None else min(int(k_max), above)
    if k_hi - k_min + 1 < 2:
        raise ValueError(
            f"only {above} eigenvalue(s) above the noise floor; alpha-ReQ needs >= 2 (embeddings collapsed?)"
        )
    fit = powerlaw_fit(lam, k_min=k_min, k_max=k_hi)
    return (-fit.slope, fit.r2) if return_r2 else -fit.slope


def spectrum_auc(z: Tensor) -> float:
    """Area under the cumulative explained-variance curve of ``z`` (Li et al., 2022), in (0, 1].

    With ``lambda_k`` the covariance eigenvalues (k = 1..r, r = min(N, D)) and
    ``c_k = sum_{j<=k} lambda_j / sum_j lambda_j``: ``AUC = (1/r) sum_k c_k``.
    Complete collapse (one direction) gives 1; an isotropic spectrum gives (r + 1) / (2r) ≈ 0.5.
    Higher means more collapsed.
    """
    lam = covariance_eigenvalues(check_features(z, "z"))
    total = lam.sum()
    if float(total) <= 0.0:
        return 1.0
    return float(torch.cumsum(lam, 0).div(total).mean())


def lidar(embeddings_per_view: Tensor | Sequence[Tensor], delta: float = 1e-4, eps: float = 1e-8) -> float:
    """LiDAR (Thilak et al., 2023): effective rank of the LDA matrix with samples as classes.

    ``embeddings_per_view`` is ``[N, V, D]`` (N source samples, V >= 2 augmented views each) or a
    list of V tensors ``[N, D]``. With view mean ``mu_i`` and grand mean ``mu``:
    ``Sigma_b = 1/N sum_i (mu_i - mu)(mu_i - mu)^T``,
    ``Sigma_w = 1/(NV) sum_ij (e_ij - mu_i)(e_ij - mu_i)^T + delta I``,
    ``Sigma_LiDAR = Sigma_w^{-1/2} Sigma_b Sigma_w^{-1/2}``, and with its eigenvalues ``lambda``:
    ``LiDAR = exp(-sum_k p_k log p_k)``, ``p_k = lambda_k / ||lambda||_1 + eps``.
    """
    if isinstance(embeddings_per_view, (list, tuple)):
        if len(embeddings_per_view) < 2:
            raise ValueError("lidar needs at least 2 views per sample; pass a list of >= 2 [N, D] tensors")
        views = [check_features(v, f"view {i}") for i, v in enumerate(embeddings_per_view)]
        if len({tuple(v.shape) for v in views}) != 1:
            raise ValueError("all views passed to lidar must have the same shape [N, D]")
        e = torch.stack(views, dim=1)
    elif isinstance(embeddings_per_view, Tensor):
        e = embeddings_per_view
        if e.dim() != 3 or e.shape[1] < 2:
            raise ValueError(f"lidar expects [N, V, D] with V >= 2 views, got shape {tuple(e.shape)}")
        check_features(e.reshape(-1, e.shape[-1]), "embeddings_per_view")
    else:
        raise TypeError("embeddings_per_view must be a [N, V, D] tensor or a list of [N, D] tensors")
    if delta <= 0:
        raise ValueError(f"delta must be > 0 to make Sigma_w invertible, got {delta}")
    e = e.detach().to(torch.float64)
    n, v, d = e.shape
    mu_i = e.mean(dim=1)
    between = mu_i - mu_i.mean(dim=0, keepdim=True)
    sigma_b = between.T @ between / n
    within = (e - mu_i.unsqueeze(1)).reshape(n * v, d)
    sigma_w = within.T @ within / (n * v) + delta * torch.eye(d, dtype=torch.float64, device=e.device)
    w_eig, w_vec = torch.linalg.eigh(sigma_w)
    inv_sqrt = (w_vec * w_eig.clamp_min(delta).rsqrt()) @ w_vec.T
    sigma_lidar = inv_sqrt @ sigma_b @ inv_sqrt
    lam = torch.linalg.eigvalsh((sigma_lidar + sigma_lidar.T) / 2).clamp_min(0.0)
    return entropy_effective_rank(lam, eps)

