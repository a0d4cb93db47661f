"""The dense evaluation table on ``digit_scenes`` (the digits on textured backgrounds, exact masks; nothing
downloaded): the linear segmentation probe's mIoU (protocol ``dense_miou``) and kNN of a short pretraining run
against the same encoder at random init, per recipe.

    OMP_NUM_THREADS=1 python benchmarks/dense_table.py --out /tmp/dense_table [--recipes simclr_digits selfpatch_digits]
        [--epochs N] [--dense-epochs 20] [--set KEY=VALUE ...]

Each recipe is trained on ``data.format=digit_scenes`` (its other values unchanged, ``--epochs`` overrides
``train.epochs``), then both encoders are evaluated by ``selfsup.run_evaluation.evaluate_backbone`` with
``eval.protocols=[knn, dense_miou]``. Prints one row per recipe: pretraining minutes, dense mIoU, pixel accuracy
and kNN k=20 top-1, trained and at random init.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

from selfsup.config import load_recipe
from selfsup.data import load_data
from selfsup.run_evaluation import evaluate_backbone
from selfsup.train.loop import build_method, train
from selfsup.views import default_mean_std


def _value(metrics, prefix: str) -> float:
    return next(float(m.value) for m in metrics if m.name.startswith(prefix))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="/tmp/dense_table")
    ap.add_argument("--recipes", nargs="*", default=["simclr_digits", "selfpatch_digits"])
    ap.add_argument("--epochs", type=int, default=None, help="train.epochs for every recipe (default: the recipe's)")
    ap.add_argument("--dense-epochs", type=int, default=20)
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="recipe overrides for every recipe, e.g. train.seed=1 method.patch_weight=0")
    args = ap.parse_args()
    print(f"command: python {' '.join(shlex.quote(a) for a in sys.argv)}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    data = load_data(None, format="digit_scenes", image_size=32)
    rows = []
    for name in args.recipes:
        over = ["data.format=digit_scenes", "eval.protocols=[knn,dense_miou]", f"eval.dense_epochs={args.dense_epochs}",
                "eval.at_end=false", f"train.out_dir={args.out}", f"train.run_name={name}", "train.progress_bar=false",
                *args.set]
        if args.epochs is not None:
            base = load_recipe(name)
            over += [f"train.epochs={args.epochs}", f"optim.warmup_epochs={min(base.optim.warmup_epochs, args.epochs)}"]
        r = load_recipe(name, over)
        c, size = data.train.channels, data.train.image_size
        torch.manual_seed(r.train.seed)
        method = build_method(r, c, size)
        mean, std = default_mean_std(c)
        meta = {"mean": mean, "std": std, "image_size": size, "channels": c, "num_classes": data.num_classes}
        device = torch.device("cpu")
        which = method.eval_encoder if r.eval.encoder is None else r.eval.encoder
        init = evaluate_backbone(method.encoder(which).eval(), data, r, meta, device, log=lambda *a: None)[0]
        t = time.time()
        train(r, run_dir=Path(args.out) / name, data=data, method=method, overwrite=True, log=lambda *a: None)
        minutes = (time.time() - t) / 60
        done = evaluate_backbone(method.encoder(which).eval(), data, r, meta, device, log=lambda *a: None)[0]
        rows.append((name, r.train.epochs, minutes, done, init))
        print(f"{name}: {r.train.epochs} epochs, {minutes:.1f} min; dense mIoU {_value(done, 'dense mIoU'):.3f} vs "
              f"{_value(init, 'dense mIoU'):.3f} at random init", flush=True)
    print("\n| recipe (on digit_scenes) | epochs | pretrain min | dense mIoU | pixel acc | kNN k=20 | "
          "random init: mIoU / pixel acc / kNN |")
    print("|---|---|---|---|---|---|---|")
    for name, epochs, minutes, done, init in rows:
        print(f"| {name} | {epochs} | {minutes:.1f} | {_value(done, 'dense mIoU'):.3f} | "
              f"{_value(done, 'dense pixel acc'):.3f} | {_value(done, 'kNN k=20 T=0.07 top-1'):.3f} | "
              f"{_value(init, 'dense mIoU'):.3f} / {_value(init, 'dense pixel acc'):.3f} / "
              f"{_value(init, 'kNN k=20 T=0.07 top-1'):.3f} |")


if __name__ == "__main__":
    main()
