"""ImageFolder trees decoded into uint8 arrays.

Layouts (class names are folder names, sorted; ``train`` defines the class map):

* ``root/train/<class>/*.png`` + ``root/test/<class>/...`` (or ``val/``);
* ``root/<class>/*.jpg``: a flat tree, no test split;
* ``root/*.jpg`` (or ``root/train/*.jpg``): images without class folders, unlabeled.

Each image is decoded with PIL, its shorter side resized to ``image_size`` and
centre-cropped to a square. Channels: grayscale (1) when *every* image of the
dataset is grayscale, else RGB (3; gray images are replicated to RGB).
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .arrays import DataSplits, ImageArray
from .errors import DataError, DataWarning

__all__ = ["IMAGE_EXTENSIONS", "DEFAULT_IMAGEFOLDER_SIZE", "load_imagefolder", "looks_like_imagefolder"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")
DEFAULT_IMAGEFOLDER_SIZE = 64
_GRAY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
# PIL raises these for truncated / garbage / hostile files.
_DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


def _is_image(p: Path) -> bool:
    return p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS


def _images_under(folder: Path) -> list[Path]:
    """All image files below ``folder`` (recursive, hidden entries skipped, sorted)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(p for p in (Path(dirpath) / f for f in sorted(filenames)) if _is_image(p))
    return found


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def looks_like_imagefolder(folder: Path) -> bool:
    """Whether ``folder`` holds image files directly or in its sub-folders (stops at the first one found)."""
    for _, _, filenames in os.walk(folder, followlinks=True):
        if any(not f.startswith(".") and Path(f).suffix.lower() in IMAGE_EXTENSIONS for f in filenames):
            return True
    return False


@dataclass
class _Listing:
    files: list[Path]
    labels: list[int] | None
    classes: list[str] | None


def _list_split(folder: Path, class_to_idx: dict[str, int] | None, split: str) -> _Listing:
    """List a split folder: class sub-folders (labeled) or loose images (unlabeled)."""
    loose = [p for p in folder.iterdir() if _is_image(p)]
    dirs = _subdirs(folder)
    if dirs and loose:
        raise DataError(
            f"{folder} has both loose images (e.g. {loose[0].name}) and class folders; "
            "move every image into a class folder, or use a folder of images only for unlabeled data"
        )
    if not dirs:
        if not loose:
            raise DataError(f"{split} folder {folder} contains no images ({', '.join(IMAGE_EXTENSIONS)}); add images")
        if class_to_idx is not None:
            raise DataError(f"{split} folder {folder} has no class folders but the train split does; add class folders")
        return _Listing(sorted(loose), None, None)
    classes = [d.name for d in dirs]
    if class_to_idx is None:
        class_to_idx = {c: i for i, c in enumerate(classes)}
    files, labels = [], []
    for d in dirs:
        if d.name not in class_to_idx:
            raise DataError(
                f"{split} class folder '{d.name}' does not exist in the train split; "
                "add it to train/ or remove it from the test split"
            )
        found = _images_under(d)
        if not found:
            raise DataError(f"class folder {d} contains no images; add images to it or delete the folder")
        files += found
        labels += [class_to_idx[d.name]] * len(found)
    return _Listing(files, labels, sorted(class_to_idx, key=class_to_idx.__getitem__))


def _decode(path: Path, size: int) -> tuple[np.ndarray, bool]:
    """Decode one image to ``size x size x 3`` uint8 (shorter side resized, centre crop) and whether it is gray."""
    with Image.open(path) as img:
        img.draft(None, (size, size))  # JPEG: let the decoder downscale by up to 8x (>= size on both sides)
        gray = img.mode in _GRAY_MODES or (img.mode == "P" and _palette_is_gray(img))
        if img.mode.startswith("I;16"):
            img = Image.fromarray((np.asarray(img, dtype=np.uint16) >> 8).astype(np.uint8))
        img = img.convert("L" if gray else "RGB")
        w, h = img.size
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), Image.BILINEAR, reducing_gap=3.0)
        left, top = int(round((nw - size) / 2.0)), int(round((nh - size) / 2.0))
        arr = np.asarray(img.crop((left, top, left + size, top + size)))
    return (arr[..., None] if gray else arr), gray


