r"""A per-instance memory bank (NPID, Wu et al. 2018, Sec. 3.2; PIRL, Misra & van der Maaten 2020, Sec. 3.2):
one L2-normalised row per training image, addressed by the image's dataset row index, exact under DDP and
part of the checkpoint.

Unlike :class:`selfsup.nets.MemoryBank` (a FIFO queue of the newest batches), row ``i`` always belongs to image
``i``: after each step it moves towards the image's new feature,

.. math:: v_i \leftarrow \frac{m\, v_i + (1 - m)\, f_i}{\lVert m\, v_i + (1 - m)\, f_i \rVert_2},

with ``m = 0.5`` in both papers (``lemniscate.pytorch`` ``lib/NCEAverage.py``: ``pos.mul_(momentum)``,
``pos.add_(x * (1 - momentum))``, then L2-normalise). The bank starts as lemniscate's uniform draw in
``[-s, s]`` with ``s = 1 / sqrt(dim / 3)`` (rows of norm ~1), here from an explicit seeded generator and
L2-normalised exactly. :meth:`InstanceBank.update` gathers the *global* batch's features and indices without
gradient, so every rank applies the same update and holds the same bank; the bank is a registered buffer, so
``state_dict()`` (the checkpoint) holds it and resume is exact. Negatives are drawn by the caller from an
explicit generator (:meth:`InstanceBank.sample`), e.g. in ``Method.make_masks`` for the whole global batch.

:func:`initial_features` + :meth:`InstanceBank.fill` start the bank from the network's own features of every
image instead (the methods' ``bank_init: features``, run in ``Method.prepare``). Why it matters for NCE: the
normaliser :math:`Z = n\,\mathbb{E}_j[\exp(v_j^\top f / \tau)]` is estimated once, on the first batch, against the
bank as it is then. Against lemniscate's random rows it is :math:`\approx n\,e^{1/(2 d \tau^2)}` (2.2 n at d 128,
tau 0.07) whatever the network computes; but the bank is overwritten by the network's features within one epoch,
and where those are correlated (a random-init small CNN on digits: mean cosine 0.67-0.71) the true partition
function is :math:`\approx n\,e^{0.7/\tau}`, about :math:`10^4` times larger. With that small a fixed Z every
noise row scores as data (``h -> 1``), the pull towards the own row vanishes and the K push terms, the same for
every image, collapse the features (digits: kNN 0.10 vs 0.50 at random init). Estimated against the network's
own features, Z matches the partition function the bank will have (digits: kNN 0.60).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from selfsup.losses.distributed import gather, is_distributed


class InstanceBank(nn.Module):
    """``size`` x ``dim`` bank of L2-normalised features, row ``i`` for dataset image ``i``."""

    def __init__(self, size: int, dim: int, momentum: float = 0.5, seed: int = 0) -> None:
        super().__init__()
        if size <= 0 or dim <= 0:
            raise ValueError(f"InstanceBank needs size > 0 and dim > 0, got size={size}, dim={dim}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"InstanceBank momentum must be in [0, 1), got {momentum}")
        self.size, self.dim, self.momentum = size, dim, momentum
        s = 1.0 / math.sqrt(dim / 3)
        init = torch.rand(size, dim, generator=torch.Generator().manual_seed(seed)) * (2 * s) - s
        self.register_buffer("bank", F.normalize(init, dim=1))

    @torch.no_grad()
    def fill(self, feats: torch.Tensor) -> None:
        """Set every row to ``feats`` ``[size, dim]`` (row ``i`` the feature of dataset image ``i``), L2-normalised."""
        if tuple(feats.shape) != (self.size, self.dim):
            raise ValueError(f"the instance bank has {self.size} rows of {self.dim} but the features are "
                             f"{tuple(feats.shape)}; set the method's memory_size to the number of training images")
        self.bank.copy_(F.normalize(feats.to(self.bank.device, self.bank.dtype), dim=1))

    def check_indices(self, indices: torch.Tensor) -> None:
        """A one-line ValueError when a dataset row index falls outside the bank."""
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= self.size):
            raise ValueError(f"dataset row index {int(indices.max())} is outside the instance bank of {self.size} rows; "
                             f"set the method's memory_size to the number of training images")

    def rows(self, indices: torch.Tensor) -> torch.Tensor:
        """The bank rows ``indices`` (any shape, e.g. ``[B]`` or ``[B, K]``) -> ``[*indices.shape, dim]``, detached."""
        self.check_indices(indices)
        return self.bank[indices.to(self.bank.device)].detach()

    @staticmethod
    def sample(batch: int, k: int, size: int, generator: torch.Generator) -> torch.Tensor:
        """``[batch, k]`` row indices drawn uniformly from ``[0, size)`` with replacement (NPID's noise
        distribution :math:`P_n = 1/n`; lemniscate's ``AliasMethod`` over uniform weights), on CPU from ``generator``."""
        return torch.randint(0, size, (batch, k), generator=generator)

    @torch.no_grad()
    def update(self, indices: torch.Tensor, feats: torch.Tensor, momentum: float | None = None,
               distributed: bool = True) -> None:
        """Move rows ``indices`` towards ``feats`` (L2-normalised first) with ``momentum`` (default: the bank's),
        then re-normalise. Under DDP the global batch is gathered first, so every rank writes the same rows.
        A dataset image appears at most once per global batch (the epoch sampler draws without replacement)."""
        m = self.momentum if momentum is None else momentum
        f = F.normalize(feats.detach().float(), dim=1)
        idx = indices.detach().long()
        if distributed and is_distributed():
            f, idx = gather(f.contiguous(), grad=False), gather(idx.contiguous(), grad=False)
        self.check_indices(idx)
        idx = idx.to(self.bank.device)
        new = F.normalize(m * self.bank[idx] + (1 - m) * f.to(self.bank.device, self.bank.dtype), dim=1)
        self.bank.index_copy_(0, idx, new)


@torch.no_grad()
def initial_features(module: nn.Module, embed: Callable[[torch.Tensor], torch.Tensor],
                     images: Iterable[torch.Tensor]) -> torch.Tensor:
    """``embed(x)`` of every batch of ``images`` (in dataset row order), concatenated ``[n, dim]``: computed in
    training mode, BatchNorm with batch statistics as in the training forward, then every BatchNorm's running
    statistics put back, so ``module`` leaves exactly as it came (its mode included)."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [{k: v.clone() for k, v in m.named_buffers(recurse=False)} for m in norms]
    was_training = module.training
    module.train()
    try:
        return torch.cat([embed(x).float() for x in images])
    finally:
        module.train(was_training)
        for m, state in zip(norms, saved):
            for k, v in state.items():
                getattr(m, k).copy_(v)
