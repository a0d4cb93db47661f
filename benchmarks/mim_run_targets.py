"""What an iBOT / DINOv2 run's DINO (CLS) term is made of: the trained EMA teacher's CLS targets of a run directory.

Loads ``RUN_DIR`` (a finished ``selfsup train`` of ``ibot_digits``/``dinov2_digits`` or another iBOT/DINOv2 recipe),
draws two crops of the first 256 test images with the recipe's own views (a fixed generator), and prints, in eval
mode: the teacher targets' mean entropy ``H(q)``, the entropy of the mean target ``H(mean q)`` (how many prototypes
the targets use, as e^H), their mutual information with the image ``MI = H(mean q) - H(q)`` (nats), the student's
cross-entropy from the other crop ``CE`` (the DINO term on these images) against ``ln K``, and the teacher
bottleneck's mean cosine to its batch mean. Targets follow the run's ``centering``: the EMA center at
``teacher_temp`` or Sinkhorn-Knopp (DINOv2's option). Where the image is lost on the way to the targets: the mean
cosine of two images' teacher backbone features (``feat_pair_cos``) and normalised bottlenecks
(``bottleneck_pair_cos``), and the spread of the teacher logits over the images (their std per prototype, averaged
over prototypes, ``logit_std``), to be read against ``teacher_temp``: a spread well under it gives near-uniform
targets after centering. ``--init`` scores the same recipe's method at random init (``torch.manual_seed`` of the
run's seed, then ``build_method``; the EMA center is zero there, so read its spreads, not its targets).
``--batch-stats`` runs the heads as training does, BatchNorm by the batch's statistics (a head's untrained running
statistics make eval mode meaningless at ``--init``).

    OMP_NUM_THREADS=1 python benchmarks/mim_run_targets.py RUN_DIR [RUN_DIR ...] [--init] [--batch-stats]

Figures for ``dinov2_digits`` and ``ibot_digits`` are in their yaml headers.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_mim_learning import two_crops  # noqa: E402  (the learning test's crops, in one place)

from selfsup.data import load_data  # noqa: E402
from selfsup.losses import sinkhorn_teacher  # noqa: E402
from selfsup.rundir import load_method, load_recipe_of  # noqa: E402
from selfsup.train.session import build_method  # noqa: E402


def entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.clamp_min(1e-12).log()).sum(-1)


def mean_pair_cos(v: torch.Tensor) -> float:
    v = F.normalize(v, dim=-1)
    n = len(v)
    return float((v @ v.T)[~torch.eye(n, dtype=torch.bool)].mean())


@torch.no_grad()
def target_stats(run_dir: str, n_images: int = 256, init: bool = False, batch_stats: bool = False) -> dict[str, float]:
    recipe = load_recipe_of(run_dir)
    if init:
        torch.manual_seed(recipe.train.seed)
        method = build_method(recipe, 1, recipe.data.image_size)
    else:
        method, _ = load_method(run_dir)
    method.eval()
    if batch_stats:
        method.teacher.module[1].train()
        method.head.train()
    c = method.cfg
    views = two_crops(recipe, load_data(None, image_size=recipe.data.image_size).test.images[:n_images])
    t_bb, t_head = method.teacher.module
    h = t_bb(views[0])
    logits = t_head(h)
    if getattr(c, "centering", "centering") == "sinkhorn_knopp":
        q = sinkhorn_teacher(logits, c.teacher_temp, c.sinkhorn_iters, distributed=False)
    else:
        q = F.softmax((logits - method.criterion.center) / c.teacher_temp, -1)
    log_p = F.log_softmax(method.head(method.backbone(views[1])) / c.student_temp, -1)
    y = t_head.cls_head.bottleneck(h)
    return {"H(q)": float(entropy(q).mean()), "H(mean q)": float(entropy(q.mean(0))),
            "MI": float(entropy(q.mean(0)) - entropy(q).mean()), "CE": float(-(q * log_p).sum(-1).mean()),
            "lnK": math.log(q.shape[1]),
            "bottleneck_cos_to_mean": float(F.cosine_similarity(y, y.mean(0, keepdim=True)).mean()),
            "feat_pair_cos": mean_pair_cos(h), "bottleneck_pair_cos": mean_pair_cos(y),
            "logit_std": float(logits.std(0).mean()), "teacher_temp": float(c.teacher_temp)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", help="run directories of iBOT / DINOv2 recipes")
    ap.add_argument("--init", action="store_true", help="score the recipe's method at random init instead")
    ap.add_argument("--batch-stats", action="store_true", help="heads' BatchNorm by batch statistics, as in training")
    args = ap.parse_args()
    for run in args.runs:
        stats = target_stats(run, init=args.init, batch_stats=args.batch_stats)
        print(run, "(random init)" if args.init else "", " ".join(f"{k} {v:.3f}" for k, v in stats.items()),
              flush=True)


if __name__ == "__main__":
    main()
