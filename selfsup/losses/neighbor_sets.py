"""All4One (Estepa, Rodríguez, Izquierdo & Radeva, 2023, "All4One: Symbiotic Neighbour Contrastive Learning via
Self-Attention and Redundancy Reduction", ICCV): contrast over a *set* of nearest neighbours, summarised by a
transformer into a centroid, plus NNCLR's neighbour contrast and a redundancy-reducing feature contrast.

The paper's text could not be opened here; the terms follow the official implementation in solo-learn
(``solo/methods/all4one.py`` at 9187ea3, by the paper's authors).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from selfsup.losses.contrastive import info_nce
from selfsup.losses.correlation import off_diagonal
from selfsup.losses.distributed import gather
from selfsup.losses.precision import fp32_loss


def slot_position_encoding(k: int, dim: int, dtype: torch.dtype = torch.float32,
                           device: torch.device | str | None = None) -> torch.Tensor:
    r"""The fixed encoding ``[k, dim]`` added to a sequence of ``k`` neighbours before the transformer, as the
    official code computes it (``Summer(PositionalEncodingPermute1D(k))`` on ``[B, k, D]``): the sinusoid
    runs along the *feature* axis, one frequency pair per slot,

    .. math:: PE_{c, d} = \sin(d \, \omega_{\lfloor c/2 \rfloor}) \ (c \text{ even}), \quad
              \cos(d \, \omega_{\lfloor c/2 \rfloor}) \ (c \text{ odd}), \qquad
              \omega_j = 10000^{-2j / k'}, \ k' = 2\lceil k/2 \rceil,

    so every slot ``c`` gets its own fixed pattern over the ``dim`` features (not the usual encoding over
    positions)."""
    kk = int(math.ceil(k / 2) * 2)
    freq = 1.0 / (10000 ** (torch.arange(0, kk, 2, dtype=torch.float64) / kk))
    d = torch.arange(dim, dtype=torch.float64)[:, None] * freq[None, :]  # [dim, kk/2]
    pe = torch.stack([d.sin(), d.cos()], -1).flatten(1)[:, :k]  # [dim, k]: sin, cos interleaved per frequency
    return pe.T.to(dtype=dtype, device=device)


@fp32_loss
def feature_contrast(m1: torch.Tensor, z1: torch.Tensor, m2: torch.Tensor, z2: torch.Tensor,
                     distributed: bool = True) -> torch.Tensor:
    r"""All4One's feature contrast: cross-correlations between the momentum embeddings of one view and the online
    embeddings of the other, each *column* (feature) L2-normalised over the batch,
    :math:`C^{(1)} = \bar m_1^\top \bar z_2`, :math:`C^{(2)} = \bar m_2^\top \bar z_1` (``[D, D]``), and

    .. math:: \mathcal{L}_{feat} = \tfrac12 \sqrt{\tfrac12 \textstyle\sum_a \mathrm{mean}_j (C^{(a)}_{jj} - 1)^2}
              + \tfrac12 \sqrt{\tfrac12 \textstyle\sum_a \mathrm{mean}_{j \ne k} (C^{(a)}_{jk})^2}

    (a Barlow-Twins-like redundancy reduction; the method multiplies it by 10, as the official code). Under DDP
    the columns are normalised and correlated over the global batch (gathered with gradient); the official code
    uses each GPU's batch."""
    if not (m1.shape == z1.shape == m2.shape == z2.shape) or z1.dim() != 2:
        raise ValueError(f"feature_contrast expects four [N, D] tensors of one shape, got {tuple(m1.shape)}, "
                         f"{tuple(z1.shape)}, {tuple(m2.shape)}, {tuple(z2.shape)}")
    if distributed:
        m1, z1, m2, z2 = gather(m1), gather(z1), gather(m2), gather(z2)
    m1, z1, m2, z2 = (F.normalize(x, dim=0) for x in (m1, z1, m2, z2))
    c1, c2 = m1.T @ z2, m2.T @ z1
    on = (0.5 * (c1.diagonal().sub(1).square().mean() + c2.diagonal().sub(1).square().mean())).sqrt()
    off = (0.5 * (off_diagonal(c1).square().mean() + off_diagonal(c2).square().mean())).sqrt()
    return 0.5 * on + 0.5 * off


@fp32_loss
def all4one_loss(rich: tuple[torch.Tensor, torch.Tensor], mixed: tuple[torch.Tensor, torch.Tensor],
                 nn: tuple[torch.Tensor, torch.Tensor], p: tuple[torch.Tensor, torch.Tensor],
                 m: tuple[torch.Tensor, torch.Tensor], z: tuple[torch.Tensor, torch.Tensor],
                 temperature: float = 0.2, centroid_temperature: float = 0.1, feature_weight: float = 10.0,
                 weights: tuple[float, float, float] = (0.5, 0.5, 0.5),
                 distributed: bool = True) -> dict[str, torch.Tensor]:
    r"""All4One's objective for two views (pairs are (view 1, view 2)):

    .. math:: \mathcal{L} = w_c \mathcal{L}_{cent} + w_n \mathcal{L}_{nn} + w_f \, 10 \, \mathcal{L}_{feat},

    - centroid contrast :math:`\mathcal{L}_{cent} = \frac12[\mathrm{InfoNCE}(r_1, s_2) + \mathrm{InfoNCE}(r_2,
      s_1)]` at ``centroid_temperature`` (0.1 in the code): :math:`r_v` (``rich``) is the transformer's first
      output token over view v's k nearest neighbours, :math:`s_v` (``mixed``) the same over the sequence with
      the view's second prediction shifted in front of its first k-1 neighbours;
    - neighbour contrast :math:`\mathcal{L}_{nn} = \frac12[\mathrm{InfoNCE}(nn_1, p_2) + \mathrm{InfoNCE}(nn_2,
      p_1)]` at ``temperature`` (NNCLR's, :math:`nn_v` the nearest support-queue neighbour of view v);
    - feature contrast :func:`feature_contrast` of the momentum ``m`` and online ``z`` embeddings.

    InfoNCE(a, b) contrasts each :math:`a_i` against the (global) batch of :math:`b` (the code's
    ``nnclr_loss_func``). Returns ``loss`` and the three terms."""
    cent = 0.5 * (info_nce(rich[0], mixed[1], None, centroid_temperature, distributed)
                  + info_nce(rich[1], mixed[0], None, centroid_temperature, distributed))
    nnl = 0.5 * (info_nce(nn[0], p[1], None, temperature, distributed)
                 + info_nce(nn[1], p[0], None, temperature, distributed))
    feat = feature_weight * feature_contrast(m[0], z[0], m[1], z[1], distributed)
    wc, wn, wf = weights
    return {"loss": wc * cent + wn * nnl + wf * feat, "loss_centroid": cent, "loss_nn": nnl, "loss_feature": feat}
