"""``.npz`` datasets (``x_train, y_train, x_test, y_test``) and MNIST-style IDX folders.

Uncompressed data (``np.savez`` members, plain IDX files) is memory-mapped so
large datasets are read from disk batch by batch; compressed data
(``np.savez_compressed``, ``.gz``) is decompressed once into memory as uint8.
"""

from __future__ import annotations

import gzip
import re
import struct
import zipfile
from pathlib import Path

import numpy as np

from .arrays import DataSplits, build_splits
from .errors import DataError

__all__ = ["load_npz", "save_npz", "load_idx", "find_idx_files", "read_idx"]

_ZIP_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # fixed 30-byte part of a zip local file header


def _mmap_stored_member(path: Path, info: zipfile.ZipInfo) -> np.ndarray | None:
    """Memory-map an uncompressed ``.npy`` member of a zip; None if it cannot be mapped."""
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:  # compressed or encrypted
        return None
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        head = f.read(_ZIP_LOCAL_HEADER.size)
        if len(head) != _ZIP_LOCAL_HEADER.size or head[:4] != b"PK\x03\x04":
            return None
        name_len, extra_len = _ZIP_LOCAL_HEADER.unpack(head)[-2:]
        f.seek(info.header_offset + _ZIP_LOCAL_HEADER.size + name_len + extra_len)
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(f)
        offset = f.tell()
    if dtype.hasobject or int(np.prod(shape)) == 0:
        return None
    return np.memmap(path, dtype=dtype, mode="r", shape=shape, order="F" if fortran_order else "C", offset=offset)


def _read_npz(path: Path, mmap: bool) -> dict[str, np.ndarray]:
    """Read every member of ``path``, memory-mapping uncompressed ones when ``mmap``."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"{path} is not a readable .npz file ({e}); re-save it with numpy.savez") from e
    out: dict[str, np.ndarray] = {}
    with zf:
        for info in zf.infolist():
            key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            arr = _mmap_stored_member(path, info) if mmap else None
            if arr is None:
                try:
                    with zf.open(info) as f:
                        arr = np.lib.format.read_array(f, allow_pickle=False)
                except ValueError as e:
                    raise DataError(f"cannot read member '{key}' of {path} ({e}); store plain numeric arrays") from e
            out[key] = arr
    return out


def load_npz(path: Path, image_size: int | None = None, mmap: bool = True) -> DataSplits:
    """Load ``x_train`` (required), ``y_train``, ``x_test``, ``y_test`` and optional ``classes`` from an npz.

    Images are NHW, NHWC or NCHW; missing ``y_*`` means unlabeled, missing
    ``x_test`` means no test split.
    """
    data = _read_npz(path, mmap)
    if "x_train" not in data:
        raise DataError(
            f"{path} has no 'x_train' array (found: {sorted(data) or 'nothing'}); "
            "save it as numpy.savez(path, x_train=..., y_train=..., x_test=..., y_test=...)"
        )
    classes = [str(c) for c in data["classes"].tolist()] if "classes" in data else None
    return build_splits(path.stem, data["x_train"], data.get("y_train"), data.get("x_test"), data.get("y_test"),
                        image_size, classes)


def save_npz(splits: DataSplits, path: str | Path) -> Path:
    """Write ``splits`` as an uncompressed npz (NCHW uint8) that :func:`load_npz` memory-maps.

    Use it to decode an ImageFolder once and reload it fast afterwards.
    """
    arrays: dict[str, np.ndarray] = {}
    for split, part in (("train", splits.train), ("test", splits.test)):
        if part is None:
            continue
        arrays[f"x_{split}"] = np.asarray(part.images)
        if part.labels is not None:
            arrays[f"y_{split}"] = part.labels.numpy()
    if splits.classes is not None:
        arrays["classes"] = np.asarray(splits.classes, dtype=str)
    path = Path(path)
    with open(path, "wb") as f:  # a file object keeps numpy from appending ".npz" to the name
        np.savez(f, **arrays)
    return path


# ----------------------------------------------------------------------------- IDX (MNIST format)

_IDX_NAME = re.compile(r"^(?:.*-)?(train|t10k)-(images|labels)[-.](idx[13])-ubyte(\.gz)?$")


def read_idx(path: Path, ndim: int, mmap: bool = True) -> np.ndarray:
    """Parse an IDX file (``0x00 0x00 0x08 ndim`` magic, big-endian int32 sizes, uint8 payload).

    Plain files are memory-mapped when ``mmap``; ``.gz`` files are decompressed.
    """
    gz = path.suffix == ".gz"
    header_len = 4 + 4 * ndim
    try:
        if gz:
            with gzip.open(path, "rb") as f:
                raw = f.read()
            head = raw[:header_len]
        else:
            with open(path, "rb") as f:
                head = f.read(header_len)
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read {path} ({e}); re-download it (or gunzip it)") from e
    if len(head) < 4 or head[:2] != b"\x00\x00":
        raise DataError(f"{path} is not an IDX file (bad magic number {head[:4].hex()}); expected MNIST idx format")
    if head[2] != 0x08:
        raise DataError(
            f"{path} stores IDX type code 0x{head[2]:02x}; only unsigned-byte (0x08) IDX files are supported"
        )
    if head[3] != ndim:
        raise DataError(
            f"{path} has {head[3]} dimensions but {ndim} were expected; check the file name matches its content"
        )
    dims_raw = head[4:header_len]
    if len(dims_raw) != 4 * ndim:
        raise DataError(f"{path} is truncated inside its header; re-download it")
    dims = struct.unpack(f">{ndim}I", dims_raw)
    expected = header_len + int(np.prod(dims))
    size = len(raw) if gz else path.stat().st_size
    if size != expected:
        raise DataError(
            f"{path} header says shape {dims} ({expected} bytes) but the file has {size} bytes; re-download it"
        )
    if not gz and mmap and expected > header_len:
        return np.memmap(path, dtype=np.uint8, mode="r", offset=header_len, shape=dims)
    if gz:
        return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(dims)
    return np.fromfile(path, np.uint8, offset=header_len).reshape(dims)


def find_idx_files(folder: Path) -> dict[tuple[str, str], Path]:
    """Map ("train"|"t10k", "images"|"labels") to its IDX file in ``folder`` (``.gz`` or plain)."""
    found: dict[tuple[str, str], Path] = {}
    for p in sorted(folder.iterdir()):
        m = _IDX_NAME.match(p.name)
        if m is None or not p.is_file():
            continue
        key = (m.group(1), m.group(2))
        if key in found and found[key].name.removesuffix(".gz") != p.name.removesuffix(".gz"):
            raise DataError(f"{folder} has two {key[0]} {key[1]} IDX files ({found[key].name}, {p.name}); keep one")
        if key not in found or not p.name.endswith(".gz"):  # prefer the plain (memory-mappable) copy
            found[key] = p
    return found


def load_idx(folder: Path, image_size: int | None = None, mmap: bool = True) -> DataSplits:
    """Load MNIST-format IDX files: ``train-images-idx3-ubyte[.gz]`` (required), ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` (optional; a ``prefix-`` is allowed)."""
    files = find_idx_files(folder)
    if ("train", "images") not in files:
        raise DataError(f"{folder} has no train-images-idx3-ubyte[.gz]; add it (t10k-* files are the test split)")
    arrays = {key: read_idx(p, 3 if key[1] == "images" else 1, mmap) for key, p in files.items()}
    return build_splits(folder.resolve().name, arrays[("train", "images")], arrays.get(("train", "labels")),
                        arrays.get(("t10k", "images")), arrays.get(("t10k", "labels")), image_size)
