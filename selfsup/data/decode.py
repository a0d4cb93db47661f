"""Decoding real-world image files into uint8 tensors, and cutting views from them.

What a photo collection throws at a loader, and what happens here:

* EXIF orientation is applied (sizes in the index are the oriented ones);
* CMYK, YCbCr, palette and 16-bit images are converted; images with transparency (P, LA, RGBA)
  are composited onto one fixed background, :data:`BACKGROUND` (the ImageNet mean colour, which
  normalises to ~0);
* a dataset whose every image is grayscale stays 1-channel;
* decompression bombs (more than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels) are refused per file.

Decoders, as measured on a 2-core EPYC for a 500x375 JPEG (quality 90): PIL 1.3 ms, torchvision's
``decode_jpeg`` 0.9 ms, PIL with ``draft`` (libjpeg's DCT scaling) 0.7 / 0.6 / 0.5 ms at 1/2, 1/4,
1/8 size. So JPEGs are decoded by torchvision, or by PIL with ``draft`` when every crop of the
image is at least twice its output size; other formats by PIL. Crops are resized by torch's uint8
antialiased bilinear kernel (0.4 ms for a 224 px view, vs 0.8 ms for PIL's ``resize(box=...)``).
"""

from __future__ import annotations

import math
import struct
import warnings
from typing import BinaryIO, NamedTuple

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

try:
    from torchvision.io import ImageReadMode, decode_jpeg
except ImportError:  # pragma: no cover - a torchvision without its decoders
    decode_jpeg = None
from torchvision.transforms.v2 import functional as TF

from .errors import DataError

__all__ = ["BACKGROUND", "DECODE_ERRORS", "Header", "read_header", "decode", "cut", "resize_center", "draft_factor",
           "orient_tensor", "decode_error", "unreadable"]

#: transparent pixels are composited onto this colour (ImageNet mean, so ~0 after normalisation)
BACKGROUND = (124, 116, 104)
#: what PIL / torchvision raise for truncated, garbage or hostile files
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, RuntimeError, IndexError, KeyError, TypeError,
                 Image.DecompressionBombError, struct.error)
_GRAY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}

# We refuse oversized images ourselves (read_header), per file, so PIL's warning would only repeat it.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
# torchvision 0.29 deprecates its decoders in favour of torchcodec (not a dependency here) but still ships
# them; the supported 0.26 does not warn. If a later torchvision removes decode_jpeg, PIL decodes every JPEG.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)


class Header(NamedTuple):
    """What the index keeps per image: the oriented size, the EXIF orientation (1..8), whether the
    fast JPEG decoder applies (baseline RGB or L JPEG), and whether the image is grayscale."""

    width: int
    height: int
    orient: int
    fast_jpeg: bool
    gray: bool


