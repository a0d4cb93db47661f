"""RotNet and counting short runs against two controls on the shifted digits split of tests/train_utils.py, at
several seeds: the random-init backbone (the better of as built and BatchNorm re-estimated, as the learning tests)
and the same run with the pretext labels broken, so the loss can no longer be solved from the images:

- rotnet: the rotation labels of the ``4B`` rotated inputs shuffled across the step's batch;
- counting: the four tiles of image ``i`` swapped for those of image ``perm(i)`` in the backbone's input, so
  ``phi(D x_i)`` must equal the tile counts of another image.

A kNN gain that the broken run matches comes from fitting noise under crops (tests/test_origins_spatial_learning.py
docstring), not from the pretext task. kNN top-1 of the final pooled features (what ``selfsup eval`` and the tests
score) and of the pooled maps after earlier SmallCNN stages (``--stages``; 4 is the final one). One JSON line per
run to stdout (and to ``--out`` if given). ``--last-lr-scale``, ``--label-smoothing`` and ``--head-dropout`` are
the variants tried without success (tests/test_origins_spatial_learning.py). The figures of
test_rotnet_final_features_beat_random_init (1 thread; 19-38 s a run):

    OMP_NUM_THREADS=1 PYTHONPATH=tests .venv/bin/python benchmarks/origins_controls.py rotnet_digits --size 24 \\
        --epochs 8 --seeds 0,1,2,3,4 --stages 4 method.head=256 optim.lr=0.05 views.params.scale=[0.6,1]
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
    """The first ``stages`` conv-BN-ReLU stages of a SmallCNN, globally average-pooled (4: the backbone)."""
    if stages == len(backbone.features) // 3:
        return backbone
    return nn.Sequential(backbone.features[:3 * stages], nn.AdaptiveAvgPool2d(1), nn.Flatten()).eval()


def break_rotnet(generator: torch.Generator):
    """Shuffle the rotation labels of each step across its ``4B`` inputs (returns the undo)."""
    import selfsup.methods.rotnet as rotnet

    rotations = rotnet.rotations

    def broken(x):
        out, targets = rotations(x)
        return out, targets[torch.randperm(len(targets), generator=generator)]

    rotnet.rotations = broken
    return lambda: setattr(rotnet, "rotations", rotations)


def break_counting(method: nn.Module, generator: torch.Generator):
    """Feed the backbone, in each training forward, image ``perm(i)``'s tiles in place of image ``i``'s."""
    forward = method.backbone.forward

    def broken(inp):
        b = getattr(method, "_batch", 0)
        if method.training and b and inp.shape[0] == 5 * b:  # [D(x) for B images, 4 tiles for each]
            d, tiles = inp[:b], inp[b:].view(b, 4, *inp.shape[1:])
            inp = torch.cat([d, tiles[torch.randperm(b, generator=generator)].flatten(0, 1)])
        return forward(inp)

    method_forward = method.forward

    def counted(views, *args, **kwargs):
        method._batch = views[0].shape[0]
        return method_forward(views, *args, **kwargs)

    method.backbone.forward, method.forward = broken, counted
    return lambda: method.backbone.__dict__.pop("forward", None)


def scale_last_stage_lr(method: nn.Module, scale: float) -> None:
    """Train the backbone's last SmallCNN stage at ``scale`` x the lr (0: frozen but for its BatchNorm statistics),
    through the ``lr_scale`` key of :meth:`Method.param_groups`."""
    last = {id(p) for p in method.backbone.features[-3:].parameters()}
    groups = method.param_groups()

    def split() -> list[dict]:
        out = []
        for g in groups:
            for mine, s in ((True, scale), (False, 1.0)):
                ps = [p for p in g["params"] if (id(p) in last) == mine]
                if ps:
                    out.append({**g, "params": ps, "lr_scale": g.get("lr_scale", 1.0) * s})
        return out

    method.param_groups = split


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipe", help="rotnet_digits or counting_digits (or a recipe of those methods)")
    ap.add_argument("--size", type=int, default=32, help="image side for training and the kNN split")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--modes", default="real,broken", help="comma list of real and broken")
    ap.add_argument("--stages", default="3,4", help="SmallCNN stages whose pooled map is scored (4: final)")
    ap.add_argument("--out", type=Path, help="append the JSON lines to this file as they come")
    ap.add_argument("--last-lr-scale", type=float, default=1.0, help="lr multiplier of the last SmallCNN stage")
    ap.add_argument("--label-smoothing", type=float, default=0.0, help="rotnet: label smoothing of the loss")
    ap.add_argument("--head-dropout", type=float, default=0.0, help="rotnet: dropout before the rotation head")
    ap.add_argument("overrides", nargs="*", help="dotted recipe overrides (after the tests' LEARN settings)")
    args = ap.parse_intermixed_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from selfsup.config import load_recipe
    from selfsup.train.loop import build_method, train
    from train_utils import LEARN, bn_recalibrated, knn_top1, shifted_digits

    torch.set_num_threads(1)
    if args.label_smoothing:
        import torch.nn.functional as F
        import selfsup.methods.rotnet as rotnet
        rotnet.pretext_cross_entropy = lambda logits, t: F.cross_entropy(logits, t,
                                                                         label_smoothing=args.label_smoothing)
    stages = [int(s) for s in args.stages.split(",")]
    data = shifted_digits(size=args.size)
    knns = lambda bb: {k: round(knn_top1(stage_pool(bb, k), data), 4) for k in stages}
    for seed in [int(s) for s in args.seeds.split(",")]:
        base = None
        for mode in args.modes.split(","):
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory() as out:
                r = load_recipe(args.recipe, LEARN + ["data.batch_size=64", f"data.image_size={args.size}",
                                                      *args.overrides, f"train.epochs={args.epochs}",
                                                      f"train.seed={seed}", f"train.out_dir={out}"])
                torch.manual_seed(seed)
                method = build_method(r, data.train.channels, data.train.image_size)
                if args.head_dropout:
                    method.classifier = nn.Sequential(nn.Dropout(args.head_dropout), method.classifier)
                if args.last_lr_scale != 1.0:
                    scale_last_stage_lr(method, args.last_lr_scale)
                if base is None:  # the same weights for both modes of a seed
                    plain, bn = knns(method.backbone), knns(bn_recalibrated(method.backbone, data.train.images))
                    base = {k: max(plain[k], bn[k]) for k in stages}
                g = torch.Generator().manual_seed(1000 + seed)
                undo = lambda: None
                if mode == "broken":
                    if r.method.name not in ("rotnet", "counting"):
                        raise SystemExit(f"broken labels for rotnet and counting only, not {r.method.name}")
                    undo = break_rotnet(g) if r.method.name == "rotnet" else break_counting(method, g)
                try:
                    run = train(r, run_dir=Path(out) / "run", data=data, method=method, log=lambda *a: None)
                finally:
                    undo()
                rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
            key = "pretext_acc" if r.method.name == "rotnet" else "count_mismatch"
            trained = knns(method.backbone)
            rec = {"recipe": args.recipe, "size": args.size, "epochs": args.epochs, "seed": seed, "mode": mode,
                   "overrides": args.overrides, "last_lr_scale": args.last_lr_scale,
                   "label_smoothing": args.label_smoothing, "head_dropout": args.head_dropout, "random_init": base, "trained": trained,
                   "gain": {k: round(trained[k] - base[k], 3) for k in stages},
                   key: [round(row.get(key, float("nan")), 3) for row in rows],
                   "seconds": round(time.perf_counter() - t0)}
            print(json.dumps(rec), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(rec) + "\n")
    print(f"command: PYTHONPATH=tests {' '.join([sys.executable.split('/')[-1], *sys.argv])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
