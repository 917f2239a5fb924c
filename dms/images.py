"""Reading still images safely: the size is checked from the file's header before anything is
decoded, so a hostile or absurd file (a 30000x30000 PNG decodes to 2.7 GB, and took 5.4 GB)
is refused with a clear error instead of exhausting memory."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np

from dms.errors import InputError

MAX_PIXELS = 50_000_000  # 50 MP: more than any camera frame or photo dms needs (8K is 33 MP)
# OpenCV's own ceiling for formats whose header is not parsed here (read at its first decode)
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", str(MAX_PIXELS))


def header_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) from the first bytes of a PNG, JPEG, GIF or BMP file; None when the
    format is not one of these or the header is cut short."""
    if head.startswith(b"\x89PNG\r\n\x1a\n") and len(head) >= 24:
        w, h = struct.unpack(">II", head[16:24])
        return int(w), int(h)
    if head[:6] in (b"GIF87a", b"GIF89a") and len(head) >= 10:
        w, h = struct.unpack("<HH", head[6:10])
        return int(w), int(h)
    if head.startswith(b"BM") and len(head) >= 26:
        w, h = struct.unpack("<ii", head[18:26])
        return abs(int(w)), abs(int(h))
    if head.startswith(b"\xff\xd8"):
        return _jpeg_size(head)
    return None


def _jpeg_size(head: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 9 < len(head):
        if head[i] != 0xFF:
            return None
        marker = head[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        (length,) = struct.unpack(">H", head[i + 2:i + 4])
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE,
                      0xCF):
            h, w = struct.unpack(">HH", head[i + 5:i + 9])
            return int(w), int(h)
        i += 2 + length
    return None


def read_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """A BGR image, or InputError naming the file: missing, not an image, or larger than
    ``max_pixels`` (checked before decoding)."""
    import cv2

    p = Path(path)
    if not p.exists():
        raise InputError(f"{p}: no such file")
    if not p.is_file():
        raise InputError(f"{p}: not a file")
    try:
        with open(p, "rb") as f:
            head = f.read(256 * 1024)
    except OSError as exc:
        raise InputError(f"{p}: cannot read ({exc})") from None
    size = header_size(head)
    if size is not None and size[0] * size[1] > max_pixels:
        raise InputError(f"{p}: {size[0]}x{size[1]} pixels is larger than the {max_pixels:,} "
                         "pixel limit for still images")
    img = cv2.imread(str(p), cv2.IMREAD_COLOR)
    if img is None:
        raise InputError(f"{p}: not a readable image")
    return img