def _palette_is_gray(img: Image.Image) -> bool:
    pal = img.getpalette() or []
    rgb = np.asarray(pal[: len(pal) // 3 * 3], dtype=np.uint8).reshape(-1, 3)
    return "transparency" not in img.info and bool((rgb == rgb[:, :1]).all())


def _decode_all(
    files: list[Path], size: int, on_corrupt: str, workers: int
) -> tuple[np.ndarray, np.ndarray, list[tuple[Path, str]]]:
    """Decode ``files`` into a preallocated ``N x size x size x 3`` buffer with a thread pool.

    PIL releases the GIL while decoding and resizing, so threads scale with cores.
    Returns (buffer, per-image gray flags, [(path, error), ...] for unreadable files).
    """
    buf = np.empty((len(files), size, size, 3), dtype=np.uint8)
    gray = np.zeros(len(files), dtype=bool)
    bad: list[tuple[int, Path, str]] = []

    def work(i: int) -> None:
        try:
            arr, gray[i] = _decode(files[i], size)
        except _DECODE_ERRORS as e:
            if on_corrupt == "error":
                raise DataError(
                    f"cannot read image {files[i]} ({type(e).__name__}: {e}); "
                    "fix or delete it, or set data.on_corrupt=skip (Python: on_corrupt='skip') to skip "
                    "unreadable images"
                ) from e
            bad.append((i, files[i], f"{type(e).__name__}: {e}"))
            return
        buf[i] = arr  # gray (H, W, 1) broadcasts into all three channels

    def work_chunk(rows: range) -> None:
        for i in rows:
            work(i)

    step = max(1, min(256, -(-len(files) // (4 * workers))))  # a few chunks per worker, at most 256 images each
    chunks = [range(s, min(s + step, len(files))) for s in range(0, len(files), step)]
    if workers > 1 and len(chunks) > 1:
        pool = ThreadPoolExecutor(max_workers=workers)
        try:
            for _ in pool.map(work_chunk, chunks):
                pass
        finally:  # on a fatal error, do not decode the rest of the dataset first
            pool.shutdown(wait=True, cancel_futures=True)
    else:
        work_chunk(range(len(files)))
    return buf, gray, [(p, err) for _, p, err in sorted(bad, key=lambda b: b[0])]


def load_imagefolder(
    root: Path, image_size: int | None = None, on_corrupt: str = "skip", num_workers: int | None = None
) -> DataSplits:
    """Load an ImageFolder tree (see module docstring); ``image_size`` defaults to 64.

    Unreadable images are skipped with a warning (``on_corrupt="skip"``) or
    raise :class:`DataError` naming the file (``on_corrupt="error"``).
    """
    size = DEFAULT_IMAGEFOLDER_SIZE if image_size is None else int(image_size)
    if size < 1:
        raise DataError(f"image_size must be a positive integer, got {image_size}; e.g. image_size=64")
    workers = num_workers if num_workers is not None else min(8, os.cpu_count() or 1)
    notes: list[str] = []
    names = {d.name: d for d in _subdirs(root)}
    if "train" in names:
        train_list = _list_split(names["train"], None, "train")
        test_dir = names.get("test") or names.get("val")
        if test_dir is None:
            notes.append(f"no test/ or val/ folder next to {names['train']}: test split is None")
        elif "test" in names and "val" in names:
            notes.append("both test/ and val/ exist: using test/, ignoring val/")
        c2i = None if train_list.classes is None else {c: i for i, c in enumerate(train_list.classes)}
        test_list = _list_split(test_dir, c2i, test_dir.name) if test_dir is not None else None
    else:
        train_list, test_list = _list_split(root, None, "dataset"), None
        notes.append("flat folder without train/ and test/ sub-folders: test split is None "
                     "(evaluation needs root/train and root/test)")
    if train_list.classes is None:
        notes.append("no class folders: unlabeled")

    lists = [l for l in (train_list, test_list) if l is not None]
    decoded = [_decode_all(l.files, size, on_corrupt, workers) for l in lists]
    bad = [b for _, _, bl in decoded for b in bl]
    if bad:
        count = f"skipped {len(bad)} unreadable images"
        warnings.warn(f"{count} (first: {bad[0][0]}: {bad[0][1]}); set data.on_corrupt=error (Python: "
                      f"on_corrupt='error') to stop instead", DataWarning, stacklevel=3)
        notes.append(count)  # the summary counts them; the warning (once) names the first and the fix
    all_gray = all(bool(g.all()) for _, g, _ in decoded)
    skipped = {p for p, _ in bad}
    splits: list[ImageArray] = []
    for listing, (buf, _, _) in zip(lists, decoded):
        keep = np.array([f not in skipped for f in listing.files], dtype=bool)
        if not keep.any():
            raise DataError(f"every image under {listing.files[0].parent} is unreadable; check the files")
        if not keep.all():
            buf = buf[keep]
        x = np.ascontiguousarray(buf[..., :1]) if all_gray else buf
        labels = None if listing.labels is None else np.asarray(listing.labels, dtype=np.int64)[keep]
        splits.append(ImageArray(x.transpose(0, 3, 1, 2), labels, listing.classes))
    train = splits[0]
    return DataSplits(
        train=train,
        test=splits[1] if len(splits) > 1 else None,
        name=root.resolve().name,
        num_classes=len(train.classes) if train.classes is not None else None,
        notes=notes,
    )
