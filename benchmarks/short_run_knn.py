"""kNN top-1 of a ``*_digits`` recipe after a short run against the same backbone at random init: the measure of
tests/test_catalogue_learning.py (shifted 16 px digits, width-16 SmallCNN, batch 64), at any number of epochs, for
runs too long for the test suite (e.g. SMoG and VISReg, which need more than the tests' 2 epochs).

    PYTHONPATH=tests .venv/bin/python benchmarks/short_run_knn.py visreg_digits --epochs 8 optim.lr=2.0 \\
        method.num_slices=256 views.params.n_local=2
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("overrides", nargs="*", help="dotted recipe overrides")
    args = ap.parse_intermixed_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from test_catalogue_learning import short_run_knn  # the tests' measure, unchanged

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        base, trained = short_run_knn(args.recipe, [*args.overrides, f"train.epochs={args.epochs}"], Path(out),
                                      args.seed)
    print(f"{args.recipe} {args.epochs} epochs {' '.join(args.overrides)}: kNN top-1 {trained:.3f} vs {base:.3f} at "
          f"random init ({trained - base:+.3f}), {time.perf_counter() - t0:.0f} s on 1 thread")
    print(f"command: PYTHONPATH=tests {' '.join([sys.executable.split('/')[-1], *sys.argv])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
