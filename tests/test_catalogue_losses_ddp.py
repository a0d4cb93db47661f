"""2-process gloo DDP parity of the catalogue losses with batch statistics: value and input gradient equal
the single-process full-batch ones (ddp_utils.ddp_parity splits every input by rows across ranks).

MMCR's centroid spectrum, the total coding rate, EMP-SSL, FroSSL's normalisation and covariances, SIGReg's
characteristic function, LeJEPA, VISReg's statistics and sort, TiCo's running covariance (compared through a probe),
IterNorm's whitening, VIbCReg, uniformity, DirectCLR's and MACL's negatives and MACL's alignment, CO2's in-batch
negatives, KoLeo's global-batch neighbours (``distributed=True``, the any-method regulariser's), SMoG's group update
(raw and official normalised) over the global batch, All4One's feature columns and negatives, VICRegL's global and
matched-local variance and covariance, DetCon's negatives over the gathered batch, DenseCL's per-image dense loss,
ReSSL, NNBYOL, NNSiam and FastSiam (per-sample terms), NPID's normaliser (an all-reduced mean), NCE and softmax, and
its memory-bank update (gathered over ranks). Inputs with a view axis keep the batch on dim 0 and are rearranged
inside each case.
"""

from __future__ import annotations

import torch

from ddp_utils import assert_parity, ddp_parity
from selfsup.losses import densecl_loss, detcon_loss, vicregl_loss
from selfsup.losses import fastsiam_loss, nn_byol_loss, nn_simsiam_loss, ressl_loss
from selfsup.losses import (align_uniform_loss, all4one_loss, co2_loss, directclr_loss, emp_ssl_loss,
                            feature_contrast, frossl_loss, iter_norm, koleo_loss, lejepa_loss, macl_loss, mmcr_loss,
                            random_slices, sigreg, smog_loss, tico_loss, total_coding_rate, uniformity_loss,
                            vibcreg_loss, visreg_loss)
from selfsup.losses import nce_normalizer, npid_nce_loss, npid_softmax_loss
from selfsup.nets import InstanceBank

D = 4
SLICES = random_slices(D, 32, torch.Generator().manual_seed(7), torch.float64)
COV0 = 0.05 * torch.eye(D, dtype=torch.float64)
PROBE = torch.randn(D, D, generator=torch.Generator().manual_seed(8), dtype=torch.float64)


def _vnd(x):  # [n, V, D] (split by rows) -> [V, n, D]
    return x.transpose(0, 1)


def mmcr_case(v):
    return mmcr_loss(v, 0.1)


def tcr_case(z):
    return total_coding_rate(z, 0.2)


def emp_case(p):
    return emp_ssl_loss(_vnd(p), 200.0)


def frossl_case(v):
    return frossl_loss(_vnd(v), 1.0)


def sigreg_case(v):
    return sigreg(_vnd(v), SLICES)


def lejepa_case(g, loc):
    return lejepa_loss(_vnd(g), _vnd(loc), SLICES, 0.3)


def visreg_case(g, loc):
    return visreg_loss(_vnd(g), _vnd(loc), SLICES, 0.5)


def tico_case(z1, z2):
    loss, c = tico_loss(z1, z2, COV0)
    return loss + (c * PROBE).sum()


def tico_batch_grad_case(z1, z2):
    loss, c = tico_loss(z1, z2, COV0, grad_through_batch=True)
    return loss + (c * PROBE).sum()


def iter_norm_case(x, probe):
    return (iter_norm(x, num_groups=2) * probe).sum(1).mean()


def vibcreg_case(z1, z2):
    return vibcreg_loss(z1, z2)


def uniformity_case(z):
    return uniformity_loss(z, 2.0)


def align_uniform_case(z1, z2):
    return align_uniform_loss(z1, z2)


def directclr_case(r1, r2):
    return directclr_loss(r1, r2, 3, 0.2)


def directclr_ntxent_case(r1, r2):
    return directclr_loss(r1, r2, 3, 0.2, "nt_xent")


def macl_case(z1, z2):
    return macl_loss(z1, z2, 0.1, 0.5, 0.1)


def co2_case(z1, z2):
    return co2_loss(z1, z2, None, 0.1)


def koleo_global_case(x):
    return koleo_loss(x, distributed=True)


GROUPS = torch.randn(3, D, generator=torch.Generator().manual_seed(9), dtype=torch.float64)


def smog_case(p, z, t):
    loss, groups = smog_loss(p, z, t, GROUPS, 0.9, 0.2)
    return loss + (groups * GROUPS).sum()  # the updated groups (global-batch means) through a probe


def smog_official_case(p, z, t):  # the official code's normalised group update, groups detached in the logits
    loss, groups = smog_loss(p, z, t, GROUPS, 0.9, 0.2, normalize=True, detach_groups=True)
    return loss + (groups * GROUPS).sum()


def feature_contrast_case(m1, z1, m2, z2):
    return feature_contrast(m1, z1, m2, z2)


def all4one_case(*x):
    return all4one_loss(*[tuple(x[i:i + 2]) for i in range(0, 12, 2)])["loss"]


def vicregl_case(za, zb, ma, mb, ga, gb):  # issue 11's dense losses (tests/test_dense_methods.py has the rest)
    return vicregl_loss([za, zb], [ma, mb], [ga, gb], 2, 0.75, num_matches=(4, 2))


def detcon_case(p0, p1, t0, t1, i0, i1):
    return detcon_loss(p0, p1, t0, t1, i0, i1, 0.1)


