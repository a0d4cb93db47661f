"""Where the images of a streamed dataset come from: folders and file lists.

* An ImageFolder tree: ``root/train/<class>/**/*.jpg`` plus ``root/val`` (or ``root/test``), or a
  flat ``root/<class>/**``; class names are the folder names, sorted, ``train`` defines the map.
* A folder of unlabeled images of any nesting: ``labels="none"`` (or ``auto`` when the top level
  holds loose images only).
* A file list: a ``.csv`` / ``.tsv`` / ``.txt`` with one ``path[,label]`` row per image (an optional
  header row starting with ``path``); paths are relative to the list's folder; labels are all ints
  or all class names (sorted into indices).

Each gives a :class:`Listing`: a reader, per-file stamps (size, mtime) for the index cache, labels.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError, DataPathError
from .index import ImageIndex
from .readers import FileReader, NameTable, Reader

__all__ = ["IMAGE_SUFFIXES", "FILELIST_SUFFIXES", "Listing", "list_folder", "list_filelist", "list_imagefolder",
           "split_folders"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")
FILELIST_SUFFIXES = (".csv", ".tsv", ".txt", ".lst")


@dataclass
class Listing:
    """One split's images before indexing: where they are, how to tell they changed, their labels."""

    reader: Reader
    names: NameTable  # identifies each image for the index cache
    stamps: np.ndarray  # int64 [N, 2]: file size and mtime (ns), or any change-detecting pair
    key: str  # the cache key of this listing (the source's absolute path and split)
    labels: np.ndarray | None = None  # int64 [N]
    classes: list[str] | None = None
    index: ImageIndex | None = None  # given by formats that store it (packed); else read from the headers


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES


def _walk(folder: Path, rel: str = "") -> list[tuple[str, int, int]]:
    """``(relative path, size, mtime_ns)`` of every image below ``folder``, sorted, hidden entries skipped."""
    out: list[tuple[str, int, int]] = []
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
        raise DataError(f"cannot list {folder} ({e.strerror}); check its permissions") from None
    for e in entries:
        if e.name.startswith("."):
            continue
        if e.is_dir(follow_symlinks=True):
            out += _walk(Path(e.path), f"{rel}{e.name}/")
        elif _is_image_name(e.name) and e.is_file(follow_symlinks=True):
            st = e.stat(follow_symlinks=True)
            out.append((f"{rel}{e.name}", st.st_size, st.st_mtime_ns))
    return out


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _listing(root: Path, files: list[tuple[str, int, int]], key: str, labels: list[int] | None,
             classes: list[str] | None) -> Listing:
    names = NameTable.of([f for f, _, _ in files])
    stamps = np.asarray([(s, m) for _, s, m in files], dtype=np.int64).reshape(-1, 2)
    return Listing(FileReader(root, names), names, stamps, key,
                   None if labels is None else np.asarray(labels, dtype=np.int64), classes)


def list_folder(folder: Path, labels: str = "auto", class_to_idx: dict[str, int] | None = None,
                split: str = "train") -> Listing:
    """List ``folder``: class sub-folders (``labels`` "folders", or "auto" when there are no loose
    images) or every image at any depth, unlabeled (``labels`` "none", or "auto" with loose images
    only). ``class_to_idx`` (the train split's) checks a test split's classes."""
    folder = Path(folder)
    key = f"folder:{folder.resolve()}:{labels}"
    if labels not in ("auto", "folders", "none"):
        raise DataError(f"data.labels must be auto, folders or none, got {labels!r}")
    loose = sorted(p.name for p in folder.iterdir() if p.is_file() and _is_image_name(p.name))
    dirs = _subdirs(folder)
    if labels == "none" or (labels == "auto" and not dirs):
        files = _walk(folder)
        if not files:
            raise DataError(f"{split} folder {folder} contains no images ({', '.join(IMAGE_SUFFIXES)}); add images")
        if class_to_idx is not None:
            raise DataError(f"{split} folder {folder} has no class folders but the train split does; add class folders")
        return _listing(folder, files, key, None, None)
    if loose:
        raise DataError(f"{folder} has both loose images (e.g. {loose[0]}) and class folders; move every image into a "
                        f"class folder, or set data.labels=none to use every image, unlabeled")
    if not dirs:
        raise DataError(f"{split} folder {folder} has no class folders; add them, or set data.labels=none")
    classes = [d.name for d in dirs]
    c2i = class_to_idx if class_to_idx is not None else {c: i for i, c in enumerate(classes)}
    files, ys = [], []
    for d in dirs:
        if d.name not in c2i:
            raise DataError(f"{split} class folder '{d.name}' does not exist in the train split; add it to train/ or "
                            f"remove it from the {split} split")
        found = _walk(d, f"{d.name}/")
        if not found:
            raise DataError(f"class folder {d} contains no images; add images to it or delete the folder")
        files += found
        ys += [c2i[d.name]] * len(found)
    return _listing(folder, files, key, ys, sorted(c2i, key=c2i.__getitem__))


