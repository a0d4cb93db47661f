"""Regularisers any method can add to its loss: ``method.regularizers`` (KoLeo, CO2).

- **KoLeo** (Sablayrolles et al., 2019, "Spreading vectors for similarity search", Eq. (5); DINOv2's
  ``koleo_loss_weight``): :math:`-\\frac1n \\sum_i \\log \\min_{j \\ne i} \\lVert \\hat z_i - \\hat z_j \\rVert`
  on the L2-normalised embeddings of each view, averaged over the views
  (:func:`selfsup.losses.koleo_loss`); it pushes every embedding away from its nearest neighbour.
- **CO2** (Wei et al., 2021, "CO2: Consistent Contrast for Unsupervised Visual Representation Learning",
  ICLR, Eq. (4)): the symmetric KL between the similarity distributions of view 0 and view 1 over the
  batch's other embeddings (:func:`selfsup.losses.co2_loss`, the in-batch negatives of lightly's
  ``CO2Regularizer``; the paper uses MoCo's queue, which a generic method does not have).

Both act on the method's *live* embeddings of the views, the ones its loss sees and backpropagates through
(``Method.embed``'s projections for the embed/objective methods; the online projections for BYOL, SimSiam, MoCo
v1/v2/v3, NNCLR, TiCo, ReSSL, NNBYOL, NNSiam, FastSiam, SMoG, All4One and MMCR), returned by the method as ``z``
in :meth:`Method.regularize`; a view without gradient (a momentum encoder's) enters CO2 only. Every other method
(its own ``forward`` without ``regularizable = True``: the dense, masked-image and pretext methods, DINO, SwAV,
...) refuses a non-zero weight with a one-line error (:func:`~selfsup.methods.base.regularizer_problem`).
The loss becomes ``loss + koleo * L_KoLeo + co2 * L_CO2``, and each term is logged (``reg_koleo``, ``reg_co2``).

Exact under DDP: both are computed on this rank's rows against the global batch (gathered with gradient),
so the mean over ranks equals the single-process value on the global batch (DINOv2's own KoLeo is per
process; ``koleo_per_process: true`` gives that). Accumulation: the embed/objective methods add the terms
in their objective, on the whole batch's embeddings, so ``train.accumulate`` (gradient caching) stays exact;
``"plain"`` accumulation would regularise each micro-batch separately and is refused.
Weights 0 (the default) compute nothing: the loss and its gradient are bit-identical to the method alone.
"""

from __future__ import annotations

import torch
from pydantic import Field

from selfsup.schema import Section


class RegularizersConfig(Section):
    """Weights of the any-method regularisers; 0 switches one off."""

    koleo: float = Field(0.0, ge=0, description="KoLeo weight on each view's embeddings, averaged over views "
                                                "(DINOv2 uses 0.1 on its backbone CLS tokens); 0: off")
    koleo_per_process: bool = Field(False, description="search KoLeo's nearest neighbours in this process's rows "
                                                       "only (DINOv2's code) instead of the global batch")
    co2: float = Field(0.0, ge=0, description="CO2 consistency weight alpha between views 0 and 1 (lightly's "
                                              "CO2Regularizer default: 1); 0: off")
    co2_temperature: float = Field(0.05, gt=0, description="CO2's tau_con, the temperature of the compared "
                                                           "similarity distributions (lightly's default 0.05)")

    def active(self) -> bool:
        return self.koleo > 0 or self.co2 > 0


def regularizer_terms(cfg: RegularizersConfig, z: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """The weighted-in terms on the live per-view embeddings ``z`` (each ``[n, D]``): ``{"reg_koleo": ...,
    "reg_co2": ...}`` for the non-zero weights (unweighted values, with gradient)."""
    from selfsup.losses import co2_loss, koleo_loss

    out: dict[str, torch.Tensor] = {}
    if cfg.koleo > 0:  # on the views with gradient (a momentum encoder's view would add a constant)
        live = [v for v in z if v.requires_grad] or z
        views = [v.flatten(1) for v in live]
        out["reg_koleo"] = torch.stack([koleo_loss(v, distributed=not cfg.koleo_per_process) for v in views]).mean()
    if cfg.co2 > 0:
        if len(z) < 2:
            raise ValueError("method.regularizers.co2 needs two views' embeddings; this method returned one")
        out["reg_co2"] = co2_loss(z[0].flatten(1), z[1].flatten(1), temperature=cfg.co2_temperature)
    return out


def add_regularizers(cfg: RegularizersConfig, out: dict[str, torch.Tensor],
                     z: list[torch.Tensor]) -> dict[str, torch.Tensor]:
    """``out`` with ``loss`` += the weighted terms of :func:`regularizer_terms` and the detached terms logged;
    ``out`` itself (untouched) when every weight is 0."""
    if not cfg.active():
        return out
    terms = regularizer_terms(cfg, z)
    weights = {"reg_koleo": cfg.koleo, "reg_co2": cfg.co2}
    loss = out["loss"] + sum(weights[k] * v for k, v in terms.items())
    return {**out, "loss": loss, **{k: v.detach() for k, v in terms.items()}}
