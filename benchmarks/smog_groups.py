"""SMoG's group statistics during the learning tests' short run (tests/test_catalogue_learning.py's short_run_knn):
per step, the number of distinct target groups (of the momentum encoder's projections) and member groups (of
the online projections) in the batch, the fraction of predictions that pick the target group, the loss; then
the kNN top-1 against random init. The figures in selfsup/methods/smog.py's note come from it:

    PYTHONPATH=tests .venv/bin/python benchmarks/smog_groups.py --epochs 2 method.momentum=0.99 method.reset_every=22
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

import selfsup.methods.smog as smog_module
from selfsup.losses.grouping import smog_assign


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("overrides", nargs="*", help="dotted recipe overrides of smog_digits")
    args = ap.parse_intermixed_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from test_catalogue_learning import short_run_knn  # the tests' measure, unchanged

    torch.set_num_threads(1)
    rows = []
    loss_fn = smog_module.smog_loss

    def recorded(p, z, t, groups, beta, tau, *a, **k):
        loss, new = loss_fn(p, z, t, groups, beta, tau, *a, **k)
        y, members = smog_assign(t, groups), smog_assign(z, groups)
        rows.append((len(y.unique()), len(members.unique()), float((smog_assign(p, new) == y).float().mean()),
                     float(loss.detach())))
        return loss, new

    smog_module.smog_loss = recorded  # observe the method's own calls; the training is unchanged
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        base, trained = short_run_knn("smog_digits", [*args.overrides, f"train.epochs={args.epochs}"], Path(out),
                                      args.seed)
    for i in sorted({*range(0, len(rows), max(1, len(rows) // 12)), len(rows) - 1}):
        y, m, acc, loss = rows[i]
        print(f"step {i}: distinct target groups {y}, member groups {m}, prediction = target {acc:.2f}, "
              f"loss {loss:.3f}")
    print(f"smog_digits {args.epochs} epochs ({len(rows)} steps) {' '.join(args.overrides)}: kNN top-1 {trained:.3f} "
          f"vs {base:.3f} at random init ({trained - base:+.3f}), {time.perf_counter() - t0:.0f} s on 1 thread")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
