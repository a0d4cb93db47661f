"""The iBOT / DINOv2 paper recipes' effective lr (their rows are in tests/recipe_rows_ibot_dinov2.py, checked by
tests/test_recipes.py)."""

import math

import pytest

from selfsup.config import load_recipe
from selfsup.train.schedules import scaled_lr


def test_effective_peak_lr_is_the_papers():
    """iBOT: 5e-4 x 1024/256 = 2e-3; DINOv2: 0.004 x sqrt(2048/1024), and 0.004 at batch 1024."""
    ib, v2 = load_recipe("ibot").optim, load_recipe("dinov2").optim
    assert scaled_lr(ib.lr, 1024, ib.lr_scaling, ib.lr_reference_batch) == pytest.approx(2e-3)
    assert scaled_lr(v2.lr, 2048, v2.lr_scaling, v2.lr_reference_batch) == pytest.approx(0.004 * math.sqrt(2))
    assert scaled_lr(v2.lr, 1024, v2.lr_scaling, v2.lr_reference_batch) == pytest.approx(0.004)
    assert v2.final_lr_ratio * 0.004 * math.sqrt(2) == pytest.approx(1e-6, rel=1e-3)  # min_lr 1e-6
