"""MaskCollator: masks drawn in DataLoader workers depend only on (seed, epoch, the batch's images)."""

import functools

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from selfsup.views.mask_collate import MaskCollator
from selfsup.views.masks import random_mask


class Indexed(Dataset):
    def __len__(self):
        return 24

    def __getitem__(self, i):
        return torch.full((1, 8, 8), float(i)), i % 3, i


def _masks(workers: int, epoch: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    collate = MaskCollator(functools.partial(random_mask, grid=(4, 4), ratio=0.75), seed=5)
    collate.set_epoch(epoch)
    loader = DataLoader(Indexed(), batch_size=6, shuffle=False, num_workers=workers, collate_fn=collate)
    return [(x[:, 0, 0, 0].long(), m.mask) for (x, _), m in loader]


def test_masks_do_not_depend_on_workers_and_follow_the_seed():
    one, two = _masks(0), _masks(2)
    assert all(torch.equal(a[1], b[1]) and torch.equal(a[0], b[0]) for a, b in zip(one, two))
    for rows, mask in one:
        assert mask.shape == (6, 16) and (mask.sum(1) == 12).all()
        gen = MaskCollator(None, seed=5).generator(rows.tolist())
        assert torch.equal(mask, random_mask(6, (4, 4), 0.75, gen).mask)  # (seed, epoch, indices) only
    assert not torch.equal(one[0][1], one[1][1])  # each batch its own masks
    assert not torch.equal(_masks(0, epoch=1)[0][1], one[0][1])


def test_items_without_an_index_get_a_one_line_error():
    collate = MaskCollator(functools.partial(random_mask, grid=(4, 4), ratio=0.5))
    with pytest.raises(ValueError, match="dataset index"):
        collate([torch.zeros(1, 8, 8), torch.zeros(1, 8, 8)])
    with pytest.raises(ValueError, match="int dataset index"):
        collate([(torch.zeros(1, 8, 8), "a"), (torch.zeros(1, 8, 8), "b")])
