"""The image index: every image's oriented size, EXIF orientation, decoder and grayscale flag,
read once from file headers (no pixel decode), in parallel, and cached.

Full-resolution crops need each image's true size *before* the batch is decoded (crop boxes are
drawn in the main process, cookbook "Speeding up training"), so the index is built up front. For
ImageNet-1k that is 1.28 M header reads; the result is cached in ``index_dir`` (default
``$SELFSUP_CACHE_DIR``, else ``~/.cache/selfsup``) under a hash of the source's path, and
revalidated on the next run by each file's size and modification time: unchanged files are not
read again, new or changed ones are.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .decode import DECODE_ERRORS, Header, decode_error, read_header
from .readers import NameTable, Reader

__all__ = ["ImageIndex", "build_index", "default_index_dir", "save_npz_atomic", "INDEX_VERSION"]

INDEX_VERSION = 1
_FIELDS = ("width", "height", "orient", "fast_jpeg", "gray")


@dataclass
class ImageIndex:
    """Per-image header facts, as arrays (see the module docstring)."""

    width: np.ndarray  # int32 [N], after EXIF orientation
    height: np.ndarray  # int32 [N]
    orient: np.ndarray  # uint8 [N], EXIF orientation 1..8
    fast_jpeg: np.ndarray  # bool [N]: baseline RGB/L JPEG, decoded by torchvision
    gray: np.ndarray  # bool [N]

    def __len__(self) -> int:
        return len(self.width)

    def header(self, i: int) -> Header:
        return Header(int(self.width[i]), int(self.height[i]), int(self.orient[i]), bool(self.fast_jpeg[i]),
                      bool(self.gray[i]))

    def select(self, keep: np.ndarray) -> "ImageIndex":
        return ImageIndex(*(getattr(self, f)[keep] for f in _FIELDS))

    @classmethod
    def of(cls, headers: list[Header]) -> "ImageIndex":
        a = np.asarray([tuple(h) for h in headers], dtype=np.int64).reshape(-1, 5)
        return cls(a[:, 0].astype(np.int32), a[:, 1].astype(np.int32), a[:, 2].astype(np.uint8),
                   a[:, 3].astype(bool), a[:, 4].astype(bool))


def default_index_dir() -> Path:
    """``$SELFSUP_CACHE_DIR`` or ``$XDG_CACHE_HOME/selfsup`` or ``~/.cache/selfsup``, plus ``/index``."""
    base = os.environ.get("SELFSUP_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "selfsup"
    return Path(base) / "index"


def _cache_file(key: str, index_dir: Path) -> Path:
    return index_dir / f"{hashlib.sha1(key.encode('utf-8', 'surrogateescape')).hexdigest()[:20]}.npz"


def _load_cache(path: Path) -> dict[str, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as z:
            if int(z["version"]) != INDEX_VERSION:
                return None
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, KeyError, EOFError):
        return None  # a missing or damaged cache is rebuilt


def save_npz_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write a cache file atomically (temp file + rename); a read-only cache directory just means no cache."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".npz")
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except OSError:
        pass


def build_index(reader: Reader, names: NameTable, stamps: np.ndarray, key: str, index_dir: Path | None = None,
                workers: int | None = None, use_cache: bool = True) -> tuple[ImageIndex, list[tuple[int, str]]]:
    """Headers of every image of ``reader`` and the images whose header cannot be read.

    ``names`` and ``stamps`` (``int64 [N, 2]``, e.g. file size and mtime in ns) identify each image
    for the cache under ``key``; entries whose name and stamp match the cache are reused. Returns
    the index (unreadable images get zeros) and ``[(i, "error"), ...]`` for unreadable ones.
    """
    n = len(reader)
    stamps = np.asarray(stamps, dtype=np.int64).reshape(n, 2)
    index_dir = default_index_dir() if index_dir is None else Path(index_dir)
    cache_path = _cache_file(key, index_dir)
    fields = np.zeros((n, 5), dtype=np.int64)
    errors: dict[int, str] = {}
    todo = np.ones(n, dtype=bool)
    cached = _load_cache(cache_path) if use_cache else None
    if cached is not None:
        old = NameTable(cached["names_blob"], cached["names_offsets"])
        pos = {name: j for j, name in enumerate(old)} if old != names else None
        old_err = NameTable(cached["err_blob"], cached["err_offsets"])
        for i in range(n):
            j = i if pos is None else pos.get(names[i])
            if j is not None and np.array_equal(cached["stamps"][j], stamps[i]):
                todo[i] = False
                fields[i] = cached["fields"][j]
                if not cached["ok"][j]:
                    errors[i] = old_err[j]

    def work(i: int) -> None:
        try:
            with reader.open(i) as f:
                fields[i] = tuple(read_header(f))
        except DECODE_ERRORS as e:
            errors[i] = decode_error(e)

    rows = np.flatnonzero(todo).tolist()
    workers = workers or min(32, 4 * (os.cpu_count() or 1))  # header reads wait on I/O, not on the CPU
    if len(rows) > 64 and workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(work, rows, chunksize=64))
    else:
        for i in rows:
            work(i)
    if rows and use_cache:
        ok = np.ones(n, dtype=bool)
        ok[list(errors)] = False
        err = NameTable.of([errors.get(i, "") for i in range(n)])
        save_npz_atomic(cache_path, {"version": np.int64(INDEX_VERSION), "names_blob": names.blob,
                                 "names_offsets": names.offsets, "stamps": stamps, "fields": fields, "ok": ok,
                                 "err_blob": err.blob, "err_offsets": err.offsets})
    index = ImageIndex(fields[:, 0].astype(np.int32), fields[:, 1].astype(np.int32), fields[:, 2].astype(np.uint8),
                       fields[:, 3].astype(bool), fields[:, 4].astype(bool))
    return index, sorted(errors.items())
