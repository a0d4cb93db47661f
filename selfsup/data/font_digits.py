"""``font_digits``: a built-in, generated digit set with real high-resolution structure.

scikit-learn's digits are 8 x 8 at the source: upsampled to 32 px, a 3 x 3 jigsaw tile or a relative-location
patch holds a few blurred source pixels, too little for the spatial pretext tasks of the cookbook's "Origins of
SSL" (Doersch 2015, Noroozi & Favaro 2016, Noroozi 2017) to learn from (tests/test_origins_spatial_learning.py).
This set renders the ten digits from the TrueType fonts matplotlib (a dependency) ships in its package, so nothing is
downloaded: each image is one digit drawn at ``RENDER`` px in a random font, under a random affine map (rotation,
shear, anisotropic scale, translation) and a random stroke width, then area-downsampled to ``image_size``: strokes
stay sharp at any size, and the tiles of a 3 x 3 grid hold stroke ends, junctions and curves.

The split holds out fonts: the train images use :data:`TRAIN_FONTS`, the test images :data:`TEST_FONTS` (one of
each family and style), so the kNN and linear probes score digit shape across unseen fonts, not retrieval of a
near-duplicate rendering. White digit on black, 1 channel, uint8, as the digits. Deterministic from ``seed``
(numpy's PCG64); 2,000 train and 500 test images take about 4 s (the glyphs are drawn at 96 px).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageFont

from .arrays import DataSplits, ImageArray
from .errors import DataError

__all__ = ["load_font_digits_splits", "render_font_digits", "TRAIN_FONTS", "TEST_FONTS"]

# matplotlib/mpl-data/fonts/ttf: DejaVu (Sans, Sans Mono, Serif) and STIX, four styles each, and Computer Modern
TRAIN_FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSansMono.ttf",
               "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-BoldOblique.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf",
               "DejaVuSerif-BoldItalic.ttf", "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf",
               "cmr10.ttf", "cmss10.ttf", "cmb10.ttf")
TEST_FONTS = ("DejaVuSans-BoldOblique.ttf", "DejaVuSansMono-Oblique.ttf", "DejaVuSerif-Italic.ttf",
              "STIXGeneralBolIta.ttf", "cmtt10.ttf", "cmti10.ttf")
RENDER = 96  # canvas side the glyph is drawn at, before the downsampling to image_size
GLYPH = 84  # font size in px at RENDER (digits about 60 px tall)
ROTATION_DEG, SHEAR, SCALE, ASPECT, SHIFT = 15.0, 0.25, (0.7, 1.0), (0.85, 1.15), 0.08  # the affine's ranges
TRAIN_SIZE, TEST_SIZE, SEED = 2000, 500, 0


def font_dir() -> Path:
    import matplotlib

    return Path(matplotlib.get_data_path()) / "fonts" / "ttf"


def _glyph(font: ImageFont.FreeTypeFont, digit: int) -> np.ndarray:
    """The digit drawn white on black, centred (by its ink's bounding box) on a RENDER square, float in [0, 1]."""
    im = Image.new("L", (RENDER, RENDER), 0)
    mask = font.getmask(str(digit), mode="L")
    w, h = mask.size
    if w == 0 or h == 0 or w > RENDER or h > RENDER:
        raise DataError(f"font {font.path} draws no usable glyph for {digit}; drop it from the font list")
    im.im.paste(255, ((RENDER - w) // 2, (RENDER - h) // 2, (RENDER - w) // 2 + w, (RENDER - h) // 2 + h), mask)
    return np.asarray(im)


def render_font_digits(n: int, fonts: tuple[str, ...], image_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` uint8 ``[n, 1, image_size, image_size]`` digits and their int64 labels (balanced: label ``i % 10``),
    each in a random font of ``fonts`` under a random affine map and stroke width (module docstring)."""
    rng = np.random.default_rng(seed)
    faces = [ImageFont.truetype(str(font_dir() / f), GLYPH) for f in fonts]
    glyphs = {(f, d): Image.fromarray(_glyph(faces[f], d)) for f in range(len(fonts)) for d in range(10)}
    out = np.empty((n, 1, image_size, image_size), np.uint8)
    labels = np.arange(n) % 10
    c = (RENDER - 1) / 2
    for i in range(n):
        f = int(rng.integers(len(fonts)))
        rot, shear = np.deg2rad(rng.uniform(-ROTATION_DEG, ROTATION_DEG)), rng.uniform(-SHEAR, SHEAR)
        s, a = rng.uniform(*SCALE), rng.uniform(*ASPECT)
        tx, ty = rng.uniform(-SHIFT, SHIFT, 2) * RENDER
        width = int(rng.integers(0, 3))  # thickens the strokes by 0-2 passes of a 3 x 3 max filter
        fwd = np.array([[np.cos(rot), -np.sin(rot)], [np.sin(rot), np.cos(rot)]]) @ np.array([[1, shear], [0, 1]])
        fwd = fwd @ np.diag([s * a, s / a])
        inv = np.linalg.inv(fwd)  # PIL maps output pixels back to input pixels
        off = np.array([c, c]) - inv @ np.array([c + tx, c + ty])
        im = glyphs[f, int(labels[i])].transform((RENDER, RENDER), Image.Transform.AFFINE,
                                                 (*inv[0], off[0], *inv[1], off[1]), Image.Resampling.BILINEAR)
        if width:
            im = im.filter(ImageFilter.MaxFilter(2 * width + 1))
        out[i, 0] = np.asarray(im.resize((image_size, image_size), Image.Resampling.BOX))
    return torch.from_numpy(out), torch.from_numpy(labels.astype(np.int64))


def load_font_digits_splits(image_size: int = 32, train_size: int = TRAIN_SIZE, test_size: int = TEST_SIZE,
                            seed: int = SEED) -> DataSplits:
    """``train_size`` train images in :data:`TRAIN_FONTS` and ``test_size`` test images in :data:`TEST_FONTS`
    (seeds ``seed`` and ``seed + 1``), 10 balanced classes, 1-channel uint8 ``image_size`` squares."""
    if not isinstance(image_size, int) or image_size < 8:
        raise DataError(f"font_digits needs an integer image_size of at least 8, got {image_size!r}; e.g. 32")
    classes = [str(d) for d in range(10)]
    tr = render_font_digits(train_size, TRAIN_FONTS, image_size, seed)
    te = render_font_digits(test_size, TEST_FONTS, image_size, seed + 1)
    return DataSplits(train=ImageArray(*tr, classes), test=ImageArray(*te, classes), name="font_digits",
                      num_classes=10)
