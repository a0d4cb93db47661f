"""2-process gloo DDP: value and input gradient equal the single-process full-batch result."""

import torch

from ddp_utils import assert_parity, ddp_parity
from selfsup.losses import info_nce, nt_xent, vicreg_loss


def simclr_case(z1, z2):
    return nt_xent(z1, z2, 0.2)


def vicreg_case(z1, z2):
    return vicreg_loss(z1, z2, 25.0, 25.0, 1.0)


def info_nce_case(q, k):
    return info_nce(q, k, None, 0.3)


def test_batch_statistic_losses_are_exact_under_ddp():
    g = torch.Generator().manual_seed(0)
    z = lambda: torch.randn(8, 6, generator=g, dtype=torch.float64)
    cases = [("simclr", simclr_case, [z(), z()]), ("vicreg", vicreg_case, [z(), z()]),
             ("info_nce", info_nce_case, [z(), z()])]
    result = ddp_parity(cases)
    assert_parity(result)
    # the check can fail: a local-only loss would differ from the full-batch one
    local = nt_xent(cases[0][2][0][:4], cases[0][2][1][:4], 0.2)
    assert not torch.allclose(local, result["simclr"]["single"][0])