def _palette_is_gray(img: Image.Image) -> bool:
    pal = img.getpalette() or []
    rgb = np.asarray(pal[: len(pal) // 3 * 3], dtype=np.uint8).reshape(-1, 3)
    return "transparency" not in img.info and bool((rgb == rgb[:, :1]).all())


def _check_pixels(w: int, h: int) -> None:
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and w * h > limit:
        raise Image.DecompressionBombError(
            f"{w}x{h} = {w * h} pixels is over PIL's decompression-bomb limit of {limit}; raise "
            "PIL.Image.MAX_IMAGE_PIXELS if the file is trusted")


def read_header(fp: BinaryIO) -> Header:
    """The :class:`Header` of an image file, from its header only (no pixel decode)."""
    with Image.open(fp) as img:
        w, h = img.size
        _check_pixels(w, h)
        orient = int(img.getexif().get(0x0112, 1) or 1)
        orient = orient if 1 <= orient <= 8 else 1
        gray = img.mode in _GRAY_MODES or (img.mode == "P" and _palette_is_gray(img))
        fast = img.format == "JPEG" and img.mode in ("RGB", "L")
    if orient >= 5:
        w, h = h, w
    return Header(w, h, orient, fast, gray)


def draft_factor(min_ratio: float) -> int:
    """The DCT-scaling factor (1, 2, 4 or 8) that keeps every crop at least its output size, given
    the smallest ``crop side / output side`` over the views of an image."""
    k = 1
    while k < 8 and min_ratio >= 2 * k:
        k *= 2
    return k


def orient_tensor(x: torch.Tensor, orient: int) -> torch.Tensor:
    """Apply EXIF orientation ``orient`` to ``x: [C, H, W]`` (what ``PIL.ImageOps.exif_transpose`` does)."""
    if orient == 2:
        return x.flip(-1)
    if orient == 3:
        return x.flip(-1, -2)
    if orient == 4:
        return x.flip(-2)
    if orient == 5:
        return x.transpose(-1, -2)
    if orient == 6:
        return torch.rot90(x, -1, (-2, -1))
    if orient == 7:
        return x.transpose(-1, -2).flip(-1, -2)
    if orient == 8:
        return torch.rot90(x, 1, (-2, -1))
    return x


def _to_mode(img: Image.Image, channels: int) -> Image.Image:
    """``img`` as ``L`` (channels 1) or ``RGB`` (channels 3): 16-bit scaled to 8, alpha composited."""
    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        a = np.asarray(img, dtype=np.int64)
        img = Image.fromarray((np.clip(a, 0, 65535) >> 8).astype(np.uint8))
    elif mode == "F":
        img = Image.fromarray(np.clip(np.asarray(img), 0, 255).astype(np.uint8))
    elif mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    elif mode == "1":
        img = img.convert("L")
    if img.mode in _ALPHA_MODES:
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        img = Image.alpha_composite(bg, rgba).convert("RGB")
    mode = "L" if channels == 1 else "RGB"
    return img if img.mode == mode else img.convert(mode)


def decode(data: bytes | memoryview, head: Header, channels: int, reduce: int = 1) -> torch.Tensor:
    """Decode to uint8 ``[channels, H', W']``, oriented; ``reduce`` > 1 lets libjpeg decode a JPEG at
    about ``1/reduce`` of its size (``H'`` and ``W'`` then say exactly what came out)."""
    if head.fast_jpeg and reduce == 1 and decode_jpeg is not None:
        raw = torch.frombuffer(bytearray(data), dtype=torch.uint8)  # a writable copy (torch warns on read-only)
        x = decode_jpeg(raw, mode=ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB)
        return orient_tensor(x, head.orient)
    from .readers import bytes_io

    with Image.open(bytes_io(data)) as img:
        _check_pixels(*img.size)
        if reduce > 1 and img.format == "JPEG":
            w0, h0 = img.size
            img.draft("L" if channels == 1 else "RGB", (math.ceil(w0 / reduce), math.ceil(h0 / reduce)))
        img = _to_mode(img, channels)
        arr = np.asarray(img)
    x = torch.from_numpy(arr.reshape(arr.shape[0], arr.shape[1], -1).copy()).permute(2, 0, 1)
    return orient_tensor(x, head.orient)


def cut(x: torch.Tensor, head: Header, boxes: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    """Crop ``boxes`` (``[V, 4]`` of ``(top, left, h, w)`` in the image's full-resolution, oriented
    pixels) from the decoded ``x`` (possibly reduced) and resize view ``v`` to ``sizes[v]`` squared,
    antialiased. Returns ``V`` uint8 tensors ``[C, s_v, s_v]``."""
    sy, sx = x.shape[-2] / head.height, x.shape[-1] / head.width
    out = []
    for (top, left, h, w), s in zip(boxes.tolist(), sizes):
        t, l = int(round(top * sy)), int(round(left * sx))
        hh = max(1, min(x.shape[-2] - t, int(round(h * sy))))
        ww = max(1, min(x.shape[-1] - l, int(round(w * sx))))
        out.append(TF.resized_crop(x, t, l, hh, ww, [s, s], antialias=True))
    return out


def resize_center(x: torch.Tensor, resize_to: int, crop: int) -> torch.Tensor:
    """Resize the shorter side of ``x: [C, H, W]`` to ``resize_to`` (antialiased) and centre-crop
    ``crop`` squared: the standard evaluation transform (``resize_to = crop / 0.875``)."""
    if min(x.shape[-2:]) != resize_to:
        x = TF.resize(x, resize_to, antialias=True)
    return TF.center_crop(x, [crop, crop]).contiguous()


def unreadable(name: str, err: str, what: str = "skip unreadable images") -> DataError:
    """The one-line error for an unreadable image under ``on_corrupt="error"``."""
    return DataError(f"cannot read image {name} ({err}); fix or delete it, or set data.on_corrupt=skip "
                     f"(Python: on_corrupt='skip') to {what}")


def decode_error(e: BaseException) -> str:
    """One-line description of a decode failure."""
    if isinstance(e, UnidentifiedImageError):
        return "UnidentifiedImageError: not an image format PIL can read"
    msg = str(e).splitlines()[0] if str(e) else ""
    if msg.startswith("decode_jpeg, ") and ", " in msg[13:]:  # torchvision prefixes the C++ source location
        msg = msg.rsplit(", ", 1)[1]
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__
