"""Random access to encoded image bytes: files on disk (here), a packed file (:mod:`.packed`) or
tar shards (:mod:`.shards`).

A reader is what the streaming loader's workers hold: ``len(reader)``, ``reader.read(i)`` (the
encoded bytes of image ``i``), ``reader.open(i)`` (a binary file object, for reading just the
header) and ``reader.name(i)`` (what messages print). Readers are small and picklable: a worker
process gets a copy and opens its own files. Names are kept in a :class:`NameTable` (one byte
buffer plus offsets, no Python string per image), so forked workers do not copy the list page by
page through reference counting, and a million paths cost ~100 MB less than a ``list[str]``.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO, Protocol

import numpy as np

__all__ = ["Reader", "NameTable", "FileReader"]


class Reader(Protocol):
    """Random access to encoded images (see the module docstring)."""

    def __len__(self) -> int: ...

    def read(self, i: int) -> bytes | memoryview: ...

    def open(self, i: int) -> BinaryIO: ...

    def name(self, i: int) -> str: ...


class NameTable:
    """An immutable sequence of strings stored as UTF-8 bytes in one numpy buffer plus int64 offsets."""

    def __init__(self, blob: np.ndarray, offsets: np.ndarray) -> None:
        self.blob = np.ascontiguousarray(blob, dtype=np.uint8)
        self.offsets = np.ascontiguousarray(offsets, dtype=np.int64)
        if self.offsets.ndim != 1 or len(self.offsets) < 1 or self.offsets[-1] != len(self.blob):
            raise ValueError("NameTable offsets must run from 0 to len(blob)")

    @classmethod
    def of(cls, names: Sequence[str]) -> "NameTable":
        encoded = [n.encode("utf-8", "surrogateescape") for n in names]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(e) for e in encoded], out=offsets[1:])
        return cls(np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"name index {i} out of range for {len(self)} names")
        i %= len(self)
        return self.blob[self.offsets[i] : self.offsets[i + 1]].tobytes().decode("utf-8", "surrogateescape")

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def select(self, keep: np.ndarray) -> "NameTable":
        """The names at the positions ``keep`` (int indices or a bool mask)."""
        return NameTable.of([self[i] for i in np.arange(len(self))[keep]])

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, NameTable) and np.array_equal(self.offsets, other.offsets)
                and np.array_equal(self.blob, other.blob))


class FileReader:
    """Image files ``root / relative_name``: one file per image (ImageFolder trees, file lists)."""

    def __init__(self, root: Path, names: NameTable) -> None:
        self.root, self.names = Path(root), names

    def __len__(self) -> int:
        return len(self.names)

    def path(self, i: int) -> Path:
        return self.root / self.names[i]

    def read(self, i: int) -> bytes:
        with open(self.path(i), "rb") as f:
            return f.read()

    def open(self, i: int) -> BinaryIO:
        return open(self.path(i), "rb")

    def name(self, i: int) -> str:
        return str(self.path(i))

    def subset(self, keep: np.ndarray) -> "FileReader":
        return FileReader(self.root, self.names.select(keep))


def bytes_io(data: bytes | memoryview) -> BinaryIO:
    """A file object over ``data`` (for PIL), without copying a memoryview when it can be avoided."""
    return io.BytesIO(data)
