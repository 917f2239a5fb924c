"""A monochrome IR camera (GRAY8: 2-D frames, as V4L2 and GStreamer's ``format=GRAY8``
deliver them) through the whole service loop: FrameSource -> DriverMonitor.step (eyes
measured) -> engine -> events. The camera device is the only fake (none on this machine): it
plays a real IR render of a microsleep and hands out its frames as 2-D uint8 arrays."""

from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from dms.capture import FrameSource
from dms.config import load_config
from dms.synth.render import render_scenario


class _Gray8Camera:
    """cv2.VideoCapture-like: the frames of a video file as GRAY8 (H x W, uint8), delivered
    at the file's frame rate like a live camera (frames are stamped at arrival)."""

    def __init__(self, video: Path) -> None:
        self._cap = cv2.VideoCapture(str(video))
        self._period = 1.0 / (self._cap.get(cv2.CAP_PROP_FPS) or 15.0)
        self._next: float | None = None
        self.shapes: list[tuple[int, ...]] = []

    def read(self) -> tuple[bool, np.ndarray | None]:
        now = time.monotonic()
        self._next = now if self._next is None else self._next + self._period
        if self._next > now:
            time.sleep(self._next - now)
        ok, img = self._cap.read()
        if not ok:
            return False, None
        gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        self.shapes.append(gray.shape)
        return True, gray

    def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
        return self._cap.isOpened()

    def get(self, prop: int) -> float:
        return float(self._cap.get(prop))

    def set(self, prop: int, value: float) -> bool:
        return False

    def release(self) -> None:
        self._cap.release()


@pytest.fixture(scope="module")
def ir_microsleep() -> tuple[Path, dict]:
    clip = render_scenario("eyes_microsleep", ir=True)
    expected = json.loads(Path(clip.expected_events).read_text())["events"]
    return Path(clip.video), expected[0]


def test_gray8_camera_runs_end_to_end_and_raises_the_microsleep(tmp_path: Path,
                                                                 ir_microsleep) -> None:
    from dms.service import build_service

    video, want = ir_microsleep
    assert want["type"] == "drowsiness" and want["reason"] == "microsleep"
    cfg_path = tmp_path / "dms.toml"
    cfg_path.write_text(f'[camera]\nsource = "/dev/video9"\nframe_timeout_s = 30\n'
                        f'[service]\nstate_dir = "{tmp_path / "state"}"\n'
                        f'[mqtt]\nenabled = false\n')
    cfg = load_config(cfg_path)
    cams: list[_Gray8Camera] = []

    def opener(_source: str) -> _Gray8Camera:
        cams.append(_Gray8Camera(video))
        return cams[-1]

    events: list[dict] = []
    service = build_service(cfg, on_event=events.append)
    frames = int(cv2.VideoCapture(str(video)).get(cv2.CAP_PROP_FRAME_COUNT))
    rc = service.run(FrameSource(cfg.camera, opener=opener), max_frames=frames)
    assert rc == 0
    assert cams and cams[0].shapes and all(len(s) == 2 for s in cams[0].shapes)  # GRAY8
    kinds = [(e["type"], e["reason"]) for e in events if e.get("phase") == "raised"]
    assert ("drowsiness", "microsleep") in kinds, kinds
    assert not [k for k in kinds if k[0] == "distraction"]
    assert service.monitor is not None and service.monitor.bad_frames == 0
