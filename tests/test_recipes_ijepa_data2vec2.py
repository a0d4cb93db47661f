"""Coverage of the I-JEPA and data2vec 2.0 rows (tests/recipe_rows_ijepa_data2vec2.py, checked by
tests/test_recipes.py): test_recipes' required keys plus every method field the recipe sets."""

from __future__ import annotations



import pytest

from recipe_rows_ijepa_data2vec2 import ROWS
from selfsup.config import load_recipe
from test_recipes import METHOD_KEYS, REQUIRED


@pytest.mark.parametrize("recipe", ["ijepa", "data2vec2"])
def test_every_paper_value_is_covered(recipe: str) -> None:
    """test_recipes' required keys, plus every method field the recipe sets, have a row above."""
    r = load_recipe(recipe)
    keys = {k for name, k, _, _ in ROWS if name == recipe}
    fields = [f for f in type(r.method).model_fields if f != "name" and f in r.method.model_fields_set]
    need = list(REQUIRED) + [f"method.{f}" for f in METHOD_KEYS if f in type(r.method).model_fields]
    need += [f"method.{f}" for f in fields] + ["view0.scale", "view0.jitter", "view0.blur_p"]
    missing = sorted({k for k in need if k not in keys})
    assert not missing, f"{recipe}: no paper value checked for {missing}"
