"""The frames of the live view: the frame loop hands each result over in O(1), one encoder
thread draws the overlays and encodes JPEG at the capped rate, viewers wait for the latest.

The frame loop never waits for the preview: :meth:`FrameHub.offer` keeps a reference to the
newest frame under a lock held for a few assignments (nothing at all while nobody watches).
The encoder thread takes the newest frame at most ``max_fps`` times a second, scales it to
``max_width``, draws the annotated video's overlays (:class:`dms.viz.VideoAnnotator`: face
box, head axes, state, alert banner, active alerts, calibration progress) plus the road zone
and the live-view indicator, and encodes it once for every viewer. Each viewer is sent the
newest JPEG when it is ready for one: a slow viewer skips frames, memory holds one frame.
Nothing is written to disk.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from dms.engine.settings import ZoneSettings
from dms.preview.settings import PreviewSettings
from dms.types import FaceBox

log = logging.getLogger(__name__)

MAX_PENDING_EVENTS = 64  # events kept between two encoded frames (for the banner's memory)
INSET_DEG = 60.0  # the road-zone inset spans +-this many degrees of yaw and pitch


class FrameHub:
    """Latest frame in, JPEG out. ``start()`` starts the encoder thread, ``close()`` ends it."""

    def __init__(self, settings: PreviewSettings, zones: ZoneSettings,
                 clock: Callable[[], float] = time.monotonic) -> None:
        from dms.viz import VideoAnnotator

        self.settings = settings
        self.zones = zones
        self._clock = clock
        self._annotator = VideoAnnotator()
        self._lock = threading.Lock()
        self._latest: tuple[np.ndarray, FaceBox | None, Any] | None = None
        self._events: list[Any] = []
        self._fresh = threading.Event()
        self._stop = threading.Event()
        self._jpeg_cond = threading.Condition()
        self._jpeg: bytes | None = None
        self._jpeg_seq = 0
        self._viewers = 0
        self._thread: threading.Thread | None = None
        self.frames_encoded = 0
        self.encode_errors = 0
        self.encode_cpu_s = 0.0  # CPU time the encoder thread spent drawing and encoding

    # -- the frame loop's side ------------------------------------------------------------------
    def offer(self, image: np.ndarray, face: FaceBox | None, result: Any) -> None:
        """The newest frame and its engine result (the frame loop; returns at once)."""
        if self._viewers == 0:
            return
        with self._lock:
            self._latest = (image, face, result)
            if len(self._events) < MAX_PENDING_EVENTS:
                self._events.extend(result.events)
        self._fresh.set()

    # -- viewers --------------------------------------------------------------------------------
    @property
    def viewers(self) -> int:
        return self._viewers

    @contextmanager
    def viewer(self) -> Iterator[None]:
        """Counts a viewer while the block runs (the indicator and the log use the count)."""
        with self._jpeg_cond:
            self._viewers += 1
        try:
            yield
        finally:
            with self._jpeg_cond:
                self._viewers -= 1
                if self._viewers == 0:
                    self._jpeg = None  # no stale picture for the next viewer

    def wait_jpeg(self, after_seq: int, timeout_s: float) -> tuple[bytes | None, int]:
        """The newest JPEG once it is newer than ``after_seq`` (None after ``timeout_s``)."""
        with self._jpeg_cond:
            self._jpeg_cond.wait_for(
                lambda: self._stop.is_set() or (self._jpeg is not None
                                                and self._jpeg_seq > after_seq), timeout_s)
            if self._jpeg is None or self._jpeg_seq <= after_seq:
                return None, after_seq
            return self._jpeg, self._jpeg_seq

    # -- the encoder thread ---------------------------------------------------------------------
    def start(self) -> FrameHub:
        self._thread = threading.Thread(target=self._run, name="dms-preview-encoder",
                                        daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        self._fresh.set()
        with self._jpeg_cond:
            self._jpeg_cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=2.0)

    def _run(self) -> None:
        period = 1.0 / self.settings.max_fps
        next_t = self._clock()
        while not self._stop.is_set():
            if not self._fresh.wait(timeout=0.5):
                continue
            wait = next_t - self._clock()
            if wait > 0 and self._stop.wait(wait):  # the rate cap
                break
            with self._lock:
                latest, events = self._latest, self._events
                self._latest, self._events = None, []
                self._fresh.clear()
            if latest is None or self._viewers == 0:
                continue
            next_t = self._clock() + period
            cpu0 = time.thread_time()
            try:
                jpeg = self.render(*latest, events)
            except Exception:  # noqa: BLE001 - the preview must never stop anything
                self.encode_errors += 1
                if self.encode_errors == 1 or self.encode_errors % 100 == 0:
                    log.exception("preview: a frame could not be drawn (%d so far)",
                                  self.encode_errors)
                continue
            finally:
                self.encode_cpu_s += time.thread_time() - cpu0
            with self._jpeg_cond:
                self._jpeg, self._jpeg_seq = jpeg, self._jpeg_seq + 1
                self._jpeg_cond.notify_all()
            self.frames_encoded += 1

    def render(self, image: np.ndarray, face: FaceBox | None, result: Any,
               events: list[Any]) -> bytes:
        """The stream's JPEG of one frame: scaled, annotated, marked as watched."""
        import cv2

        from dms.capture import as_bgr

        img, _ = as_bgr(image)
        if img is None:
            raise ValueError("frame cannot be shown")
        scale = min(1.0, self.settings.max_width / img.shape[1])
        if scale < 1.0:
            img = cv2.resize(img, (round(img.shape[1] * scale), round(img.shape[0] * scale)),
                             interpolation=cv2.INTER_AREA)
            if face is not None:
                face = dataclasses.replace(face, x1=face.x1 * scale, y1=face.y1 * scale,
                                           x2=face.x2 * scale, y2=face.y2 * scale,
                                           keypoints=None)
        shown = dataclasses.replace(result, events=tuple(events))
        out = self._annotator.frame(img, face, shown)
        draw_road_zone(out, result.relative, self.zones)
        draw_watched(out, self._viewers)
        ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY,
                                             int(self.settings.jpeg_quality)])
        if not ok:
            raise ValueError("JPEG encoding failed")
        return bytes(buf)


