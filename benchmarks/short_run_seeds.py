"""The learning tests' short run (tests/test_catalogue_learning.py's short_run_knn, unchanged) at several seeds,
optionally with a break applied to any method from outside its code, to check that a test's setting clears
``MARGIN`` at every seed and that a broken objective still misses it:

    PYTHONPATH=tests .venv/bin/python benchmarks/short_run_seeds.py mmcr_digits --seeds 0,1,2 optim.lr=2.0
    PYTHONPATH=tests .venv/bin/python benchmarks/short_run_seeds.py mmcr_digits --brk permviews optim.lr=2.0

Breaks (wrapping the built method's forward; the method's own code is not touched):
  neg        the loss negated (``out["loss"]`` times -1)
  permviews  view 0 kept, view u >= 1 of tuple i is view u of image pi_u(i) (a seeded random permutation per view
             and step): every positive pair the loss ties together comes from two different images
(benchmarks/broken_pairs_knn.py has the method-specific target breaks for FastSiam, NNBYOL, NNSiam and SMoG.)
One thread, as the tests' ``one_thread`` fixture.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch


def wrap_build(build: Callable, brk: str, gen: torch.Generator) -> Callable:
    """``build`` (a ``build_method``) whose methods' forward applies the break ``brk`` (none, neg, permviews)."""

    def build_broken(*a, **k):
        method = build(*a, **k)
        forward = method.forward

        def broken(views, *fa, **fk):
            if brk == "permviews":
                views = [v if u == 0 else v[torch.randperm(v.shape[0], generator=gen)] for u, v in enumerate(views)]
            out = forward(views, *fa, **fk)
            return {**out, "loss": -out["loss"]} if brk == "neg" else out

        method.forward = broken  # nn.Module.__call__ looks the instance attribute up first
        return method

    return build_broken


def seed_gains(label: str, seeds: str, run_one: Callable[[int], tuple[float, float, str]], margin: float) -> None:
    """Run ``run_one(seed) -> (random-init kNN, trained kNN, note)`` for each of the comma-separated ``seeds`` and
    print one line per seed and the gains' summary against ``margin``."""
    gains = []
    for seed in [int(x) for x in seeds.split(",")]:
        t0 = time.perf_counter()
        base, trained, note = run_one(seed)
        gains.append(trained - base)
        print(f"{label} seed {seed}: kNN top-1 {trained:.3f} vs {base:.3f} at random init ({trained - base:+.3f})"
              f"{note}, {time.perf_counter() - t0:.1f} s on 1 thread", flush=True)
    print(f"gains {' / '.join(f'{g:+.3f}' for g in gains)}, min {min(gains):+.3f} (margin {margin})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe")
    ap.add_argument("--brk", default="none", choices=["none", "neg", "permviews"])
    ap.add_argument("--seeds", default="0,1,2", help="comma-separated, e.g. 0,1,2")
    ap.add_argument("overrides", nargs="*", help="dotted recipe overrides (the test case's extra)")
    args = ap.parse_intermixed_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    import test_catalogue_learning as tcl  # the tests' measure, unchanged

    torch.set_num_threads(1)
    tcl.build_method = wrap_build(tcl.build_method, args.brk, torch.Generator().manual_seed(123))

    def run_one(seed: int) -> tuple[float, float, str]:
        with tempfile.TemporaryDirectory() as out:
            return (*tcl.short_run_knn(args.recipe, args.overrides, Path(out), seed), "")

    seed_gains(f"{args.recipe} break {args.brk} {' '.join(args.overrides)}", args.seeds, run_one, tcl.MARGIN)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
