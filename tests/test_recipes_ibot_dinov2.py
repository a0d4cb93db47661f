"""The iBOT / DINOv2 paper recipes against their rows (tests/recipe_rows_ibot_dinov2.py, also collected by
tests/test_recipes.py), their coverage of the keys every paper recipe must cite, and the effective lr."""

import math

import pytest

from recipe_rows_ibot_dinov2 import ROWS
from selfsup.config import load_recipe
from selfsup.train.schedules import scaled_lr
from test_recipes import METHOD_KEYS, REQUIRED, _same, resolve


@pytest.mark.parametrize("recipe,key,value,cite", ROWS, ids=[f"{r}-{k}" for r, k, _, _ in ROWS])
def test_paper_value(recipe, key, value, cite):
    got = resolve(load_recipe(recipe), key)
    assert _same(got, value), f"{recipe} {key} = {got!r}, the paper has {value!r} ({cite})"


@pytest.mark.parametrize("recipe", ["ibot", "dinov2"])
def test_rows_cover_the_required_keys(recipe):
    r = load_recipe(recipe)
    keys = {k for name, k, _, _ in ROWS if name == recipe}
    need = [*REQUIRED, *(f"method.{f}" for f in METHOD_KEYS if f in type(r.method).model_fields),
            "view0.scale", "view0.jitter", "view0.blur_p"]
    assert not [k for k in need if k not in keys]


def test_effective_peak_lr_is_the_papers():
    """iBOT: 5e-4 x 1024/256 = 2e-3; DINOv2: 0.004 x sqrt(2048/1024), and 0.004 at batch 1024."""
    ib, v2 = load_recipe("ibot").optim, load_recipe("dinov2").optim
    assert scaled_lr(ib.lr, 1024, ib.lr_scaling, ib.lr_reference_batch) == pytest.approx(2e-3)
    assert scaled_lr(v2.lr, 2048, v2.lr_scaling, v2.lr_reference_batch) == pytest.approx(0.004 * math.sqrt(2))
    assert scaled_lr(v2.lr, 1024, v2.lr_scaling, v2.lr_reference_batch) == pytest.approx(0.004)
    assert v2.final_lr_ratio * 0.004 * math.sqrt(2) == pytest.approx(1e-6, rel=1e-3)  # min_lr 1e-6
