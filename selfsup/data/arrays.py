"""In-memory / memory-mapped uint8 image arrays and train/test splits.

Datasets stay as ``uint8`` ``N x C x H x W`` arrays (a ``torch.Tensor`` or a
memory-mapped ``numpy`` array for large files) and are never expanded to float
as a whole: augmentation happens later, per batch, on the accelerator, which is
the data-pipeline advice of the Cookbook (Balestriero et al., 2023, section
"Even Faster Training with FFCV and Other Speedups": keep decoding/loading cheap).
"""

from __future__ import annotations

import mmap
from dataclasses import dataclass, field

import numpy as np
import torch
from torchvision.transforms.v2 import functional as TF

from .errors import DataError

__all__ = ["ImageArray", "DataSplits", "resize_center_crop", "is_memory_mapped", "as_nchw_uint8", "build_splits"]


def is_memory_mapped(a: object) -> bool:
    """True when ``a`` is a numpy array whose memory comes from a file mapping."""
    while isinstance(a, np.ndarray):
        if isinstance(a, np.memmap) and isinstance(getattr(a, "_mmap", None), mmap.mmap):
            return True
        a = a.base
    return isinstance(a, mmap.mmap)


def resize_center_crop(images: torch.Tensor | np.ndarray, size: int, chunk: int = 512) -> torch.Tensor:
    """Resize the shorter side of uint8 ``N x C x H x W`` images to ``size`` and centre-crop a square.

    Works chunk by chunk (``chunk`` rows at a time) so a memory-mapped array is
    never materialised as float; returns a contiguous uint8 tensor.
    """
    if size < 1:
        raise DataError(f"image_size must be a positive integer, got {size}; pass e.g. image_size=32")
    n, c = images.shape[0], images.shape[1]
    out = torch.empty((n, c, size, size), dtype=torch.uint8)
    for start in range(0, n, chunk):
        part = images[start : start + chunk]
        if isinstance(part, np.ndarray):
            x = torch.from_numpy(np.require(part, requirements=["C", "W"]))  # copies read-only memmap rows
        else:
            x = part.contiguous()
        if min(x.shape[-2:]) != size:
            x = TF.resize(x, size, antialias=True)
        out[start : start + chunk] = TF.center_crop(x, [size, size])
    return out


def _as_labels(labels: torch.Tensor | np.ndarray | None, n: int) -> torch.Tensor | None:
    if labels is None:
        return None
    a = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if a.dtype.kind not in "iu":
        raise DataError(f"labels have dtype {a.dtype}, expected integers; convert them with labels.astype('int64')")
    t = torch.from_numpy(a.reshape(-1).astype(np.int64))
    if t.numel() != n:
        raise DataError(f"there are {n} images but {t.numel()} labels; give exactly one label per image")
    if n and int(t.min()) < 0:
        raise DataError(f"labels contain a negative value ({int(t.min())}); use class indices 0..K-1")
    return t


