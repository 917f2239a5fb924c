"""[camera] width/height/fps reach the camera (V4L2 is what this machine lacks: a fake
capture records the requests, behind OpenCV's VideoCapture interface)."""

from __future__ import annotations

import logging

import cv2
import pytest

from dms import capture
from dms.capture import FrameSource
from dms.config import CameraSettings


class RecordingCapture:
    def __init__(self, *args: object) -> None:
        self.props: dict[int, float] = {}

    def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
        return True

    def set(self, prop: int, value: float) -> bool:
        self.props[prop] = value
        return True

    def get(self, prop: int) -> float:
        return self.props.get(prop, 0.0)

    def release(self) -> None:
        pass


def test_camera_mode_is_requested_and_logged(monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(capture.cv2, "VideoCapture", RecordingCapture)
    with caplog.at_level(logging.INFO, logger="dms.capture"):
        cap = capture.open_capture("/dev/video0", width=1280, height=720, fps=30)
    assert cap.props == {cv2.CAP_PROP_FRAME_WIDTH: 1280.0, cv2.CAP_PROP_FRAME_HEIGHT: 720.0,
                         cv2.CAP_PROP_FPS: 30.0}
    assert "asked for 1280x720 at 30 fps, delivers 1280x720 at 30.0 fps" in caplog.text
    default = capture.open_capture("/dev/video0")
    assert default.props == {}  # 0 = the camera's own mode: nothing requested


def test_frame_source_opens_the_camera_with_the_configured_mode(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(capture.cv2, "VideoCapture", RecordingCapture)
    src = FrameSource(CameraSettings(source="0", width=640, height=480, fps=15))
    cap = src._opener("0")  # noqa: SLF001 - the opener the live reader uses
    assert cap.props[cv2.CAP_PROP_FRAME_WIDTH] == 640.0
    assert cap.props[cv2.CAP_PROP_FPS] == 15.0
