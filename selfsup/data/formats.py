"""``load_data``: one entry point for every dataset format, detected from the path or named.

Formats: ``digits`` (built in, the default), ``imagefolder``, ``npz``, ``idx``
(MNIST-style) and ``cifar`` (CIFAR-10/100 python pickles). See
:mod:`selfsup.data.imagefolder`, :mod:`selfsup.data.npz` and
:mod:`selfsup.data.cifar` for the exact layouts.
"""

from __future__ import annotations

import numbers
from pathlib import Path

from .arrays import DataSplits
from .cifar import cifar_variant, load_cifar
from .digits import load_digits_splits
from .errors import DataError, DataPathError
from .imagefolder import DEFAULT_IMAGEFOLDER_SIZE, load_imagefolder, looks_like_imagefolder
from .npz import find_idx_files, load_idx, load_npz

__all__ = ["FORMATS", "detect_format", "load_data"]

FORMATS = ("auto", "digits", "imagefolder", "npz", "idx", "cifar")
_CIFAR_DIRS = ("cifar-10-batches-py", "cifar-100-python")
_LOOKED_FOR = (
    "a .npz file with x_train; a folder with train-images-idx3-ubyte[.gz] (idx); CIFAR data_batch_1 or "
    "train + meta pickles (cifar); image files or class sub-folders of images (imagefolder)"
)


def _cifar_dir(folder: Path) -> Path | None:
    """``folder`` itself or its ``cifar-10-batches-py`` / ``cifar-100-python`` child, if it holds CIFAR files."""
    for cand in (folder, *(folder / d for d in _CIFAR_DIRS)):
        if cand.is_dir() and cifar_variant(cand) is not None:
            return cand
    return None


def detect_format(path: Path) -> str:
    """Guess the format of ``path``: "npz", "idx", "cifar" or "imagefolder" (DataError if none fits)."""
    if path.is_file():
        if path.suffix.lower() == ".npz":
            return "npz"
        raise DataError(f"cannot tell the format of file {path}; looked for {_LOOKED_FOR}")
    if _cifar_dir(path) is not None:
        return "cifar"
    if ("train", "images") in find_idx_files(path):
        return "idx"
    if looks_like_imagefolder(path):
        return "imagefolder"
    raise DataError(f"cannot tell the format of folder {path}; looked for {_LOOKED_FOR}; or pass format=...")


def load_data(
    path: str | Path | None = None,
    format: str = "auto",
    image_size: int | None = None,
    on_corrupt: str = "skip",
    num_workers: int | None = None,
    mmap: bool = True,
    cifar_labels: str = "fine",
) -> DataSplits:
    """Load a dataset as uint8 :class:`DataSplits`.

    Args:
        path: dataset file/folder; ``None`` (or the string ``"digits"``) loads the built-in digits.
        format: one of ``FORMATS``; ``"auto"`` detects it from ``path``.
        image_size: square side of the returned images. ``None`` keeps the native size of array
            formats (npz, idx, cifar; they must then be square), means 32 for digits and
            64 (``DEFAULT_IMAGEFOLDER_SIZE``) for ImageFolder trees, whose images vary in size.
            Otherwise the shorter side is resized to ``image_size`` and centre-cropped.
        on_corrupt: ``"skip"`` (warn, count in the summary) or ``"error"`` for unreadable images.
        num_workers: decoding threads for ImageFolder (default ``min(8, cpu_count)``).
        mmap: memory-map uncompressed npz members and plain IDX files.
        cifar_labels: ``"fine"`` or ``"coarse"`` labels for CIFAR-100.
    """
    if format not in FORMATS:
        raise DataError(f"unknown data format {format!r}; use one of {', '.join(FORMATS)}")
    if on_corrupt not in ("skip", "error"):
        raise DataError(f"on_corrupt must be 'skip' or 'error', got {on_corrupt!r}")
    if image_size is not None:
        if not isinstance(image_size, numbers.Integral) or isinstance(image_size, bool) or image_size < 1:
            raise DataError(f"image_size must be a positive integer or None, got {image_size!r}")
        image_size = int(image_size)
    if format == "digits" or path is None or (str(path) == "digits" and not Path("digits").exists()):
        if path is not None and str(path) != "digits":
            raise DataError(f"format='digits' is the built-in dataset and takes no path (got {path}); drop the path")
        return load_digits_splits(32 if image_size is None else image_size)
    p = Path(path).expanduser()
    if not p.exists():
        raise DataPathError(f"dataset path {p} does not exist; check data.path (or leave it empty for digits)")
    fmt = detect_format(p) if format == "auto" else format
    if fmt == "npz":
        if not p.is_file():
            raise DataError(f"format='npz' needs a .npz file, but {p} is a folder; point to the file")
        return load_npz(p, image_size, mmap)
    if not p.is_dir():
        raise DataError(f"format='{fmt}' needs a folder, but {p} is a file; point to its folder")
    if fmt == "idx":
        return load_idx(p, image_size, mmap)
    if fmt == "cifar":
        folder = _cifar_dir(p)
        if folder is None:
            raise DataError(f"{p} holds no CIFAR files (data_batch_1.., or train + meta); check the path")
        return load_cifar(folder, image_size, cifar_labels)
    return load_imagefolder(p, image_size if image_size is not None else DEFAULT_IMAGEFOLDER_SIZE,
                            on_corrupt, num_workers)
