"""Writing the annotated video: H.264 in MP4, which browsers play.

OpenCV's pip wheel has no H.264 encoder (asking it for one prints codec errors and falls back
to MPEG-4 Part 2, which browsers do not play). The frames go instead to the static ffmpeg that
the ``imageio-ffmpeg`` package ships (libx264; ``$IMAGEIO_FFMPEG_EXE`` or a system ffmpeg
when the package has no binary for the platform), as raw BGR on its standard input: a
separate program, so its encoding runs beside the caller's work. Only when no ffmpeg can be
found at all is the video written by OpenCV as MPEG-4 Part 2, said once in the log.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import tempfile
from pathlib import Path
from typing import IO, Any

import numpy as np

from dms.errors import InputError

log = logging.getLogger(__name__)

CRF = 23  # x264 quality (lower = better, 18-28 is the usual range); overlays stay sharp
PRESET = "veryfast"  # x264 speed/size trade-off: a 2-core machine keeps up with the replay


def ffmpeg_exe() -> str | None:
    """The ffmpeg that imageio-ffmpeg provides (its own binary, ``$IMAGEIO_FFMPEG_EXE`` or
    the system's), or None when there is none."""
    try:
        import imageio_ffmpeg
    except ImportError:
        return None
    try:
        return str(imageio_ffmpeg.get_ffmpeg_exe())
    except RuntimeError:
        return None


class VideoFileWriter:
    """``VideoFileWriter(path, fps, (width, height))``; ``write(bgr)`` per frame, ``close()``.

    ``codec`` says what is written: ``h264`` (ffmpeg, yuv420p, ``+faststart`` so a browser
    starts playing before the whole file is loaded) or ``mp4v`` (OpenCV's MPEG-4 Part 2, only
    without any ffmpeg). Faults name the file and ffmpeg's last message (:class:`InputError`).
    """

    def __init__(self, path: str | Path, fps: float, size: tuple[int, int],
                 ffmpeg: str | None = "auto") -> None:
        self.path = Path(path)
        self.size = (int(size[0]), int(size[1]))
        self.frames = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InputError(f"{self.path}: cannot create the folder: {exc}") from None
        exe = ffmpeg_exe() if ffmpeg == "auto" else ffmpeg
        self._proc: subprocess.Popen[bytes] | None = None
        self._cv: Any = None
        self._log: IO[bytes] | None = None
        if exe is not None:
            self.codec = "h264"
            self._start_ffmpeg(exe, fps)
        else:
            self.codec = "mp4v"
            self._start_opencv(fps)

    def _start_ffmpeg(self, exe: str, fps: float) -> None:
        w, h = self.size
        cmd = [exe, "-hide_banner", "-nostdin", "-loglevel", "error", "-y",
               "-f", "rawvideo", "-pix_fmt", "bgr24", "-s", f"{w}x{h}", "-r", f"{fps:.6g}",
               "-i", "-", "-an", "-c:v", "libx264", "-preset", PRESET, "-crf", str(CRF),
               # yuv420p halves the chroma: odd sizes are padded by one black pixel
               "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", "-pix_fmt", "yuv420p",
               "-movflags", "+faststart", str(self.path)]
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - ffmpeg's stderr; close() ends it
        try:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE,
                                          stdout=subprocess.DEVNULL, stderr=self._log)
        except OSError as exc:
            self._log.close()
            raise InputError(f"{self.path}: cannot start ffmpeg ({exe}): {exc}") from None

    def _start_opencv(self, fps: float) -> None:
        import cv2

        log.warning("%s: no ffmpeg found (imageio-ffmpeg is not installed and none is on "
                    "PATH); writing MPEG-4 Part 2, which browsers do not play", self.path)
        self._cv = cv2.VideoWriter(str(self.path), cv2.VideoWriter.fourcc(*"mp4v"), fps,
                                   self.size)
        if not self._cv.isOpened():
            raise InputError(f"{self.path}: cannot write a video here")

    def write(self, frame_bgr: np.ndarray) -> None:
        if frame_bgr.shape[1::-1] != self.size or frame_bgr.ndim != 3:
            raise ValueError(f"frame {frame_bgr.shape} does not match the video size "
                             f"{self.size}")
        if self._cv is not None:
            self._cv.write(frame_bgr)
        else:
            assert self._proc is not None and self._proc.stdin is not None
            try:
                self._proc.stdin.write(np.ascontiguousarray(frame_bgr, np.uint8).data)
            except (BrokenPipeError, OSError):
                self._proc.wait()
                raise InputError(f"{self.path}: ffmpeg stopped: {self._last_error()}") from None
        self.frames += 1

    def close(self) -> None:
        """Finish the file (waits for ffmpeg to encode what it holds)."""
        if self._cv is not None:
            self._cv.release()
            self._cv = None
            return
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()
            code = proc.wait()
            if code != 0:
                raise InputError(f"{self.path}: ffmpeg failed (exit {code}): "
                                 f"{self._last_error()}")
        finally:
            if self._log is not None:
                self._log.close()

    def _last_error(self) -> str:
        if self._log is None:
            return "no message"
        self._log.seek(0)
        lines = [ln.strip() for ln in self._log.read().decode("utf-8", "replace").splitlines()
                 if ln.strip()]
        return lines[-1] if lines else "no message"

    def __enter__(self) -> VideoFileWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
