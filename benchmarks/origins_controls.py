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
the variants tried without success (tests/test_origins_spatial_learning.py). For counting, ``--readouts`` also
scores the network as it reads images in training (the image downsampled to the tiles' size, the 2 x 2 tiles'
features concatenated or summed, the counting vector phi(D x)) and the final features with BatchNorm re-estimated,
each against the same readout at random init; ``--count-normalize``, ``--separate-passes`` and ``--zoom-out`` are
the counting variants tried (README, "Origins: rotations, ..."; none meets issue 11's criterion), e.g.

    OMP_NUM_THREADS=1 PYTHONPATH=tests .venv/bin/python benchmarks/origins_controls.py counting_digits --size 24 \\
        --epochs 8 --seeds 0,1,2 --stages 4 --readouts --count-normalize method.margin=1

The figures of test_rotnet_final_features_beat_random_init (1 thread; 19-38 s a run):

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


class Resized(nn.Module):
    """``inner`` on the input resized by area averaging to ``1 / factor`` of its side (counting's ``D x`` size)."""

    def __init__(self, inner: nn.Module, factor: int = 2) -> None:
        super().__init__()
        self.inner, self.factor = inner, factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.shape[-1] // self.factor
        return self.inner(torch.nn.functional.interpolate(x, size=(s, s), mode="area"))


class TileFeatures(nn.Module):
    """``backbone`` on each of the 2 x 2 tiles of the input, concatenated (``sum``: summed, the tiles' count)."""

    def __init__(self, backbone: nn.Module, sum: bool = False) -> None:
        super().__init__()
        self.backbone, self.sum = backbone, sum

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.shape[-1] // 2
        t = [self.backbone(x[..., i * s:(i + 1) * s, j * s:(j + 1) * s]) for i in (0, 1) for j in (0, 1)]
        return torch.stack(t).sum(0) if self.sum else torch.cat(t, 1)


def counting_readouts(method: nn.Module, backbone: nn.Module) -> dict[str, nn.Module]:
    """Counting scored as it reads images in training (``--readouts``): ``half`` the backbone on the image
    downsampled to the tiles' size (as ``D x``), ``tiles`` the 2 x 2 tiles' features concatenated, ``tilesum`` their
    sum, ``phi_half`` the counting vector ``phi(D x)``."""
    return {"half": Resized(backbone), "tiles": TileFeatures(backbone), "tilesum": TileFeatures(backbone, sum=True),
            "phi_half": Resized(nn.Sequential(backbone, method.projector))}


def normalize_counts():
    """Counting's loss on count vectors divided by the batch's RMS of ``||phi(D x)||`` (``--count-normalize``; not
    the paper's): the loss no longer falls by shrinking every count, so ``M`` is relative to the counts' scale.
    Returns the undo."""
    import selfsup.methods.counting as counting

    loss = counting.counting_loss

    def normalized(down_x, tiles_x, down_y, margin):
        scale = down_x.pow(2).sum(1).mean().sqrt().clamp_min(1e-6)
        return loss(down_x / scale, tiles_x / scale, down_y / scale, margin)

    counting.counting_loss = normalized
    return lambda: setattr(counting, "counting_loss", loss)


def separate_passes(method: nn.Module):
    """Counting's training forward with one backbone pass for ``D x`` and one per tile position
    (``--separate-passes``): each branch's BatchNorm statistics are its own, as in a siamese network of shared
    weights. Set before :func:`break_counting`, which then permutes the tiles before they are split. Returns the
    undo (a copy of the patched backbone would still call the original's forward)."""
    forward, method_forward = method.backbone.forward, method.forward

    def split(inp):
        b = getattr(method, "_batch", 0)
        if not (method.training and b and inp.shape[0] == 5 * b):
            return forward(inp)
        tiles = inp[b:].view(b, 4, *inp.shape[1:])
        return torch.cat([forward(inp[:b]), torch.stack([forward(tiles[:, j]) for j in range(4)], 1).flatten(0, 1)])

    def counted(views, *args, **kwargs):
        method._batch = views[0].shape[0]
        return method_forward(views, *args, **kwargs)

    method.backbone.forward, method.forward = split, counted

    def undo() -> None:
        method.backbone.__dict__.pop("forward", None)
        method.__dict__.pop("forward", None)

    return undo


def zoom_out(method: nn.Module, low: float, generator: torch.Generator) -> None:
    """Each training view shrunk by ``U(low, 1)`` (area) onto a canvas of its darkest value at a random place before
    counting tiles it (``--zoom-out``), so a tile may hold a whole digit and ``D x`` a smaller one."""
    method_forward = method.forward

    def zoomed(views, *args, **kwargs):
        x = views[0]
        side = x.shape[-1]
        out = x.amin(dim=(1, 2, 3), keepdim=True).expand_as(x).clone()
        for i in range(x.shape[0]):
            n = max(4, round(side * (low + (1 - low) * torch.rand(1, generator=generator).item())))
            a, c = torch.randint(0, side - n + 1, (2,), generator=generator).tolist()
            out[i:i + 1, :, a:a + n, c:c + n] = torch.nn.functional.interpolate(x[i:i + 1], size=(n, n), mode="area")
        return method_forward([out, *views[1:]], *args, **kwargs)

    method.forward = zoomed


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
    ap.add_argument("--readouts", action="store_true", help="counting: also score half, tiles, tilesum, phi_half "
                    "(counting_readouts) and the final features with BatchNorm re-estimated on the training images "
                    "(bn)")
    ap.add_argument("--count-normalize", action="store_true", help="counting: counts divided by the batch's RMS "
                    "||phi(D x)|| in the loss (normalize_counts)")
    ap.add_argument("--separate-passes", action="store_true", help="counting: one backbone pass for D x and one per "
                    "tile position (separate_passes)")
    ap.add_argument("--zoom-out", type=float, default=0.0, help="counting: shrink each view by U(z, 1) before "
                    "tiling (zoom_out; 0: off)")
    ap.add_argument("--font-digits", action="store_true", help="train and score on the generated font_digits split "
                    "(selfsup.data.font_digits) instead of the shifted digits")
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
    if args.font_digits:
        from selfsup.data.font_digits import load_font_digits_splits
        data = load_font_digits_splits(args.size)
    else:
        data = shifted_digits(size=args.size)
    knns = lambda bb: {k: round(knn_top1(stage_pool(bb, k), data), 4) for k in stages}

    def extra(method: nn.Module, backbone: nn.Module, bn: bool) -> dict[str, float]:
        """``--readouts``' scores (``bn``: ``backbone`` already re-estimated, so no second ``bn`` entry)."""
        if not args.readouts:
            return {}
        out = {k: round(knn_top1(m.eval(), data), 4) for k, m in counting_readouts(method, backbone).items()}
        if not bn:
            out["bn"] = round(knn_top1(bn_recalibrated(backbone, data.train.images), data), 4)
        return out
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
                if r.method.name != "counting" and (args.readouts or args.count_normalize or args.separate_passes
                                                    or args.zoom_out):
                    raise SystemExit("--readouts, --count-normalize, --separate-passes and --zoom-out are counting's")
                if base is None:  # the same weights for both modes of a seed
                    recal = bn_recalibrated(method.backbone, data.train.images)
                    plain, bn = knns(method.backbone), knns(recal)
                    base = {k: max(plain[k], bn[k]) for k in stages}
                    ro, ro_bn = extra(method, method.backbone, False), extra(method, recal, True)
                    base_ro = {k: max(v, ro_bn.get(k, v)) for k, v in ro.items()}
                g = torch.Generator().manual_seed(1000 + seed)
                undo = lambda: None
                undo_passes = separate_passes(method) if args.separate_passes else (lambda: None)
                if args.zoom_out:
                    zoom_out(method, args.zoom_out, torch.Generator().manual_seed(2000 + seed))
                undo_norm = normalize_counts() if args.count_normalize else (lambda: None)
                if mode == "broken":
                    if r.method.name not in ("rotnet", "counting"):
                        raise SystemExit(f"broken labels for rotnet and counting only, not {r.method.name}")
                    undo = break_rotnet(g) if r.method.name == "rotnet" else break_counting(method, g)
                try:
                    run = train(r, run_dir=Path(out) / "run", data=data, method=method, log=lambda *a: None)
                finally:
                    undo()
                    undo_norm()
                    undo_passes()
                rows = [json.loads(line) for line in open(run / "metrics.jsonl")]
            key = "pretext_acc" if r.method.name == "rotnet" else "count_mismatch"
            trained = knns(method.backbone)
            rec = {"recipe": args.recipe, "size": args.size, "epochs": args.epochs, "seed": seed, "mode": mode,
                   "overrides": args.overrides, "last_lr_scale": args.last_lr_scale,
                   "label_smoothing": args.label_smoothing, "head_dropout": args.head_dropout, "random_init": base,
                   "trained": trained,
                   "gain": {k: round(trained[k] - base[k], 3) for k in stages},
                   key: [round(row.get(key, float("nan")), 3) for row in rows],
                   "seconds": round(time.perf_counter() - t0)}
            if args.readouts:
                ro = extra(method, method.backbone, False)
                rec.update(readouts_random_init=base_ro, readouts=ro,
                           readouts_gain={k: round(ro[k] - base_ro[k], 3) for k in ro if base_ro.get(k) is not None},
                           count_normalize=args.count_normalize, separate_passes=args.separate_passes,
                           zoom_out=args.zoom_out)
            print(json.dumps(rec), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(rec) + "\n")
    print(f"command: PYTHONPATH=tests {' '.join([sys.executable.split('/')[-1], *sys.argv])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
