"""What an iBOT / DINOv2 run's DINO (CLS) term is made of: the trained EMA teacher's CLS targets of a run directory.

Loads ``RUN_DIR`` (a finished ``selfsup train`` of ``ibot_digits``/``dinov2_digits`` or another iBOT/DINOv2 recipe),
draws two crops of the first 256 test images with the recipe's own views (a fixed generator), and prints, in eval
mode: the teacher targets' mean entropy ``H(q)``, the entropy of the mean target ``H(mean q)`` (how many prototypes
the targets use, as e^H), their mutual information with the image ``MI = H(mean q) - H(q)`` (nats), the student's
cross-entropy from the other crop ``CE`` (the DINO term on these images) against ``ln K``, and the teacher
bottleneck's mean cosine to its batch mean. Targets follow the run's ``centering``: the EMA center at
``teacher_temp`` or Sinkhorn-Knopp (DINOv2's option).

    OMP_NUM_THREADS=1 python benchmarks/mim_run_targets.py RUN_DIR [RUN_DIR ...]

Figures for ``dinov2_digits`` are in its yaml header.
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


def entropy(p: torch.Tensor) -> torch.Tensor:
    return -(p * p.clamp_min(1e-12).log()).sum(-1)


@torch.no_grad()
def target_stats(run_dir: str, n_images: int = 256) -> dict[str, float]:
    recipe = load_recipe_of(run_dir)
    method, _ = load_method(run_dir)
    method.eval()
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
            "bottleneck_cos_to_mean": float(F.cosine_similarity(y, y.mean(0, keepdim=True)).mean())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", help="run directories of iBOT / DINOv2 recipes")
    args = ap.parse_args()
    for run in args.runs:
        print(run, " ".join(f"{k} {v:.3f}" for k, v in target_stats(run).items()), flush=True)


if __name__ == "__main__":
    main()
