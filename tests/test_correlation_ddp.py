"""2-process gloo DDP parity for the canonical-correlation/clustering family: Barlow Twins, W-MSE, SwAV
(Sinkhorn codes with and without a queue, loss value and gradient), the SwAV queue's contents, and
DeepCluster-v2's k-means (a bare step and the method's whole before_epoch), vs one process on the full batch.

Codes, assignments and centroids are compared elementwise through probe inputs: a case returns
sum(result * probe) / n_local, whose gradient with respect to the (row-split) probe is the result itself.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from ddp_utils import assert_parity, ddp_parity
from selfsup.losses import barlow_twins_loss, gather, sinkhorn_knopp, spherical_kmeans, swav_loss, wmse_loss
from selfsup.methods.deepcluster_v2 import DeepClusterV2, DeepClusterV2Config
from selfsup.nets import MemoryBank

N, D, K = 8, 3, 4  # global batch, embedding dim, prototypes


def barlow_case(z1, z2):
    return barlow_twins_loss(z1, z2, 5e-3)


def wmse_case(z1, z2, z3):
    return wmse_loss([z1, z2, z3], w_size=4, w_iter=2, generator=torch.Generator().manual_seed(3))


def sinkhorn_codes_case(s, probe):
    return (sinkhorn_knopp(s, 0.05, 3) * probe).sum() / s.shape[0]


def sinkhorn_queue_codes_case(s, probe, queue_part):
    queue = gather(queue_part, grad=False)  # the replicated queue every rank holds
    codes = swav_loss_codes(s, queue)
    return (codes * probe).sum() / s.shape[0]


def swav_loss_codes(s, queue):
    """The codes swav_loss uses for crop 0 with a queue (its rows rank::world fed to Sinkhorn)."""
    from selfsup.losses.distributed import is_distributed, rank, world_size
    q = queue[rank()::world_size()] if is_distributed() else queue
    return sinkhorn_knopp(torch.cat([q, s]), 0.05, 3)[-s.shape[0]:]


def swav_case(s1, s2, s3):
    return swav_loss([s1, s2, s3], n_assign=2, temperature=0.1, epsilon=0.05, n_iters=3)


def swav_queue_case(s1, s2, s3, q1_part, q2_part):
    queues = [gather(q1_part, grad=False), gather(q2_part, grad=False)]
    return swav_loss([s1, s2, s3], n_assign=2, temperature=0.1, epsilon=0.05, n_iters=3, queue_scores=queues)


def queue_contents_case(z_steps, unused_probe):
    """Three enqueues of a global batch of 8 into a bank of 12 (wraps around): the bank must hold the
    same rows in the same slots as one process enqueuing the full batches."""
    bank = MemoryBank(12, z_steps.shape[2])
    for t in range(z_steps.shape[1]):
        bank.enqueue(z_steps[:, t])
    r = torch.randn(12, z_steps.shape[2], generator=torch.Generator().manual_seed(0), dtype=bank.bank.dtype)
    return (bank.bank * r).sum() + bank.ptr + bank.count + 0 * unused_probe.sum()


def kmeans_case(x, probe_c, probe_a):
    x = F.normalize(x, dim=1)
    init = gather(x, grad=False)[:K]  # the same initial centroids on every rank
    c, a = spherical_kmeans(x.detach(), init, n_iters=5)
    # elementwise: probe_c's gradient is each row's centroid, probe_a's the one-hot assignment
    return ((c[a] * probe_c).sum() + (F.one_hot(a, K).to(x.dtype) * probe_a).sum()) / x.shape[0]


def dcv2_epoch_case(z, indices, probe):
    """DeepCluster-v2's bank filling (gathered enqueue) and before_epoch (k-means on each rank's share of
    the replicated bank, all-reduced sums): same prototypes and per-image pseudo-labels as one process."""
    torch.manual_seed(0)
    cfg = DeepClusterV2Config(projector="4-3", nmb_prototypes=[K, 3], kmeans_iters=4, memory_size=20, n_assign=2)
    m = DeepClusterV2(nn.Flatten(), 4, cfg).double()
    for t in range(z.shape[1]):
        m.bank.enqueue(F.normalize(z[:, t].detach(), dim=1), indices[:, t])
    m.before_epoch(3)
    r = torch.randn(K, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    targets = m._lookup(indices[:, -1])  # [2, n_local] pseudo-labels of the last batch's images
    onehot = torch.cat([F.one_hot(targets[0], K), F.one_hot(targets[1], K)], 1).to(probe.dtype)
    return (m.prototypes[0].weight * r).sum() + (onehot * probe).sum() / z.shape[0]


def test_correlation_family_is_exact_under_ddp():
    g = torch.Generator().manual_seed(0)
    r = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)
    unit = lambda *shape: F.normalize(r(*shape), dim=-1)
    # DCv2 bank: 3 steps of a global batch of 8 images drawn from 12 (some seen twice: newest entry wins)
    idx = torch.stack([torch.randperm(12, generator=g)[:N] for _ in range(3)], 1)
    cases = [
        ("barlow_twins", barlow_case, [r(N, 5), r(N, 5)]),
        ("wmse", wmse_case, [r(N, D), r(N, D), r(N, D)]),
        ("sinkhorn_codes", sinkhorn_codes_case, [unit(N, K), r(N, K)]),
        ("sinkhorn_queue_codes", sinkhorn_queue_codes_case, [unit(N, K), r(N, K), unit(6, K)]),
        ("swav", swav_case, [unit(N, K), unit(N, K), unit(N, K)]),
        ("swav_queue", swav_queue_case, [unit(N, K), unit(N, K), unit(N, K), unit(6, K), unit(6, K)]),
        ("queue_contents", queue_contents_case, [r(N, 3, D), r(N, 1)]),
        ("kmeans", kmeans_case, [r(4 * N, D), r(4 * N, D), r(4 * N, K)]),
        ("dcv2_epoch", dcv2_epoch_case, [r(N, 3, 6), idx, r(N, 2 * K)]),
    ]
    result = ddp_parity(cases)
    assert_parity(result)
    # the probes really carry the codes and assignments (a check that cannot pass vacuously)
    grads = result["sinkhorn_codes"]["single"][1]
    torch.testing.assert_close(grads[1] * N, sinkhorn_knopp(cases[2][2][0], 0.05, 3))
    assert result["kmeans"]["single"][1][2].abs().sum() > 0
    assert result["dcv2_epoch"]["single"][1][1].abs().sum() > 0
    # and a local-only Sinkhorn (marginals over half the batch) would differ from the global one
    half = sinkhorn_knopp(cases[2][2][0][: N // 2], 0.05, 3, distributed=False)
    assert not torch.allclose(half, grads[1][: N // 2] * N)
