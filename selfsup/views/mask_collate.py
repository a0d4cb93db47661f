"""Masks as a DataLoader collate step, for your own loop: drawn in the loader's workers, yet worker-independent.

:class:`MaskCollator` wraps a collate function. Each dataset item must end with its dataset index
(``(image, ..., index)``); the batch's masks come from a generator seeded by ``(seed, epoch, the batch's
indices)``, so they depend only on which images form the batch: not on the number of workers, on which worker
collates it, or on a restart. (selfsup's own trainer draws masks in the main process from ``(seed, epoch,
step)`` instead, with the method's ``make_masks``: the same functions, one step at a time.)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import default_collate

from selfsup.seeds import mix_seed

__all__ = ["MaskCollator"]


class MaskCollator:
    """``collate_fn`` returning ``(collate(items without their index), masks)``.

    ``make_masks(batch, generator=...)`` is any mask function of :mod:`selfsup.views.masks` with its other
    arguments bound, e.g. ``functools.partial(random_mask, grid=(14, 14), ratio=0.75)``, or a method's
    ``make_masks``. Call :meth:`set_epoch` at the start of every epoch (as with ``DistributedSampler``).
    """

    def __init__(self, make_masks: Callable[..., Any], seed: int = 0,
                 collate: Callable[[list], Any] = default_collate) -> None:
        self.make_masks, self.seed, self.collate, self.epoch = make_masks, int(seed), collate, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def generator(self, indices: Sequence[int]) -> torch.Generator:
        """The generator of the batch made of dataset rows ``indices``."""
        return torch.Generator().manual_seed(mix_seed(self.seed, self.epoch, *(int(i) for i in indices)))

    def __call__(self, items: list) -> tuple[Any, Any]:
        if not items or not isinstance(items[0], (tuple, list)) or len(items[0]) < 2:
            raise ValueError("MaskCollator needs dataset items that end with their dataset index, e.g. "
                             "(image, label, index); return the index from your Dataset.__getitem__")
        indices = [item[-1] for item in items]
        if not all(isinstance(i, int) or (torch.is_tensor(i) and i.numel() == 1) for i in indices):
            raise ValueError("MaskCollator: the last element of each item must be its int dataset index")
        batch = self.collate([tuple(item[:-1]) for item in items])
        return batch, self.make_masks(len(items), generator=self.generator(indices))
