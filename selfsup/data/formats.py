"""``load_data``: one entry point for every dataset format, detected from the path or named.

Array formats, always in RAM (or memory-mapped): ``digits`` (built in, the default), ``digit_scenes``
(the digits on textured backgrounds with per-pixel masks, generated; :mod:`selfsup.data.digit_scenes`),
``colour_digits`` (the digits coloured in Lab, generated, for colorization; :mod:`selfsup.data.colour_digits`),
``font_digits`` (digits rendered from matplotlib's fonts at full resolution, test fonts held out, generated;
:mod:`selfsup.data.font_digits`), ``npz``,
``idx`` (MNIST-style) and ``cifar`` (CIFAR-10/100 python pickles). Encoded-image formats, streamed
at full resolution or cached in RAM (``cache``, see :mod:`selfsup.data.imagefolder`):
``imagefolder`` (class folders, or unlabeled images at any depth), ``filelist`` (a
``path[,label]`` CSV/text file), ``packed`` (``selfsup prepare``'s format) and ``shards``
(webdataset ``.tar`` shards). See :mod:`selfsup.data.sources`, :mod:`selfsup.data.packed`,
:mod:`selfsup.data.shards`, :mod:`selfsup.data.npz` and :mod:`selfsup.data.cifar`.
"""

from __future__ import annotations

import numbers
from pathlib import Path

from .arrays import DataSplits
from .cifar import cifar_variant, load_cifar
from .colour_digits import load_colour_digits_splits
from .digit_scenes import load_digit_scenes
from .digits import load_digits_splits
from .font_digits import load_font_digits_splits
from .errors import DataError, DataPathError
from .imagefolder import DEFAULT_RAM_BUDGET_MB, load_image_splits, looks_like_imagefolder
from .npz import find_idx_files, load_idx, load_npz
from .packed import is_packed, list_packed
from .shards import list_shards, looks_like_shards, reject_remote
from .sources import FILELIST_SUFFIXES, Listing, list_filelist, list_folder, list_imagefolder

__all__ = ["FORMATS", "IMAGE_FORMATS", "detect_format", "load_data", "load_data_section", "image_listings"]

FORMATS = ("auto", "digits", "digit_scenes", "colour_digits", "font_digits", "imagefolder", "filelist", "packed",
           "shards", "npz", "idx", "cifar")
IMAGE_FORMATS = ("imagefolder", "filelist", "packed", "shards")
_CIFAR_DIRS = ("cifar-10-batches-py", "cifar-100-python")
_LOOKED_FOR = (
    "a .npz file with x_train; a folder with train-images-idx3-ubyte[.gz] (idx); CIFAR data_batch_1 or "
    "train + meta pickles (cifar); image files or class sub-folders of images (imagefolder); a .csv/.tsv/.txt "
    "list of path[,label] rows (filelist); selfsup prepare's output (packed); .tar shards (shards)"
)


def _cifar_dir(folder: Path) -> Path | None:
    """``folder`` itself or its ``cifar-10-batches-py`` / ``cifar-100-python`` child, if it holds CIFAR files."""
    for cand in (folder, *(folder / d for d in _CIFAR_DIRS)):
        if cand.is_dir() and cifar_variant(cand) is not None:
            return cand
    return None


def detect_format(path: Path) -> str:
    """Guess the format of ``path`` (one of :data:`FORMATS` but auto, digits and digit_scenes; DataError if none fits)."""
    if path.is_file():
        if path.suffix.lower() == ".npz":
            return "npz"
        if path.suffix.lower() in FILELIST_SUFFIXES:
            return "filelist"
        if path.suffix.lower() == ".tar":
            return "shards"
        if is_packed(path):
            return "packed"
        raise DataError(f"cannot tell the format of file {path}; looked for {_LOOKED_FOR}")
    if is_packed(path):
        return "packed"
    if _cifar_dir(path) is not None:
        return "cifar"
    if ("train", "images") in find_idx_files(path):
        return "idx"
    if looks_like_imagefolder(path):
        return "imagefolder"
    if looks_like_shards(path):
        return "shards"
    raise DataError(f"cannot tell the format of folder {path}; looked for {_LOOKED_FOR}; or pass format=...")


def image_listings(path: Path, fmt: str, labels: str = "auto", classes: list[str] | None = None,
                   index_dir: Path | None = None) -> tuple[Listing, Listing | None, list[str]]:
    """The train and test listings (test may be None) of an encoded-image source, and notes.
    ``classes`` (a train split's class names) maps the labels of a separate test source."""
    if fmt == "filelist":
        if not path.is_file():
            raise DataError(f"format='filelist' needs a .csv/.tsv/.txt file, but {path} is a folder; point to the file")
        return list_filelist(path, classes), None, []
    if fmt == "packed":
        return list_packed(path)
    if fmt == "shards":
        return list_shards(path, index_dir=index_dir)
    if not path.is_dir():
        raise DataError(f"format='imagefolder' needs a folder, but {path} is a file; point to its folder")
    if classes is not None:  # a separate test folder: the folder itself is the split
        return list_folder(path, labels, {c: i for i, c in enumerate(classes)}, "test"), None, []
    return list_imagefolder(path, labels)


