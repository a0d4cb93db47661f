"""SMoG's group statistics during the learning tests' short run (tests/test_catalogue_learning.py's short_run_knn):
per step, the number of distinct target groups (of the momentum encoder's projections) and member groups (of
the online projections) in the batch, how often the two views of an image fall in the same group (the online
projection of view a and the momentum target of view b: chance is 1/K), the fraction of predictions that pick
the target group, the loss; then the kNN top-1 against random init, for each seed. The figures in
selfsup/methods/smog.py's note come from it:

    PYTHONPATH=tests .venv/bin/python benchmarks/smog_groups.py --epochs 2 --seeds 0,1,2
    PYTHONPATH=tests .venv/bin/python benchmarks/smog_groups.py --seeds 0,1,2 method.group_init=kmeans method.symmetric=true

The official code's two options are the library's (``method.group_init=kmeans``, ``method.symmetric=true``);
``--shuffle-targets`` breaks the loss (the momentum targets permuted across the batch), the floor a learning
signal must clear.
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


def patch(args: argparse.Namespace, rows: list) -> None:
    loss_fn = smog_module.smog_loss
    perm = torch.Generator().manual_seed(0)

    def recorded(p, z, t, groups, beta, tau, *a, **k):
        if args.shuffle_targets:
            t = t[torch.randperm(t.shape[0], generator=perm)]
        loss, new = loss_fn(p, z, t, groups, beta, tau, *a, **k)
        y, members = smog_assign(t, groups), smog_assign(z, groups)
        rows.append((len(y.unique()), len(members.unique()), float((members == y).float().mean()),
                     float((smog_assign(p, new) == y).float().mean()), float(loss.detach())))
        return loss, new

    smog_module.smog_loss = recorded  # observe the method's own calls


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--seeds", default="0", help="comma-separated seeds, e.g. 0,1,2")
    ap.add_argument("--shuffle-targets", action="store_true", help="broken loss: targets permuted in the batch")
    ap.add_argument("overrides", nargs="*", help="dotted recipe overrides of smog_digits")
    args = ap.parse_intermixed_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from test_catalogue_learning import short_run_knn  # the tests' measure, unchanged

    torch.set_num_threads(1)
    rows: list = []
    patch(args, rows)
    flags = "--shuffle-targets" if args.shuffle_targets else ""
    gains = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        rows.clear()
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as out:
            base, trained = short_run_knn("smog_digits", [*args.overrides, f"train.epochs={args.epochs}"],
                                          Path(out), seed)
        for i in sorted({*range(0, len(rows), max(1, len(rows) // 8)), len(rows) - 1}):
            y, m, same, acc, loss = rows[i]
            print(f"  step {i}: distinct target groups {y}, member groups {m}, views in the same group {same:.2f}, "
                  f"prediction = target {acc:.2f}, loss {loss:.3f}")
        gains.append(trained - base)
        print(f"smog_digits seed {seed} {args.epochs} epochs ({len(rows)} steps) {flags} {' '.join(args.overrides)}: "
              f"kNN top-1 {trained:.3f} vs {base:.3f} at random init ({trained - base:+.3f}), "
              f"{time.perf_counter() - t0:.0f} s on 1 thread", flush=True)
    print(f"gains {' '.join(f'{g:+.3f}' for g in gains)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
