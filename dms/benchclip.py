"""A 640x480 benchmark clip the project can make offline.

The face is the public-domain astronaut portrait (NASA, shipped in scikit-image as
``skimage/data/astronaut.png``) composited into a dark cabin-like frame and moved along a
smooth path: sway, roll of +-12 deg, scale changes of +-15 %, a lighting drift and sensor
noise. It exercises detection and tracking at realistic in-cabin speed; it is not a
ground-truth head-pose video (the synthetic-video generator is for that).
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from dms.errors import InputError
from dms.paths import load_photo

log = logging.getLogger(__name__)

WIDTH, HEIGHT, FPS = 640, 480, 30


def public_domain_face() -> np.ndarray:
    """The astronaut portrait (BGR) from scikit-image's data directory."""
    return load_photo("astronaut")


def render_clip(path: Path, seconds: float = 10.0, seed: int = 0) -> Path:
    """Write the clip to ``path`` (mp4v) and return it."""
    rng = np.random.default_rng(seed)
    face = public_domain_face()[0:300, 100:400]  # head and shoulders
    n = int(seconds * FPS)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part.mp4")
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter.fourcc(*"mp4v"), FPS, (WIDTH, HEIGHT))
    if not writer.isOpened():
        raise InputError(f"{path}: OpenCV cannot write mp4v video here")
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    vignette = (1.0 - 0.5 * (((xx - WIDTH / 2) / WIDTH) ** 2 + ((yy - HEIGHT / 2) / HEIGHT) ** 2))
    base = (np.dstack([vignette] * 3) * np.array([38, 34, 30])).astype(np.float32)
    fh, fw = face.shape[:2]
    for i in range(n):
        t = i / FPS
        angle = 12.0 * np.sin(2 * np.pi * t / 4.0)
        scale = 1.0 + 0.15 * np.sin(2 * np.pi * t / 7.0)
        cx = WIDTH / 2 + 60 * np.sin(2 * np.pi * t / 5.0)
        cy = HEIGHT / 2 + 20 * np.sin(2 * np.pi * t / 3.0)
        A = cv2.getRotationMatrix2D((fw / 2, fh / 2), angle, scale)
        A[:, 2] += (cx - fw / 2, cy - fh / 2)
        layer = cv2.warpAffine(face, A, (WIDTH, HEIGHT), flags=cv2.INTER_LINEAR)
        mask = cv2.warpAffine(np.ones((fh, fw), np.float32), A, (WIDTH, HEIGHT))[..., None]
        light = 0.8 + 0.2 * np.sin(2 * np.pi * t / 6.0)
        frame = base * (1 - mask) + layer.astype(np.float32) * mask * light
        frame += rng.normal(0.0, 4.0, frame.shape).astype(np.float32)
        writer.write(np.clip(frame, 0, 255).astype(np.uint8))
    writer.release()
    tmp.replace(path)
    return path


def default_clip(cache_dir: Path | None = None) -> Path:
    """The cached clip, rendered on first use."""
    cache_dir = cache_dir or Path.home() / ".cache" / "dms"
    p = cache_dir / "bench_640x480.mp4"
    if not p.is_file():
        log.info("rendering benchmark clip %s", p)
        render_clip(p)
    return p
