"""2-process gloo DDP parity of the self-distillation losses that use batch statistics: DINO's center
(all-reduced teacher mean) and DirectPred's running correlation (all-reduced E[z z^T]).

The harness compares the mean of per-rank loss values and the per-rank input gradients (DDP's average)
with one process on the full batch. To compare a *state* (the updated center, the updated correlation)
elementwise, a case returns ``mean_b <state, x_b>``-style probes whose input gradient is the state itself.
"""

import torch

from ddp_utils import assert_parity, ddp_parity
from selfsup.losses import DINOLoss, byol_loss, correlation_update, dino_center_update, dino_loss, directpred_predictor
from selfsup.losses import simsiam_loss

K, D = 6, 4
CENTER0 = torch.linspace(-0.5, 0.5, K, dtype=torch.float64)
CORR0 = torch.diag(torch.linspace(0.5, 2.0, D, dtype=torch.float64))


def dino_loss_case(student, teacher):
    """student [B, 4 crops, K], teacher [B, 2 globals, K]."""
    return dino_loss(list(student.unbind(1)), list(teacher.unbind(1)), CENTER0, 0.1, 0.04)


def dino_center_case(teacher, probe):
    """d/d probe_b of mean_b <c_new, probe_b> is c_new / B: the gradient is the updated center, per rank."""
    c = dino_center_update(CENTER0, list(teacher.unbind(1)), 0.9)
    return (probe * c).sum(1).mean()


def dino_two_steps_case(student, teacher):
    """The second step's loss uses the center updated (all-reduced) by the first step."""
    crit = DINOLoss(K, 0.1, 0.9).double()
    crit.center.copy_(CENTER0)
    s, t = list(student.unbind(1)), list(teacher.unbind(1))
    crit([x.detach() for x in s], [10 * x for x in t], 0.04)  # a large teacher mean moves the center a lot
    return crit(s, t, 0.04)


def corr_case(z, probe):
    """d/d probe_b of mean_b probe_b^T F_new probe_b is 2 F_new probe_b / B: F_new is compared per rank."""
    f = correlation_update(CORR0, z, 0.3)
    return torch.einsum("bi,ij,bj->b", probe, f, probe).mean()


def directpred_case(z1, z2, t1, t2):
    """DirectPred's loss with the predictor set from the correlation updated on this (global) batch."""
    w = directpred_predictor(correlation_update(CORR0, torch.cat([z1, z2]).detach(), 0.3), 0.1)
    return byol_loss(z1 @ w, t2) + byol_loss(z2 @ w, t1)


def simsiam_case(p1, p2, z1, z2):
    return simsiam_loss(p1, p2, z1, z2)


def test_distillation_losses_are_exact_under_ddp():
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    b = 8
    cases = [("dino_loss", dino_loss_case, [r(b, 4, K), r(b, 2, K)]),
             ("dino_center", dino_center_case, [r(b, 2, K) + 1.0, r(b, K)]),
             ("dino_two_steps", dino_two_steps_case, [r(b, 4, K), r(b, 2, K) + torch.linspace(0, 2, K)]),
             ("correlation", corr_case, [r(b, D) * torch.linspace(0.2, 2, D), r(b, D)]),
             ("directpred", directpred_case, [r(b, D), r(b, D), r(b, D), r(b, D)]),
             ("simsiam", simsiam_case, [r(b, D), r(b, D), r(b, D), r(b, D)])]
    result = ddp_parity(cases)
    assert_parity(result)
    # the checks can fail: these inputs give a different center / correlation on half of the batch
    teacher = cases[1][2][0]
    assert not torch.allclose(dino_center_update(CENTER0, list(teacher[: b // 2].unbind(1)), 0.9),
                              dino_center_update(CENTER0, list(teacher.unbind(1)), 0.9))
    z = cases[3][2][0]
    assert not torch.allclose(correlation_update(CORR0, z[: b // 2], 0.3), correlation_update(CORR0, z, 0.3))