def split_folders(root: Path) -> tuple[Path, Path | None, list[str]]:
    """``(train folder, test folder or None, notes)``: ``root/train`` with ``root/test`` or
    ``root/val`` when there is a ``train`` sub-folder, else ``root`` itself without a test split."""
    names = {d.name: d for d in _subdirs(root)}
    if "train" not in names:
        return root, None, ["no train/ and test/ (or val/) sub-folders: test split is None (evaluation needs one; "
                            "or set data.test_path)"]
    notes = []
    test = names.get("test") or names.get("val")
    if test is None:
        notes.append(f"no test/ or val/ folder next to {names['train']}: test split is None")
    elif "test" in names and "val" in names:
        notes.append("both test/ and val/ exist: using test/, ignoring val/")
    return names["train"], test, notes


def list_imagefolder(root: Path, labels: str = "auto") -> tuple[Listing, Listing | None, list[str]]:
    """The train and test listings of an ImageFolder tree (see :func:`split_folders`), and notes; the
    test split uses the train split's class indices."""
    train_dir, test_dir, notes = split_folders(root)
    train = list_folder(train_dir, labels, None, "train")
    c2i = None if train.classes is None else {c: i for i, c in enumerate(train.classes)}
    test = list_folder(test_dir, labels, c2i, test_dir.name) if test_dir is not None else None
    return train, test, notes


def _label_column(rows: list[tuple[int, str]], where: Path,
                  classes: list[str] | None) -> tuple[list[int], list[str] | None]:
    """Labels of ``(line number, label text)`` rows: all ints, or all class names (``classes``, when
    given, is the train list's, to map a test list onto)."""
    def as_int(t: str) -> int | None:
        try:
            return int(t)
        except ValueError:
            return None

    ints = [as_int(t) for _, t in rows]
    if classes is None and all(v is not None for v in ints):
        bad = [(ln, t) for (ln, t), v in zip(rows, ints) if v < 0]
        if bad:
            raise DataError(f"{where}:{bad[0][0]}: label {bad[0][1]!r} is negative; use class indices 0..K-1")
        return ints, None  # type: ignore[return-value]
    for (ln, t), v in zip(rows, ints):
        if not t or v is not None or _is_number(t):
            raise DataError(f"{where}:{ln}: label {t!r} is not a class name, but other rows are; use class names (or "
                            f"int indices) in every row")
    names = classes if classes is not None else sorted({t for _, t in rows})
    c2i = {c: i for i, c in enumerate(names)}
    missing = [(ln, t) for ln, t in rows if t not in c2i]
    if missing:
        raise DataError(f"{where}:{missing[0][0]}: class {missing[0][1]!r} is not in the train list; add it there or "
                        f"drop the row")
    return [c2i[t] for _, t in rows], names


def _is_number(t: str) -> bool:
    try:
        float(t)
        return True
    except ValueError:
        return False


def list_filelist(path: Path, classes: list[str] | None = None) -> Listing:
    """List a ``path[,label]`` file (see the module docstring); ``classes`` maps a test list's names."""
    path = Path(path)
    delim = "\t" if path.suffix.lower() == ".tsv" else ","
    base = path.parent
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text; a file list has one path[,label] row per line") from None
    reader = csv.reader(text.splitlines(), delimiter=delim)
    entries: list[tuple[int, str, str | None]] = []
    for ln, row in enumerate(reader, start=1):
        if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
            continue
        if ln == 1 and row[0].strip().lower() in ("path", "file", "filename", "image"):
            continue
        if len(row) > 2:
            raise DataError(f"{path}:{ln}: {len(row)} columns; a file list row is path or path,label")
        entries.append((ln, row[0].strip(), row[1].strip() if len(row) == 2 else None))
    if not entries:
        raise DataError(f"file list {path} lists no images; add one path[,label] row per image")
    with_label = [e for e in entries if e[2] is not None]
    if with_label and len(with_label) != len(entries):
        ln = next(e[0] for e in entries if e[2] is None)
        raise DataError(f"{path}:{ln}: no label, but other rows have one; label every row or none")
    files = []
    for ln, rel, _ in entries:
        p = base / rel
        try:
            st = p.stat()
        except OSError:
            raise DataPathError(f"{path}:{ln}: image {p} does not exist; fix the path (relative to {base}) or drop the "
                                f"row") from None
        if not p.is_file():
            raise DataError(f"{path}:{ln}: {p} is not a file; list image files")
        files.append((rel, st.st_size, st.st_mtime_ns))
    labels, names = (None, None)
    if with_label:
        labels, names = _label_column([(ln, t) for ln, _, t in entries], path, classes)  # type: ignore[misc]
        if names is None and classes is not None:
            names = classes
    return _listing(base, files, f"filelist:{path.resolve()}", labels, names)
