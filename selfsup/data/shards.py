"""webdataset ``.tar`` shards as a streamed image source, read with random access.

Layout (webdataset's): each tar holds samples; a sample is the members sharing a key, the member
path up to the first dot of its basename (``dir/000123.jpg``, ``dir/000123.cls``,
``dir/000123.json`` are sample ``dir/000123``). Its image is the member whose extension is one of
:data:`IMAGE_EXTS`, by that preference order when it has several (``jpg`` first; ``seg.png`` and
other multi-part extensions are not the image). Its label is a ``.cls`` member (the class index as
text). Every sample labeled gives int64 labels (no class names: the class count is the largest
label + 1), none labeled gives an unlabeled set, some but not all is an error. Samples without an
image member (metadata-only ones are common) are skipped and counted in the notes.

Paths: one ``.tar`` file; a folder whose top level holds ``*.tar`` (not searched recursively, so
unrelated archives deeper down are not swept in); or a folder with ``train/`` and ``test/`` (or
``val/``) sub-folders of shards. Shards are taken in sorted name order, samples in tar order.

Design: selfsup reads LOCAL shards with random access. Python's :mod:`tarfile` lists each member's
header once, giving its data offset and size; the member table of every shard is cached as an npz
(``allow_pickle=False``) in :func:`~selfsup.data.index.default_index_dir`, keyed by the shard's
path and revalidated by its size and mtime, and the image headers go through
:func:`~selfsup.data.index.build_index` (names ``"<shard>#<member>"``, stamps (member offset, shard
mtime)), so a later run only stats the shards. Unlike webdataset's own streaming reader (shards in
order plus a shuffle buffer: approximate shuffling, resume at shard granularity), every sample is
addressable, so selfsup shuffles exactly over all samples and resumes mid-epoch exactly. The cost
is a seek per sample: fine on local disks and network filesystems. Remote or piped shards
(``pipe:``, ``http://``, ``s3://``) and brace patterns (``{000000..000099}``) are not supported;
compressed ``.tar.gz`` shards cannot be read with random access either (decompress them).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import tarfile
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .errors import DataError
from .index import save_npz_atomic, default_index_dir
from .readers import NameTable
from .sources import Listing, split_folders

__all__ = ["IMAGE_EXTS", "ShardReader", "looks_like_shards", "list_shards", "reject_remote"]

#: image member extensions, in order of preference when a sample has several
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "ppm", "bmp", "tif", "tiff")
_RANK = {e: r for r, e in enumerate(IMAGE_EXTS)}
TABLE_VERSION = 1
MAX_OPEN_SHARDS = 64  # per process; a dropped handle closes once no thread reads from it
_CLS_MAX_BYTES = 64
_REMOTE = re.compile(r"^(pipe:|[A-Za-z][A-Za-z0-9+.-]+:/)")
_BRACES = re.compile(r"\{\d+\.\.\d+\}")


def reject_remote(path: str | Path) -> None:
    """Raise a one-line :class:`DataError` for a remote, piped or brace-pattern shard path."""
    s = str(path)
    if Path(s).exists():  # a local path, even one that looks like a URL
        return
    if _REMOTE.match(s):
        raise DataError(f"{s}: remote or piped shards (pipe:, http://, s3://) are not supported; selfsup reads local "
                        f".tar shards with random access: copy them to a local or network-mounted disk")
    if _BRACES.search(s):
        raise DataError(f"{s}: shard patterns like {{000000..000099}} are not expanded; pass the folder holding the "
                        f".tar shards")


def _tars(folder: Path) -> list[str]:
    try:
        return sorted(e.name for e in os.scandir(folder) if e.name.lower().endswith(".tar")
                      and not e.name.startswith(".") and e.is_file(follow_symlinks=True))
    except OSError as e:
        raise DataError(f"cannot list {folder} ({e.strerror}); check its permissions") from None


def looks_like_shards(path: Path) -> bool:
    """Whether ``path`` is a ``.tar`` file, a folder with ``*.tar`` at its top level, or one with ``train/*.tar``."""
    path = Path(path)
    if path.is_file():
        return path.suffix.lower() == ".tar"
    return path.is_dir() and (bool(_tars(path)) or ((path / "train").is_dir() and bool(_tars(path / "train"))))


class _Handle:
    """An open shard file descriptor, closed when the last reference goes; never pickled."""

    __slots__ = ("fd",)

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))

    def __reduce__(self):
        raise TypeError("an open shard handle cannot be pickled; ShardReader drops its handles when pickled")

    def __del__(self) -> None:
        try:
            os.close(self.fd)
        except (OSError, AttributeError):
            pass


class ShardReader:
    """A :class:`~selfsup.data.readers.Reader` over image members of tar shards: member ``i`` is
    ``sizes[i]`` bytes at ``offsets[i]`` of shard ``root / shards[shard_id[i]]``; ``names[i]`` is
    ``"<shard>#<member>"``. Files are opened lazily, per process (pickling drops the handles, a
    forked worker reopens), and read with ``os.pread``, so threads share them safely."""

    def __init__(self, root: Path, shards: list[str], shard_id: np.ndarray, offsets: np.ndarray,
                 sizes: np.ndarray, names: NameTable) -> None:
        self.root, self.shards, self.names = Path(root), list(shards), names
        self.shard_id = np.ascontiguousarray(shard_id, dtype=np.int32)
        self.offsets = np.ascontiguousarray(offsets, dtype=np.int64)
        self.sizes = np.ascontiguousarray(sizes, dtype=np.int64)
        self._reset()

    def _reset(self) -> None:
        self._files: OrderedDict[int, _Handle] = OrderedDict()
        self._lock, self._pid = threading.Lock(), os.getpid()

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("_files", "_lock", "_pid")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._reset()

    def __len__(self) -> int:
        return len(self.offsets)

    def _handle(self, sid: int) -> _Handle:
        if self._pid != os.getpid():  # a forked worker: its own lock and descriptors
            self._reset()
        with self._lock:
            h = self._files.get(sid)
            if h is not None:
                self._files.move_to_end(sid)
                return h
        h = _Handle(self.root / self.shards[sid])
        with self._lock:
            self._files[sid] = h
            while len(self._files) > MAX_OPEN_SHARDS:
                self._files.popitem(last=False)
        return h

    def read(self, i: int) -> bytes:
        sid, off, n = int(self.shard_id[i]), int(self.offsets[i]), int(self.sizes[i])
        handle = self._handle(sid)  # held while reading: an evicted handle closes only after this read
        data = os.pread(handle.fd, n, off)
        if len(data) != n:
            raise OSError(f"shard {self.root / self.shards[sid]} ends {n - len(data)} bytes into this member; it "
                          f"changed since it was listed or is truncated")
        return data

    def open(self, i: int) -> BinaryIO:
        return io.BytesIO(self.read(i))

    def name(self, i: int) -> str:
        return f"{self.root}{os.sep}{self.names[i]}"

    def subset(self, keep: np.ndarray) -> "ShardReader":
        return ShardReader(self.root, self.shards, self.shard_id[keep], self.offsets[keep], self.sizes[keep],
                           self.names.select(keep))


def _read_table(shard: Path, file_size: int) -> tuple[list[str], list[int], list[int], list[int]]:
    """Every regular member of ``shard``: names, data offsets, sizes, and the value of ``.cls`` members (else -1)."""
    names, offsets, sizes, cls = [], [], [], []
    try:
        with open(shard, "rb") as f:
            if f.read(2) == b"\x1f\x8b":
                raise DataError(f"shard {shard} is gzip-compressed; compressed tars cannot be read with random "
                                f"access: decompress it (gunzip, keeping the .tar name)")
            f.seek(0)
            with tarfile.open(fileobj=f, mode="r:") as tf:
                for m in tf:
                    if not m.isreg() or m.issparse():
                        continue
                    if m.size < 0 or m.offset_data + m.size > file_size:
                        raise DataError(f"shard {shard}: member {m.name} claims {m.size} bytes past the end of the "
                                        f"file ({file_size} bytes); the shard is truncated or damaged, rewrite it")
                    value = -1
                    if m.name.lower().endswith(".cls") and _ext(m.name) == "cls":
                        raw = tf.extractfile(m).read(_CLS_MAX_BYTES + 1)  # type: ignore[union-attr]
                        text = raw.decode("ascii", "replace").strip()
                        if len(raw) > _CLS_MAX_BYTES or not text.isdigit():
                            raise DataError(f"{shard}#{m.name}: label {text[:20]!r} is not a non-negative integer; a "
                                            f".cls member holds the class index as text")
                        value = int(text)
                    names.append(m.name)
                    offsets.append(m.offset_data)
                    sizes.append(m.size)
                    cls.append(value)
                end = tf.offset
            f.seek(end)
            if f.read(512).strip(b"\0"):  # tarfile stops quietly at a bad header; its members would be lost
                raise DataError(f"shard {shard}: unreadable tar header at byte {end}; the shard is damaged, rewrite it")
    except DataError:
        raise
    except OSError as e:
        raise DataError(f"cannot read shard {shard} ({e.strerror or e}); check the file") from None
    except (tarfile.TarError, ValueError, UnicodeError, EOFError) as e:
        why = f"{type(e).__name__}: {str(e).splitlines()[0]}" if str(e) else type(e).__name__
        raise DataError(f"cannot read shard {shard} as a tar file ({why}); rewrite it, or move it out of the "
                        f"folder") from None
    return names, offsets, sizes, cls


def _member_table(shard: Path, index_dir: Path) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray, int]:
    """``_read_table`` as arrays, plus the shard's mtime (ns); cached per shard, revalidated by size and mtime."""
    try:
        st = shard.stat()
    except OSError as e:
        raise DataError(f"cannot read shard {shard} ({e.strerror}); check its permissions") from None
    digest = hashlib.sha1(str(shard.resolve()).encode("utf-8", "surrogateescape")).hexdigest()[:20]
    cache = index_dir / f"shard-{digest}.npz"
    stamp = (TABLE_VERSION, st.st_size, st.st_mtime_ns)
    try:
        with np.load(cache, allow_pickle=False) as z:
            if tuple(int(z[k]) for k in ("version", "size", "mtime_ns")) == stamp:
                blob, offs = z["names_blob"].tobytes(), z["names_offsets"]
                names = [blob[a:b].decode("utf-8", "surrogateescape") for a, b in zip(offs[:-1], offs[1:])]
                return names, z["offsets"], z["sizes"], z["cls"], st.st_mtime_ns
    except (OSError, ValueError, KeyError, EOFError):
        pass  # missing, stale or damaged: list the shard again
    names, *columns = _read_table(shard, st.st_size)
    offsets, sizes, cls = (np.asarray(c, dtype=np.int64) for c in columns)
    table = NameTable.of(names)
    save_npz_atomic(cache, dict(zip(("version", "size", "mtime_ns"), map(np.int64, stamp)), names_blob=table.blob,
                            names_offsets=table.offsets, offsets=offsets, sizes=sizes, cls=cls))
    return names, offsets, sizes, cls, st.st_mtime_ns


def _ext(name: str) -> str | None:
    """The webdataset extension of member ``name`` (after the first dot of its basename), lowercased."""
    start = name.rfind("/") + 1
    dot = name.find(".", start)
    return name[dot + 1:].lower() if dot > start else None


def _list_split(root: Path, shards: list[str], key: str, split: str, index_dir: Path,
                workers: int | None) -> tuple[Listing, list[str]]:
    workers = max(1, min(workers or 16, len(shards)))
    with ThreadPoolExecutor(max_workers=workers) as pool:  # header parsing waits on I/O for remote mounts
        tables = list(pool.map(lambda rel: _member_table(root / rel, index_dir), shards))
    sid, members, offsets, sizes, labels, stamps = [], [], [], [], [], []
    skipped, first_skipped = 0, ""
    for s, (names, offs, lens, cls, mtime) in enumerate(tables):
        samples: dict[str, list[int]] = {}  # key -> [image rank, image member, label]; insertion = tar order
        for j, name in enumerate(names):
            ext = _ext(name)
            if ext is None:
                continue
            entry = samples.setdefault(name[: len(name) - len(ext) - 1], [len(IMAGE_EXTS), -1, -1])
            if ext == "cls":
                entry[2] = int(cls[j])
            elif _RANK.get(ext, len(IMAGE_EXTS)) < entry[0]:
                entry[0], entry[1] = _RANK[ext], j
        for k, (_, j, label) in samples.items():
            if j < 0:
                skipped += 1
                first_skipped = first_skipped or f"{root / shards[s]}#{k}"
                continue
            sid.append(s)
            members.append(f"{shards[s]}#{names[j]}")
            offsets.append(int(offs[j]))
            sizes.append(int(lens[j]))
            labels.append(label)
            stamps.append((int(offs[j]), mtime))
    if not members:
        raise DataError(f"the {split} shards in {root} hold no samples with an image member "
                        f"(<key>.{'/'.join(IMAGE_EXTS)}); check the shards")
    y = np.asarray(labels, dtype=np.int64)
    has = y >= 0
    if has.any() and not has.all():
        i = int(np.flatnonzero(~has)[0])
        rel = shards[sid[i]]
        key = members[i][len(rel) + 1:].rsplit(".", 1)[0]
        raise DataError(f"sample {key} of shard {root / rel} has no .cls label but other samples have one; give every "
                        f"sample a .cls member, or none")
    names_table = NameTable.of(members)
    reader = ShardReader(root, shards, np.asarray(sid), np.asarray(offsets), np.asarray(sizes), names_table)
    listing = Listing(reader, names_table, np.asarray(stamps, dtype=np.int64).reshape(-1, 2), key,
                      y if has.all() else None, None)
    notes = [f"{split}: skipped {skipped} samples without an image (first: {first_skipped})"] if skipped else []
    return listing, notes


def list_shards(path: Path, index_dir: Path | None = None,
                workers: int | None = None) -> tuple[Listing, Listing | None, list[str]]:
    """The train and test listings (test may be None) of a ``.tar`` shard or a folder of shards, and
    notes (see the module docstring). ``index_dir`` holds the cached member tables (default
    :func:`~selfsup.data.index.default_index_dir`); ``workers`` threads list the shards."""
    reject_remote(path)
    path = Path(path)
    index_dir = default_index_dir() if index_dir is None else Path(index_dir)
    if path.is_file():
        if path.suffix.lower() != ".tar":
            raise DataError(f"format='shards' needs .tar files, but {path} is not one; point to a .tar or its folder")
        train, notes = _list_split(path.parent, [path.name], f"shards:{path.resolve()}", "train", index_dir, workers)
        return train, None, ["a single .tar shard: test split is None (evaluation needs one; or set data.test_path)",
                             *notes]
    if not path.is_dir():
        raise DataError(f"format='shards' needs a .tar file or a folder of them, but {path} is neither")
    train_dir, test_dir, notes = split_folders(path)
    splits = []
    for folder, split in ((train_dir, "train"), (test_dir, test_dir.name if test_dir else "")):
        if folder is None:
            splits.append(None)
            continue
        shards = _tars(folder)
        if not shards:
            gz = sorted(p.name for p in folder.iterdir() if p.name.endswith((".tar.gz", ".tgz")))
            hint = (f"compressed shards ({gz[0]}) cannot be read with random access: decompress them" if gz else
                    "add webdataset .tar shards")
            raise DataError(f"{split} folder {folder} holds no .tar shards at its top level; {hint}")
        listing, more = _list_split(folder, shards, f"shards:{folder.resolve()}", split, index_dir, workers)
        splits.append(listing)
        notes += more
    return splits[0], splits[1], notes
