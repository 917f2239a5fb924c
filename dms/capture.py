"""Frame sources: a video file, a V4L2 camera index, an RTSP URL or a GStreamer pipeline.

Each frame is stamped once, at capture, with monotonic seconds (``t_s``). A video file is read
frame by frame in order (``t_s`` from its frame rate, so replays are reproducible); live
sources are read in a thread that keeps only the newest frame, so a slow consumer never works
on stale images, and frames it drops are counted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from dms.errors import InputError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Frame:
    image: np.ndarray
    t_s: float
    index: int


def source_kind(source: str) -> str:
    """'camera' (an integer index or /dev/videoN), 'rtsp', 'gstreamer' or 'file'."""
    s = source.strip()
    if s.isdigit() or s.startswith("/dev/video"):
        return "camera"
    if s.split("://", 1)[0].lower() in ("rtsp", "rtsps", "http", "https"):
        return "rtsp"
    if "!" in s and ("appsink" in s or "src" in s):
        return "gstreamer"
    return "file"


def open_capture(source: str) -> cv2.VideoCapture:
    """An opened cv2.VideoCapture for ``source`` or InputError naming it."""
    kind = source_kind(source)
    if kind == "file":
        p = Path(source)
        if not p.is_file():
            raise InputError(f"{source}: no such video file")
        cap = cv2.VideoCapture(str(p))
    elif kind == "camera":
        index = int(source) if source.isdigit() else source
        cap = cv2.VideoCapture(index, cv2.CAP_V4L2)
    elif kind == "gstreamer":
        cap = cv2.VideoCapture(source, cv2.CAP_GSTREAMER)
    else:
        cap = cv2.VideoCapture(source, cv2.CAP_FFMPEG)
    if not cap.isOpened():
        hint = {
            "file": "not a video OpenCV can decode",
            "camera": "camera cannot be opened (missing device, busy, or no permission: "
            "is the user in the 'video' group?)",
            "gstreamer": "pipeline cannot be opened (OpenCV needs GStreamer support: on a "
            "Jetson use JetPack's OpenCV)",
            "rtsp": "stream cannot be opened (unreachable or unsupported)",
        }[kind]
        raise InputError(f"{source}: {hint}")
    return cap


MAX_BAD_FRAMES = 30  # consecutive undecodable frames skipped before a file counts as ended


class FileFrames:
    """``(position, image)`` for each decodable frame of an opened video file, in order.

    ``cap.read()`` also fails on one damaged packet in the middle of a file (the decoder
    rejects it; the next read goes on). Such frames are skipped and counted in ``skipped``
    instead of ending the file early, and ``position`` still counts them, so timestamps stay
    those of the file. The file ends at its frame count, or after ``max_bad`` consecutive
    failed reads. ``positions`` is how many frame slots were consumed (skips included).
    """

    def __init__(self, cap: cv2.VideoCapture, source: str = "", *,
                 max_bad: int = MAX_BAD_FRAMES) -> None:
        self.cap = cap
        self.source = source
        self.max_bad = max_bad
        self.skipped = 0
        self.positions = 0
        get = getattr(cap, "get", None)
        count = (get(cv2.CAP_PROP_FRAME_COUNT) if get else 0.0) or 0.0
        self._count = int(count) if 0 < count < 1e9 else 0

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        bad = 0
        while True:
            ok, img = self.cap.read()
            if ok:
                if bad:
                    log.warning("%s: %d undecodable frame(s) skipped before frame %d",
                                self.source, bad, self.positions + bad)
                    self.skipped += bad
                    self.positions += bad
                    bad = 0
                yield self.positions, img
                self.positions += 1
                continue
            bad += 1
            if bad > self.max_bad or (self._count and self.positions + bad >= self._count):
                return


def video_frames(path: str, *, max_frames: int | None = None) -> Iterator[Frame]:
    """Frames of a video file in order, ``t_s`` from the file's frame rate; undecodable
    frames are skipped (see :class:`FileFrames`)."""
    cap = open_capture(path)
    fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
    if not 1.0 <= fps <= 1000.0:
        fps = 30.0
    i = 0
    try:
        for pos, img in FileFrames(cap, path):
            if max_frames is not None and i >= max_frames:
                break
            yield Frame(img, pos / fps, i)
            i += 1
    finally:
        cap.release()
    if i == 0:
        raise InputError(f"{path}: video has no readable frames")


def video_fps(path: str) -> float:
    cap = open_capture(path)
    try:
        fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
    finally:
        cap.release()
    return fps if 1.0 <= fps <= 1000.0 else 30.0


class LatestFrameReader:
    """Reads a live source in a thread and keeps only the newest frame.

    ``read(timeout_s)`` returns the newest frame not yet returned, or None on timeout.
    ``dropped`` counts frames overwritten before anyone read them. ``opener`` is injectable
    so tests can feed frames without a camera.
    """

    def __init__(
        self,
        source: str,
        *,
        opener: Callable[[str], cv2.VideoCapture] = open_capture,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self._opener = opener
        self._clock = clock
        self._cap = opener(source)
        self._cond = threading.Condition()
        self._latest: Frame | None = None
        self._fresh = False
        self._index = 0
        self.dropped = 0
        self.failed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            ok, img = self._cap.read()
            if not ok:
                with self._cond:
                    self.failed = True
                    self._cond.notify_all()
                return
            frame = Frame(img, self._clock(), self._index)
            self._index += 1
            with self._cond:
                if self._fresh:
                    self.dropped += 1
                self._latest, self._fresh = frame, True
                self._cond.notify_all()

    def read(self, timeout_s: float = 1.0) -> Frame | None:
        with self._cond:
            if not self._cond.wait_for(lambda: self._fresh or self.failed, timeout=timeout_s):
                return None
            if not self._fresh:
                return None
            self._fresh = False
            return self._latest

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        self._cap.release()
