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
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from dms.errors import DmsError, InputError

if TYPE_CHECKING:
    from dms.config import CameraSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Frame:
    image: np.ndarray
    t_s: float
    index: int


def as_bgr(image: object) -> tuple[np.ndarray | None, str]:
    """The frame as an HxWx3 uint8 BGR image, converting what can be converted: GRAY8 (2-D,
    or HxWx1: monochrome IR cameras), BGRA (4 channels), 16-bit (scaled) and finite float
    images (0..1 or 0..255). Returns (image, "") or (None, why) for what cannot be used: not
    an array, an empty (0x0) frame, other channel counts, NaN or infinite pixels."""
    if not isinstance(image, np.ndarray):
        return None, f"not an image array ({type(image).__name__})"
    img = image
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if img.ndim not in (2, 3) or img.shape[0] < 2 or img.shape[1] < 2:
        return None, f"unusable frame shape {img.shape}"
    if img.ndim == 3 and img.shape[2] not in (3, 4):
        return None, f"{img.shape[2]} channels (need 1, 3 or 4)"
    if img.dtype != np.uint8:
        if img.dtype.kind == "f":
            if not np.isfinite(img).all():
                return None, "NaN or infinite pixels"
            scale = 255.0 if float(img.max(initial=0.0)) <= 1.0 else 1.0
            img = np.clip(img * scale, 0, 255).astype(np.uint8)
        elif img.dtype == np.uint16:
            img = (img >> 8).astype(np.uint8)
        elif img.dtype.kind in "iub":
            img = np.clip(img, 0, 255).astype(np.uint8)
        else:
            return None, f"pixel type {img.dtype}"
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    elif img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    return np.ascontiguousarray(img), ""


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


def open_capture(source: str, *, width: int = 0, height: int = 0,
                 fps: float = 0.0) -> cv2.VideoCapture:
    """An opened cv2.VideoCapture for ``source`` or InputError naming it. For a V4L2 camera
    a non-zero ``width``/``height``/``fps`` is requested (the driver may pick the nearest
    mode it has: what it delivers is logged)."""
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
    if kind == "camera" and (width or height or fps):
        _request_mode(cap, source, width, height, fps)
    return cap


def _request_mode(cap: cv2.VideoCapture, source: str, width: int, height: int,
                  fps: float) -> None:
    for prop, value in ((cv2.CAP_PROP_FRAME_WIDTH, width), (cv2.CAP_PROP_FRAME_HEIGHT, height),
                        (cv2.CAP_PROP_FPS, fps)):
        if value:
            cap.set(prop, float(value))
    got = (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT),
           cap.get(cv2.CAP_PROP_FPS))
    log.info("camera %s: asked for %sx%s at %s fps, delivers %.0fx%.0f at %.1f fps", source,
             width or "default", height or "default", fps or "default", *got)


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


def video_frame_count(path: str) -> int:
    """Frames the file says it has (0 when unknown or not a file)."""
    if source_kind(path) != "file":
        return 0
    cap = open_capture(path)
    try:
        n = cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0.0
    finally:
        cap.release()
    return int(n) if 0 < n < 1e9 else 0


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


def frames_from_source(source: str, timeout_s: float = 5.0) -> Iterator[Frame]:
    """Frames of a video file in order, or live frames of a camera source until it stops
    delivering for ``timeout_s`` (``dms calibrate --source``; ``dms run`` reads through
    :class:`FrameSource`, which also reports a lost and a restored camera)."""
    if source_kind(source) == "file":
        yield from video_frames(source)
        return
    reader = LatestFrameReader(source)
    try:
        while (f := reader.read(timeout_s=timeout_s)) is not None:
            yield f
    finally:
        reader.close()


@dataclass(frozen=True, slots=True)
class SourceStatus:
    """A change of the camera's condition, yielded between frames."""

    t_s: float
    status: str  # "lost" | "waiting" | "restored" | "ended"
    detail: str = ""


