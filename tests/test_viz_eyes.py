"""Overlays and plot with the eyes: GRAY8 (IR) frames are drawn on in colour, the eye line
says what the eye rules see, the timeline gains an eye panel."""

from __future__ import annotations

import numpy as np

from dms.engine.calibration import NeutralPose
from dms.engine.engine import Engine
from dms.engine.settings import EngineSettings
from dms.geometry import rotation_from_euler
from dms.types import EyeObservation, HeadPose, Observation
from dms.viz import VideoAnnotator, eye_line, plot_timeline


def _run(openness: list[float | None]) -> list:
    engine = Engine(EngineSettings(), NeutralPose.from_euler(0, 0, 0))
    R = rotation_from_euler(0, 0, 0)
    out = []
    for i, o in enumerate(openness):
        eyes = EyeObservation(o, o, 0.9 if o is not None else 0.0, 0.0, 0.0, 0.0)
        out.append(engine.step(Observation(i / 30, HeadPose(R, 0, 0, 0, 0.95), eyes=eyes)))
    return out


def test_eye_line_follows_the_rules() -> None:
    results = _run([0.3] * 150 + [0.03] * 45)
    assert eye_line(results[30].state.policy.eyes).startswith(
        "eyes: learning this driver's open eyes")
    assert eye_line(results[149].state.policy.eyes).startswith("eyes: open (lids 1.0")
    assert eye_line(results[-1].state.policy.eyes).startswith("eyes: CLOSED 1.")
    hidden = _run([0.3] * 150 + [None] * 30)
    assert eye_line(hidden[-1].state.policy.eyes) == "eyes: not visible (sunglasses? " \
        "covered?): head rules only"


def test_gray8_frames_are_annotated_in_colour(tmp_path) -> None:
    results = _run([0.3] * 150 + [0.03] * 45)
    gray = np.full((240, 320), 90, np.uint8)
    img = VideoAnnotator().frame(gray, None, results[-1])
    assert img.shape == (240, 320, 3)
    assert (img != 90).any()  # something was drawn
    samples = [(r.t_s, 0.0, 0.0, 0.0) for r in results]
    eyes = [(r.t_s, r.state.policy.eyes.ratio, r.state.policy.eyes.closed) for r in results]
    with_eyes = plot_timeline(samples, [], EngineSettings().zones, tmp_path / "e.png", 0.0, eyes)
    without = plot_timeline(samples, [], EngineSettings().zones, tmp_path / "n.png", 0.0)
    import cv2

    assert cv2.imread(str(with_eyes)).shape[0] > cv2.imread(str(without)).shape[0]  # 4th panel
