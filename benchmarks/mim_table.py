"""The small-scale MIM result table, on scikit-learn's digits (nothing downloaded).

MAE's central claim at small scale: MAE pretraining then fine-tuning beats fine-tuning the same ViT from
scratch at the same fine-tuning budget. Beside it, kNN / linear-probe (and fine-tune) figures for the
DINOv2-, iBOT- and I-JEPA-tiny digits recipes. Every run is the shipped ``*_digits`` recipe, evaluated with
the method's own probe (``selfsup.run_evaluation.evaluate_run``), and each is followed by the same encoder at
random init under the same probes.

    python benchmarks/mim_table.py --out /tmp/mim_table [--recipes mae_digits dinov2_digits ibot_digits ijepa_digits]
        [--finetune-epochs 20] [--epochs-scale 1.0]

Prints one row per recipe (pretrain minutes, kNN k=20, linear, fine-tune) and the scratch baseline. Recipes on
scikit-learn's digits run at 32 px; a recipe that names other data trains and is scored on it, e.g.
``--recipes jigsaw_digits relpatch_digits counting_digits --finetune-for`` on its generated font digits at 64 px.
``--init-only`` prints only the random-init rows (no pretraining), e.g. the baseline of a ``selfsup train`` run at
another seed: ``python benchmarks/mim_table.py --recipes pirl_digits --init-only --set train.seed=1``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

from selfsup.config import load_recipe
from selfsup.data import load_data, load_data_section
from selfsup.eval import finetune
from selfsup.run_evaluation import evaluate_backbone, evaluate_run
from selfsup.train.loop import build_method, train
from selfsup.views import default_mean_std


def _value(metrics, prefix: str) -> float | None:
    for m in metrics:
        if m.name.startswith(prefix) and "[" not in m.name:
            return float(m.value)
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="/tmp/mim_table")
    ap.add_argument("--recipes", nargs="*", default=["mae_digits", "dinov2_digits", "ibot_digits", "ijepa_digits"])
    ap.add_argument("--finetune-epochs", type=int, default=20)
    ap.add_argument("--finetune-for", nargs="*", default=["mae_digits"], help="recipes that are also fine-tuned")
    ap.add_argument("--epochs-scale", type=float, default=1.0, help="multiply every recipe's train.epochs")
    ap.add_argument("--init-only", action="store_true", help="only the random-init rows: no pretraining")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="recipe overrides for every run, e.g. train.seed=3 (the random-init row uses them too)")
    args = ap.parse_args()
    print(f"command: python {' '.join(shlex.quote(a) for a in sys.argv)}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    out = Path(args.out)
    digits = load_data(None, image_size=32)
    rows = []
    for name in args.recipes:
        base = load_recipe(name)
        epochs = max(1, round(base.train.epochs * args.epochs_scale))
        protocols = ["knn", "linear"] + (["finetune"] if name in args.finetune_for else [])
        over = [f"train.epochs={epochs}", f"optim.warmup_epochs={min(base.optim.warmup_epochs, epochs)}",
                f"train.out_dir={out}", f"train.run_name={name}", "train.progress_bar=false",
                f"eval.finetune_epochs={args.finetune_epochs}", *args.set]
        if base.method.name in ("ibot", "dinov2"):  # warmup_teacher_temp_epochs must fit the shorter run
            over.append(f"method.warmup_teacher_temp_epochs={min(base.method.warmup_teacher_temp_epochs, epochs)}")
        recipe = load_recipe(name, over)
        # scikit-learn's digits at 32 px unless the recipe names other data (e.g. font_digits at 64 px)
        d = recipe.data
        data = digits if d.path is None and d.format in ("auto", "digits") else load_data_section(d)
        if not args.init_only:
            t0 = time.perf_counter()
            run = train(recipe, data=data, overwrite=True, log=lambda *a: None)
            minutes = (time.perf_counter() - t0) / 60
            metrics = evaluate_run(run, data=data, protocols=protocols, log=lambda *a: None)
            row = {"recipe": name, "epochs": epochs, "pretrain_min": minutes,
                   "knn": _value(metrics, "kNN k=20 T=0.07 top-1"), "linear": _value(metrics, "linear probe test acc"),
                   "finetune": _value(metrics, "fine-tune test acc")}
            rows.append(row)
            print(json.dumps(row), flush=True)
        # the same encoder at random init, the same probes: what the pretraining added
        torch.manual_seed(recipe.train.seed)
        init = build_method(recipe, data.train.channels, data.train.image_size)
        meta = {"mean": list(default_mean_std(data.train.channels)[0]), "std": list(default_mean_std(
            data.train.channels)[1]), "image_size": data.train.image_size, "channels": data.train.channels,
            "num_classes": data.num_classes}
        init_metrics, *_ = evaluate_backbone(init.encoder().eval(), data, recipe, meta, torch.device("cpu"),
                                             ["knn", "linear"], log=lambda *a: None)
        row = {"recipe": f"{name} at random init", "epochs": 0, "knn": _value(init_metrics, "kNN k=20 T=0.07 top-1"),
               "linear": _value(init_metrics, "linear probe test acc")}
        rows.append(row)
        print(json.dumps(row), flush=True)
        # the same ViT from scratch, the same fine-tuning budget and protocol
        if name == "mae_digits" and not args.init_only:
            torch.manual_seed(recipe.train.seed)
            scratch = build_method(recipe, data.train.channels, data.train.image_size).backbone
            e = recipe.eval
            from selfsup.nets.vit import vit_features

            t0 = time.perf_counter()
            res = finetune(vit_features(scratch, "avg"), data.train, data.test, num_classes=data.num_classes,
                           epochs=args.finetune_epochs, lr=e.finetune_lr, layer_decay=e.finetune_layer_decay,
                           label_smoothing=e.finetune_label_smoothing, seed=recipe.train.seed)
            row = {"recipe": "ViT from scratch (mae_digits backbone)", "epochs": 0,
                   "finetune_min": (time.perf_counter() - t0) / 60, "finetune": res.test_acc}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| recipe | pretrain epochs | pretrain min | kNN k=20 | linear | fine-tune |\n|---|---|---|---|---|---|")
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for r in rows:
        print(f"| {r['recipe']} | {r['epochs']} | {r.get('pretrain_min', 0):.1f} | {fmt(r.get('knn'))} | "
              f"{fmt(r.get('linear'))} | {fmt(r.get('finetune'))} |")


if __name__ == "__main__":
    main()
