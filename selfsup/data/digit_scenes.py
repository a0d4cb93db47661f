"""``digit_scenes``: the built-in digits pasted onto textured backgrounds, with exact per-pixel masks.

A dataset the package generates itself (nothing is downloaded, nothing comes from a network), for the
dense evaluation protocol (:mod:`selfsup.eval.dense_probe`) and for pretraining the localized-feature
methods (cookbook, "Building Feature Extractors with Localization"): each image of scikit-learn's
``digits`` (the fixed 1437 / 360 split of :func:`selfsup.data.load_digits_splits`) is scaled to a random
side, pasted at a random position onto a random texture (a sum of oriented sine gratings plus smoothed
noise), and its mask says which pixels the digit covers. Pixel classes: 0 = background, ``k + 1`` =
digit ``k`` (11 classes); the image label stays the digit, so every image-level protocol runs too.

The mask is exact by construction: a pixel is the digit's stroke value where the mask is set and the
texture elsewhere (no blending), so the mask is what generated the image, not an estimate of it.
Everything is drawn from ``numpy.random.default_rng(seed)`` in image order: the same seed gives the same
bytes.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from .arrays import DataSplits, ImageArray
from .digits import DIGITS_SEED, DIGITS_TEST_SIZE
from .errors import DataError

__all__ = ["SegmentationArray", "load_digit_scenes", "SCENE_CLASSES", "IGNORE_INDEX"]

#: pixel classes of the masks: background, then the ten digits
SCENE_CLASSES = ["background", *(f"digit {k}" for k in range(10))]
#: the mask value that losses and mIoU skip (none of the generated pixels carry it)
IGNORE_INDEX = 255
DIGIT_SCENES_SEED = 0
#: digit side as a fraction of the image side (uniform), and the stroke threshold of the 0..16 digit pixels. At
#: 40-80% and a 0..260 background the digits were ~12% of the pixels and the textures overlapped the ink: the dense
#: probe labelled everything background and a trained encoder tied with random init (README, dense evaluation)
SCALE_RANGE = (0.7, 1.0)
STROKE_THRESHOLD = 0.5


@dataclass
class SegmentationArray(ImageArray):
    """An :class:`ImageArray` with per-pixel masks: uint8 ``[N, H, W]`` class indices (``IGNORE_INDEX``
    is skipped by the dense probe) and their ``mask_classes`` names."""

    masks: torch.Tensor | None = None
    mask_classes: list[str] | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.masks, torch.Tensor) or self.masks.dtype != torch.uint8:
            raise DataError("masks must be a uint8 torch.Tensor [N, H, W] of class indices; convert them first")
        if tuple(self.masks.shape) != (len(self), self.image_size, self.image_size):
            raise DataError(f"masks have shape {tuple(self.masks.shape)} but the images are {len(self)} x "
                            f"{self.image_size} x {self.image_size}; give one H x W mask per image")
        if self.mask_classes is None:
            raise DataError("mask_classes is missing; name the pixel classes (index order)")

    def mask_batch(self, idx: torch.Tensor) -> torch.Tensor:
        """Masks of rows ``idx`` as int64 ``[B, H, W]``."""
        return self.masks[torch.as_tensor(idx, dtype=torch.int64).reshape(-1)].long()


@lru_cache(maxsize=None)
def _resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``[n_out, n_in]`` weights of 1-D linear resizing (``align_corners=False``): ``R @ X @ R.T`` resizes an
    ``n_in x n_in`` array bilinearly to ``n_out x n_out`` exactly as ``F.interpolate(mode="bilinear")``."""
    eye = torch.eye(n_in, dtype=torch.float64)[:, None]  # [n_in, 1, n_in]: one basis signal per row
    return F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[:, 0].T.numpy()


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A float ``size x size`` texture in [0, 1]: three oriented sine gratings plus bilinearly upsampled noise."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) / size
    t = np.zeros((size, size))
    for _ in range(3):
        theta, freq, phase = rng.uniform(0, np.pi), rng.uniform(1.5, 6.0), rng.uniform(0, 2 * np.pi)
        t += rng.uniform(0.3, 1.0) * np.sin(2 * np.pi * freq * (xx * np.cos(theta) + yy * np.sin(theta)) + phase)
    r = _resize_matrix(5, size)
    t += 1.5 * r @ rng.standard_normal((5, 5)) @ r.T
    return (t - t.min()) / max(t.max() - t.min(), 1e-12)


def _scene(rng: np.random.Generator, digit: np.ndarray, label: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One uint8 image and its mask: ``digit`` (8x8, 0..16) scaled and pasted onto a texture."""
    side = int(rng.integers(round(SCALE_RANGE[0] * size), round(SCALE_RANGE[1] * size) + 1))
    top, left = (int(v) for v in rng.integers(0, size - side + 1, size=2))
    bg = rng.uniform(0, 60) + rng.uniform(30, 80) * _texture(rng, size)  # background: 0..140, below the ink
    stroke = rng.uniform(170, 255)  # the digit's ink, one value per image plus mild noise
    r = _resize_matrix(8, side)
    alpha = r @ (digit / 16.0) @ r.T  # the digit bilinearly resized to side x side
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[top:top + side, left:left + side] = np.where(alpha > STROKE_THRESHOLD, label + 1, 0)
    ink = stroke + rng.normal(0, 8, size=(size, size))
    img = np.where(mask > 0, ink, bg)
    return np.rint(img).clip(0, 255).astype(np.uint8), mask


def _scenes(digits: np.ndarray, labels: np.ndarray, size: int, rng: np.random.Generator) -> SegmentationArray:
    images, masks = np.empty((len(labels), 1, size, size), np.uint8), np.empty((len(labels), size, size), np.uint8)
    for i, (d, y) in enumerate(zip(digits, labels.tolist())):
        images[i, 0], masks[i] = _scene(rng, d, y, size)
    return SegmentationArray(torch.from_numpy(images), labels, [str(k) for k in range(10)],
                             masks=torch.from_numpy(masks), mask_classes=list(SCENE_CLASSES))


def load_digit_scenes(image_size: int = 32, seed: int = DIGIT_SCENES_SEED) -> DataSplits:
    """The ``digit_scenes`` splits at ``image_size`` px (1-channel): 1437 train / 360 test scenes from the
    digits' own stratified split (``train_test_split(test_size=0.2, random_state=0)``), image labels the
    digit (10 classes), masks with 11 pixel classes (:data:`SCENE_CLASSES`). Deterministic in ``seed``
    (the train scenes are drawn first, then the test scenes)."""
    if not isinstance(image_size, int) or isinstance(image_size, bool) or image_size < 8:
        raise DataError(f"digit_scenes needs an integer image_size of at least 8, got {image_size!r}; e.g. 32")
    bunch = load_digits()
    y = bunch.target.astype(np.int64)
    tr, te = train_test_split(np.arange(len(y)), test_size=DIGITS_TEST_SIZE, random_state=DIGITS_SEED, stratify=y)
    tr, te = np.sort(tr), np.sort(te)
    rng = np.random.default_rng(seed)
    train = _scenes(bunch.images[tr], y[tr], image_size, rng)
    test = _scenes(bunch.images[te], y[te], image_size, rng)
    return DataSplits(train, test, "digit_scenes", 10)
