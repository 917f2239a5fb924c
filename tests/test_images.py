"""Still images are size-checked from their header before decoding (issue 13, item 10:
``dms pose`` on a 30000x30000 PNG used 5.4 GB)."""

from __future__ import annotations

import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from dms.errors import InputError
from dms.images import MAX_PIXELS, header_size, read_image


def huge_png(path: Path, w: int = 30000, h: int = 30000) -> Path:
    """A valid PNG header announcing w x h (the pixel data is never reached)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("ext", [".png", ".jpg", ".bmp"])
def test_header_sizes_match_opencv(tmp_path: Path, ext: str) -> None:
    img = np.zeros((37, 53, 3), np.uint8)
    ok, buf = cv2.imencode(ext, img)
    assert ok
    assert header_size(buf.tobytes()) == (53, 37)


def test_a_huge_image_is_refused_before_decoding(tmp_path: Path) -> None:
    path = huge_png(tmp_path / "huge.png")
    with pytest.raises(InputError, match="pixel limit"):
        read_image(path)
    p = subprocess.run([sys.executable, "-m", "dms", "pose", str(path)], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 2 and "30000x30000" in p.stderr and "Traceback" not in p.stderr


def test_normal_images_still_read(tmp_path: Path) -> None:
    path = tmp_path / "ok.png"
    cv2.imwrite(str(path), np.full((40, 60, 3), 7, np.uint8))
    assert read_image(path).shape == (40, 60, 3)
    assert MAX_PIXELS > 40 * 60
