"""Masked regression losses: MAE and SimMIM (pixels of masked patches) and data2vec 2.0 (contextualised
teacher features of masked tokens), with MAE's patch helpers.

Small pure functions; models, masks and EMA teachers live elsewhere. Conventions:

- a patch mask is ``[B, N]`` bool (or 0/1), ``True`` = masked (hidden from the student), as MAE's
  ``mask`` (1 = removed) and ``selfsup.views.masks``;
- every loss runs in float32 under autocast (:func:`~selfsup.losses.precision.fp32_loss`);
- per-sample terms are means over this rank's rows (the mean over ranks is the global-batch loss when ranks
  hold equal shares).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from selfsup.losses.distillation import negative_cosine
from selfsup.losses.precision import fp32_loss

# --------------------------------------------------------------------------------------------------
# MAE (He et al., 2022, "Masked Autoencoders Are Scalable Vision Learners")
# --------------------------------------------------------------------------------------------------


def patchify(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """``[B, C, H, W]`` images -> ``[B, N, p*p*C]`` patches, ``N = (H/p)(W/p)`` in row-major order.

    MAE's ordering (``models_mae.py``): ``reshape(B, C, h, p, w, p)`` then ``einsum('nchpwq->nhwpqc')``,
    so inside a patch the channel is last (pixel ``(i, j)`` of channel ``c`` is at ``(i*p + j)*C + c``).
    A pure reshape: the dtype is kept. :func:`unpatchify` is its exact inverse.
    """
    if imgs.dim() != 4:
        raise ValueError(f"patchify expects [B, C, H, W] images, got shape {tuple(imgs.shape)}")
    b, c, hh, ww = imgs.shape
    if p <= 0 or hh % p or ww % p:
        raise ValueError(f"patchify: image size {hh}x{ww} is not divisible by the patch size {p}")
    h, w = hh // p, ww // p
    x = imgs.reshape(b, c, h, p, w, p)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(b, h * w, p * p * c)


def unpatchify(x: torch.Tensor, p: int, grid: tuple[int, int] | int | None = None, channels: int = 3) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``[B, N, p*p*C]`` -> ``[B, C, h*p, w*p]`` for ``grid = (h, w)``
    (an int means square; ``None`` means square with ``h = w = sqrt(N)``)."""
    if x.dim() != 3:
        raise ValueError(f"unpatchify expects [B, N, p*p*C] patches, got shape {tuple(x.shape)}")
    b, n, d = x.shape
    if grid is None:
        h = w = math.isqrt(n)
    else:
        h, w = (grid, grid) if isinstance(grid, int) else grid
    if h * w != n or d != p * p * channels:
        raise ValueError(f"unpatchify: {n} patches of {d} values do not fit a {h}x{w} grid of "
                         f"{p}x{p}x{channels} patches")
    x = x.reshape(b, h, w, p, p, channels)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(b, channels, h * p, w * p)