@dataclass
class ImageArray:
    """A split of ``N`` uint8 images ``N x C x H x W`` (square, C in {1, 3}) with optional int64 labels.

    ``images`` is a ``torch.Tensor`` (possibly a permuted view, e.g. of NHWC
    data) or a ``numpy`` array (memory-mapped for large files). Use
    :meth:`batch` to gather rows as a contiguous uint8 tensor.
    """

    images: torch.Tensor | np.ndarray
    labels: torch.Tensor | None = None
    classes: list[str] | None = None

    def __post_init__(self) -> None:
        if isinstance(self.images, np.ndarray) and not is_memory_mapped(self.images):
            a = self.images if self.images.flags.writeable else self.images.copy()
            self.images = torch.from_numpy(a)
        if not isinstance(self.images, (torch.Tensor, np.ndarray)):
            raise DataError(f"images must be a torch.Tensor or numpy array, got {type(self.images).__name__}")
        if self.images.dtype not in (torch.uint8, np.uint8):
            raise DataError(f"images have dtype {self.images.dtype}, expected uint8; convert them to 0..255 uint8")
        if self.images.ndim != 4:
            raise DataError(f"images must be N x C x H x W, got shape {tuple(self.images.shape)}")
        _, c, h, w = self.images.shape
        if c not in (1, 3):
            raise DataError(f"images have {c} channels, expected 1 (grayscale) or 3 (RGB); drop extra channels")
        if h != w:
            raise DataError(f"images are {h}x{w}, not square; pass image_size to resize and centre-crop them")
        self.labels = _as_labels(self.labels, len(self))
        if self.classes is not None:
            self.classes = [str(c) for c in self.classes]
            if self.labels is not None and len(self) and int(self.labels.max()) >= len(self.classes):
                raise DataError(
                    f"label {int(self.labels.max())} is out of range for {len(self.classes)} class names; "
                    "fix the labels or the class-name list"
                )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def channels(self) -> int:
        """Number of channels C (1 grayscale, 3 RGB)."""
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        """Side H (= W) of the square images."""
        return int(self.images.shape[2])

    @property
    def labeled(self) -> bool:
        """Whether this split carries labels."""
        return self.labels is not None

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Gather rows ``idx`` as ``(uint8 [B, C, H, W] contiguous tensor, int64 [B] CPU labels or None)``.

        The images come back on the device ``images`` lives on (CPU for numpy).
        Memory-mapped arrays are read in sorted index order (sequential disk
        access) and the requested order is restored afterwards.
        """
        idx = torch.as_tensor(idx, dtype=torch.int64).reshape(-1).cpu()
        n = len(self)
        if idx.numel() and (int(idx.min()) < -n or int(idx.max()) >= n):
            raise IndexError(f"batch index out of range for a split of {n} images")
        ix = idx.numpy() % max(n, 1)  # negative indices count from the end
        labels = torch.from_numpy(self.labels.numpy()[ix]) if self.labels is not None else None
        if isinstance(self.images, torch.Tensor) and self.images.device.type != "cpu":
            return self.images.index_select(0, idx.to(self.images.device)).contiguous(), labels
        if isinstance(self.images, torch.Tensor):
            # Gather with numpy, not torch: measured on a loaded 2-core EPYC, torch's uint8 index_select /
            # permute-copy of a 256x3x32x32 batch took ~8 ms (intra-op thread-pool wake-ups) vs ~0.03-0.25 ms
            # in numpy, which also keeps this off the training loop's thread pool when run in a loader thread.
            return torch.from_numpy(np.ascontiguousarray(self.images.numpy()[ix])), labels
        order = np.argsort(ix, kind="stable")
        rows = np.asarray(self.images[ix[order]])  # ascending reads of the mapped file
        out = np.empty(rows.shape, dtype=np.uint8)
        out[order] = rows  # restore the requested order
        return torch.from_numpy(out), labels


@dataclass
class DataSplits:
    """A dataset: a ``train`` split, an optional ``test`` split, its ``name`` and ``num_classes``.

    ``notes`` collects loader remarks (skipped files, missing test split) that
    :meth:`summary` prints.
    """

    train: ImageArray
    test: ImageArray | None
    name: str
    num_classes: int | None
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.test is not None:
            if (self.test.channels, self.test.image_size) != (self.train.channels, self.train.image_size):
                raise DataError(
                    f"test images are {self.test.channels}x{self.test.image_size}x{self.test.image_size} but train "
                    f"images are {self.train.channels}x{self.train.image_size}x{self.train.image_size}; make them match"
                )
            if self.test.labeled != self.train.labeled:
                raise DataError(
                    "one split has labels and the other does not; label both train and test splits or neither"
                )
        if self.num_classes is None and self.train.labels is not None:
            splits = [s for s in (self.train, self.test) if s is not None and len(s) and s.labels is not None]
            top = [int(s.labels.max()) for s in splits]
            self.num_classes = max(top) + 1 if top else None

    @property
    def classes(self) -> list[str] | None:
        """Class names (index order) where known."""
        return self.train.classes

    def summary(self) -> str:
        """One line, e.g. ``"digits: 1437 train / 360 test, 1x32x32, 10 classes"``."""
        t = self.train
        test = f"{len(self.test)} test" if self.test is not None else "no test split"
        labels = f"{self.num_classes} classes" if self.num_classes is not None else "unlabeled"
        line = f"{self.name}: {len(t)} train / {test}, {t.channels}x{t.image_size}x{t.image_size}, {labels}"
        return "; ".join([line, *self.notes])


def as_nchw_uint8(x: np.ndarray, what: str) -> np.ndarray:
    """Return ``x`` (NHW, NCHW or NHWC) as an uint8 ``N x C x H x W`` view, C in {1, 3}.

    Layout changes are views (memory maps stay mapped). A non-uint8 array is
    accepted only if every value is an integer in 0..255, then cast (a copy).
    The layout is NHWC when the last axis has 1 or 3 entries and axis 1 does
    not; NCHW in the mirror case; if both fit, the pair of equal sides is H, W.
    """
    if x.dtype.hasobject or x.dtype.kind not in "biuf":
        raise DataError(f"{what} has dtype {x.dtype}; store images as uint8 0..255")
    if x.ndim not in (3, 4) or x.shape[0] == 0:
        raise DataError(
            f"{what} has shape {x.shape}; expected a non-empty N x H x W, N x H x W x C or N x C x H x W array"
        )
    if x.dtype != np.uint8:
        lo, hi = (x.min(), x.max()) if x.size else (0, 0)
        if x.dtype.kind == "b" or lo < 0 or hi > 255 or (x.dtype.kind == "f" and not np.array_equal(x, np.round(x))):
            raise DataError(
                f"{what} has dtype {x.dtype} with values in [{lo}, {hi}], not integers in 0..255; convert it to "
                "uint8 first, e.g. (x * 255).round().astype('uint8') for images scaled to [0, 1]"
            )
        x = x.astype(np.uint8)
    if x.ndim == 3:
        return x[:, None]
    _, a, b, c = x.shape
    nhwc = c in (1, 3) and (a not in (1, 3) or a == b)
    if not nhwc and a not in (1, 3):
        raise DataError(
            f"{what} has shape {x.shape}: no axis of size 1 or 3 for the channels; give N x H x W x C or N x C x H x W "
            "with C = 1 (grayscale) or 3 (RGB), e.g. drop an alpha channel with x[..., :3]"
        )
    return x.transpose(0, 3, 1, 2) if nhwc else x


def build_splits(
    name: str,
    x_train: np.ndarray,
    y_train: np.ndarray | None,
    x_test: np.ndarray | None,
    y_test: np.ndarray | None,
    image_size: int | None = None,
    classes: list[str] | None = None,
    notes: list[str] | None = None,
) -> DataSplits:
    """Validate raw arrays and build :class:`DataSplits`.

    ``image_size=None`` keeps the native size (must be square); otherwise the
    shorter side is resized to ``image_size`` and centre-cropped (in memory).
    """
    notes = list(notes or [])
    parts = []
    for split, x, y in (("train", x_train, y_train), ("test", x_test, y_test)):
        if x is None:
            if y is not None:
                raise DataError(f"y_{split} is given without x_{split}; add the x_{split} images or drop y_{split}")
            parts.append(None)
            continue
        imgs = as_nchw_uint8(x, f"x_{split}")
        if y is not None and len(np.asarray(y).reshape(-1)) != imgs.shape[0]:
            raise DataError(
                f"x_{split} has {imgs.shape[0]} images but y_{split} has {len(np.asarray(y).reshape(-1))} labels; "
                "give exactly one label per image"
            )
        if image_size is not None and tuple(imgs.shape[2:]) != (image_size, image_size):
            imgs = resize_center_crop(imgs, image_size)
        parts.append(ImageArray(imgs, None if y is None else np.asarray(y), classes))
    return DataSplits(parts[0], parts[1], name, len(classes) if classes is not None else None, notes)