DENSE_QUEUE = torch.randn(6, D, generator=torch.Generator().manual_seed(10), dtype=torch.float64)


def densecl_case(q, k, match):  # per image against a shared dense queue: exact with no communication
    return densecl_loss(q, k, match, DENSE_QUEUE, 0.2)


# issue 11's part A (tests/test_catalogue_b.py has the rest): per-sample terms against a queue or support set that
# every rank shares, so exact with no gather (the half-batch check there, the 2-process one here)
def ressl_case(q, k):
    return ressl_loss(q, k, DENSE_QUEUE)


def nn_byol_case(p1, p2, t1, t2):
    return nn_byol_loss(p1, p2, t1, t2, DENSE_QUEUE)


def nn_simsiam_case(p1, p2, z1, z2):
    return nn_simsiam_loss(p1, p2, z1, z2, DENSE_QUEUE)


def fastsiam_case(*x):
    return fastsiam_loss(list(x[:3]), list(x[3:]))


# NPID (tests/test_instance_discrimination.py has the rest): the normaliser is an all-reduced batch mean, the bank
# update gathers the global batch (every rank writes the same rows), then scores against the updated bank
NPID_N, NPID_K = 20, 5
_NG = torch.Generator().manual_seed(9)
NPID_BANK = torch.nn.functional.normalize(torch.randn(NPID_N, D, generator=_NG, dtype=torch.float64), dim=1)


def npid_nce_case(f, idx):
    z = nce_normalizer(f, NPID_BANK[idx], NPID_N, 0.07)
    return npid_nce_loss(f, NPID_BANK[idx], z, NPID_N, 0.07) + z / NPID_N


def npid_softmax_case(f, t):
    return npid_softmax_loss(f, NPID_BANK, t, 0.07)


def npid_bank_case(f, idx, t):
    bank = InstanceBank(NPID_N, D, seed=3).double()
    bank.update(idx, f)  # gathered: a rank that wrote only its own rows would score against a different bank
    return npid_softmax_loss(f, bank.bank, t, 0.07)


def test_catalogue_losses_are_exact_under_ddp():
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)
    n = 8
    ids = torch.randint(0, 3, (n, 4), generator=g)
    cases = [("mmcr", mmcr_case, [r(n, 3, D)]),
             ("total_coding_rate", tcr_case, [r(n, D)]),
             ("emp_ssl", emp_case, [r(n, 3, D)]),
             ("frossl", frossl_case, [r(n, 2, D)]),
             ("sigreg", sigreg_case, [r(n, 2, D) * 0.7]),
             ("lejepa", lejepa_case, [r(n, 2, D), r(n, 3, D)]),
             ("visreg", visreg_case, [r(n, 2, D), r(n, 1, D)]),
             ("tico", tico_case, [r(n, D), r(n, D)]),
             ("tico_batch_grad", tico_batch_grad_case, [r(n, D), r(n, D)]),
             ("iter_norm", iter_norm_case, [r(n, D) + 1, r(n, D)]),
             ("vibcreg", vibcreg_case, [r(n, D), r(n, D)]),
             ("uniformity", uniformity_case, [r(n, D)]),
             ("align_uniform", align_uniform_case, [r(n, D), r(n, D)]),
             ("directclr", directclr_case, [r(n, 6), r(n, 6)]),
             ("directclr_ntxent", directclr_ntxent_case, [r(n, 6), r(n, 6)]),
             ("macl", macl_case, [r(n, D), r(n, D)]),
             ("co2", co2_case, [r(n, D), r(n, D)]),
             ("koleo_global", koleo_global_case, [r(n, D)]),
             ("smog", smog_case, [r(n, D), r(n, D), r(n, D)]),
             ("smog_official", smog_official_case, [r(n, D), r(n, D), r(n, D)]),
             ("feature_contrast", feature_contrast_case, [r(n, D) for _ in range(4)]),
             ("all4one", all4one_case, [r(n, D) for _ in range(12)]),
             ("vicregl", vicregl_case, [r(n, D), r(n, D), r(n, 6, 3), r(n, 6, 3), r(n, 6, 2), r(n, 6, 2)]),
             ("detcon", detcon_case, [r(n, 4, 5) for _ in range(4)] + [ids, torch.where(ids == 2, -3, ids)]),
             ("npid_nce", npid_nce_case, [r(n, D), torch.randint(0, NPID_N, (n, 1 + NPID_K), generator=g)]),
             ("npid_softmax", npid_softmax_case, [r(n, D), torch.randint(0, NPID_N, (n,), generator=g)]),
             ("npid_bank", npid_bank_case, [r(n, D), torch.randperm(NPID_N, generator=g)[:n],
                                            torch.randint(0, NPID_N, (n,), generator=g)]),
             ("densecl", densecl_case, [r(n, 3, D), r(n, 5, D), torch.randint(0, 5, (n, 3), generator=g)]),
             ("ressl", ressl_case, [r(n, D), r(n, D)]),
             ("nn_byol", nn_byol_case, [r(n, D) for _ in range(4)]),
             ("nn_simsiam", nn_simsiam_case, [r(n, D) for _ in range(4)]),
             ("fastsiam", fastsiam_case, [r(n, D) for _ in range(6)])]
    result = ddp_parity(cases)
    assert_parity(result)
    # every case compared a non-zero gradient, and a half batch would not have passed
    for name, fn, inputs in cases:
        assert result[name]["single"][1][0].abs().max() > 0, name
        half = [x[: n // 2] for x in inputs]
        assert not torch.allclose(fn(*half), fn(*inputs)), name
