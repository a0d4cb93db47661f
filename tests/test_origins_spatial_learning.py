"""Short runs of the spatial pretext tasks: each learns its own task well above chance (4 epochs on 192 digits at
16 px, a width-8 SmallCNN, 24 steps; RotNet 8 epochs, 48 steps, see below). PIRL's learning test is in
tests/test_origins_instance.py (below: the settings that collapsed before its bank_init / shared-Z fix).

RotNet: a feature that does not change under a 180-degree rotation (stroke orientation, a digit's tall outline)
names 0 vs 90 degrees but cannot tell 0 from 180: for such a network the logits of ``x`` and ``rot180(x)`` are
equal, so of each pair exactly one of the two 0-vs-180 decisions is right, 0.5 exactly. The rotnet test therefore
also asserts that the trained network tells upright from upside-down on the 256 unaugmented images (192 train + 64
test) above 0.7. Measured (8 epochs, seeds 0-3): with the recipe's head 256 and crops 0.6-1 (adopted for the kNN
test below) 0.939, 0.943, 0.963, 0.947 (pretext accuracy of the last epoch 0.85-0.88); with the earlier linear head
and crops 0.3-1 0.766, 0.732, 0.746, 0.734 (pretext 0.64-0.68); with the paper's horizontal flips (``views.params.flip_p=0.5``, the rotnet_digits recipe before this
test) 0.641, 0.609, 0.650, 0.602, because a flipped upright 0, 1, 3 or 8 is that digit rotated by 180 degrees (two
labels for one picture); with the rotation labels shuffled 0.500, 0.500, 0.504, 0.498 (pretext accuracy 0.31).
Time: 3-5 s under a load average of ~5.

kNN against random init on the shifted digits split, this session (``/tmp`` diagnostics with the measure of
tests/test_catalogue_learning.py, whole split, width 16, 1 thread; random init 0.497 at seed 0, 0.506 at seed 1):
with flips, 2 epochs at batch 64 the confusion is all 0<->180 and 90<->270 (0 vs 90 solved, 0 vs 180 at chance, loss
flat at ln 2 = 0.69 from epoch 2 to 4) and kNN 0.479 (4 epochs 0.469; Adam 2e-3 0.442; lr 0.3 0.351; head 256
0.444). Without flips: batch 64 0.486, batch 32 0.512, batch 32 + crop scale 0.6-1 0.508, + lr 0.1 0.518, 3
epochs 0.532 (+0.035; seed 1: 0.546 vs 0.506, +0.040), 4 epochs 0.536 (+0.039), 6 epochs at lr 0.05 0.519; batch
16 0.497-0.510; no crops 0.461. Intermediate layers (stage 2/3 pooled) 0.40-0.51, below the last; BatchNorm
re-estimated on the upright images lower (0.42-0.46). The closest, a hidden layer of 256 in the rotation head
(``method.head=256``, the role of the NIN blocks the paper finds task-specific) with crops 0.6-1, batch 32, lr 0.1,
2 epochs: 0.566 / 0.562 / 0.531 at seeds 0 / 1 / 2 (random init 0.497 / 0.506 / 0.516: +0.069, +0.056, +0.015;
3 epochs +0.046, +0.069, +0.035; crops 0.64-1 +0.043, +0.036), but with the rotation labels shuffled the same run
still gains +0.035 (0.533, seed 0; fitting random labels under crops), so the margin between learning and a broken
loss is about the seed-to-seed spread. So no RotNet kNN test at 16 px: a test that passes at seed 0 would not show
that the rotation labels matter (the 24 px one is test_rotnet_final_features_beat_random_init). Digits are a poor
rotation task: 0, 1 and 8 look alike upside down, a 6 upside down is a 9.

The jigsaw, relpatch and counting figures below were measured on the built-in digits with those recipes' values
before they moved to font_digits at 64 px (tests/test_origins_font_digits_learning.py): to rerun a command, add
``method.tile_size=16`` (jigsaw), ``method.patch=8 method.gap=2 method.jitter=1`` (relpatch, unless the command sets
them) or ``method.relu=false`` (counting).

RotNet and counting against both controls at 3 seeds (benchmarks/origins_controls.py: 32 px, whole split, width
16, batch 64, 1 thread; random init 0.583 / 0.567 / 0.595 at seeds 0 / 1 / 2; "broken": the rotation labels
shuffled across each step's 4B inputs, counting's tiles swapped for another image's; kNN of the final features):
  rotnet, head 256, crops 0.6-1, lr 0.05, 8 epochs (176 steps, pretext 0.92): 0.649 / 0.669 / 0.739, broken 0.611 /
          0.635 / 0.630: over random init +0.066 / +0.101 / +0.144, over broken +0.038 / +0.033 / +0.109. The only
          setting that beats both at all three seeds, but the margin over the broken run (0.033 at worst) is below
          the seed-to-seed spread of the learned kNN (0.649-0.739), and one run takes 85-115 s here (4 x 1,437
          inputs of 32 px an epoch), several times the test budget: no test. 4 epochs (pretext 0.85): 0.681 / 0.610
          / 0.728, broken 0.627 / 0.638 / 0.649 (seed 1: broken ahead); lr 0.02, seed 1: 0.541, broken 0.688.
  rotnet, linear head, crops 0.6-1, lr 0.1, 4 epochs: 0.548 / 0.569 / 0.554, broken 0.622 / 0.662 / 0.672 (2 epochs,
          seed 0: 0.569, broken 0.640): the learned last stage falls below random init. Its third stage (the
          paper's Table 1 finds the second of four NIN blocks best) 0.530 / 0.497 / 0.577, broken 0.451 / 0.531 /
          0.558, random init 0.488 / 0.474 / 0.447: not above the random-init final features, so exporting an
          intermediate stage does not help. lr 0.02, seed 0: 0.595, broken 0.587.
  counting (counting_digits' head and crops), 4 epochs: 0.617 / 0.525 / 0.562, broken 0.636 / 0.439 / 0.524: above
          the broken run at seeds 1 and 2 but below random init at both. 16 px, 8 epochs: 0.505 / 0.500 / 0.458,
          broken 0.519 / 0.523 / 0.459 vs 0.497 / 0.506 / 0.516; third stage 0.383 / 0.346 / 0.395, broken 0.397 /
          0.334 / 0.394 vs 0.384 / 0.363 / 0.372: no stage where counting's tiling matters.

They do **not** beat the random-init kNN of tests/test_catalogue_learning.py (MARGIN 0.04 on the shifted digits
split): measured with its ``short_run_knn`` (1 thread, seed 0; kNN top-1, random init 0.497 at 16 px, 0.583 at
32 px), lr the peak lr:
  rotnet  (with flips) 16 px 2 ep: 0.481 (lr 0.0125), 0.463 (0.1), 0.340 (0.375), LARS 1.0: 0.426; head 256:
          0.426; 6 ep: 0.485; 32 px: 0.292
  jigsaw  16 px 2 ep: 0.456 (tile 8), 0.469 (0.1), 0.442 (tile_size null), grid 2: 0.471; 3 ep: 0.467;
          32 px 2 ep: 0.613 vs 0.583 (+0.030, the closest)
  relpatch 16 px (patch 4, gap 1, jitter 1): 0.490; 32 px (recipe geometry): 0.534 vs 0.583
Jigsaw and relpatch, second pass (benchmarks/origins_knn.py: train and score at the same size, 1,437 images, width
16, batch 64, seed 0 unless named; "broken" shuffles the pretext labels against the puzzles/pairs in the batch):
  scale: trained on tiles of larger images, scored on whole 16 px ones, it loses: 40 px 0.424 vs 0.497 (24
          permutations, 4 ep), 48 px 0.449 (100, 2 ep); at one size (32 px, 24 permutations, 4 ep, lr 0.1)
          tile_size null 0.594, tile_size 16 (tiles upsampled, the recipe) 0.519, vs 0.583; 48 px (shift 6, 100
          permutations, 2 ep) 0.357 vs 0.331
  jigsaw 32 px, 24 permutations: 2 ep 0.531, 4 ep 0.594 (pretext 0.94: the puzzle is solved), crop_frac 0.7 (gap
          and jitter cover the 4 px upsampling lattice) 0.566, crops 0.3-1 0.517, no per-tile normalisation 0.571;
          100 permutations 6 ep 0.566 (pretext 0.73); grid 2 (all 24 permutations of 4 tiles of 14 px), lr 0.3,
          4 ep: 0.610 / 0.622 / 0.650 / 0.562 vs 0.583 / 0.567 / 0.595 / 0.635 at seeds 0-3 (+0.027, +0.054, +0.055,
          -0.073); 6 ep 0.552; crop_frac 0.75 0.578
  relpatch 32 px 4 ep 0.492, 8 ep 0.349 (pretext 0.41), patch 6 / gap 4 / jitter 2 0.497, width 32 0.478 vs 0.689
  larger head (tile_dim 512, head 1024-1024, so the last stage need not do the pretext's work): relpatch 32 px
          seed 0 0.656 vs 0.583 (broken 0.605), seed 1 0.512 vs 0.567 (8 ep 0.481), 16 px 0.381 vs 0.497;
          jigsaw grid 2 seeds 0 / 3 0.620 / 0.554 vs 0.583 / 0.635. Seed to seed the random-init kNN alone
          moves 0.567-0.635 at 32 px.
  24 px (after rotnet's 24 px test; grid 2, 24 permutations, lr 0.3, 4 ep): seed 0 0.478 vs 0.531 (broken 0.663),
          seed 1 0.442 vs 0.487; lr 0.1 0.600; 8 ep 0.429; grid 3 (24 permutations, lr 0.1) 0.464
  broken (pretext at chance): jigsaw 24 permutations 0.667 (vs 0.594 learned), grid 2 seed 0 0.702 (vs 0.610),
          seed 1 0.692 (vs 0.622), relpatch 0.653 (vs 0.492). Fitting shuffled labels for 88 steps beats random
          init by 0.07-0.12, and learning the real task scores lower than that, so none of the kNN gains above
          comes from the pretext task: no jigsaw or relpatch kNN test. Not BatchNorm statistics: lr 1e-9 (only
          the running statistics move, on tiles) gives jigsaw 0.585, relpatch 0.588. The third stage's pooled
          map: 0.426 at random init, 0.512 at lr 1e-9 (that gain is the tile statistics), 0.516 learned, 0.508
          broken.
  pirl    2 ep whole split: 0.215 (NCE, lr 0.1), 0.327 (NCE, 0.03), 0.164 (Z = 1), 0.467-0.469 (softmax);
          256 images x 12 ep (test_origins_instance.py's NPID setup, npid reaches 0.566 there): softmax 0.502,
          grid 2 0.506, crop views 0.517-0.519, lambda 0 (f term only) 0.531; NCE collapses (0.131, rankme 1.7)
Jigsaw and relpatch, third pass: the method's own probe (benchmarks/origins_knn.py ``--tile-probe``; the shuffle
seeded 1000 + seed, ``--break-seed 1000`` at seed 0). The networks see 7-14 px tiles in training and a whole image
in ``selfsup eval``, so the probe reads the image as training does: the unshuffled tiles (jigsaw: the centred grid,
each crop centred in its cell, normalised; relpatch: the centred 3 x 3 patch arrangement, no jitter) through the
backbone, per-tile features concatenated in grid order ("cat") or averaged ("mean"); random init (the better of as
built / BN re-estimated) and the broken run scored with the same probe. Seeds 0 / 1 / 2, random -> trained, broken:
  jigsaw 24 px, grid 2, 24 permutations, tile_size null, lr 0.1, 4 ep (pretext 0.25-0.32): cat 0.707 / 0.746 /
          0.713 -> 0.772 / 0.749 / 0.736, broken 0.697 / 0.724 / 0.758; mean 0.551 / 0.599 / 0.589 -> 0.619 / 0.599
          / 0.599, broken 0.582 / 0.590 / 0.595; pool 0.531 / 0.487 / 0.608 -> 0.600 / 0.543 / 0.622, broken 0.549 /
          0.603 / 0.590. The broken run's shuffle seed alone moves it: seed 0 with the shuffle seeded 0, cat 0.724.
          8 ep (pretext 0.48-0.58): cat 0.728 / 0.735 / 0.720, broken 0.694 / 0.742 / 0.749; mean 0.638 / 0.603 /
          0.606, broken 0.573 / 0.610 / 0.597; pool 0.482 / 0.463 / 0.515. Grid 3 (24 permutations, pretext 0.93-0.95):
          cat 0.767 / 0.736 / 0.743 -> 0.728 / 0.753 / 0.737, broken 0.798 / 0.777 / 0.755.
  jigsaw 24 px as above, last stage at 0.1x the lr (``--last-lr-scale 0.1``): mean -> 0.637 / 0.650 / 0.656,
          broken 0.602 / 0.606 / 0.633 (over random +0.086 / +0.051 / +0.067, over broken only +0.035 / +0.044 /
          +0.023); cat 0.746 / 0.756 / 0.757, broken 0.726 / 0.744 / 0.751; pool 0.616 / 0.532 / 0.626, broken 0.560 /
          0.627 / 0.614. Beats both controls at 3 seeds with the mean probe, but by less than the broken run's
          shuffle-seed spread (0.027 above): no test.
  jigsaw 32 px, grid 2, lr 0.3, 4 ep: cat 0.810 / 0.850 / 0.834 -> 0.876 / 0.844 / 0.814, broken 0.831 / 0.827 /
          0.833; cat of the third stage's tiles 0.853 / 0.870 / 0.862 -> 0.899 / 0.868 / 0.833, broken 0.872 / 0.868
          / 0.849; pool 0.594 / 0.558 / 0.642, broken 0.644 / 0.650 / 0.708. Last stage 0.1x: pool 0.710 / 0.556 /
          0.683, broken 0.640 / 0.698 / 0.701; cat 0.883 / 0.854 / 0.856, broken 0.801 / 0.851 / 0.829; mean 0.708 /
          0.728 / 0.697 -> 0.756 / 0.756 / 0.753, broken 0.695 / 0.762 / 0.734.
  relpatch 32 px (recipe geometry), lr 0.05, 4 ep (pretext 0.36-0.37): cat 0.892 / 0.869 -> 0.838 / 0.867, broken
          0.854 / 0.864 (seeds 0 / 1); mean 0.497 / 0.495 -> 0.509 / 0.555, broken 0.481 / 0.490. 24 px (patch 6, gap 2,
          jitter 1), seed 0: cat 0.751 -> 0.736, broken 0.746; pool 0.517, broken 0.567.
  relpatch 32 px, last stage 0.1x (``--last-lr-scale 0.1``): mean 0.497 / 0.495 / 0.478 -> 0.572 / 0.571 / 0.552,
          broken 0.494 / 0.496 / 0.508 (over random +0.075 / +0.076 / +0.074, over broken +0.078 / +0.075 / +0.044):
          the one setting that clears both controls at seeds 0-2, but with a probe (mean of 9 patch features) that
          scores below the plain pooled kNN of the same random-init backbone (0.583 / 0.567 / 0.596), while the
          concatenated probe does not move (0.891 / 0.901 / 0.879, broken 0.869 / 0.872 / 0.855, random 0.892 /
          0.869 / 0.869) and pool 0.533 / 0.557 / 0.606 (broken 0.648 / 0.644 / 0.603): not a representation worth
          shipping; the lead for whoever picks this up (the probe is not yet a ``selfsup eval`` option).
  last stage frozen (``--last-lr-scale 0``, BatchNorm statistics still move), seeds 0 / 1 / 2: jigsaw 24 px (as
          above) pool 0.615 / 0.604 / 0.603, broken 0.557 / 0.589 / 0.589 (random 0.531 / 0.487 / 0.608: seed 2 below);
          mean 0.648 / 0.647 / 0.632, broken 0.606 / 0.624 / 0.613 (+0.042 / +0.023 / +0.019); cat 0.767 / 0.765 /
          0.742, broken 0.725 / 0.760 / 0.744. Relpatch 32 px pool 0.592 / 0.647 / 0.602, broken 0.662 / 0.625 /
          0.608; mean 0.597 / 0.592 / 0.528, broken 0.506 / 0.522 / 0.515 (seed 2 +0.013); cat 0.895 / 0.901 / 0.866,
          broken 0.867 / 0.872 / 0.861.
Jigsaw and relpatch, fourth pass: trained on 2,048 grey 32 px crops of the photographs in scikit-image's package
(benchmarks/origins_knn.py ``--train-photos 2048``), kNN on the shifted digits split at 32 px (random init 0.548,
BN re-estimated 0.583), seed 0; jigsaw grid 2, 24 permutations, tile_size null:
  jigsaw  4 ep lr 0.3: pretext at chance (0.039-0.046), kNN 0.726, broken 0.722; 12 ep lr 0.1 / 0.03: 0.717 / 0.633,
          no per-tile normalisation 0.622, pretext at chance in all three; 48 ep lr 0.1: pretext rises from epoch
          ~25 to 0.075 (146 s), kNN 0.564, broken 0.660 (pretext at chance)
  relpatch lr 0.05: 12 ep pretext 0.12-0.14, kNN 0.592; 48 ep pretext 0.18 (chance 0.125), kNN 0.464, broken 0.675
Natural images start the tasks only after ~1,000 steps, and once they do the digits kNN falls below the broken run,
as with digits: no learning test from photographs either.
Fifth pass: on the generated font_digits at 64 px both tasks beat random init and the shuffled-label run at seeds
0-2: tests/test_origins_font_digits_learning.py holds their learning test and figures.
The pretext accuracies below (chance 0.25 / 0.083 / 0.125): rotnet (with flips) 0.43 -> 0.53, jigsaw 0.12 -> 0.32,
relpatch 0.15 -> 0.23 over the 4 epochs; at lr 1e-9 they stay at chance (rotnet 0.19-0.23, jigsaw 0.07-0.09).
PIRL on 192 digits (4-12 epochs, softmax or NCE): its own-row retrieval stays at chance (g 1/192, f 0.010-0.026,
also with batch-statistics BatchNorm) with the random bank and per-term Z; with bank_init features and
normalizer shared (the digits recipe now) it learns: tests/test_origins_instance.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from selfsup.config import load_recipe
from selfsup.train.loop import build_method, train
from selfsup.views import default_mean_std
from train_utils import TINY, short_run, tiny_digits

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = ["train.online_probe=false", "optim.lr=0.1"]
#: jigsaw's ``tile_size=16`` is jigsaw_digits' value before the recipe moved to font_digits at 64 px (null there):
#: the figures in this file were measured with it.
TASKS = [
    pytest.param("jigsaw_digits", ["method.n_permutations=12", "method.tile_size=16", "method.tile_dim=8",
                                   "method.head=16"], 1 / 12, id="jigsaw"),
    pytest.param("relpatch_digits", ["method.patch=4", "method.gap=1", "method.jitter=1", "method.tile_dim=8",
                                     "method.head=16"], 1 / 8, id="relpatch"),
]


@pytest.mark.parametrize("recipe, extra, chance", TASKS)
def test_pretext_task_is_learned(recipe, extra, chance, tmp_path: Path):
    run, _, _ = short_run(recipe, tmp_path, SMALL + extra, epochs=4)
    acc = [json.loads(line)["pretext_acc"] for line in open(run / "metrics.jsonl")]
    assert acc[-1] >= chance + 0.08, f"{recipe}: pretext accuracy {acc} per epoch, chance {chance:.3f}"


def _shuffled_labels(method, generator: torch.Generator) -> None:
    """Cut each image's puzzle (pair) at another image's permutation (neighbour) of the batch; the loss keeps the
    image's own label (benchmarks/origins_knn.py's ``--break-labels``)."""
    shuffle = lambda v: v[torch.randperm(len(v), generator=generator)]
    if method.cfg.name == "jigsaw":
        puzzle = method.puzzle
        method.puzzle = lambda x, index, offsets: puzzle(x, shuffle(index), offsets)
    else:
        pair = method.pair
        method.pair = lambda x, masks: pair(x, (shuffle(masks[0]), *masks[1:]))


@pytest.mark.parametrize("recipe, extra, chance", TASKS)
def test_pretext_labels_reach_the_network_only_through_the_images(recipe, extra, chance, tmp_path: Path):
    """The control of test_pretext_task_is_learned: with the labels shuffled against the puzzles/pairs its
    threshold is out of reach, so no path other than the shown tiles (their order, the batch layout) carries the
    label. Last-epoch accuracy, seeds 0 / 1 (thresholds 0.163 / 0.205): shuffled jigsaw 0.109 / 0.109, relpatch
    0.130 / 0.151; without the shuffle (this test then fails) jigsaw 0.323 / 0.266, relpatch 0.234 / 0.214.
    Time: 5 s (jigsaw), 2 s (relpatch) under a load average of ~8."""
    r = load_recipe(recipe, TINY + SMALL + extra + ["train.epochs=4", f"train.out_dir={tmp_path}"])
    torch.manual_seed(0)
    method = build_method(r, 1, 16)
    _shuffled_labels(method, torch.Generator().manual_seed(0))
    run = train(r, run_dir=tmp_path / "run", data=tiny_digits(), method=method, log=lambda *a: None)
    acc = [json.loads(line)["pretext_acc"] for line in open(run / "metrics.jsonl")]
    assert acc[-1] < chance + 0.08, f"{recipe}: pretext accuracy {acc} per epoch with shuffled labels"



def _upright_vs_upside_down(method) -> float:
    """Accuracy of the 0-vs-180 decision (rotation logits 0 and 2) on the unaugmented tiny digits, upright and
    rotated by 180 degrees: exactly 0.5 for any network whose output a 180-degree rotation leaves unchanged."""
    d = tiny_digits()
    mean, std = default_mean_std(1)
    x = (torch.cat([d.train.images, d.test.images]).float() / 255 - mean[0]) / std[0]
    method.eval()
    with torch.no_grad():
        up = method.classifier(method.backbone(x))[:, [0, 2]].argmax(1)
        down = method.classifier(method.backbone(torch.rot90(x, 2, dims=(-2, -1))))[:, [0, 2]].argmax(1)
    return torch.cat([up == 0, down == 1]).float().mean().item()


def test_rotnet_learns_rotations_and_tells_upright_from_upside_down(tmp_path: Path):
    run, _, method = short_run("rotnet_digits", tmp_path, SMALL, epochs=8)
    acc = [json.loads(line)["pretext_acc"] for line in open(run / "metrics.jsonl")]
    assert acc[-1] >= 0.25 + 0.08, f"rotnet: pretext accuracy {acc} per epoch, chance 0.25"
    flip = _upright_vs_upside_down(method)
    assert flip >= 0.7, (f"rotnet: upright vs upside-down accuracy {flip:.3f} (0.5 for a network that only sees "
                         f"180-symmetric cues); pretext accuracy per epoch {acc}")


#: The rotnet kNN test's run (on top of train_utils.LEARN): whole shifted digits split at 24 px, width 16, batch 64,
#: 8 epochs = 176 steps, a hidden layer of 256 in the rotation head, crops 0.6-1, SGD lr 0.05 (the rotnet_digits recipe
#: but for LEARN's width 16, one warm-up epoch and the short schedule).
ROTNET_KNN = ["data.batch_size=64", "data.image_size=24", "method.head=256", "optim.lr=0.05",
              "views.params.scale=[0.6,1]", "train.epochs=8"]
#: tests/test_catalogue_learning.py's MARGIN over random init. Alone it would not do: with the rotation labels
#: shuffled the run still gains +0.048 / +0.104 at seeds 0 / 1 (below), so the test also trains that broken run and
#: asks the real one to beat it by ``ROTNET_OVER_BROKEN``.
ROTNET_MARGIN = 0.04
#: Trained minus the shuffled-label run: +0.099 / +0.124 / +0.152 / +0.097 / +0.168 at seeds 0-4 (below).
ROTNET_OVER_BROKEN = 0.06


def test_rotnet_final_features_beat_random_init(tmp_path: Path):
    """Issue 11's criterion for RotNet: the kNN top-1 of the final backbone features (what ``selfsup eval`` scores)
    on the shifted digits split beats the same backbone at random init (tests/train_utils.py's baseline) by
    ``ROTNET_MARGIN``, at 24 px (``ROTNET_KNN``). 24 px, not 16 or 32: the final map is 3 x 3 (16 px: 2 x 2,
    where the learned third stage's gain is lost in the last stage; 32 px costs 1.8x the time).
    Measured (benchmarks/origins_controls.py ``rotnet_digits --size 24 --epochs 8 --seeds 0,1,2,3,4 --stages 4
    method.head=256 optim.lr=0.05 views.params.scale=[0.6,1]``, 1 thread, pretext 0.92), seeds 0-4:

        random init            0.531  0.487  0.608  0.634  0.488
        trained                0.678  0.715  0.685  0.644  0.690   (+0.147 +0.229 +0.077 +0.010 +0.202)
        rotation labels
        shuffled (the break)   0.579  0.591  0.533  0.547  0.522   (+0.048 +0.104 -0.076 -0.087 +0.034)

    The trained run beats the broken one at every seed (+0.099 +0.124 +0.152 +0.097 +0.168) and random init at
    seeds 0-2 by 0.077 or more; seed 3's random init is the luckiest draw (0.634) and only +0.010 is gained there.
    A margin over random init alone cannot tell the two apart at every seed (the broken run gains +0.104 at seed 1,
    the trained one +0.077 at seed 2), so the test trains both, as the benchmark does (the shuffle's generator
    seeded 1000 + seed), and asks for ``ROTNET_MARGIN`` over random init and ``ROTNET_OVER_BROKEN`` over the
    broken run: both hold at seeds 0, 1 and 2. Breaking the method itself (its rotation labels shuffled in
    ``selfsup.methods.rotnet``) makes the two runs the same kind of run, and the test fails (at seed 0: 0.579 vs a
    control of the same kind). Time: about twice 22-25 s on 1 thread under a load average of ~2.5.

    Settings that did not give a final-feature margin over the broken run at 3 seeds (16 px unless named; seeds 0 /
    1 / 2, trained vs broken, random init 0.497 / 0.506 / 0.516): the third stage's pooled map (the test this one replaced)
    carries the learning at 16 px (trained 0.508 / 0.503 / 0.490, broken 0.400 / 0.417 / 0.379 vs random 0.384 /
    0.363 / 0.372; 4 epochs: +0.087 / +0.077 / +0.127, broken +0.034 / +0.030 / +0.012) but the final features do
    not (0.566 / 0.556 / 0.575 vs broken 0.557 / 0.579 / 0.496); last
    stage at 0.1x the lr 0.574 / 0.564 / 0.579 vs 0.537 / 0.563 / 0.537; last stage frozen 0.564 / 0.574 / 0.569 vs
    0.555 / 0.547 / 0.516; head 256-256 (seed 0) 0.542 vs 0.536; label smoothing 0.2 0.550 / 0.531 / 0.562 vs 0.549
    / 0.547 / 0.498; dropout 0.5 before the head 0.551 / 0.490 / 0.521 vs 0.548 / 0.540 / 0.519; last 0.1x with
    crops 0.3-1 0.558 / 0.533 / 0.578 vs 0.565 / 0.549 / 0.513; last 0.1x, 16 epochs 0.579 / 0.552 / 0.584 vs 0.532
    / 0.564 / 0.513; 32 px width 8: 0.731 / 0.515 / 0.611 vs 0.547 / 0.524 / 0.576 (random 0.538 / 0.551 /
    0.487), with the last stage at 0.1x 0.696 / 0.490 / 0.631 vs 0.558 / 0.599 / 0.601. Only BatchNorm statistics
    (lr 1e-9): 0.454 / 0.467 at seeds 0 / 1, so the broken run's gain is its weights: with labels it cannot
    predict, the loss pushes the head's logits to be the same for every crop and rotation, an invariance task of
    its own. 24 px variants at seeds 2 / 3 (random 0.608 / 0.634): lr 0.1 0.685 / 0.604, batch 32 0.677 / 0.628,
    crops 0.4-1 0.701 / 0.628, none better at seed 3."""
    from train_utils import LEARN, knn_top1, random_init_knn, shifted_digits

    import selfsup.methods.rotnet as rotnet

    data = shifted_digits(size=24)
    r = load_recipe("rotnet_digits", LEARN + ROTNET_KNN + [f"train.out_dir={tmp_path}"])

    def run_knn(name: str) -> tuple[float, list[float], float]:
        torch.manual_seed(0)
        method = build_method(r, data.train.channels, data.train.image_size)
        base = random_init_knn(method.backbone, data)
        run = train(r, run_dir=tmp_path / name, data=data, method=method, log=lambda *a: None)
        acc = [json.loads(line)["pretext_acc"] for line in open(run / "metrics.jsonl")]
        return knn_top1(method.backbone, data), acc, base

    trained, acc, base = run_knn("run")
    rotations, shuffle = rotnet.rotations, torch.Generator().manual_seed(1000)

    def shuffled(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # the control: labels not from the images
        out, targets = rotations(x)
        return out, targets[torch.randperm(len(targets), generator=shuffle)]

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rotnet, "rotations", shuffled)
        broken, broken_acc, _ = run_knn("broken")
    msg = (f"rotnet: final-feature kNN top-1 {trained:.3f} after training, {base:.3f} at random init, {broken:.3f} "
           f"with the rotation labels shuffled; pretext accuracy per epoch {acc} (shuffled: {broken_acc})")
    assert trained >= base + ROTNET_MARGIN, msg
    assert trained >= broken + ROTNET_OVER_BROKEN, msg
