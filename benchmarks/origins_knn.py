"""kNN top-1 of the spatial pretext recipes (``jigsaw_digits``, ``relpatch_digits``, ``rotnet_digits``) after a
short run, against the same backbone at random init, on the shifted digits split of tests/train_utils.py at any
size: the measure behind tests/test_origins_spatial_learning.py's docstring, for settings too slow for the suite.

Besides the final pooled features (what ``selfsup eval`` and the learning tests score) it prints the kNN of the
third stage's pooled map (SmallCNN only), to tell "the trunk learned nothing" from "the last stage specialised to
the pretext task". ``--break-labels`` shuffles the pretext labels against the shown puzzles/pairs across the batch
(the tiles of image i are shuffled by image j's permutation; the pair of image i is cut at image j's neighbour), so
the loss can no longer be solved from the images: the control of a learning claim.

``--tile-probe`` also scores the backbone as the method reads images in training (:class:`TileProbe`): the
unshuffled image's tiles (jigsaw: the centred grid, the crop centred in each cell, resized and normalised as in
training; relpatch: the centred 3 x 3 patch arrangement, no jitter) through the backbone, the per-tile pooled
features concatenated in grid order ("cat") and averaged ("mean"), for random init and the trained network alike.
``--last-lr-scale`` trains the last SmallCNN stage at that multiple of the lr (origins_controls.py's option).
``--train-photos N`` trains on N grey crops of the photographs scikit-image ships in its package (:func:`photo_crops`;
read from the installed files, nothing is downloaded) instead of the digits, and scores kNN on the digits split as
always: whether the pretext task learns, and transfers, where a tile holds more than the digits' 8 x 8 source pixels.

    PYTHONPATH=tests .venv/bin/python benchmarks/origins_knn.py jigsaw_digits --size 32 --epochs 4 \\
        method.grid=2 method.n_permutations=24 method.tile_size=null optim.lr=0.3
    PYTHONPATH=tests .venv/bin/python benchmarks/origins_knn.py jigsaw_digits --size 24 --epochs 4 --tile-probe \\
        --break-labels method.grid=2 method.n_permutations=24 method.tile_size=null optim.lr=0.1
    PYTHONPATH=tests .venv/bin/python benchmarks/origins_knn.py jigsaw_digits --size 32 --epochs 12 \\
        --train-photos 2048 method.grid=2 method.n_permutations=24 method.tile_size=null optim.lr=0.1
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


class TileProbe(nn.Module):
    """``backbone`` read on the unshuffled tiles (jigsaw) or 3 x 3 patch grid (relpatch) of ``cfg``, centred and
    unjittered; per-tile features concatenated in grid order (``reduce="cat"``) or averaged (``"mean"``)."""

    def __init__(self, backbone: nn.Module, cfg, reduce: str = "cat") -> None:
        super().__init__()
        self.backbone, self.cfg, self.reduce = backbone, cfg, reduce

    def tiles(self, x: torch.Tensor) -> torch.Tensor:
        from selfsup.views.pretext_spatial import jigsaw_tiles, patch_pair_span

        c, b = self.cfg, x.shape[0]
        if c.name == "jigsaw":
            t = c.grid ** 2
            return jigsaw_tiles(x, torch.arange(t).expand(b, t), torch.full((b, t, 2), 0.5), c.grid, c.crop_frac,
                                c.tile_size, c.tile_normalize)
        if c.name == "relpatch":
            corner = (x.shape[-1] - patch_pair_span(c.patch, c.gap, c.jitter)) // 2 + c.jitter
            at = [corner + i * (c.patch + c.gap) for i in range(3)]
            return torch.stack([x[:, :, r:r + c.patch, q:q + c.patch] for r in at for q in at], 1)
        raise SystemExit(f"--tile-probe supports jigsaw and relpatch, not {c.name}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tiles = self.tiles(x)
        f = self.backbone(tiles.flatten(0, 1)).view(*tiles.shape[:2], -1)
        return f.flatten(1) if self.reduce == "cat" else f.mean(1)


# the photographs bundled in scikit-image's wheel (skimage/data); the others skimage.data offers are downloaded
PHOTOS = ("astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "coffee.png", "coins.png",
          "grass.png", "gravel.png", "horse.png", "hubble_deep_field.jpg", "ihc.png", "moon.png", "motorcycle_left.png",
          "page.png", "retina.jpg", "rocket.jpg", "text.png")


def photo_crops(n: int, size: int, seed: int = 0):
    """``n`` grey ``size`` px crops of :data:`PHOTOS`: a random photo, a random square of side U(size, min side / 2)
    at a random place, resized (anti-aliased) to ``size``; each photo min-max scaled to 0..255 first. Unlabelled."""
    import numpy as np
    import skimage
    from skimage.color import rgb2gray
    from skimage.io import imread
    from skimage.transform import resize

    from selfsup.data import DataSplits, ImageArray

    photos = []
    for name in PHOTOS:
        im = imread(Path(skimage.__file__).parent / "data" / name).astype(np.float64)
        im = rgb2gray(im[..., :3]) if im.ndim == 3 else im
        photos.append((im - im.min()) / max(im.max() - im.min(), 1e-9))
    g, out = np.random.default_rng(seed), np.empty((n, 1, size, size), np.uint8)
    for i in range(n):
        im = photos[g.integers(len(photos))]
        side = int(g.integers(size, max(size + 1, min(im.shape) // 2)))
        r, c = g.integers(0, im.shape[0] - side + 1), g.integers(0, im.shape[1] - side + 1)
        out[i, 0] = np.clip(resize(im[r:r + side, c:c + side], (size, size), anti_aliasing=True) * 255, 0, 255)
    return DataSplits(ImageArray(torch.from_numpy(out)), None, "photos", None)


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
    ap.add_argument("--break-seed", type=int, help="seed of --break-labels' shuffle (default: --seed; the figures "
                    "of the tile probe in tests/test_origins_spatial_learning.py use 1000 + seed)")
    ap.add_argument("--tile-probe", action="store_true", help="also score TileProbe (cat and mean)")
    ap.add_argument("--last-lr-scale", type=float, default=1.0, help="lr multiplier of the last SmallCNN stage")
    ap.add_argument("--train-photos", type=int, default=0, help="train on this many crops of scikit-image's photos")
    ap.add_argument("--font-digits", action="store_true", help="train and score on the generated font_digits split")
    ap.add_argument("overrides", nargs="*", help="dotted recipe overrides (after the tests' LEARN settings)")
    args = ap.parse_intermixed_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from selfsup.config import load_recipe
    from selfsup.train.loop import build_method, train
    from train_utils import LEARN, bn_recalibrated, knn_top1, shifted_digits

    torch.set_num_threads(1)
    if args.font_digits:
        from selfsup.data.font_digits import load_font_digits_splits
        data = load_font_digits_splits(args.size)
    else:
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
        tile_knn = lambda bb: {k: knn_top1(TileProbe(bb, r.method, k), data) for k in ("cat", "mean")}
        if args.tile_probe:
            plain, bn = tile_knn(method.backbone), tile_knn(bn_recalibrated(method.backbone, data.train.images))
            base_tiles = {k: max(plain[k], bn[k]) for k in plain}
        if args.last_lr_scale != 1.0:
            from origins_controls import scale_last_stage_lr
            scale_last_stage_lr(method, args.last_lr_scale)
        if args.break_labels:
            break_labels(method, args.seed if args.break_seed is None else args.break_seed)
        train_data = photo_crops(args.train_photos, args.size, args.seed) if args.train_photos else data
        run = train(r, run_dir=Path(out) / "run", data=train_data, method=method, log=lambda *a: None)
        acc = [round(json.loads(line).get("pretext_acc", float("nan")), 3) for line in open(run / "metrics.jsonl")]
    trained, trained_s3 = knn_top1(method.backbone, data), knn_top1(stage_pool(method.backbone, 3), data)
    ref = max(base, base_bn)
    where = "font_digits" if args.font_digits else f"shift {args.shift}"
    print(f"{args.recipe} {args.size} px {where}, {args.epochs} epochs, seed {args.seed}"
          f"{', labels broken' if args.break_labels else ''}"
          f"{f', trained on {args.train_photos} photo crops' if args.train_photos else ''}"
          f"{f', last stage lr x{args.last_lr_scale}' if args.last_lr_scale != 1.0 else ''} {' '.join(args.overrides)}")
    print(f"  kNN top-1: random init {base:.3f} (BN re-estimated {base_bn:.3f}) -> trained {trained:.3f} "
          f"({trained - ref:+.3f}); stage 3: {base_s3:.3f} -> {trained_s3:.3f}")
    if args.tile_probe:
        tiles = tile_knn(method.backbone)
        print("  tile probe (the better of as built / BN re-estimated at random init): " + "; ".join(
            f"{k} {base_tiles[k]:.3f} -> {tiles[k]:.3f} ({tiles[k] - base_tiles[k]:+.3f})" for k in tiles))
    print(f"  pretext accuracy per epoch {acc}; {time.perf_counter() - t0:.0f} s on 1 thread")
    print(f"command: PYTHONPATH=tests {' '.join([sys.executable.split('/')[-1], *sys.argv])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
