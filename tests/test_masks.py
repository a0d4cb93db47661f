"""Property tests of the masked-image-modeling masks (selfsup.views.masks)."""

import math

import pytest
import torch

from selfsup.seeds import mix_seed
from selfsup.views import masks as M
from selfsup.views import (
    blockwise_mask,
    dinov2_mask,
    dinov2_ratios,
    grid_mask,
    inverse_block_mask,
    mask_indices,
    multiblock_mask,
    random_mask,
)

SEEDS = [0, 1, 7, 123]


def gen(seed: int, epoch: int = 0, step: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(mix_seed(seed, epoch, step))


def check_indices(m: M.Masks, n: int) -> None:
    assert m.mask.dtype == torch.bool and m.mask.shape[1] == n
    for row, keep, msk in zip(m.mask, m.keep_idx, m.mask_idx):
        assert torch.equal(keep, (~row).nonzero().squeeze(1))  # sorted, exactly the unmasked
        assert torch.equal(msk, row.nonzero().squeeze(1))
        assert torch.equal(torch.cat([keep, msk]).sort().values, torch.arange(n))  # disjoint, covering


ALL = {
    "random": lambda g: random_mask(16, (14, 14), 0.75, g),
    "grid": lambda g: grid_mask(16, (14, 14), 0.6, g, cell=2),
    "blockwise": lambda g: blockwise_mask(16, (14, 14), 75, g),
    "inverse_block": lambda g: inverse_block_mask(16, (14, 14), 0.8, g),
    "multiblock_context": lambda g: multiblock_mask(16, (14, 14), g).context,
    "multiblock_target": lambda g: multiblock_mask(16, (14, 14), g).targets[2],
}
EXPECTED_MASKED = {"random": 147, "grid": 30 * 4, "blockwise": 75, "inverse_block": 157}


@pytest.mark.parametrize("name", sorted(ALL))
@pytest.mark.parametrize("seed", SEEDS)
def test_exact_counts_and_indices(name, seed):
    m = ALL[name](gen(seed))
    check_indices(m, 196)
    counts = m.mask.sum(dim=1)
    assert (counts == counts[0]).all()
    if name in EXPECTED_MASKED:
        assert int(counts[0]) == EXPECTED_MASKED[name]


@pytest.mark.parametrize("name", sorted(ALL))
def test_same_seed_same_masks(name):
    a, b, c = ALL[name](gen(3, 1, 5)), ALL[name](gen(3, 1, 5)), ALL[name](gen(3, 1, 6))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert not torch.equal(a.mask, c.mask)


def test_mask_indices_needs_equal_counts():
    with pytest.raises(ValueError, match="equal masked counts"):
        mask_indices(torch.tensor([[True, False], [True, True]]))
    keep, msk = mask_indices(torch.zeros(0, 5, dtype=torch.bool))
    assert keep.shape == (0, 5) and msk.shape == (0, 0)


def test_grid_mask_masks_whole_cells():
    m = grid_mask(32, (8, 12), 0.5, gen(0), cell=4).mask.view(32, 2, 4, 3, 4)
    per_cell = m.sum(dim=(2, 4))
    assert ((per_cell == 0) | (per_cell == 16)).all() and (per_cell == 16).sum(dim=(1, 2)).eq(3).all()


def test_blockwise_top_up_when_blocks_overlap():
    # Huge blocks on a small grid: the official loop stops short almost at once.
    for seed in SEEDS:
        m = blockwise_mask(32, (6, 6), 30, gen(seed), min_patches=30)
        assert m.mask.sum(dim=1).eq(30).all()
        check_indices(m, 36)
    short = 0
    rng = M._Uniforms(gen(0))
    for _ in range(64):
        short += int(M._beit_one(rng, 6, 6, 30, 30, 30, (math.log(0.3), math.log(1 / 0.3))).sum() < 30)
    assert short > 0  # the raw loop really falls short, so the top-up is exercised


def test_blockwise_is_blocky():
    # Mostly contiguous: a masked patch usually has a masked 4-neighbour (random masks at 38% rarely do all).
    m = blockwise_mask(64, (14, 14), 75, gen(1)).mask.view(64, 14, 14).float()
    nb = torch.zeros_like(m)
    nb[:, 1:] += m[:, :-1]
    nb[:, :-1] += m[:, 1:]
    nb[:, :, 1:] += m[:, :, :-1]
    nb[:, :, :-1] += m[:, :, 1:]
    assert ((nb > 0) & (m > 0)).sum() / m.sum() > 0.95


def test_mean_masked_fraction():
    assert random_mask(64, (10, 10), 0.3, gen(0)).mask.float().mean().item() == pytest.approx(0.3)
    assert inverse_block_mask(64, (10, 10), 0.8, gen(0)).mask.float().mean().item() == pytest.approx(0.8)
    # uniform: every position is masked about ratio of the time
    freq = random_mask(4000, (4, 4), 0.25, gen(2)).mask.float().mean(dim=0)
    assert (freq - 0.25).abs().max() < 0.03


def test_inverse_block_visible_islands():
    m = inverse_block_mask(64, (14, 14), 0.8, gen(4)).mask.view(64, 14, 14)
    vis = (~m).float()
    nb = torch.zeros_like(vis)
    nb[:, 1:] += vis[:, :-1]
    nb[:, :-1] += vis[:, 1:]
    assert ((nb > 0) & (vis > 0)).sum() / vis.sum() > 0.8  # visible patches come in blocks


def test_dinov2_half_batch_and_ratio_range():
    for seed in SEEDS:
        r = dinov2_ratios(64, gen(seed))
        masked = r > 0
        assert int(masked.sum()) == 32
        assert ((r[masked] >= 0.1) & (r[masked] <= 0.5)).all()
        assert r[masked].mean().item() == pytest.approx(0.3, abs=0.02)  # stratified
        assert not masked[:32].all()  # shuffled
    d = dinov2_mask(64, (14, 14), gen(5))
    r = dinov2_ratios(64, gen(5))
    assert torch.equal(d.counts, torch.tensor([int(196 * x) for x in r.tolist()]))
    assert torch.equal(d.mask.sum(dim=1), d.counts)
    assert torch.equal(d.flat_idx, d.mask.reshape(-1).nonzero().squeeze(1))
    assert d.weight.sum().item() == pytest.approx(32.0)  # 1/count per masked image


def _ijepa(seed, b=64, grid=(8, 8)):
    return multiblock_mask(b, grid, gen(seed), target_scale=(0.1, 0.2))


def test_multiblock_structure():
    for seed in SEEDS:
        mb = multiblock_mask(32, (14, 14), gen(seed))
        context = ~mb.context.mask
        check_indices(mb.context, 196)
        assert len(mb.targets) == 4
        kt = mb.targets[0].mask_idx.shape[1]
        for t in mb.targets:
            check_indices(t, 196)
            assert t.mask_idx.shape[1] == kt
            assert not (context & t.mask).any()  # targets are removed from the context
        assert mb.context.keep_idx.shape[1] >= 10


def test_multiblock_reaches_last_row_and_column():
    hits = torch.zeros(8, 8, dtype=torch.bool)
    for step in range(20):
        mb = multiblock_mask(32, (8, 8), gen(0, 0, step))
        for t in mb.targets:
            hits |= t.mask.view(-1, 8, 8).any(dim=0)
    assert hits[-1].any() and hits[:, -1].any() and hits[-1, -1]
    top, left = M._place(torch.full((5000,), 3), torch.full((5000,), 2), (8, 8), gen(1))
    assert int(top.max()) == 5 and int(left.max()) == 6 and int(top.min()) == 0 and int(left.min()) == 0


def test_multiblock_scale_and_aspect_independent():
    h, w, s, a = M._block_sizes(20000, (14, 14), (0.15, 0.2), (0.75, 1.5), gen(0))
    corr = torch.corrcoef(torch.stack([s, a]))[0, 1].item()
    assert abs(corr) < 0.03
    assert s.min() >= 0.15 and s.max() <= 0.2 and a.min() >= 0.75 and a.max() <= 1.5
    assert (h >= 1).all() and (h <= 14).all() and (w >= 1).all() and (w <= 14).all()


def test_truncation_drops_random_patches():
    # A fixed 3x3 block cut to 5 patches: every position is sometimes dropped, sometimes kept.
    block = torch.zeros(2000, 16, dtype=torch.bool)
    block[:, [0, 1, 2, 4, 5, 6, 8, 9, 10]] = True
    cut = M._adjust_to_count(block, torch.full((2000,), 5), gen(0))
    assert (cut & ~block).sum() == 0 and cut.sum(dim=1).eq(5).all()
    kept = cut[:, block[0]].float().mean(dim=0)
    assert ((kept > 0.4) & (kept < 0.7)).all()
    # In real draws, the last patch of a truncated block is not always the one dropped.
    dropped_last = kept_last = 0
    for seed in range(8):
        g = gen(seed)
        mb = multiblock_mask(32, (14, 14), g)
        g = gen(seed)  # same draws up to the truncation: rebuild the full target blocks
        b, t = 32, 4
        th, tw, _, _ = M._block_sizes(b * t, (14, 14), (0.15, 0.2), (0.75, 1.5), g)
        th, tw = th.view(b, t), tw.view(b, t)
        full = M._stamp(*M._place(th, tw, (14, 14), g), th, tw, (14, 14))
        for i in range(t):
            cut_i = mb.targets[i].mask
            assert not (cut_i & ~full[:, i]).any()
            last = full[:, i].float().cumsum(1).argmax(1)
            short = full[:, i].sum(1) > cut_i.sum(1)
            hit = cut_i[torch.arange(b), last]
            dropped_last += int((short & ~hit).sum())
            kept_last += int((short & hit).sum())
    assert dropped_last > 0 and kept_last > 0


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda g: random_mask(4, (14, 14), 1.0, g), "ratio"),
        (lambda g: random_mask(4, (14, 14), 0.0, g), "ratio"),
        (lambda g: random_mask(4, (0, 14), 0.5, g), "grid"),
        (lambda g: random_mask(-1, (14, 14), 0.5, g), "batch"),
        (lambda g: grid_mask(4, (14, 14), 0.6, g, cell=3), "cell"),
        (lambda g: blockwise_mask(4, (14, 14), 197, g), "num_masked"),
        (lambda g: blockwise_mask(4, (14, 14), 50, g, min_patches=0), "min_patches"),
        (lambda g: blockwise_mask(4, (14, 14), 50, g, aspect=(2.0, 1.0)), "aspect"),
        (lambda g: multiblock_mask(4, (14, 14), g, n_targets=0), "n_targets"),
        (lambda g: multiblock_mask(4, (14, 14), g, target_scale=(0.2, 1.5)), "target_scale"),
        (lambda g: inverse_block_mask(4, (14, 14), 0.8, g, block=0), "block"),
        (lambda g: dinov2_ratios(4, g, ratio_range=(0.0, 0.5)), "ratio_range"),
        (lambda g: dinov2_ratios(4, g, masked_fraction=1.5), "masked_fraction"),
    ],
)
def test_bad_arguments(call, match):
    with pytest.raises(ValueError, match=match) as err:
        call(gen(0))
    assert "\n" not in str(err.value)


def test_needs_explicit_generator():
    with pytest.raises(ValueError, match="Generator"):
        random_mask(4, (14, 14), 0.5, None)
