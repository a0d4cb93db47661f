"""2-process gloo DDP for the contrastive family: value and input gradient equal the single-process
full-batch result, and queues hold the same entries after an enqueue.

Queue contents are checked inside the loss: each queue case adds a fingerprint of the bank after
``enqueue`` (a fixed random projection of every entry, plus the write pointer and fill count), which
differs for any misplaced, missing or extra row, so the parity of the value checks the queue too.
"""

import torch

from ddp_utils import assert_parity, ddp_parity
from selfsup.losses import (batch_margin_contrastive, batch_triplet, dcl, moco_infonce, moco_v3_loss, msf_loss, nnclr_loss, relic_loss, supcon,
                            unified_contrastive, unified_preset)
from selfsup.nets import MemoryBank

D = 6


def _bank(size: int, seed: int, start: int = 0) -> MemoryBank:
    """A full float64 bank of random entries (identical on every rank), write pointer at ``start``."""
    bank = MemoryBank(size, D, with_labels=True).double()
    bank.bank.copy_(torch.randn(size, D, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    bank.ptr.fill_(start)
    bank.count.fill_(size)
    return bank


def _fingerprint(bank: MemoryBank) -> torch.Tensor:
    proj = torch.randn(bank.bank.shape, generator=torch.Generator().manual_seed(99), dtype=torch.float64)
    return (bank.bank * proj).sum() + 0.1 * (bank.labels * torch.arange(bank.size)).sum() + bank.ptr + bank.count


def supcon_case(z1, z2, y):
    return supcon([z1, z2], y, 0.2)


def supcon3_case(z1, z2, z3, y):
    return supcon([z1, z2, z3], y, 0.5)


def dcl_case(z1, z2):
    return dcl(z1, z2, 0.2)


def dclw_case(z1, z2):
    return dcl(z1, z2, 0.2, sigma=0.5)


def mocov2_case(q, k):
    bank = _bank(13, seed=1, start=9)  # 8 new keys wrap around the end of the ring buffer
    loss = moco_infonce(q, k, bank.get(), 0.2)
    bank.enqueue(torch.nn.functional.normalize(k.detach(), dim=1))
    return loss + _fingerprint(bank)


def mocov3_case(q1, q2, k1, k2):
    return moco_v3_loss(q1, q2, k1, k2, 0.7)


def nnclr_case(z1, z2, p1, p2, y):
    support = _bank(12, seed=2)
    loss = (nnclr_loss(z1, p2, support.get(), 0.1) + nnclr_loss(z2, p1, support.get(), 0.1)) / 2
    support.enqueue(torch.nn.functional.normalize(z1.detach(), dim=1), y)
    return loss + _fingerprint(support)


def msf_case(q, t, y):
    bank = _bank(10, seed=3, start=4)
    loss = msf_loss(q, t, bank.get(), k=3)  # neighbours come from the bank and the global batch of targets
    bank.enqueue(torch.nn.functional.normalize(t, dim=1), y)
    return loss + _fingerprint(bank)


def relic_case(z1, z2, t1, t2):
    return relic_loss(z1, z2, t1, t2, 0.3, alpha=0.7)


def unified_infonce_case(z1, z2):
    return unified_contrastive(z1, z2, unified_preset("infonce", 0.4, 0.5), negatives="all")


def unified_triplet_case(z1, z2):
    return unified_contrastive(z1, z2, unified_preset("triplet", eps=0.5), negatives="other")


def unified_lifted_case(z1, z2):
    return unified_contrastive(z1, z2, unified_preset("lifted"), negatives="all", symmetric=False)


def unified_custom_case(z1, z2):
    return unified_contrastive(z1, z2, lambda s: s.pow(2), torch.sigmoid, negatives="all", normalize=False)


def triplet_semihard_case(z1, z2):
    return batch_triplet(z1, z2, 0.5, "semihard")


def triplet_all_case(z1, z2):
    return batch_triplet(z1, z2, 0.5, "all")


def margin_contrastive_case(z1, z2):
    return batch_margin_contrastive(z1, z2, 1.2)


def test_contrastive_losses_are_exact_under_ddp():
    g = torch.Generator().manual_seed(0)
    z = lambda: torch.randn(8, D, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 1, 3, 0])
    cases = [
        ("supcon", supcon_case, [z(), z(), y]),
        ("supcon_3views", supcon3_case, [z(), z(), z(), y]),
        ("dcl", dcl_case, [z(), z()]),
        ("dclw", dclw_case, [z(), z()]),
        ("mocov2", mocov2_case, [z(), z()]),
        ("mocov3", mocov3_case, [z(), z(), z(), z()]),
        ("nnclr", nnclr_case, [z(), z(), z(), z(), y]),
        ("msf", msf_case, [z(), z(), y]),
        ("relic", relic_case, [z(), z(), z(), z()]),
        ("unified_infonce", unified_infonce_case, [z(), z()]),
        ("unified_triplet", unified_triplet_case, [z(), z()]),
        ("unified_lifted", unified_lifted_case, [z(), z()]),
        ("unified_custom", unified_custom_case, [z(), z()]),
        ("triplet_semihard", triplet_semihard_case, [z(), z()]),
        ("triplet_all", triplet_all_case, [z(), z()]),
        ("margin_contrastive", margin_contrastive_case, [z(), z()]),
    ]
    result = ddp_parity(cases)
    assert_parity(result)
    # the checks can fail: a rank-local loss or a rank-local queue differs from the full-batch result
    (a, b, labels) = cases[0][2]
    assert not torch.allclose(supcon([a[:4], b[:4]], labels[:4], 0.2), result["supcon"]["single"][0])
    q, k = cases[4][2]
    bank = _bank(13, seed=1, start=9)
    bank.enqueue(torch.nn.functional.normalize(k[:4], dim=1))
    full = _bank(13, seed=1, start=9)
    full.enqueue(torch.nn.functional.normalize(k, dim=1))
    assert _fingerprint(bank) != _fingerprint(full)