def draw_road_zone(img: np.ndarray, relative: Any, zones: ZoneSettings) -> None:
    """An inset (right edge, under the state line): the road zone as a green box in yaw
    (inboard to the image's left, as the camera sees the driver turn) and pitch (up), the
    head's pose relative to neutral as a dot (red when outside the zone). In place."""
    import cv2

    h, w = img.shape[:2]
    size = max(40, min(w, h) // 5)
    x0, y0 = w - size - 8, 70  # under the alert banner
    cv2.rectangle(img, (x0, y0), (x0 + size, y0 + size), (60, 60, 60), -1)

    def to_px(yaw_in: float, pitch: float) -> tuple[int, int]:
        u = 0.5 - max(-1.0, min(1.0, yaw_in / INSET_DEG)) / 2
        v = 0.5 - max(-1.0, min(1.0, pitch / INSET_DEG)) / 2
        return x0 + round(u * size), y0 + round(v * size)

    cv2.rectangle(img, to_px(zones.yaw_inboard_deg, zones.pitch_up_deg),
                  to_px(-zones.yaw_outboard_deg, -zones.pitch_down_deg), (0, 200, 0), 1)
    cv2.putText(img, "road zone", (x0, y0 + size + 12), cv2.FONT_HERSHEY_SIMPLEX, 0.35,
                (0, 200, 0), 1, cv2.LINE_AA)
    if relative is None:
        return
    yaw_in, pitch = float(relative.yaw_inboard_deg), float(relative.pitch_deg)
    inside = (-zones.yaw_outboard_deg <= yaw_in <= zones.yaw_inboard_deg
              and -zones.pitch_down_deg <= pitch <= zones.pitch_up_deg)
    cv2.circle(img, to_px(yaw_in, pitch), 3, (0, 255, 0) if inside else (0, 0, 255), -1)


def draw_watched(img: np.ndarray, viewers: int) -> None:
    """The live-view indicator: a red frame and "LIVE VIEW: N watching". In place."""
    import cv2

    h, w = img.shape[:2]
    cv2.rectangle(img, (0, 0), (w - 1, h - 1), (0, 0, 255), 3)
    text = f"LIVE VIEW: {viewers} watching"
    cv2.circle(img, (w - 12 - 7 * len(text) - 10, h - 40), 5, (0, 0, 255), -1)
    cv2.putText(img, text, (w - 12 - 7 * len(text), h - 36), cv2.FONT_HERSHEY_SIMPLEX, 0.4,
                (0, 0, 255), 1, cv2.LINE_AA)