@fp32_loss
def norm_pix_targets(patches: torch.Tensor, eps: float = 1e-6,
                     unbiased: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""MAE's normalised-pixel targets (``--norm_pix_loss``; He et al., 2022, Section 3 "Reconstruction
    target"): every patch is standardised over all its ``p*p*C`` values,

    .. math:: \hat t = (t - \mu) / \sqrt{\sigma^2 + \epsilon},

    with the **unbiased** variance of the official code (``target.var(-1)``; ``unbiased=False`` gives
    the population variance). Returns ``(targets, mean, std)`` with ``mean, std`` of shape ``[..., 1]``
    and ``std = sqrt(var + eps)``, so a viewer can map a prediction back to pixels with
    ``pred * std + mean``, which uses the ground-truth statistics of each patch (MAE issue #153).
    No gradient (targets).
    """
    t = patches.detach()
    mean = t.mean(-1, keepdim=True)
    std = (t.var(-1, keepdim=True, unbiased=unbiased) + eps).sqrt()
    return (t - mean) / std, mean, std


def _as_weights(mask: torch.Tensor, like: torch.Tensor, name: str, shape: Sequence[int]) -> torch.Tensor:
    if tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{name}: mask must be {list(shape)}, got {list(mask.shape)}")
    return mask.detach().to(like.dtype)


@fp32_loss
def mae_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool = False) -> torch.Tensor:
    r"""MAE's reconstruction loss (He et al., 2022, Section 3; ``forward_loss`` of ``models_mae.py``):

    .. math:: \mathcal{L} = \frac{\sum_{b,n} m_{bn}\, \frac1P \sum_{k} (\hat y_{bnk} - t_{bnk})^2}{\sum_{b,n} m_{bn}},

    the per-patch MSE (mean over the ``P = p*p*C`` values) averaged over the **masked** patches only
    (``mask`` ``[B, N]``, ``True``/1 = removed), pooled over the batch as in the code. ``target`` is
    ``[B, N, P]`` (e.g. :func:`patchify` of the input), detached; ``norm_pix=True`` first applies
    :func:`norm_pix_targets`. With no masked patch the loss is 0 (the code would give NaN).
    """
    if pred.shape != target.shape or pred.dim() != 3:
        raise ValueError(f"mae_loss: pred and target must be [B, N, P] of one shape, got {tuple(pred.shape)} "
                         f"and {tuple(target.shape)}")
    m = _as_weights(mask, pred, "mae_loss", pred.shape[:2])
    t = norm_pix_targets(target)[0] if norm_pix else target.detach()
    per_patch = (pred - t).pow(2).mean(-1)
    return (per_patch * m).sum() / m.sum().clamp_min(1)


@fp32_loss
def crossmae_loss(pred: torch.Tensor, target: torch.Tensor, predict_idx: torch.Tensor,
                  norm_pix: bool = False) -> torch.Tensor:
    r"""CrossMAE's partial-reconstruction loss (Fu et al., 2025, Sec. 3.2; ``forward_loss`` of
    ``models_cross.py``): the decoder reads out only a subset :math:`S_b` of the masked patches (``pred`` ``[B, K,
    P]``, one row per index of ``predict_idx`` ``[B, K]``), and

    .. math:: \mathcal{L} = \frac{1}{BK} \sum_b \sum_{n \in S_b} \frac1P \lVert \hat y_{bn} - t_{bn} \rVert^2,

    MAE's per-patch MSE (:func:`mae_loss`) over the predicted patches, against ``target`` ``[B, N, P]`` rows
    ``predict_idx`` (per-patch normalised with ``norm_pix=True``). Detached targets.
    """
    if (pred.dim() != 3 or target.dim() != 3 or predict_idx.shape != pred.shape[:2]
            or pred.shape[-1] != target.shape[-1]):
        raise ValueError(f"crossmae_loss: pred [B, K, P], target [B, N, P] and predict_idx [B, K] must agree, got "
                         f"{tuple(pred.shape)}, {tuple(target.shape)} and {tuple(predict_idx.shape)}")
    picked = target.gather(1, predict_idx.unsqueeze(-1).expand(-1, -1, target.shape[-1]))
    return mae_loss(pred, picked, torch.ones(pred.shape[:2], dtype=torch.bool, device=pred.device), norm_pix=norm_pix)


@fp32_loss
def aim_loss(pred_next: torch.Tensor, target: torch.Tensor, predicted: torch.Tensor,
             norm_pix: bool = True) -> torch.Tensor:
    r"""AIM's autoregressive patch loss (El-Nouby et al., 2024, Sec. 2): the output at position :math:`i` of a
    causal (prefix) transformer predicts patch :math:`i + 1` in raster order, ``pred_next [B, N - 1, P]`` for
    ``target [B, N, P]``, and with a prefix of :math:`S_b` patches the loss is on the others only,

    .. math:: \mathcal{L} = \frac1B \sum_b \frac{1}{N - S_b} \sum_{k = S_b}^{N - 1} \frac1P
              \lVert \hat x_{b,k} - \tilde x_{b,k} \rVert^2, \qquad \hat x_{b,k} = \text{pred\_next}_{b,k-1},

    with per-patch normalised targets :math:`\tilde x` (``norm_pix``, as MAE's). ``predicted [B, N]`` is True
    on the patches in the loss (:math:`k \ge S_b`; patch 0 never is). Each image's mean comes first, so every
    process of a DDP run gets its shard's exact share of the global loss; averaging all predicted patches of the
    batch together would weight images by their number of predicted patches and need that count all-reduced.
    """
    b, n, p = target.shape if target.dim() == 3 else (0, 0, 0)
    if target.dim() != 3 or tuple(pred_next.shape) != (b, n - 1, p) or tuple(predicted.shape) != (b, n):
        raise ValueError(f"aim_loss: pred_next [B, N-1, P], target [B, N, P] and predicted [B, N] must agree, got "
                         f"{tuple(pred_next.shape)}, {tuple(target.shape)} and {tuple(predicted.shape)}")
    t = norm_pix_targets(target)[0] if norm_pix else target.detach()
    m = predicted[:, 1:].detach().to(pred_next.dtype)
    per_patch = (pred_next - t[:, 1:]).pow(2).mean(-1)
    return ((per_patch * m).sum(1) / m.sum(1).clamp_min(1)).mean()


@fp32_loss
def nepa_loss(outputs: torch.Tensor, inputs: torch.Tensor, shift: bool = True) -> torch.Tensor:
    r"""NEPA's next-embedding loss (Xu et al., 2025, Eqs. (2)-(3)): a causal transformer's output at position
    :math:`t` predicts the input embedding of position :math:`t + 1`, scored by SimSiam's negative cosine with a
    stop-gradient on the target,

    .. math:: \mathcal{L} = -\frac{1}{B (T-1)} \sum_b \sum_{t=1}^{T-1}
              \frac{\hat z_{b,t}}{\lVert \hat z_{b,t} \rVert} \cdot
              \frac{\mathrm{sg}(z_{b,t+1})}{\lVert z_{b,t+1} \rVert},

    ``outputs`` :math:`\hat z` and ``inputs`` :math:`z` ``[B, T, D]``. ``shift=False`` compares each output with
    its own input (the paper's Table 1a ablation, which fails). Per token: exact under DDP without a gather.
    """
    if outputs.shape != inputs.shape or outputs.dim() != 3:
        raise ValueError(f"nepa_loss: outputs and inputs must be [B, T, D] of one shape, got {tuple(outputs.shape)} "
                         f"and {tuple(inputs.shape)}")
    if shift:
        return negative_cosine(outputs[:, :-1], inputs[:, 1:])
    return negative_cosine(outputs, inputs)


# --------------------------------------------------------------------------------------------------
# SimMIM (Xie et al., 2022, "SimMIM: A Simple Framework for Masked Image Modeling")
# --------------------------------------------------------------------------------------------------


@fp32_loss
def simmim_loss(pred: torch.Tensor, imgs: torch.Tensor, mask: torch.Tensor, patch_size: int | None = None,
                eps: float = 0.0) -> torch.Tensor:
    r"""SimMIM's L1 loss on masked pixels (Xie et al., 2022, Eq. (1)):

    .. math:: \mathcal{L} = \frac{1}{\Omega(x_M)} \lVert y_M - x_M \rVert_1,

    with :math:`\Omega(x_M)` the number of masked elements, i.e. ``(|y - x| * mask).sum() /
    (n_masked_pixels * C)``. ``pred`` and ``imgs`` are ``[B, C, H, W]`` (targets: the normalised input,
    detached). ``mask`` is either a pixel mask ``[B, 1, H, W]`` / ``[B, H, W]`` or, with ``patch_size``,
    a patch mask ``[B, h, w]`` / ``[B, h*w]`` that is upsampled by ``repeat_interleave`` as the code does.

    The paper's normaliser is used (0 when nothing is masked); ``eps=1e-5`` gives the official code's
    ``(loss * mask).sum() / (mask.sum() + 1e-5) / in_chans`` instead.
    """
    if pred.shape != imgs.shape or pred.dim() != 4:
        raise ValueError(f"simmim_loss: pred and imgs must be [B, C, H, W] of one shape, got {tuple(pred.shape)} "
                         f"and {tuple(imgs.shape)}")
    b, c, hh, ww = pred.shape
    m = mask.detach().to(pred.dtype)
    if patch_size is not None:
        if m.dim() == 2:
            m = m.reshape(b, hh // patch_size, ww // patch_size)
        m = m.repeat_interleave(patch_size, 1).repeat_interleave(patch_size, 2)
    if m.dim() == 3:
        m = m.unsqueeze(1)
    if tuple(m.shape) != (b, 1, hh, ww):
        raise ValueError(f"simmim_loss: mask must give [B, 1, H, W] = {[b, 1, hh, ww]} pixels, got {list(m.shape)}")
    total = (F.l1_loss(pred, imgs.detach(), reduction="none") * m).sum()
    n = m.sum()
    denom = (n + eps) if eps > 0 else n.clamp_min(1)
    return total / denom / c


# --------------------------------------------------------------------------------------------------
# data2vec 2.0 (Baevski et al., 2023, "Efficient Self-supervised Learning with Contextualized Target
# Representations for Vision, Speech and Language")
# --------------------------------------------------------------------------------------------------


@fp32_loss
@torch.no_grad()
def data2vec_targets(layer_outputs: Sequence[torch.Tensor], k: int) -> torch.Tensor:
    r"""data2vec targets (Baevski et al., 2022, Eq. (1)-(2); 2.0 keeps them; ``make_targets`` of fairseq's
    ``data2vec2.py`` with ``instance_norm_target_layer`` and ``layer_norm_targets``):

    .. math:: y_t = \mathrm{LN}\Big(\frac1K \sum_{l=L-K+1}^{L} \mathrm{IN}(a^l)_t\Big),

    where :math:`a^l` is ``[B, T, D]`` (the teacher's block-``l`` output on the unmasked input),
    IN normalises every channel over the **token** axis (``F.instance_norm`` on ``[B, D, T]``) and LN is
    ``F.layer_norm`` over ``D`` without affine parameters, so each target token has zero mean and unit
    (biased) variance over ``D``. Uses the last ``k`` entries of ``layer_outputs``. No gradient.
    """
    if not 1 <= k <= len(layer_outputs):
        raise ValueError(f"data2vec_targets: k must be in 1..{len(layer_outputs)} (the layers given), got {k}")
    top = [a.detach() for a in layer_outputs[-k:]]
    if len({tuple(a.shape) for a in top}) != 1 or top[0].dim() != 3:
        raise ValueError("data2vec_targets: every layer output must be [B, T, D] of one shape")
    y = sum(F.instance_norm(a.transpose(1, 2)).transpose(1, 2) for a in top) / k
    return F.layer_norm(y, y.shape[-1:])


@fp32_loss
def data2vec_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
                  reduction: str = "mean") -> torch.Tensor:
    r"""data2vec 2.0 regression loss (``d2v_loss`` with ``loss_beta = 0``):

    .. math:: \mathcal{L} = \frac{1}{|M|} \sum_{(b,t) \in M} \frac{1}{\sqrt D} \sum_{d=1}^{D}
              (f_{btd} - y_{btd})^2,

    the squared error summed over ``D`` and scaled by :math:`1/\sqrt D`, averaged over the masked tokens
    ``M`` (``mask [B, T]``, ``True`` = masked; ``None`` = every token). fairseq sums over masked tokens and
    lets the trainer divide by ``sample_size`` (the masked tokens over all ranks); here the mean is
    per process (the mean over ranks is the global one when ranks mask equally many tokens).
    ``reduction="sum"`` returns the sum, for normalising by a global count yourself. Targets are detached.
    """
    if pred.shape != target.shape:
        raise ValueError(f"data2vec_loss: pred and target shapes differ: {tuple(pred.shape)} vs {tuple(target.shape)}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"data2vec_loss: reduction must be 'mean' or 'sum', got {reduction!r}")
    per_token = (pred - target.detach()).pow(2).sum(-1) / math.sqrt(pred.shape[-1])
    if mask is None:
        m = torch.ones_like(per_token)
    else:
        m = _as_weights(mask, per_token, "data2vec_loss", per_token.shape)
    total = (per_token * m).sum()
    return total if reduction == "sum" else total / m.sum().clamp_min(1)
