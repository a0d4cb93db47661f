"""SelfPatch (Yun et al., CVPR 2022, "Patch-level Representation Learning for Self-supervised Vision
Transformers"): each patch's positives among its adjacent patches, and the patch-level distillation loss.

With student patch tokens :math:`z^v_{b,i}` of view :math:`v` and the teacher's :math:`\\bar z^v_{b,i}`:

- neighbours :math:`\\mathcal N(i)`: the (up to) 8 patches adjacent to patch :math:`i` on the patch grid;
- positives :math:`\\mathcal P(i)`: the top-:math:`k` of :math:`\\mathcal N(i)` by the cosine similarity of the
  teacher's tokens, :math:`\\cos(\\bar z_i, \\bar z_j)` (Sec. 3.2, :math:`k = 4`);
- the teacher's aggregated positives :math:`\\bar y_i = \\bar g(\\{\\bar z_j\\}_{j \\in \\mathcal P(i)})`
  (the matching-aggregation module, :class:`selfsup.nets.MatchingAggregation`);
- the loss (:func:`selfpatch_loss`), with :math:`P_t = \\mathrm{softmax}((\\bar h(\\bar y) - c_p)/\\tau_t)` and
  :math:`P_s = \\mathrm{softmax}(h(z)/\\tau_s)`:

  .. math:: \\mathcal L_{\\text{SelfPatch}} = \\frac1V \\sum_v \\frac{1}{B N_v} \\sum_{b, i}
            -\\sum_k P_{t}(\\bar y^v_{b,i})_k \\log P_s(z^v_{b,i})_k,

  added to DINO's CLS loss with weight :math:`\\lambda` (0.1 in the official ``main_selfpatch.py``).

The paper's neighbours are the adjacent patches; the official code's ``get_local_index`` wraps around
the grid (``(ix +- 1) % w``), so a border patch's "neighbours" include patches of the opposite border.
``wrap=False`` (default) follows the paper: border patches have 3 or 5 neighbours, and when fewer than
``k`` exist the missing positives are flagged invalid (the aggregation ignores them); ``wrap=True`` is
the official variant.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from .precision import fp32_loss

__all__ = ["adjacent_patches", "select_positives", "selfpatch_loss"]

_OFFSETS = [(-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1)]


def adjacent_patches(grid: tuple[int, int], wrap: bool = False,
                     device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(index, valid)``, both ``[h * w, 8]``: the row-major indices of each patch's 8 neighbours (in the
    order of ``_OFFSETS``) and whether each exists. ``wrap=True`` wraps around the grid (official code;
    every neighbour valid); without it, off-grid neighbours point at the patch itself and are invalid."""
    h, w = grid
    r = torch.arange(h, device=device).view(h, 1, 1).expand(h, w, 8)
    c = torch.arange(w, device=device).view(1, w, 1).expand(h, w, 8)
    dr = torch.tensor([o[0] for o in _OFFSETS], device=device)
    dc = torch.tensor([o[1] for o in _OFFSETS], device=device)
    rr, cc = r + dr, c + dc
    if wrap:
        valid = torch.ones(h, w, 8, dtype=torch.bool, device=device)
        rr, cc = rr % h, cc % w
    else:
        valid = (rr >= 0) & (rr < h) & (cc >= 0) & (cc < w)
        rr, cc = torch.where(valid, rr, r), torch.where(valid, cc, c)
    return (rr * w + cc).reshape(h * w, 8), valid.reshape(h * w, 8)


@fp32_loss
@torch.no_grad()
def select_positives(tokens: torch.Tensor, grid: tuple[int, int], k: int = 4,
                     wrap: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Each patch's ``k`` positives among its adjacent patches (Sec. 3.2): the neighbours of highest cosine
    similarity to it. ``tokens [B, N, D]`` (row-major on ``grid``); returns ``(index [B, N, k], valid [B, N, k])``,
    ``valid`` False where a border patch has fewer than ``k`` neighbours (those come last). No gradient."""
    b, n, _ = tokens.shape
    if grid[0] * grid[1] != n:
        raise ValueError(f"select_positives: {n} tokens do not fill a {grid[0]}x{grid[1]} grid")
    if not 1 <= k <= 8:
        raise ValueError(f"select_positives needs 1 <= k <= 8 (of 8 adjacent patches), got {k}")
    nbr, ok = adjacent_patches(grid, wrap, tokens.device)
    z = F.normalize(tokens.float(), dim=-1)
    sim = torch.einsum("bnd,bnmd->bnm", z, z[:, nbr])  # [B, N, 8]: cos(z_i, z_j) for j in N(i)
    sim = sim.masked_fill(~ok, float("-inf"))
    top = sim.topk(k, dim=-1).indices  # invalid (-inf) neighbours sort last
    return nbr[torch.arange(n, device=tokens.device).view(1, n, 1), top], ok.expand(b, n, 8).gather(2, top)


@fp32_loss
def selfpatch_loss(student_patch_logits: Sequence[torch.Tensor], teacher_patch_logits: Sequence[torch.Tensor],
                   center: torch.Tensor, student_temp: float = 0.1, teacher_temp: float = 0.04) -> torch.Tensor:
    r"""SelfPatch's patch-level loss (module docstring): per view ``v``, the mean over images and patches of
    :math:`H(P_t(\bar y^v_{b,i}), P_s(z^v_{b,i}))` with the centered, sharpened teacher distribution of the
    aggregated positives; then the mean over views (official ``DINOLoss.forward``: ``p_loss`` summed over
    views, divided by their number). ``student_patch_logits[v]`` and ``teacher_patch_logits[v]`` are
    ``[B, N_v, K]`` (student patch ``i`` against the teacher's aggregate of patch ``i``'s positives, same
    view); ``center [K]`` is the patch center. The teacher side is detached. A per-row mean: the mean over
    processes is the global-batch loss."""
    if len(student_patch_logits) != len(teacher_patch_logits) or not student_patch_logits:
        raise ValueError(f"selfpatch_loss needs one teacher tensor per student view, got {len(teacher_patch_logits)} "
                         f"and {len(student_patch_logits)}")
    total = 0.0
    for s, t in zip(student_patch_logits, teacher_patch_logits):
        if s.shape != t.shape or s.dim() != 3:
            raise ValueError(f"selfpatch_loss: student and teacher views must be [B, N, K] of one shape, got "
                             f"{tuple(s.shape)} and {tuple(t.shape)}")
        q = F.softmax((t.detach() - center) / teacher_temp, dim=-1)
        total = total + (-(q * F.log_softmax(s / student_temp, dim=-1)).sum(-1)).mean()
    return total / len(student_patch_logits)
