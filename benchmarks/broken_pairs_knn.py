"""The learning tests' short run (tests/test_catalogue_learning.py's short_run_knn: shifted 16 px digits, width-16
SmallCNN, batch 64) with a positive-pair break patched into a method's loss, to check that the learning test
fails with it (tests/test_catalogue_b_learning.py's docstring has the figures):

    PYTHONPATH=tests .venv/bin/python benchmarks/broken_pairs_knn.py fastsiam_digits --brk permviews optim.lr=0.5

Breaks (FastSiam, NNBYOL, NNSiam; SMoG takes roll1 / perm / neg / zero on its target projections and loss, and
permviews on its views):
  roll1      every target taken from the next image of the batch (rows rolled by one)
  perview    each view's target from a different other image (FastSiam: view v's rolled by v + 1 rows; NNBYOL and
             NNSiam: the two targets rolled by 1 and 2)
  permviews  view 0 kept, view u >= 1 of tuple i is view u of image pi_u(i) (a seeded random permutation per view
             and step): the views a loss ties together come from different images (SMoG: its forward gets the
             permuted views, so each online view is paired with another image's momentum target)
  zero       the loss times 0 (FastSiam, SMoG)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

import selfsup.methods.fastsiam as fastsiam_module
import selfsup.methods.nnbyol as nnbyol_module
import selfsup.methods.nnsiam as nnsiam_module
import selfsup.methods.smog as smog_module
from short_run_seeds import seed_gains  # benchmarks/, the script's own folder


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe")
    ap.add_argument("--brk", default="none", choices=["none", "roll1", "perview", "permviews", "perm", "neg", "zero"])
    ap.add_argument("--seeds", default="0", help="comma-separated, e.g. 0,1,2")
    ap.add_argument("overrides", nargs="*", help="dotted recipe overrides")
    args = ap.parse_intermixed_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from test_catalogue_learning import MARGIN, short_run_knn  # the tests' measure, unchanged

    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(123)
    brk = args.brk
    fastsiam_loss, nn_byol_loss = fastsiam_module.fastsiam_loss, nnbyol_module.nn_byol_loss
    nn_simsiam_loss, smog_loss = nnsiam_module.nn_simsiam_loss, smog_module.smog_loss

    def fastsiam_broken(p, z):
        v, n = len(z), z[0].shape[0]
        if brk == "roll1":
            return fastsiam_loss(p, [x.roll(1, 0) for x in z])
        if brk == "perview":
            zs = torch.stack([x.detach() for x in z])
            total = zs.sum(0)
            return sum(-F.cosine_similarity(pv, ((total - zs[i]) / (v - 1)).roll(i + 1, 0), dim=-1).mean()
                       for i, pv in enumerate(p)) / v
        if brk == "permviews":
            perms = [torch.randperm(n, generator=gen) if i else torch.arange(n) for i in range(v)]
            return fastsiam_loss([x[q] for x, q in zip(p, perms)], [x[q] for x, q in zip(z, perms)])
        return fastsiam_loss(p, z) * (0 if brk == "zero" else 1)

    def nn_broken(loss_fn):
        def broken(p1, p2, t1, t2, support):
            if brk == "roll1":
                return loss_fn(p1, p2, t1.roll(1, 0), t2.roll(1, 0), support)
            if brk == "perview":
                return loss_fn(p1, p2, t1.roll(1, 0), t2.roll(2, 0), support)
            if brk == "permviews":
                q = torch.randperm(p2.shape[0], generator=gen)
                return loss_fn(p1, p2[q], t1, t2[q], support)
            return loss_fn(p1, p2, t1, t2, support)
        return broken

    def smog_broken(p, z, t, groups, beta, tau, *a, **k):
        if brk == "roll1":
            t = t.roll(1, 0)
        elif brk == "perm":
            t = t[torch.randperm(t.shape[0], generator=gen)]
        loss, new = smog_loss(p, z, t, groups, beta, tau, *a, **k)
        return {"neg": -loss, "zero": loss * 0}.get(brk, loss), new

    smog_forward = smog_module.SMoG.forward

    def smog_permviews(self, views, *a, **k):
        if brk == "permviews":
            views = [v if u == 0 else v[torch.randperm(v.shape[0], generator=gen)] for u, v in enumerate(views)]
        return smog_forward(self, views, *a, **k)

    smog_module.SMoG.forward = smog_permviews
    fastsiam_module.fastsiam_loss = fastsiam_broken  # the methods' own calls; nothing else changes
    nnbyol_module.nn_byol_loss = nn_broken(nn_byol_loss)
    nnsiam_module.nn_simsiam_loss = nn_broken(nn_simsiam_loss)
    smog_module.smog_loss = smog_broken

    def run_one(seed: int) -> tuple[float, float, str]:
        with tempfile.TemporaryDirectory() as out:
            return (*short_run_knn(args.recipe, args.overrides, Path(out), seed), "")

    seed_gains(f"{args.recipe} break {brk} {' '.join(args.overrides)}", args.seeds, run_one, MARGIN)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
