"""The other learning tests' short runs at several seeds (1 thread), each with the test's own measure and settings
(tests/test_origins_pixels_learning.py, tests/test_origins_instance.py, tests/test_mim_learning.py's iBOT, DINOv2
and MSN cases as ``mim:RECIPE`` with the case's overrides,
tests/test_selfpatch.py); the test's seed 0 is replaced by ``--seeds`` (``train.seed`` and the ``torch.manual_seed``
before the build). For tests that use ``short_run_knn`` of tests/test_catalogue_learning.py (the dense ones), use
benchmarks/short_run_seeds.py.

    PYTHONPATH=tests OMP_NUM_THREADS=1 .venv/bin/python benchmarks/learning_seeds_more.py pixels:colorization_digits
    PYTHONPATH=tests OMP_NUM_THREADS=1 .venv/bin/python benchmarks/learning_seeds_more.py instance:npid_digits \
        method.memory_size=256
    ... --brk neg   the loss negated (``out["loss"]`` times -1, wrapping the built method's forward)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from short_run_seeds import seed_gains, wrap_build  # benchmarks/, the script's own folder


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("case", help="pixels:RECIPE | instance:RECIPE | mim:RECIPE (ibot/dinov2/msn_digits) | "
                                       "selfpatch:selfpatch_digits")
    ap.add_argument("--brk", default="none", choices=["none", "neg"])
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("overrides", nargs="*", help="the test case's extra overrides")
    args = ap.parse_intermixed_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    torch.set_num_threads(1)
    family, recipe = args.case.split(":")
    import selfsup.train.loop as loop

    build_broken = wrap_build(loop.build_method, args.brk, torch.Generator())
    manual_seed = torch.manual_seed

    def run_one(seed: int) -> tuple[float, float, str]:
        extra = [*args.overrides, f"train.seed={seed}"]
        torch.manual_seed = lambda s, _seed=seed: manual_seed(_seed if s == 0 else s)  # the tests' seed 0
        try:
            with tempfile.TemporaryDirectory() as d:
                return run(family, recipe, extra, Path(d), build_broken)
        finally:
            torch.manual_seed = manual_seed

    seed_gains(f"{args.case} break {args.brk} {' '.join(args.overrides)}", args.seeds, run_one, 0.04)
    return 0


def run(family, recipe, extra, out, build):
    from selfsup.config import load_recipe
    from selfsup.train.loop import train
    from train_utils import LEARN, knn_top1, random_init_knn, shifted_digits

    if family == "pixels":
        import test_origins_pixels_learning as t

        t.build_method = build
        data = t.shifted_colour_digits() if recipe.startswith("colorization") else shifted_digits()
        seed = int(extra[-1].split("=")[1])
        return (*t.short_run_knn(recipe, extra[:-1], out, data, seed), "")
    if family == "mim":
        import test_mim_learning as t

        t.build_method = build
        base, trained, stats = t.teacher_knn_run(recipe, extra, out)
        return base, trained, f", own-target gap {stats['gap']:.4f}"
    if family == "instance":
        import test_origins_instance as t
        from selfsup.data import DataSplits, ImageArray

        data, n = shifted_digits(), 256
        sub = DataSplits(ImageArray(data.train.images[:n], data.train.labels[:n], data.train.classes), data.test,
                         data.name, data.num_classes)
        r = load_recipe(recipe, LEARN + ["data.batch_size=64", "train.epochs=12", *extra, f"train.out_dir={out}"])
        torch.manual_seed(0)
        method = build(r, data.train.channels, data.train.image_size)
        base = random_init_knn(method.backbone, data)
        train(r, run_dir=out / "run", data=sub, method=method, log=lambda *a: None)
        own = f", own row {t._own_row_top1(method, sub.train):.3f}" if hasattr(method, "bank") else ""
        return base, knn_top1(method.backbone, data), own
    if family == "selfpatch":
        import test_selfpatch as t

        data = shifted_digits()
        keep = [o for o in LEARN if not o.startswith(("model.", "data.batch_size", "train.epochs", "optim.eta"))]
        r = load_recipe("selfpatch_digits", keep + t.SHORT + extra + [f"train.out_dir={out}"])
        torch.manual_seed(0)
        method = build(r, data.train.channels, data.train.image_size)
        base = random_init_knn(method.backbone, data)
        train(r, run_dir=out / "run", data=data, method=method, log=lambda *a: None)
        return base, knn_top1(method.backbone, data), ""
    raise SystemExit(f"unknown family {family}")


if __name__ == "__main__":
    raise SystemExit(main())
