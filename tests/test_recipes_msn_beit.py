"""The MSN / PMSN / BEiT paper recipes against their rows (tests/recipe_rows_msn_beit.py, also collected
by tests/test_recipes.py), and their coverage of the keys every paper recipe must cite."""

import pytest

from recipe_rows_msn_beit import ROWS
from selfsup.config import load_recipe
from test_recipes import METHOD_KEYS, REQUIRED, _same, resolve


@pytest.mark.parametrize("recipe,key,value,cite", ROWS, ids=[f"{r}-{k}" for r, k, _, _ in ROWS])
def test_paper_value(recipe, key, value, cite):
    got = resolve(load_recipe(recipe), key)
    assert _same(got, value), f"{recipe} {key} = {got!r}, the paper has {value!r} ({cite})"


@pytest.mark.parametrize("recipe", ["msn", "pmsn", "beit"])
def test_rows_cover_the_required_keys(recipe):
    r = load_recipe(recipe)
    keys = {k for name, k, _, _ in ROWS if name == recipe}
    need = [*REQUIRED, *(f"method.{f}" for f in METHOD_KEYS if f in type(r.method).model_fields),
            "view0.scale", "view0.jitter", "view0.blur_p"]
    assert not [k for k in need if k not in keys]
