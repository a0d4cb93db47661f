"""kNN top-1 of the spatial pretext recipes (``jigsaw_digits``, ``relpatch_digits``, ``rotnet_digits``) after a
short run, against the same backbone at random init, on the shifted digits split of tests/train_utils.py at any
size: the measure behind tests/test_origins_spatial_learning.py's docstring, for settings too slow for the suite.

Besides the final pooled features (what ``selfsup eval`` and the learning tests score) it prints the kNN of the
third stage's pooled map (SmallCNN only), to tell "the trunk learned nothing" from "the last stage specialised to
the pretext task". ``--break-labels`` shuffles the pretext labels against the shown puzzles/pairs across the batch
(the tiles of image i are shuffled by image j's permutation; the pair of image i is cut at image j's neighbour), so
the loss can no longer be solved from the images: the control of a learning claim.

    PYTHONPATH=tests .venv/bin/python benchmarks/origins_knn.py jigsaw_digits --size 32 --epochs 4 \\
        method.grid=2 method.n_permutations=24 method.tile_size=null optim.lr=0.3
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn as nn


def stage_pool(backbone: nn.Module, stages: int) -> nn.Module:
    """The first ``stages`` conv-BN-ReLU stages of a SmallCNN, globally average-pooled."""
    return nn.Sequential(backbone.features[:3 * stages], nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()


def break_labels(method: nn.Module, seed: int) -> None:
    """Shuffle the pretext labels against the inputs across the batch (see the module docstring)."""
    g = torch.Generator().manual_seed(seed)
    name = method.cfg.name
    if name == "jigsaw":
        puzzle = method.puzzle
        method.puzzle = lambda x, index, offsets: puzzle(x, index[torch.randperm(len(index), generator=g)], offsets)
    elif name == "relpatch":
        pair = method.pair
        method.pair = lambda x, masks: pair(x, (masks[0][torch.randperm(len(masks[0]), generator=g)], *masks[1:]))
    else:
        raise SystemExit(f"--break-labels supports jigsaw and relpatch, not {name}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe")
    ap.add_argument("--size", type=int, default=32, help="image side for training and the kNN split")
    ap.add_argument("--shift", type=int, default=2, help="largest shift of the test images (px)")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--break-labels", action="store_true")
    ap.add_argument("overrides", nargs="*", help="dotted recipe overrides (after the tests' LEARN settings)")
    args = ap.parse_intermixed_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from selfsup.config import load_recipe
    from selfsup.train.loop import build_method, train
    from train_utils import LEARN, bn_recalibrated, knn_top1, shifted_digits

    torch.set_num_threads(1)
    data = shifted_digits(size=args.size, max_shift=args.shift)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        r = load_recipe(args.recipe, LEARN + ["data.batch_size=64", f"data.image_size={args.size}", *args.overrides,
                                              f"train.epochs={args.epochs}", f"train.seed={args.seed}",
                                              f"train.out_dir={out}"])
        torch.manual_seed(args.seed)
        method = build_method(r, data.train.channels, data.train.image_size)
        base = knn_top1(method.backbone, data)
        base_bn = knn_top1(bn_recalibrated(method.backbone, data.train.images), data)
        base_s3 = knn_top1(stage_pool(method.backbone, 3), data)
        if args.break_labels:
            break_labels(method, args.seed)
        run = train(r, run_dir=Path(out) / "run", data=data, method=method, log=lambda *a: None)
        acc = [round(json.loads(line).get("pretext_acc", float("nan")), 3) for line in open(run / "metrics.jsonl")]
    trained, trained_s3 = knn_top1(method.backbone, data), knn_top1(stage_pool(method.backbone, 3), data)
    ref = max(base, base_bn)
    print(f"{args.recipe} {args.size} px shift {args.shift}, {args.epochs} epochs, seed {args.seed}"
          f"{', labels broken' if args.break_labels else ''} {' '.join(args.overrides)}")
    print(f"  kNN top-1: random init {base:.3f} (BN re-estimated {base_bn:.3f}) -> trained {trained:.3f} "
          f"({trained - ref:+.3f}); stage 3: {base_s3:.3f} -> {trained_s3:.3f}")
    print(f"  pretext accuracy per epoch {acc}; {time.perf_counter() - t0:.0f} s on 1 thread")
    print(f"command: PYTHONPATH=tests {' '.join([sys.executable.split('/')[-1], *sys.argv])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