class FrameSource:
    """Frames from the configured camera, reopened with back-off when lost.

    Video files are paced at their own frame rate when ``realtime`` (so ``dms run`` on a
    recording behaves like the car), and their timestamps come from the file. Live cameras
    get the requested ``width``/``height``/``fps`` (0 = the camera's default; what the camera
    actually delivers is logged). While a lost camera is being reopened, a ``waiting`` status
    is yielded at least every ``HEARTBEAT_S``, so the loop stays alive (watchdog, state).
    """

    HEARTBEAT_S = 1.0

    def __init__(
        self,
        cfg: CameraSettings,
        *,
        opener: Callable[[str], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self._opener = opener or (lambda source: open_capture(
            source, width=cfg.width, height=cfg.height, fps=cfg.fps))
        self._clock = clock
        self.reconnects = 0
        self.reopens = 0  # video files with loop: times the file was opened again
        self.skipped_frames = 0  # undecodable frames skipped in video files

    def frames(self, stop: threading.Event) -> Iterator[Frame | SourceStatus]:
        if source_kind(self.cfg.source) == "file":
            yield from self._file_frames(stop)
        else:
            yield from self._live_frames(stop)

    def _file_frames(self, stop: threading.Event) -> Iterator[Frame | SourceStatus]:
        fps = video_fps(self.cfg.source)
        offset_s, index = 0.0, 0
        start = self._clock()
        while not stop.is_set():
            cap = self._opener(self.cfg.source)
            reader = FileFrames(cap, self.cfg.source)
            n = 0
            try:
                for pos, img in reader:
                    if stop.is_set():
                        break
                    t_s = offset_s + pos / fps
                    if self.cfg.realtime:
                        delay = start + t_s - self._clock()
                        if delay > 0 and stop.wait(delay):
                            return
                    yield Frame(img, t_s, index)
                    n += 1
                    index += 1
            finally:
                cap.release()
                self.skipped_frames += reader.skipped
            if stop.is_set():
                return
            if n == 0 or not self.cfg.loop:
                yield SourceStatus(offset_s + reader.positions / fps, "ended", self.cfg.source)
                return
            offset_s += reader.positions / fps
            self.reopens += 1
            log.debug("%s: end of file after %d frames; looping (reopen %d)", self.cfg.source,
                      n, self.reopens)

    def _live_frames(self, stop: threading.Event) -> Iterator[Frame | SourceStatus]:
        """Frames while the camera delivers; otherwise ``lost``, then ``waiting`` heartbeats
        through the back-off and ``restored`` once it opens again. A camera missing at start
        is lost from the start: the caller keeps running and monitoring begins when it
        appears."""
        start = self._clock()

        def clock() -> float:  # the run's clock: seconds since the source was started
            return self._clock() - start

        reader: LatestFrameReader | None = None
        try:
            reader = self._open_reader(clock)
        except DmsError as exc:
            yield SourceStatus(clock(), "lost", str(exc))
        backoff = self.cfg.reconnect_min_s
        try:
            while not stop.is_set():
                if reader is not None:
                    frame = reader.read(timeout_s=self.cfg.frame_timeout_s)
                    if frame is not None:
                        backoff = self.cfg.reconnect_min_s
                        yield frame
                        continue
                    why = "stream ended" if reader.failed else (
                        f"no frame for {self.cfg.frame_timeout_s:g} s")
                    yield SourceStatus(clock(), "lost", f"{self.cfg.source}: {why}")
                    reader.close()
                    reader = None
                log.warning("camera %s unavailable; reopening in %.1f s", self.cfg.source,
                            backoff)
                until = clock() + backoff
                while (left := until - clock()) > 0:
                    if stop.wait(min(left, self.HEARTBEAT_S)):
                        return
                    yield SourceStatus(clock(), "waiting", self.cfg.source)
                backoff = min(backoff * 2.0, self.cfg.reconnect_max_s)
                try:
                    reader = self._open_reader(clock)
                except DmsError as exc:
                    log.debug("camera %s: %s", self.cfg.source, exc)
                    continue
                self.reconnects += 1
                yield SourceStatus(clock(), "restored", self.cfg.source)
        finally:
            if reader is not None:
                reader.close()

    def _open_reader(self, clock: Callable[[], float]) -> LatestFrameReader:
        return LatestFrameReader(self.cfg.source, opener=self._opener, clock=clock)
