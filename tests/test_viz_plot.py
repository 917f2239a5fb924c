"""The timeline plot: one lane per alert family (nothing hides another), where the driver
looked (head + eyes) beside the head's yaw and pitch, distinct kinds of "not visible"."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from dms.engine.engine import Engine
from dms.engine.events import EventType
from dms.engine.settings import EngineSettings
from dms.sim.scenarios import ScenarioBuilder
from dms.types import FaceBox
from dms.viz import FACE_UNUSABLE, FACE_USED, NO_FACE, FrameTrace, alert_lanes, plot_timeline

S = EngineSettings()

# an eyes-only glance (the head stays on the road), a microsleep that overlaps it, a covered
# face
STORY = "road 6s; close 1.6s; road 1s; look 35,-15 4s; road 4s; occlude 2.5s; road 4s"


def _run() -> tuple[list, list]:
    sc = ScenarioBuilder(S, rate_hz=20).script(STORY).build()
    engine = Engine(S)
    results = [engine.step(o) for o in sc.observations]
    return results, [e for r in results for e in r.events]


def test_each_family_has_its_own_lane_and_no_lane_overlaps_itself() -> None:
    results, events = _run()
    lanes = alert_lanes(events, results[-1].t_s)
    assert list(lanes)[:3] == [EventType.UNRESPONSIVE, EventType.SLUMP, EventType.DROWSINESS]
    assert lanes[EventType.DROWSINESS] and lanes[EventType.DISTRACTION]
    assert lanes[EventType.DRIVER_NOT_VISIBLE]
    drowsy = lanes[EventType.DROWSINESS][0]
    glance = lanes[EventType.DISTRACTION][0]
    assert drowsy[1] < glance[1] < drowsy[2]  # they overlap in time, in two lanes
    for family, spans in lanes.items():
        assert all(e.type is family for e, _, _ in spans)
        assert all(a[2] <= b[1] for a, b in zip(spans, spans[1:], strict=False)), family


def test_the_eyes_only_glance_shows_in_where_the_driver_looked() -> None:
    """The head stays in the road zone; head + gaze leaves it: the cause of the alert."""
    results, _ = _run()
    traces = [FrameTrace.of(None, r) for r in results]
    looking = [(tr.t_s, tr.look_yaw_deg, r.relative.yaw_deg) for tr, r in
               zip(traces, results, strict=True)
               if tr.look_yaw_deg is not None and r.relative is not None]
    during = [(look, head) for t, look, head in looking if 10.0 <= t <= 12.5]
    assert during and all(abs(head) < S.zones.yaw_inboard_deg for _, head in during)
    assert max(abs(look) for look, _ in during) > S.zones.yaw_inboard_deg


def test_face_kinds_are_told_apart() -> None:
    results, _ = _run()
    lost = next(r for r in results if r.relative is None and r.state.calibrated)
    box = FaceBox(10, 10, 50, 50, 0.9)
    assert FrameTrace.of(box, lost).face == FACE_UNUSABLE
    assert FrameTrace.of(None, lost).face == NO_FACE
    assert FrameTrace.of(box, results[-1]).face == FACE_USED


def test_the_plot_is_written_with_the_lanes_under_the_traces(tmp_path: Path) -> None:
    results, events = _run()
    samples = [(r.t_s, None, None, None) if r.relative is None else
               (r.t_s, r.relative.yaw_deg, r.relative.pitch_deg, r.relative.roll_deg)
               for r in results]
    eyes = [(r.t_s, r.state.policy.eyes.ratio, r.state.policy.eyes.closed) for r in results]
    traces = [FrameTrace.of(None, r) for r in results]
    path = plot_timeline(samples, events, S.zones, tmp_path / "t.png", 3.0, eyes,
                         traces=traces, expected=[("distraction", 13.0, 14.0)])
    img = cv2.imread(str(path))
    assert img is not None and img.shape[0] > 1000
    # the lane strip at the bottom holds the drowsiness bar's purple (tab:purple)
    strip = img[int(img.shape[0] * 0.8):]
    purple = np.all(np.abs(strip.astype(int) - (189, 103, 148)) < 40, axis=-1)
    assert purple.sum() > 100
