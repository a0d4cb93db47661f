"""CIFAR-10 / CIFAR-100 "python version" folders, read with a restricted unpickler.

CIFAR-10 (``cifar-10-batches-py``): ``data_batch_1..5``, ``test_batch``, ``batches.meta``.
CIFAR-100 (``cifar-100-python``): ``train``, ``test``, ``meta`` (fine labels by default).

Security: the batches are pickles, and unpickling runs code named in the file.
:class:`SafeUnpickler` therefore resolves only the handful of numpy globals an
``ndarray`` needs (``_reconstruct``, ``_frombuffer``, ``ndarray``, ``dtype``,
``scalar``) and ``_codecs.encode`` (bytes in protocol-2 pickles); any other
global (``os.system``, arbitrary classes) raises :class:`DataError`. Dicts,
lists, str, bytes and ints are built by pickle opcodes without globals.
"""

from __future__ import annotations

import codecs
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from .arrays import DataSplits, build_splits
from .errors import DataError

__all__ = ["SafeUnpickler", "safe_unpickle", "load_cifar", "cifar_variant"]


def _numpy_globals() -> dict[tuple[str, str], Any]:
    try:
        from numpy._core import multiarray, numeric  # numpy >= 2 (numpy.core is a deprecated alias)
    except ImportError:  # numpy 1.x
        from numpy.core import multiarray, numeric

    allowed = {
        ("multiarray", "_reconstruct"): multiarray._reconstruct,
        ("multiarray", "scalar"): multiarray.scalar,
        ("numeric", "_frombuffer"): numeric._frombuffer,
    }
    out: dict[tuple[str, str], Any] = {}
    for pkg in ("numpy.core", "numpy._core"):
        for (mod, name), obj in allowed.items():
            out[(f"{pkg}.{mod}", name)] = obj
    out[("numpy", "ndarray")] = np.ndarray
    out[("numpy", "dtype")] = np.dtype
    out[("_codecs", "encode")] = codecs.encode
    return out


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that only resolves the numpy-array globals listed in the module docstring."""

    _allowed = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise DataError(
                f"refusing to unpickle {module}.{name}: CIFAR batches may only contain dicts, lists and numpy arrays; "
                "use the official CIFAR python files"
            ) from None


def safe_unpickle(path: Path) -> dict[str, Any]:
    """Load a CIFAR batch file as a dict with ``str`` keys (Python-2 pickles are read as latin-1)."""
    try:
        with open(path, "rb") as f:
            obj = SafeUnpickler(f, encoding="latin1").load()
    except DataError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise DataError(f"{path} is not a readable CIFAR pickle ({type(e).__name__}: {e}); re-download it") from e
    if not isinstance(obj, dict):
        raise DataError(f"{path} holds a {type(obj).__name__}, expected a dict of 'data' and labels; re-download it")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def cifar_variant(folder: Path) -> str | None:
    """``"cifar10"``, ``"cifar100"`` or None, from the file names in ``folder``."""
    if (folder / "data_batch_1").is_file():
        return "cifar10"
    if (folder / "train").is_file() and (folder / "meta").is_file():
        return "cifar100"
    return None


def _names(meta: dict[str, Any], key: str, path: Path) -> list[str]:
    if key not in meta:
        raise DataError(f"{path} has no '{key}' entry (has {sorted(meta)}); re-download the CIFAR meta file")
    return [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in meta[key]]


def _batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    d = safe_unpickle(path)
    if "data" not in d or label_key not in d:
        raise DataError(f"{path} lacks 'data' or '{label_key}' (has {sorted(d)}); is this the right CIFAR variant?")
    data = np.asarray(d["data"])
    labels = np.asarray(d[label_key], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path} 'data' is {data.dtype} {data.shape}, expected uint8 N x 3072; re-download it")
    if len(labels) != len(data):
        raise DataError(f"{path} has {len(data)} images but {len(labels)} labels; re-download it")
    return data.reshape(-1, 3, 32, 32), labels  # rows are R, G, B planes of 32 x 32, row-major


def load_cifar(folder: Path, image_size: int | None = None, labels: str = "fine") -> DataSplits:
    """Load a CIFAR-10 or CIFAR-100 python folder (``labels`` "fine"/"coarse" for CIFAR-100)."""
    variant = cifar_variant(folder)
    if variant is None:
        raise DataError(f"{folder} has neither data_batch_1 (CIFAR-10) nor train + meta (CIFAR-100) files")
    if variant == "cifar10":
        batches = sorted(folder.glob("data_batch_*"), key=lambda p: (len(p.name), p.name))
        parts = [_batch(p, "labels") for p in batches]
        x_train, y_train = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        test = _batch(folder / "test_batch", "labels") if (folder / "test_batch").is_file() else (None, None)
        meta_file, name_key = folder / "batches.meta", "label_names"
    else:
        if labels not in ("fine", "coarse"):
            raise DataError(f"CIFAR-100 labels must be 'fine' or 'coarse', got {labels!r}")
        x_train, y_train = _batch(folder / "train", f"{labels}_labels")
        test = _batch(folder / "test", f"{labels}_labels") if (folder / "test").is_file() else (None, None)
        meta_file, name_key = folder / "meta", f"{labels}_label_names"
    classes = _names(safe_unpickle(meta_file), name_key, meta_file) if meta_file.is_file() else None
    notes = [] if meta_file.is_file() else [f"no {meta_file.name}: class names unknown"]
    splits = build_splits(variant, x_train, y_train, test[0], test[1], image_size, classes, notes)
    if splits.num_classes is None:
        splits.num_classes = 10 if variant == "cifar10" else (100 if labels == "fine" else 20)
    return splits
