"""2-process gloo DDP parity of the masked-modeling losses that use batch statistics: iBOT's patch
center, DINOv2's Sinkhorn teacher, MSN's ME-MAX (all-reduced mean prediction) and Sinkhorn targets.

As in ``test_distillation_ddp.py``, a state (center, Sinkhorn codes) is compared elementwise through a
probe ``mean_b <state_b, probe_b>`` whose input gradient is the state. KoLeo is per process by design
(DINOv2): its test checks that each rank gets the loss of its own shard, not of the global batch.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F

from ddp_utils import assert_parity, ddp_parity, run_on_ranks
from selfsup.losses import (ibot_patch_loss, ibot_teacher_probs, koleo_loss, me_max, msn_loss, patch_center_update,
                            sinkhorn_teacher)

K, D, M = 6, 5, 2  # prototypes, embedding dim, anchor views per target
CENTER0 = torch.linspace(-0.5, 0.5, K, dtype=torch.float64)
PROTOS = torch.randn(K, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def center_all_case(teacher, probe):
    """teacher [B, N, K]: iBOT's center over every patch token of the global batch."""
    c = patch_center_update(CENTER0, teacher, None, 0.9)
    return (probe * c).sum(1).mean()


def center_masked_case(teacher, mask, probe):
    c = patch_center_update(CENTER0, teacher, mask, 0.9)
    return (probe * c).sum(1).mean()


def sinkhorn_case(logits, probe):
    q = sinkhorn_teacher(logits, 0.07, 3)
    return (q * probe).sum(1).mean()


def ibot_case(student, teacher, mask):
    return ibot_patch_loss(student, ibot_teacher_probs(teacher, CENTER0, 0.07), mask, 0.1)


def me_max_case(logits):
    return me_max(F.softmax(logits / 0.3, 1))


def _anchors(anchor):  # [n, M, D] (split by rows across ranks) -> MSN's view-major [M*n, D]
    return anchor.transpose(0, 1).reshape(-1, anchor.shape[-1])


def msn_case(anchor, target):
    return msn_loss(_anchors(anchor), target, PROTOS, 0.1, 0.25, 1.0, True)


def pmsn_case(anchor, target):
    return msn_loss(_anchors(anchor), target, PROTOS, 0.1, 0.25, 0.5, True, prior="power_law")


def test_mim_losses_are_exact_under_ddp():
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    b, n = 8, 5
    mask = torch.rand(b, n, generator=g) < 0.5
    mask[: b // 2, 0] = True  # the two halves mask different numbers of patches
    mask[b // 2:] = False
    mask[b // 2, :3] = True
    cases = [("center_all", center_all_case, [r(b, n, K) + torch.linspace(0, 2, K), r(b, K)]),
             ("center_masked", center_masked_case, [r(b, n, K) + torch.linspace(0, 2, K), mask, r(b, K)]),
             ("sinkhorn", sinkhorn_case, [r(b, K) * 0.3 + torch.linspace(0, 1, K), r(b, K)]),
             ("ibot", ibot_case, [r(b, n, K), r(b, n, K), mask]),
             ("me_max", me_max_case, [r(b, K) + torch.linspace(0, 1, K)]),
             ("msn", msn_case, [r(b, M, D), r(b, D)]),
             ("pmsn", pmsn_case, [r(b, M, D), r(b, D)])]
    result = ddp_parity(cases)
    assert_parity(result)
    assert result["me_max"]["single"][1][0].abs().max() > 0  # a gradient was compared
    # the checks can fail: half of the batch gives a different center / codes / ME-MAX
    t, lg, x = cases[1][2][0], cases[2][2][0], cases[4][2][0]
    assert not torch.allclose(patch_center_update(CENTER0, t[: b // 2], mask[: b // 2], 0.9),
                              patch_center_update(CENTER0, t, mask, 0.9))
    assert not torch.allclose(sinkhorn_teacher(lg[: b // 2], 0.07), sinkhorn_teacher(lg, 0.07)[: b // 2])
    assert not torch.allclose(me_max_case(x[: b // 2]), me_max_case(x))


# ---------------------------------------------------------------- per-rank results (KoLeo, prototype grads)

X_KOLEO = torch.randn(8, D, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
ANCHOR = torch.randn(M * 8, D, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
TARGET = torch.randn(8, D, generator=torch.Generator().manual_seed(4), dtype=torch.float64)


def _msn_shard(rank: int, world: int):
    n = TARGET.shape[0] // world
    rows = slice(rank * n, (rank + 1) * n)
    return ANCHOR.view(M, -1, D)[:, rows].reshape(-1, D), TARGET[rows]


def _per_rank(rank: int, world: int) -> dict:
    x = X_KOLEO.chunk(world)[rank].clone().requires_grad_()
    koleo = koleo_loss(x)
    (gx,) = torch.autograd.grad(koleo, x)
    protos = PROTOS.clone().requires_grad_()
    anchor, target = _msn_shard(rank, world)
    (gp,) = torch.autograd.grad(msn_loss(anchor, target, protos), protos)
    return {"koleo": koleo.detach(), "koleo_grad": gx, "proto_grad": gp}


def test_koleo_is_per_process_and_prototype_gradients_average_to_full_batch():
    world = 2
    per_rank = run_on_ranks(_per_rank, world)
    # KoLeo (DINOv2): no gather, each rank's value and gradient are those of its own shard alone
    for r, res in enumerate(per_rank):
        shard = X_KOLEO.chunk(world)[r].clone().requires_grad_()
        want = koleo_loss(shard)
        (want_grad,) = torch.autograd.grad(want, shard)
        torch.testing.assert_close(res["koleo"], want.detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(res["koleo_grad"], want_grad, rtol=1e-12, atol=1e-12)
    mean_koleo = sum(res["koleo"] for res in per_rank) / world
    assert not torch.allclose(mean_koleo, koleo_loss(X_KOLEO))  # ... which is not the full-batch loss
    # MSN: DDP's averaged prototype gradient equals the single-process full-batch gradient
    protos = PROTOS.clone().requires_grad_()
    (full,) = torch.autograd.grad(msn_loss(ANCHOR, TARGET, protos), protos)
    torch.testing.assert_close(sum(res["proto_grad"] for res in per_rank) / world, full, rtol=1e-7, atol=1e-10)
