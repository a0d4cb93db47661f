"""The generated ``font_digits`` set (selfsup/data/font_digits.py): deterministic, balanced, fonts held out."""

import pytest
import torch
from PIL import ImageFont

from selfsup.data import load_data
from selfsup.data.errors import DataError
from selfsup.data.font_digits import (GLYPH, TEST_FONTS, TRAIN_FONTS, _glyph, font_dir, load_font_digits_splits,
                                      render_font_digits)


def test_font_digits_are_deterministic_balanced_and_hold_out_the_test_fonts():
    d = load_data(None, format="font_digits", image_size=24)
    again = load_font_digits_splits(24)
    assert d.name == "font_digits" and d.num_classes == 10
    assert d.train.images.shape == (2000, 1, 24, 24) and d.test.images.shape == (500, 1, 24, 24)
    assert torch.equal(d.train.images, again.train.images) and torch.equal(d.test.images, again.test.images)
    assert torch.equal(torch.bincount(d.train.labels), torch.full((10,), 200))
    assert not set(TRAIN_FONTS) & set(TEST_FONTS)
    other = load_font_digits_splits(24, train_size=50, test_size=10, seed=5)
    assert not torch.equal(other.train.images, d.train.images[:50])  # the seed draws other maps and fonts
    ink = d.train.images.flatten(1).float().mean(1)
    assert ink.min() > 5 and (d.train.images[:, :, 0].float().mean() < ink.mean() / 4)  # ink, mostly off the border


def test_every_font_draws_ten_distinct_digits():
    for name in TRAIN_FONTS + TEST_FONTS:
        face = ImageFont.truetype(str(font_dir() / name), GLYPH)
        g = torch.stack([torch.from_numpy(_glyph(face, k).copy()).float() for k in range(10)]).flatten(1) / 255
        assert (g.sum(1) > 50).all(), name
        dist = torch.cdist(g, g) + torch.eye(10) * 1e9
        assert dist.min() > 5, name  # no two digits of a font are the same (a missing glyph's box would be)


def test_render_applies_a_per_image_affine_map():
    x, y = render_font_digits(40, TRAIN_FONTS[:1], 32, seed=0)
    assert torch.equal(y, torch.arange(40) % 10)
    same = x[y == 3].float()
    assert (same[0] - same[1]).abs().mean() > 5  # one font, one digit: the random maps differ


def test_font_digits_reject_a_path_and_a_tiny_size():
    with pytest.raises(DataError, match="takes no path"):
        load_data("somewhere", format="font_digits")
    with pytest.raises(DataError, match="at least 8"):
        load_font_digits_splits(4)