def load_data(
    path: str | Path | None = None,
    format: str = "auto",
    image_size: int | None = None,
    on_corrupt: str = "skip",
    num_workers: int | None = None,
    mmap: bool = True,
    cifar_labels: str = "fine",
    cache: str = "ram",
    ram_budget_mb: float = DEFAULT_RAM_BUDGET_MB,
    labels: str = "auto",
    test_path: str | Path | None = None,
    index_dir: str | Path | None = None,
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
        num_workers: decoding threads for image files (default ``min(8, cpu_count)``).
        mmap: memory-map uncompressed npz members and plain IDX files.
        cifar_labels: ``"fine"`` or ``"coarse"`` labels for CIFAR-100.
        cache: for encoded images: ``"none"`` streams at full resolution, ``"ram"`` decodes once at
            ``image_size``, ``"auto"`` picks RAM when the decoded set fits ``ram_budget_mb``.
            (``"ram"`` by default here, as before; the CLI's default is ``auto``.) Array formats
            ignore it: they are in RAM or memory-mapped already.
        labels: ImageFolder trees: ``"auto"``, ``"folders"`` (class folders) or ``"none"`` (every
            image at any depth, unlabeled).
        test_path: a separate test split in any encoded-image format (e.g. ``val.csv``).
        index_dir: where the image index is cached (default ``$SELFSUP_CACHE_DIR/index``).
    """
    if format not in FORMATS:
        raise DataError(f"unknown data format {format!r}; use one of {', '.join(FORMATS)}")
    if on_corrupt not in ("skip", "error"):
        raise DataError(f"on_corrupt must be 'skip' or 'error', got {on_corrupt!r}")
    if image_size is not None:
        if not isinstance(image_size, numbers.Integral) or isinstance(image_size, bool) or image_size < 1:
            raise DataError(f"image_size must be a positive integer or None, got {image_size!r}")
        image_size = int(image_size)
    if format == "digit_scenes":
        if path is not None:
            raise DataError(f"format='digit_scenes' is generated by the package and takes no path (got {path}); "
                            f"drop the path")
        return load_digit_scenes(32 if image_size is None else image_size)
    if format == "colour_digits":
        if path is not None:
            raise DataError(f"format='colour_digits' is generated by the package and takes no path (got {path}); "
                            f"drop the path")
        return load_colour_digits_splits(32 if image_size is None else image_size)
    if format == "font_digits":
        if path is not None:
            raise DataError(f"format='font_digits' is generated by the package and takes no path (got {path}); "
                            f"drop the path")
        return load_font_digits_splits(32 if image_size is None else image_size)
    if format == "digits" or path is None or (str(path) == "digits" and not Path("digits").exists()):
        if path is not None and str(path) != "digits":
            raise DataError(f"format='digits' is the built-in dataset and takes no path (got {path}); drop the path")
        return load_digits_splits(32 if image_size is None else image_size)
    p = Path(path).expanduser()
    reject_remote(str(path))
    if not p.exists():
        raise DataPathError(f"dataset path {p} does not exist; check data.path (or leave it empty for digits)")
    fmt = detect_format(p) if format == "auto" else format
    if fmt == "npz":
        if not p.is_file():
            raise DataError(f"format='npz' needs a .npz file, but {p} is a folder; point to the file")
        return load_npz(p, image_size, mmap)
    if fmt in IMAGE_FORMATS:
        idir = Path(index_dir) if index_dir else None
        train, test, notes = image_listings(p, fmt, labels, index_dir=idir)
        if test_path is not None:
            tp = Path(test_path).expanduser()
            if not tp.exists():
                raise DataPathError(f"test path {tp} does not exist; check data.test_path")
            test, _, _ = image_listings(tp, detect_format(tp), labels, train.classes, idir)
            notes = [n for n in notes if "test split is None" not in n]
        return load_image_splits(train, test, p.resolve().stem if p.is_file() else p.resolve().name, image_size,
                                 on_corrupt, cache, ram_budget_mb, idir, num_workers, notes)
    if not p.is_dir():
        raise DataError(f"format='{fmt}' needs a folder, but {p} is a file; point to its folder")
    if fmt == "idx":
        return load_idx(p, image_size, mmap)
    if fmt == "cifar":
        folder = _cifar_dir(p)
        if folder is None:
            raise DataError(f"{p} holds no CIFAR files (data_batch_1.., or train + meta); check the path")
        return load_cifar(folder, image_size, cifar_labels)
    raise DataError(f"unknown data format {fmt!r}; use one of {', '.join(FORMATS)}")  # unreachable: FORMATS checked


def load_data_section(data) -> DataSplits:
    """:func:`load_data` with the fields of a recipe's ``data`` section (:class:`selfsup.config.DataConfig`)."""
    return load_data(data.path, format=data.format, image_size=data.image_size, on_corrupt=data.on_corrupt,
                     cache=data.cache, ram_budget_mb=data.ram_budget_mb, labels=data.labels, test_path=data.test_path,
                     index_dir=data.index_dir)
