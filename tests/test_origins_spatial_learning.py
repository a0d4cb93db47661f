"""Short runs of the spatial pretext tasks: each learns its own task well above chance (4 epochs on 192 digits at
16 px, a width-8 SmallCNN, 24 steps). PIRL has no learning test (see below).

They do **not** beat the random-init kNN of tests/test_catalogue_learning.py (MARGIN 0.04 on the shifted digits
split): measured with its ``short_run_knn`` (1 thread, seed 0; kNN top-1, random init 0.497 at 16 px, 0.583 at
32 px), lr the peak lr:
  rotnet  16 px 2 ep: 0.481 (lr 0.0125), 0.463 (0.1), 0.340 (0.375), LARS 1.0: 0.426; head 256: 0.426; 6 ep: 0.485;
          32 px: 0.292
  jigsaw  16 px 2 ep: 0.456 (tile 8), 0.469 (0.1), 0.442 (tile_size null), grid 2: 0.471; 3 ep: 0.467;
          32 px 2 ep: 0.613 vs 0.583 (+0.030, the closest)
  relpatch 16 px (patch 4, gap 1, jitter 1): 0.490; 32 px (recipe geometry): 0.534 vs 0.583
  pirl    2 ep whole split: 0.215 (NCE, lr 0.1), 0.327 (NCE, 0.03), 0.164 (Z = 1), 0.467-0.469 (softmax);
          256 images x 12 ep (test_origins_instance.py's NPID setup, npid reaches 0.566 there): softmax 0.502,
          grid 2 0.506, crop views 0.517-0.519, lambda 0 (f term only) 0.531; NCE collapses (0.131, rankme 1.7)
The pretext accuracies below (chance 0.25 / 0.083 / 0.125): rotnet 0.43 -> 0.53, jigsaw 0.12 -> 0.32, relpatch
0.15 -> 0.23 over the 4 epochs; at lr 1e-9 they stay at chance (rotnet 0.19-0.23, jigsaw 0.07-0.09).
PIRL on 192 digits (4-12 epochs, softmax or NCE): its own-row retrieval stays at chance (g 1/192, f 0.010-0.026,
also with batch-statistics BatchNorm), so no PIRL learning claim is made here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from train_utils import short_run

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = ["train.online_probe=false", "optim.lr=0.1"]
TASKS = [
    pytest.param("rotnet_digits", [], 0.25, id="rotnet"),
    pytest.param("jigsaw_digits", ["method.n_permutations=12", "method.tile_dim=8", "method.head=16"], 1 / 12,
                 id="jigsaw"),
    pytest.param("relpatch_digits", ["method.patch=4", "method.gap=1", "method.jitter=1", "method.tile_dim=8",
                                     "method.head=16"], 1 / 8, id="relpatch"),
]


@pytest.mark.parametrize("recipe, extra, chance", TASKS)
def test_pretext_task_is_learned(recipe, extra, chance, tmp_path: Path):
    run, _, _ = short_run(recipe, tmp_path, SMALL + extra, epochs=4)
    acc = [json.loads(line)["pretext_acc"] for line in open(run / "metrics.jsonl")]
    assert acc[-1] >= chance + 0.08, f"{recipe}: pretext accuracy {acc} per epoch, chance {chance:.3f}"

