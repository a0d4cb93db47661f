"""Learning, not just running, for the EMA-teacher MIM recipes (iBOT, DINOv2, MSN): a short run of each
``*_digits`` recipe must lift the kNN top-1 of the **EMA teacher** (the encoder these recipes evaluate,
``eval.encoder: teacher``) above the same ViT at random init by ``MARGIN``, as tests/test_catalogue_learning.py
(the baseline is measured in the same test, on the same split).

Test size: 16 px digits with a 2-block, 32-wide ViT at patch 2 (an 8x8 grid, the recipes' 64 tokens; at patch 4
the 4x4 grid did not learn: kNN 0.167 -> 0.19 at most in 6 epochs), 2 local crops of 8 px, heads sized to the
width, batch 64, 2 epochs (44 steps) on the whole train split, and ``tau_base 0.8`` so that a 44-step teacher
holds exp(-44 x 0.1) = 1% of its random init (at 0.9 the teacher trailed: iBOT 0.350 -> 0.378, MSN 0.350 ->
0.386). DINOv2 runs with LayerScale off: at the recipe's 1e-5 the two blocks stay silent for 44 steps (kNN 0.342
-> 0.347). kNN is on the plain 360-image test split: a random ViT of this size is at 0.23 on shifted_digits.

Measured (1 thread, seed 0; random-init baseline -> trained teacher kNN top-1): iBOT 0.350 -> 0.431, DINOv2
0.350 -> 0.475, MSN 0.350 -> 0.417. With the teacher never updated (tau forced to 1 in ``after_step``) the
test fails (the teacher stays at its init: iBOT 0.350 -> 0.350).

What this test does NOT catch, and why: with the teacher's outputs shuffled across the batch (one permutation per
step) the short runs still pass, and no term is to blame. Teacher kNN after the run (student in brackets; random
init 0.350 in every row), seed 0, 1 thread:

- iBOT: correct 0.431 (0.481), shuffled 0.444 / 0.417 (two runs); CLS term only (lambda2 0) 0.444 vs shuffled
  0.467; patch term only (lambda1 0) 0.389 vs shuffled 0.414;
- DINOv2: correct 0.475 (0.486), shuffled 0.469 (0.464); KoLeo off 0.400 vs shuffled 0.419; DINO term only (KoLeo
  and iBOT off) 0.450 vs shuffled 0.442; Sinkhorn-Knopp centering 0.458 vs shuffled 0.461;
- MSN: correct 0.417 (0.433), shuffled 0.372 / 0.378 (0.428); ME-MAX off 0.419 vs shuffled 0.422; 6 epochs
  correct 0.442; frozen teacher 0.350 (its student 0.436);
- every loss multiplied by 0 (the same schedules and weight decay): 0.344 / 0.347 / 0.353, so the gain needs the
  losses' gradients, but not correct targets, KoLeo or ME-MAX.

The targets carry almost no image at this size, so permuting them changes little. On 256 test images: mutual
information between the image and its teacher CLS target, H(mean q) - mean H(q), is 0.23 nats at init for
iBOT/DINOv2 and 0.05 / 0.04 after the run (shuffled 0.06 / 0.05; ln 64 = 4.16 is the most); MSN 0.04 -> 0.55
(shuffled 0.51; 0.06 after 6 epochs). The backbones' pooled features are nearly parallel: mean cosine of two
different images 0.84-0.93 (two crops of one image 0.86-0.95), and cross-view instance retrieval stays near chance
(top-1 0.8-1.6% of 256, chance 0.4%). The student's cross-entropy to another image's target exceeds that to its own
by 0.001 (iBOT), 0.002 (DINOv2), 0.03 (MSN) nats (shuffled: 0.002, 0.002, -0.004), against cross-entropies near ln
64. So a random tiny ViT's mean patch token is mostly a component shared by all digits, any gradient of these
losses spreads it, and a <= 15 s run gives the distillation nothing image-specific to pass on (the late-run creep
of the DINO term towards ln K in dinov2_digits.yaml is the same flattening: MI 0.23 -> 0.04 here). Which image a
target belongs to is tested exactly instead: tests/test_ibot_dinov2.py's loss-vs-manual tests and
tests/test_msn_beit.py's ``test_msn_anchors_are_scored_against_their_own_images_targets`` fail when the teacher's
outputs are mismatched (checked: iBOT's teacher tokens rolled by one image, MSN's targets permuted), and
``after_step``'s copy of every parameter and buffer is tested below. The figures come from
``benchmarks/mim_targets.py`` (the modes and the measures are in its docstring); the recipes' own figures are in
benchmarks/mim_table.py.

Time (``--durations``): iBOT 108 s, DINOv2 82 s, MSN 55 s on the 2-core dev machine under a load average of ~13
from other jobs; an idle machine ran the same-size patch-4 steps about 6x faster, so roughly 40 s in all (not
measured idle). They replace tests/test_ibot_dinov2.py's two loss-falls runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import torch.nn as nn

from selfsup.config import load_recipe
from selfsup.train.loop import build_method, train
from train_utils import knn_top1, tiny_digits

pytestmark = pytest.mark.usefixtures("one_thread")

MARGIN = 0.04  # tests/test_learning.py's
VIT16 = ["model.vit.patch_size=2", "model.vit.embed_dim=32", "model.vit.depth=2", "model.vit.num_heads=2",
         "data.image_size=16", "data.batch_size=64", "views.params.n_local=2", "views.params.local_size=8",
         "train.epochs=2", "train.precision=fp32", "train.progress_bar=false", "train.online_probe=false",
         "train.loggers=[jsonl]", "method.tau_base=0.8", "train.seed=0"]
HEADS = ["method.head=64-32", "method.out_dim=64"]

CASES = [
    pytest.param("ibot_digits", HEADS, id="ibot"),
    pytest.param("dinov2_digits", HEADS + ["model.vit.layer_scale=null"], id="dinov2"),
    pytest.param("msn_digits", ["method.hidden_dim=64", "method.output_dim=32", "method.num_proto=64"], id="msn"),
]


def teacher_knn_run(recipe: str, extra: list[str], out: Path) -> tuple[float, float]:
    """``(random-init baseline, trained)`` kNN top-1 of the EMA teacher's backbone after the short run."""
    data = tiny_digits(n_train=1437, n_test=360, size=16)
    r = load_recipe(recipe, VIT16 + extra + [f"train.out_dir={out}"])
    assert r.eval.encoder == "teacher"  # the recipe evaluates the teacher, so the test does
    torch.manual_seed(0)
    method = build_method(r, data.train.channels, data.train.image_size)
    baseline = knn_top1(method.encoder("teacher"), data)  # the teacher starts as a copy of the student
    train(r, run_dir=out / "run", data=data, method=method, log=lambda *a: None)
    return baseline, knn_top1(method.encoder("teacher"), data)


