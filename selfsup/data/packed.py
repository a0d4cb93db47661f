"""The packed format: ``selfsup prepare``'s output, every image re-encoded once into one file.

A pack is a folder holding ``selfsup-pack.json`` (format version, source, ``max_side``, JPEG
quality, channels, class names, per-split counts) and, per split (``train``, and ``test`` when the
source has one), ``<split>.bin`` (the re-encoded JPEGs, concatenated) and ``<split>.index.npz``
(int64 ``offsets`` and ``lengths`` into the ``.bin``, int32 ``width`` / ``height``, int64
``labels`` when labeled, and the source names as a :class:`~selfsup.data.readers.NameTable`).

Why this storage (the FFCV layout) rather than litdata's chunked format: the ``.bin`` is one
memory-mapped file and the index a few numpy arrays, so reading image ``i`` is one slice, O(1)
for any ``i``. The loader's per-epoch permutation is then applied exactly and a mid-epoch resume
replays exactly the remaining steps, which chunked formats, made for streaming from object
stores, only approximate (they shuffle chunks, then within a buffer). It needs no dependency
beyond numpy, and hot images stay in the OS page cache, shared by every loader worker. Images
are stored upright (EXIF orientation applied), already converted to RGB or L, longer side at
most ``max_side``, so the index is known without reading a header and decoding is the fast path.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
import time
import zipfile
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image

from .decode import DECODE_ERRORS, decode, decode_error, draft_factor
from .errors import DataError, DataPathError
from .index import ImageIndex
from .readers import NameTable, Reader
from .sources import Listing

__all__ = ["PACK_FILE", "PACK_VERSION", "PackedReader", "write_packed", "is_packed", "list_packed"]

PACK_FILE = "selfsup-pack.json"
PACK_VERSION = 1
_SPLITS = ("train", "test")
_BATCH = 32  # images per pool task


class PackedReader:
    """The Reader of one split of a pack: image ``i`` is ``bin[offsets[i] : offsets[i] + lengths[i]]``.

    The ``.bin`` is memory-mapped on first use in each process; pickling (to loader workers)
    carries the arrays but not the mapping. ``rows`` are the images' positions in the pack
    (kept by :meth:`subset`, for messages)."""

    def __init__(self, path: str | Path, offsets: np.ndarray, lengths: np.ndarray, names: NameTable,
                 rows: np.ndarray | None = None) -> None:
        self.path = Path(path)
        self.offsets = np.asarray(offsets, dtype=np.int64)
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.names = names
        self.rows = np.arange(len(self.offsets), dtype=np.int64) if rows is None else np.asarray(rows, np.int64)
        if not len(self.offsets) == len(self.lengths) == len(names) == len(self.rows):
            raise DataError(f"{self.path}: offsets, lengths and names differ in length; re-run selfsup prepare")
        self._map: np.ndarray | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_map": None}

    def _data(self) -> np.ndarray:
        if self._map is None:
            empty = os.path.getsize(self.path) == 0  # mmap refuses an empty file
            self._map = np.zeros(0, np.uint8) if empty else np.memmap(self.path, dtype=np.uint8, mode="r")
        return self._map

    def __len__(self) -> int:
        return len(self.offsets)

    def read(self, i: int) -> memoryview:
        start = int(self.offsets[i])
        return memoryview(self._data()[start : start + int(self.lengths[i])])

    def open(self, i: int) -> BinaryIO:
        return io.BytesIO(self.read(i))

    def name(self, i: int) -> str:
        return f"{self.path}#{int(self.rows[i])} ({self.names[i]})"

    def subset(self, keep: np.ndarray) -> "PackedReader":
        return PackedReader(self.path, self.offsets[keep], self.lengths[keep], self.names.select(keep), self.rows[keep])


# -- writing ----------------------------------------------------------------------------------------
class _Encoder:
    """Decode image ``i`` of a split, shrink it to ``max_side``, re-encode it as JPEG."""

    def __init__(self, reader: Reader, index: ImageIndex, channels: int, max_side: int, quality: int) -> None:
        self.reader, self.index, self.channels, self.max_side, self.quality = reader, index, channels, max_side, quality

    def one(self, i: int) -> tuple[bytes, int, int] | str:
        """``(jpeg, width, height)``, or the one-line error of an unreadable image."""
        head = self.index.header(i)
        w, h = head.width, head.height
        scale = min(1.0, self.max_side / max(w, h, 1))
        tw, th = max(1, round(w * scale)), max(1, round(h * scale))
        try:
            # libjpeg's DCT scaling, only while the decode stays >= 2x the target size: measured on a
            # 2400x1800 JPEG -> 512, 0.38/255 mean difference from a full-resolution decode (the q90
            # re-encode itself costs 2.0), and ~1.5-2x faster; smaller images are decoded in full
            x = decode(self.reader.read(i), head, self.channels, draft_factor(min(w / tw, h / th) / 2))
            arr = x.permute(1, 2, 0).numpy()
            img = Image.fromarray(arr[:, :, 0] if self.channels == 1 else arr, "L" if self.channels == 1 else "RGB")
            if img.size != (tw, th):
                img = img.resize((tw, th), Image.Resampling.LANCZOS)
            buf = io.BytesIO()
            img.save(buf, "JPEG", quality=self.quality)
        except DECODE_ERRORS as e:
            return decode_error(e)
        return buf.getvalue(), tw, th

    def many(self, rows: list[int]) -> list[tuple[bytes, int, int] | str]:
        return [self.one(i) for i in rows]


def _ordered(pool: Executor, fn: Callable[[list[int]], list], n: int, window: int) -> Iterator:
    """``fn`` over ``range(n)`` in batches, results in order, at most ``window`` batches in flight."""
    pending: deque = deque()
    for start in range(0, n, _BATCH):
        pending.append(pool.submit(fn, list(range(start, min(n, start + _BATCH)))))
        if len(pending) >= window:
            yield from pending.popleft().result()
    while pending:
        yield from pending.popleft().result()


def _fsync_write(path: Path, write: Callable[[BinaryIO], None]) -> None:
    with open(path, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())


def _pack_split(split, channels: int, max_side: int, quality: int, workers: int, folder: Path, name: str,
                src: Path, on_corrupt: str, bad: list[str]) -> tuple[int, int]:
    """Write ``<name>.bin`` and ``<name>.index.npz`` of ``split`` into ``folder``: (images, bytes)."""
    enc = _Encoder(split.reader, split.index, channels, max_side, quality)
    rows, keep, total = [], np.zeros(len(split), dtype=bool), 0  # rows: (offset, length, width, height)
    # Threads, not processes: the JPEG decoders (torchvision, PIL) and PIL's resize release the GIL
    # (measured: a Python thread beside them wakes every 0.6 ms, vs 6 ms beside pure-Python code), and
    # are ~98% of the time (1600x1200 -> 512: decode 13 ms, Lanczos 36 ms, q90 save 0.8 ms). On the
    # shared 2-core dev box 200 such images took 8.2 s on 1 thread, 8.5-8.8 s on 2 threads, 8.3-8.4 s
    # on 2 forked processes: no difference, as the other core was busy (2 processes did not scale
    # either). Processes would also copy the reader into each worker and pickle every result.
    with open(folder / f"{name}.bin", "wb") as f, ThreadPoolExecutor(max_workers=workers) as pool:
        for i, r in enumerate(_ordered(pool, enc.many, len(split), 4 * workers)):
            if isinstance(r, str):
                what = split.reader.name(i)
                if on_corrupt == "error":
                    raise DataError(f"cannot decode image {what} ({r}); fix or delete it, or pass --on-corrupt skip "
                                    f"(Python: on_corrupt='skip') to skip it")
                bad.append(f"{what}: {r}")
                continue
            data, w, h = r
            f.write(data)
            rows.append((total, len(data), w, h))
            keep[i] = True
            total += len(data)
        f.flush()
        os.fsync(f.fileno())
    if not keep.any():
        raise DataError(f"every image of the {name} split of {src} is unreadable ({bad[-1]}); check the files")
    prefix = f"{src if src.is_dir() else src.parent}{os.sep}"  # names relative to the source folder
    names = NameTable.of([n[len(prefix):] if n.startswith(prefix) else n
                          for n in (split.reader.name(i) for i in np.flatnonzero(keep))])
    table = np.asarray(rows, dtype=np.int64).reshape(-1, 4)
    arrays = {"offsets": table[:, 0], "lengths": table[:, 1], "width": table[:, 2].astype(np.int32),
              "height": table[:, 3].astype(np.int32), "names_blob": names.blob, "names_offsets": names.offsets}
    if split.labels is not None:
        arrays["labels"] = split.labels.numpy()[keep].astype(np.int64)
    _fsync_write(folder / f"{name}.index.npz", lambda fz: np.savez(fz, **arrays))
    return int(keep.sum()), total


def _check_out(src: Path, out: Path, overwrite: bool) -> None:
    if out.is_file() or (out.exists() and not out.is_dir()):
        raise DataError(f"output {out} is a file; give a new or empty folder as OUT")
    rs, ro = src.resolve(), out.resolve()
    if ro == rs or ro in rs.parents:
        raise DataError(f"output {out} contains the source {src}; choose an OUT outside it")
    if out.is_dir() and any(out.iterdir()):
        if not is_packed(out):
            raise DataError(f"output folder {out} is not empty and holds no pack; choose a new or empty folder")
        if not overwrite:
            raise DataError(f"output folder {out} already holds a pack; pass --overwrite (Python: overwrite=True) to "
                            f"replace it, or choose another OUT")


def write_packed(src: str | Path, out: str | Path, max_side: int = 512, quality: int = 90, labels: str = "auto",
                 workers: int | None = None, on_corrupt: str = "skip", overwrite: bool = False,
                 log: Callable[[str], None] = print) -> Path:
    """Pack the encoded images of ``src`` (ImageFolder tree, file list or shards) into the folder
    ``out`` (see the module docstring): each image decoded (EXIF orientation applied), its longer
    side shrunk to at most ``max_side`` (Lanczos; never enlarged), re-encoded as JPEG at
    ``quality``. Unreadable images are skipped and reported (``on_corrupt="skip"``) or stop the
    run naming the file (``"error"``). ``out`` is written atomically; an existing pack there is
    replaced only with ``overwrite=True``. Returns ``out``."""
    from .formats import detect_format, image_listings
    from .imagefolder import index_listing

    t0 = time.perf_counter()
    if isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 1:
        raise DataError(f"max_side must be a positive integer, got {max_side!r}; e.g. 512")
    if isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100:
        raise DataError(f"quality must be an integer in 1..100, got {quality!r}; e.g. 90")
    if on_corrupt not in ("skip", "error"):
        raise DataError(f"on_corrupt must be 'skip' or 'error', got {on_corrupt!r}")
    src, out = Path(src).expanduser(), Path(out).expanduser()
    if not src.exists():
        raise DataPathError(f"source {src} does not exist; give an image folder, a file list or .tar shards")
    _check_out(src, out, overwrite)
    fmt = detect_format(src)
    if fmt not in ("imagefolder", "filelist", "shards"):
        raise DataError(f"{src} is {fmt} data; selfsup prepare packs encoded images (an image folder, a file list or "
                        f".tar shards), {fmt} data loads directly")
    train, test, _ = image_listings(src, fmt, labels)
    if not workers:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    splits, bad = {}, []
    for name, listing in zip(_SPLITS, (train, test)):
        if listing is not None:
            splits[name], dropped = index_listing(listing, on_corrupt, threads=workers)
            bad += dropped
    channels = 1 if all(bool(s.index.gray.all()) for s in splits.values()) else 3
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        counts, sizes = {}, {}
        for name, split in splits.items():
            counts[name], sizes[name] = _pack_split(split, channels, max_side, quality, workers, tmp, name, src,
                                                    on_corrupt, bad)
        meta = {"format": "selfsup-pack", "version": PACK_VERSION, "source": str(src.resolve()),
                "source_format": fmt, "max_side": max_side, "quality": quality, "channels": channels,
                "classes": train.classes, "splits": counts, "bytes": sizes}
        _fsync_write(tmp / PACK_FILE, lambda f: f.write(json.dumps(meta, indent=1).encode()))
        old = None
        if out.exists():  # an empty folder, or a pack being replaced (checked above)
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
            os.replace(out, old / "pack")
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if bad:
        log(f"skipped {len(bad)} unreadable images (first: {bad[0]}); --on-corrupt error stops at the first instead")
    parts = " + ".join(f"{n} {k}" for k, n in counts.items())
    log(f"packed {parts} images ({len(bad)} skipped) from {src} into {out}: {sum(sizes.values()) / 2**20:.1f} MB, "
        f"{channels} channel{'s' if channels > 1 else ''}, max side {max_side}, quality {quality}, "
        f"{time.perf_counter() - t0:.1f} s")
    return out


# -- reading ----------------------------------------------------------------------------------------
def is_packed(path: str | Path) -> bool:
    """Whether ``path`` is a pack: a folder holding ``selfsup-pack.json``, or that file."""
    path = Path(path)
    return (path.is_dir() and (path / PACK_FILE).is_file()) or (path.is_file() and path.name == PACK_FILE)


def _redo(what: str) -> str:
    return f"{what}; re-run selfsup prepare to rebuild the pack"


def _load_split(folder: Path, name: str, count: int, classes: list[str] | None, channels: int) -> Listing:
    bin_path, idx_path = folder / f"{name}.bin", folder / f"{name}.index.npz"
    for p in (bin_path, idx_path):
        if not p.is_file():
            raise DataError(_redo(f"pack file {p} is missing"))
    try:
        with np.load(idx_path, allow_pickle=False) as z:
            a = {k: z[k] for k in ("offsets", "lengths", "width", "height", "names_blob", "names_offsets")}
            a["labels"] = z["labels"] if "labels" in z.files else None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(_redo(f"pack index {idx_path} is damaged ({decode_error(e)})")) from None
    size = bin_path.stat().st_size
    off, ln, w, h = a["offsets"], a["lengths"], a["width"], a["height"]
    if any(x.ndim != 1 or len(x) != count or x.dtype.kind not in "iu" for x in (off, ln, w, h)):
        raise DataError(_redo(f"pack index {idx_path} does not hold {count} int offsets, lengths and sizes"))
    off, ln = off.astype(np.int64), ln.astype(np.int64)
    if count and (off.min() < 0 or ln.min() < 1 or bool((off > size - ln).any())):
        raise DataError(_redo(f"{bin_path} is {size} bytes but {idx_path} points past its end (truncated?)"))
    if count and (w.min() < 1 or h.min() < 1):
        raise DataError(_redo(f"pack index {idx_path} has image sizes below 1 pixel"))
    try:
        names = NameTable(a["names_blob"], a["names_offsets"])
        ok = len(names) == count and bool((np.diff(names.offsets) >= 0).all()) and names.offsets[0] == 0
    except (ValueError, TypeError):
        ok = False
    if not ok:
        raise DataError(_redo(f"pack index {idx_path} has a damaged name table"))
    labels = a["labels"]
    if labels is not None:
        bound = len(classes) if classes is not None else np.iinfo(np.int64).max
        if (labels.shape != (count,) or labels.dtype.kind not in "iu"
                or (count and not 0 <= labels.min() <= labels.max() < bound)):
            raise DataError(_redo(f"pack index {idx_path} has labels that do not fit its {count} images and classes"))
        labels = labels.astype(np.int64)
    index = ImageIndex(w.astype(np.int32), h.astype(np.int32), np.ones(count, np.uint8), np.ones(count, bool),
                       np.full(count, channels == 1))
    reader = PackedReader(bin_path, off, ln, names)
    return Listing(reader, names, np.stack([off, ln], axis=1), f"packed:{bin_path.resolve()}", labels, classes, index)


def list_packed(path: str | Path) -> tuple[Listing, Listing | None, list[str]]:
    """The train and test (or None) listings of the pack at ``path`` (folder or its json), and notes."""
    path = Path(path)
    folder = path.parent if path.is_file() else path
    meta_path = folder / PACK_FILE
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataPathError(_redo(f"{meta_path} does not exist")) from None
    except (OSError, ValueError) as e:
        raise DataError(_redo(f"{meta_path} is unreadable ({decode_error(e)})")) from None
    if not isinstance(meta, dict) or meta.get("format") != "selfsup-pack":
        raise DataError(_redo(f"{meta_path} is not a selfsup pack description"))
    if meta.get("version") != PACK_VERSION:
        raise DataError(_redo(f"{meta_path} is pack version {meta.get('version')!r}, this selfsup reads version "
                              f"{PACK_VERSION}"))
    splits, classes, channels = meta.get("splits"), meta.get("classes"), meta.get("channels")
    if (not isinstance(splits, dict) or not isinstance(splits.get("train"), int) or channels not in (1, 3)
            or not set(splits) <= set(_SPLITS) or not all(isinstance(v, int) and v > 0 for v in splits.values())
            or not (classes is None or (isinstance(classes, list) and all(isinstance(c, str) for c in classes)))):
        raise DataError(_redo(f"{meta_path} has damaged splits, channels or classes"))
    train = _load_split(folder, "train", splits["train"], classes, channels)
    test = _load_split(folder, "test", splits["test"], classes, channels) if "test" in splits else None
    notes = [f"packed by selfsup prepare from {meta.get('source')} (max side {meta.get('max_side')}, "
             f"quality {meta.get('quality')})"]
    if test is None:
        notes.append(f"the pack {folder} has no test split: test split is None (evaluation needs one; or set "
                     f"data.test_path)")
    return train, test, notes
