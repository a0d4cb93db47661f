"""The built-in default dataset: scikit-learn's 8x8 handwritten ``digits``.

Small enough to pretrain on a laptop CPU in minutes, with labels for the
linear-probe / k-NN evaluation protocols of the Cookbook (Balestriero et al.,
2023). Ships with scikit-learn, so nothing is downloaded.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from .arrays import DataSplits, ImageArray
from .errors import DataError

__all__ = ["load_digits_splits"]

DIGITS_TEST_SIZE = 0.2
DIGITS_SEED = 0


def _upsample(x: torch.Tensor, image_size: int) -> torch.Tensor:
    """Bilinear resize of uint8 ``N x 1 x 8 x 8`` to ``image_size``, rounded and clamped back to uint8."""
    if image_size == x.shape[-1]:
        return x
    y = F.interpolate(x.float(), size=(image_size, image_size), mode="bilinear", align_corners=False,
                      antialias=image_size < x.shape[-1])
    return y.round_().clamp_(0, 255).to(torch.uint8)


def load_digits_splits(image_size: int = 32) -> DataSplits:
    """Load ``digits`` as 1-channel uint8 ``image_size`` squares with a fixed stratified 80/20 split.

    Pixel values 0..16 are scaled to 0..255 (``round(v * 255 / 16)``), then
    bilinearly resized. The split is ``train_test_split(test_size=0.2,
    random_state=0, stratify=y)``: 1437 train / 360 test images, 10 classes.
    """
    if not isinstance(image_size, int) or image_size < 1:
        raise DataError(f"image_size must be a positive integer, got {image_size!r}; e.g. image_size=32")
    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    x = _upsample(torch.from_numpy(images).unsqueeze(1), image_size)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    idx_train, idx_test = train_test_split(
        np.arange(len(y)), test_size=DIGITS_TEST_SIZE, random_state=DIGITS_SEED, stratify=bunch.target
    )
    classes = [str(c) for c in bunch.target_names]
    tr, te = torch.from_numpy(np.sort(idx_train)), torch.from_numpy(np.sort(idx_test))
    return DataSplits(
        train=ImageArray(x[tr].contiguous(), y[tr], classes),
        test=ImageArray(x[te].contiguous(), y[te], classes),
        name="digits",
        num_classes=len(classes),
    )
