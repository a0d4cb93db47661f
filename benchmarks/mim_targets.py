"""Do the EMA-teacher MIM short runs (tests/test_mim_learning.py) learn from their distillation targets?

Runs the test-size short run of ``ibot_digits``, ``dinov2_digits`` or ``msn_digits`` (16 px digits, a 2-block
32-wide ViT at patch 2, 2 epochs, ``tau_base 0.8``: the test's overrides) in one of four modes:

- ``correct``: as shipped;
- ``shuffled``: the teacher's outputs (iBOT/DINOv2: CLS logits and patch tokens; MSN: the target head's output)
  permuted across the batch after its forward, one permutation per step (a seeded generator);
- ``frozen``: the teacher never updated (``after_step`` a no-op);
- ``zero``: every loss multiplied by 0 (the schedules and weight decay still run);

and prints, as one JSON line (appended to ``--out``): kNN top-1 of the teacher and the student against the
random-init teacher, and on 256 test images (two crops of the recipe's views) the mutual information between
the image and its teacher CLS target (``H(mean q) - mean H(q)``, nats), the pooled features' mean cosine between
two crops of one image and of two images with cross-view instance retrieval top-1, and how much the student's
cross-entropy to another image's target exceeds that to its own (``gap``; ``patch_gap`` the same for iBOT's
and DINOv2's masked patches, 30% of the positions masked in every image: the test asserts both, with the test's
helpers). Extra ``key=value`` arguments are
recipe overrides (e.g. ``method.koleo_loss_weight=0``).

    OMP_NUM_THREADS=1 python benchmarks/mim_targets.py dinov2 shuffled [method.koleo_loss_weight=0] [train.seed=1] \\
        [--epochs 6] [--out /tmp/mim_targets.jsonl]

Figures (seed 0) are in tests/test_mim_learning.py's docstring.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_mim_learning import (CASES, VIT16, own_patch_target_stats, own_target_stats,  # noqa: E402  (the test's,
                               two_crops)  # in one place)
from train_utils import knn_top1, tiny_digits  # noqa: E402

from selfsup.config import load_recipe  # noqa: E402
from selfsup.train.loop import build_method, train  # noqa: E402

RECIPES = {p.id: (p.values[0], p.values[1]) for p in CASES}


def break_teacher(method, mode: str, gen: torch.Generator) -> None:
    """Apply ``mode`` (shuffled / frozen / zero) to ``method`` in place, for this process only."""
    if mode == "shuffled" and hasattr(method, "_encode"):  # iBOT, DINOv2
        encode = method._encode

        def shuffled(views, mask):
            e = encode(views, mask)
            b = views[0].shape[0]
            p = torch.randperm(b, generator=gen)
            idx = torch.cat([p + i * b for i in range(method.cfg.n_global)])
            e["t_cls"], e["t_patches"] = e["t_cls"][idx], e["t_patches"][idx]
            return e

        method._encode = shuffled
    elif mode == "shuffled":  # MSN: the target head's output
        method.target_encoder.module[1].register_forward_hook(
            lambda m, i, out: out[torch.randperm(out.shape[0], generator=gen)])
    elif mode == "frozen":
        method.after_step = lambda progress: {"momentum": 1.0}
    elif mode == "zero":
        forward = method.forward

        def zero(*a, **k):
            out = forward(*a, **k)
            out["loss"] = out["loss"] * 0.0
            return out

        method.forward = zero


@torch.no_grad()
def feature_stats(backbone, views: list[torch.Tensor]) -> dict[str, float]:
    was = backbone.training
    backbone.eval()
    a, b = (F.normalize(backbone(v), dim=1) for v in views)
    backbone.train(was)
    sim, n = a @ b.T, a.shape[0]
    return {"cos_same": float(sim.diagonal().mean()), "cos_other": float((sim.sum() - sim.trace()) / (n * n - n)),
            "retrieval": float((sim.argmax(1) == torch.arange(n)).float().mean())}


def measures(method, views: list[torch.Tensor]) -> dict[str, float]:
    out = {**own_target_stats(method, views), **feature_stats(method.encoder("teacher"), views)}
    if hasattr(method, "patch_center"):  # iBOT, DINOv2
        out.update(own_patch_target_stats(method, views[0]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("method", choices=sorted(RECIPES))
    ap.add_argument("mode", choices=["correct", "shuffled", "frozen", "zero"])
    ap.add_argument("overrides", nargs="*", help="recipe overrides key=value")
    ap.add_argument("--epochs", type=int, default=None, help="instead of the test's 2")
    ap.add_argument("--out", type=Path, default=None, help="append the JSON line here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    recipe_name, extra = RECIPES[args.method]
    out_dir = Path(tempfile.mkdtemp(prefix="mim_targets_"))
    over = VIT16 + list(extra) + list(args.overrides) + [f"train.out_dir={out_dir}"]
    if args.epochs:
        over.append(f"train.epochs={args.epochs}")
    r = load_recipe(recipe_name, over)
    data = tiny_digits(n_train=1437, n_test=360, size=16)
    views = two_crops(r, data.test.images[:256])
    torch.manual_seed(r.train.seed)  # train.seed=N as an override picks another init
    method = build_method(r, data.train.channels, data.train.image_size)
    row = {"method": args.method, "mode": args.mode, "overrides": args.overrides, "epochs": r.train.epochs,
           "seed": r.train.seed,
           "knn_init": knn_top1(method.encoder("teacher"), data),
           "init": measures(method, views)}
    break_teacher(method, args.mode, torch.Generator().manual_seed(123))
    t0 = time.perf_counter()
    train(r, run_dir=out_dir / "run", data=data, method=method, log=lambda *a: None)
    row.update(train_s=round(time.perf_counter() - t0, 1), knn_teacher=knn_top1(method.encoder("teacher"), data),
               knn_student=knn_top1(method.encoder("student"), data),
               trained=measures(method, views))
    line = json.dumps(row)
    print(line)
    if args.out:
        with args.out.open("a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    main()