@pytest.mark.parametrize("recipe, extra", CASES)
def test_short_run_teacher_beats_random_init(recipe, extra, tmp_path):
    baseline, trained = teacher_knn_run(recipe, extra, tmp_path)
    assert trained >= baseline + MARGIN, (f"{recipe}: teacher kNN top-1 {trained:.3f} after training vs "
                                          f"{baseline:.3f} at random init; a learning run gains more than {MARGIN}")


@pytest.mark.parametrize("recipe, extra", CASES)
def test_after_step_moves_every_teacher_parameter_and_copies_every_buffer(recipe, extra):
    """The EMA teacher holds the same parameters and buffers as the student's ``Sequential(backbone, head)`` (every
    ViT block, LayerScale, the mask token, the weight-normed prototypes, the head's BatchNorm statistics) and
    ``after_step`` moves each parameter by ``xi <- tau xi + (1 - tau) theta`` and copies each buffer: nothing
    the student trains is left at its random init in the teacher the recipes evaluate."""
    torch.manual_seed(0)
    m = build_method(load_recipe(recipe, VIT16 + extra), 1, 16)
    head = m.projector if hasattr(m, "projector") else m.head
    student, teacher = nn.Sequential(m.backbone, head), getattr(m, m.teacher_attr).module
    assert teacher[0] is not m.backbone and list(teacher.state_dict()) == list(student.state_dict())
    assert any(n.endswith("running_mean") for n in student.state_dict())  # the heads' BatchNorm is covered
    old = {k: v.clone() for k, v in teacher.state_dict().items()}
    with torch.no_grad():
        for v in student.state_dict().values():  # parameters and buffers alike
            v.add_(1.0) if v.is_floating_point() else v.add_(3)
    tau = m.after_step(0.3)["momentum"]
    assert 0 < tau < 1
    s_params = {k for k, _ in student.named_parameters()}
    for k, v in teacher.state_dict().items():
        want = tau * old[k] + (1 - tau) * student.state_dict()[k] if k in s_params else student.state_dict()[k]
        torch.testing.assert_close(v, want, msg=f"{recipe}: teacher {k}")
