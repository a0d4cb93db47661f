"""Datasets of encoded image files (ImageFolder trees, file lists, packed files, tar shards) as
:class:`~selfsup.data.DataSplits`, streamed at full resolution or cached in RAM.

``cache``:

* ``"none"``: stream (:class:`~selfsup.data.stream.StreamSplit`): crops from the full-resolution
  image, memory bounded by the loader's workers x prefetch, not by the dataset;
* ``"ram"``: decode once into uint8 arrays, shorter side resized to ``image_size`` and centre
  cropped (the fast path for small sets; crops then come from that square);
* ``"auto"``: RAM when the decoded set fits ``ram_budget_mb``, else streaming.

Channels: grayscale (1) when *every* image of the dataset is grayscale, else RGB (3). Images
whose header cannot be read are skipped with a warning naming the first one
(``on_corrupt="skip"``) or stop the load naming the file (``on_corrupt="error"``).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np

from .arrays import DataSplits
from .errors import DataError, DataWarning
from .decode import unreadable
from .index import build_index
from .sources import IMAGE_SUFFIXES, Listing, list_imagefolder
from .stream import StreamSplit

__all__ = ["IMAGE_EXTENSIONS", "DEFAULT_IMAGEFOLDER_SIZE", "CACHE_MODES", "load_imagefolder", "load_image_splits",
           "looks_like_imagefolder", "index_listing"]

IMAGE_EXTENSIONS = IMAGE_SUFFIXES
DEFAULT_IMAGEFOLDER_SIZE = 64
CACHE_MODES = ("auto", "ram", "none")
DEFAULT_RAM_BUDGET_MB = 2048


def looks_like_imagefolder(folder: Path) -> bool:
    """Whether ``folder`` holds image files directly or in its sub-folders (stops at the first one found)."""
    for _, _, filenames in os.walk(folder, followlinks=True):
        if any(not f.startswith(".") and Path(f).suffix.lower() in IMAGE_EXTENSIONS for f in filenames):
            return True
    return False


def index_listing(listing: Listing, on_corrupt: str, index_dir: Path | None = None, threads: int | None = None,
                  image_size: int = DEFAULT_IMAGEFOLDER_SIZE) -> tuple[StreamSplit, list[str]]:
    """Index ``listing`` (its own index, or the file headers, cached) and drop unreadable images:
    the split (channels not yet decided) and ``["path: error", ...]`` for the dropped ones."""
    if listing.index is not None:
        index, bad = listing.index, []
    else:
        index, bad = build_index(listing.reader, listing.names, listing.stamps, listing.key, index_dir, threads)
    reader, labels = listing.reader, listing.labels
    messages = [f"{reader.name(i)}: {err}" for i, err in bad]
    if bad and on_corrupt == "error":
        i, err = bad[0]
        raise unreadable(reader.name(i), err)
    if bad:
        keep = np.ones(len(index), dtype=bool)
        keep[[i for i, _ in bad]] = False
        if not keep.any():
            raise DataError(f"every image of {reader.name(0)}'s split is unreadable ({bad[0][1]}); check the files")
        reader, index = reader.subset(keep), index.select(keep)
        labels = labels[keep] if labels is not None else None
    split = StreamSplit(reader, index, image_size, labels, listing.classes, on_corrupt,
                        threads=threads or min(8, os.cpu_count() or 1), channels=3)
    return split, messages


def load_image_splits(train: Listing, test: Listing | None, name: str, image_size: int | None = None,
                      on_corrupt: str = "skip", cache: str = "auto", ram_budget_mb: float = DEFAULT_RAM_BUDGET_MB,
                      index_dir: Path | None = None, threads: int | None = None,
                      notes: list[str] | None = None) -> DataSplits:
    """Index the ``train`` (and ``test``) listings and return streamed or RAM-cached splits (see the
    module docstring)."""
    size = DEFAULT_IMAGEFOLDER_SIZE if image_size is None else int(image_size)
    if size < 1:
        raise DataError(f"image_size must be a positive integer, got {image_size}; e.g. image_size=64")
    if cache not in CACHE_MODES:
        raise DataError(f"data.cache must be one of {', '.join(CACHE_MODES)}, got {cache!r}")
    notes = list(notes or [])
    splits, bad = [], []
    for listing in (train, test):
        if listing is None:
            splits.append(None)
            continue
        split, dropped = index_listing(listing, on_corrupt, index_dir, threads, size)
        splits.append(split)
        bad += dropped
    if bad:
        count = f"skipped {len(bad)} unreadable images"
        warnings.warn(f"{count} (first: {bad[0]}); set data.on_corrupt=error (Python: on_corrupt='error') to stop "
                      f"instead", DataWarning, stacklevel=3)
        notes.append(count)
    present = [s for s in splits if s is not None]
    channels = 1 if all(bool(s.index.gray.all()) for s in present) else 3
    for s in present:
        s.channels = channels
    if train.classes is None and train.labels is None:
        notes.append("no class folders: unlabeled")
    decoded = sum(len(s) for s in present) * channels * size * size
    in_ram = cache == "ram" or (cache == "auto" and decoded <= ram_budget_mb * 2**20)
    if in_ram:
        arrays = []
        for s in present:
            array, dropped = s.to_ram()
            arrays.append(array)
            if dropped:
                warnings.warn(f"skipped {len(dropped)} unreadable images (first: {dropped[0]}); set data.on_corrupt="
                              f"error (Python: on_corrupt='error') to stop instead", DataWarning, stacklevel=3)
                notes.append(f"skipped {len(dropped)} unreadable images")
        ram = iter(arrays)
        splits = [next(ram) if s is not None else None for s in splits]
        if cache == "auto":
            notes.append(f"cached in RAM at {size}px ({decoded / 2**20:.0f} MB <= data.ram_budget_mb; data.cache=none "
                         f"streams full-resolution crops)")
    else:
        notes.append(f"streamed at full resolution, {size}px views")
    num_classes = len(train.classes) if train.classes is not None else None
    return DataSplits(train=splits[0], test=splits[1], name=name, num_classes=num_classes, notes=notes)


def load_imagefolder(root: Path, image_size: int | None = None, on_corrupt: str = "skip",
                     num_workers: int | None = None, cache: str = "ram", labels: str = "auto",
                     index_dir: Path | None = None, ram_budget_mb: float = DEFAULT_RAM_BUDGET_MB) -> DataSplits:
    """Load an ImageFolder tree: ``root/train`` (+ ``root/test`` or ``root/val``), class folders or
    (``labels="none"``, or loose images) unlabeled images at any depth. ``cache`` as in the module
    docstring (``"ram"`` here by default, the Python API's historical behaviour; the CLI's default
    is ``auto``)."""
    root = Path(root)
    train, test, notes = list_imagefolder(root, labels)
    return load_image_splits(train, test, root.resolve().name, image_size, on_corrupt, cache, ram_budget_mb,
                             index_dir, num_workers, notes)
