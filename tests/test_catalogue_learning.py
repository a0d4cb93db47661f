"""Learning, not just running, for the second catalogue's methods: each ``*_digits`` recipe's short run must beat
the same backbone at random init on the fixed digits split, as in tests/test_learning.py (same split, kNN and
``MARGIN``; the random-init baseline is the better of the backbone as built and with re-estimated BatchNorm
statistics).

The runs are shorter than test_learning.py's: 2 epochs at batch 64 (44 steps) on the whole digits train split at
16 px with a width-16 SmallCNN (LeJEPA 3 epochs: at 2 it gains < 0.04), a larger LARS lr where 1.0 was not
enough, and fewer views for the many-view methods (EMP-SSL 4 patches, LeJEPA 2 + 2 crops and 256 slices).
Every method here starts from the same backbone weights (seeded before the heads are built), so the baseline is
measured once per weights and shared.

Measured (1 thread, seed 0; kNN top-1, random-init baseline 0.497 -> trained) with the overrides below:
  tico 0.551   mmcr 0.562   vibcreg 0.596   frossl 0.572   lejepa 0.607
  emp_ssl 0.570   directclr 0.595   align_uniform 0.572   macl 0.582
Broken, seed 0: the loss sign inverted gives tico 0.478 and macl 0.378 (both fail).
Time (``--durations``): 77 s for the 9 (mmcr 17 s, lejepa 14 s, vibcreg 11 s, tico 10 s, the others 4-8 s) on
the 2-core dev machine under a load average of ~6 from other jobs, so less on an idle CI machine.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from selfsup.config import load_recipe
from selfsup.train.loop import build_method, train
from train_utils import LEARN, knn_top1, random_init_knn, shifted_digits

pytestmark = pytest.mark.usefixtures("one_thread")

MARGIN = 0.04  # tests/test_learning.py's
SHORT = ["train.epochs=2", "data.batch_size=64"]

METHODS = [
    pytest.param("tico_digits", ["optim.lr=2.0"], id="tico"),
    pytest.param("mmcr_digits", ["optim.lr=2.0"], id="mmcr"),
    pytest.param("vibcreg_digits", ["optim.lr=2.0"], id="vibcreg"),
    pytest.param("frossl_digits", ["optim.lr=1.0"], id="frossl"),
    pytest.param("lejepa_digits", ["optim.lr=2.0", "method.num_slices=256", "views.params.n_local=2", "train.epochs=3"],
                 id="lejepa"),
    pytest.param("emp_ssl_digits", ["optim.lr=1.0", "views.params.n_views=4"], id="emp_ssl"),
    pytest.param("directclr_digits", ["optim.lr=1.0"], id="directclr"),
    pytest.param("align_uniform_digits", ["optim.lr=1.0"], id="align_uniform"),
    pytest.param("macl_digits", ["optim.lr=1.0"], id="macl"),
]

_BASELINES: dict[tuple, float] = {}


def _key(backbone: torch.nn.Module) -> tuple:
    return tuple((k, v.sum().item(), v.abs().sum().item()) for k, v in backbone.state_dict().items()
                 if v.is_floating_point())


def short_run_knn(recipe: str, extra: list[str], out: Path, seed: int = 0) -> tuple[float, float]:
    """``(random-init baseline, trained)`` kNN top-1 on ``shifted_digits`` after the short run."""
    data = shifted_digits()
    r = load_recipe(recipe, LEARN + SHORT + extra + [f"train.seed={seed}", f"train.out_dir={out}"])
    torch.manual_seed(seed)
    method = build_method(r, data.train.channels, data.train.image_size)
    key = _key(method.backbone)
    if key not in _BASELINES:
        _BASELINES[key] = random_init_knn(method.backbone, data)
    train(r, run_dir=out / "run", data=data, method=method, log=lambda *a: None)
    return _BASELINES[key], knn_top1(method.backbone, data)


@pytest.mark.parametrize("recipe, extra", METHODS)
def test_short_run_beats_random_init(recipe, extra, tmp_path):
    baseline, trained = short_run_knn(recipe, extra, tmp_path)
    assert trained >= baseline + MARGIN, (f"{recipe}: kNN top-1 {trained:.3f} after training vs {baseline:.3f} at "
                                          f"random init; a learning run gains more than {MARGIN}")
