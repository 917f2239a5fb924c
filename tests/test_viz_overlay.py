"""The annotated video's overlay, frame by frame: a clock, every active alert (most urgent,
then newest, first) with what clears it, and nothing that contradicts the engine.

The countdowns are checked against the engine itself: on the frame before an alert's
``cleared`` record, its explanation says (about) one frame is left. If the overlay's
wording of a clear rule drifted from the rule, these stories fail."""

from __future__ import annotations

import re

import numpy as np
import pytest

from dms.engine.engine import Engine, StepResult
from dms.engine.events import EventType, Phase
from dms.engine.settings import EngineSettings
from dms.sim.scenarios import ScenarioBuilder
from dms.types import FaceBox, HeadPose
from dms.viz import (
    FACE_UNUSABLE,
    NO_FACE,
    VideoAnnotator,
    alert_why,
    eye_line,
    face_seen,
    signed,
)

S = EngineSettings()
RATE_HZ = 20.0
LEFT = re.compile(r"clears after .*: (\d+(?:\.\d+)?) s left")

# every alert family the overlay explains, in the scenario language, each cleared again
STORY = """
road 6s
glance passenger 4.5s
road 3s
close 1.6s
road 8s
slump 5s
road 3s
occlude 2.5s
road 3s
sunglasses on
road 7s
glance passenger 4.5s
road 2s
sunglasses off
road 3s
nod x3 over 9s
road 3s
glance passenger 4.5s
road 0.5s
occlude 2.5s
road 62s
"""


@pytest.fixture(scope="module")
def story() -> list[StepResult]:
    sc = ScenarioBuilder(S, rate_hz=RATE_HZ).script(STORY).build()
    engine = Engine(S)
    return [engine.step(o) for o in sc.observations]


def test_every_alert_family_is_raised_and_cleared_in_the_story(story) -> None:
    events = [e for r in story for e in r.events]
    cleared = {e.type for e in events if e.phase is Phase.CLEARED}
    assert {EventType.DISTRACTION, EventType.DROWSINESS, EventType.SLUMP,
            EventType.DRIVER_NOT_VISIBLE, EventType.EYES_NOT_VISIBLE} <= cleared, events


def test_each_countdown_reaches_zero_on_the_frame_its_alert_clears(story) -> None:
    checked = set()
    for before, now in zip(story, story[1:], strict=False):
        for e in now.events:
            if e.phase is not Phase.CLEARED:
                continue
            alert = next(a for a in before.state.policy.active_alerts
                         if a.alert_id == e.alert_id)
            why = alert_why(alert, before.state.policy, S)
            m = LEFT.search(why)
            assert m, (e.type, why)
            assert float(m.group(1)) <= 1.0 / RATE_HZ + 0.05, (e.type, e.t_s, why)
            checked.add(e.type)
    assert len(checked) >= 5


def test_the_microsleep_countdown_counts_the_eyes_open_time(story) -> None:
    """Mid-way it says exactly eyes_clear_s minus the time the eyes have been open."""
    reopened = None
    for before, now in zip(story, story[1:], strict=False):
        eyes = now.state.policy.eyes
        drowsy = [a for a in now.state.policy.active_alerts
                  if a.type is EventType.DROWSINESS]
        if drowsy and before.state.policy.eyes.closed and not eyes.closed:
            reopened = now.t_s
        if reopened is not None and drowsy and now.t_s - reopened >= 2.0:
            why = alert_why(drowsy[0], now.state.policy, S)
            left = S.eyes.eyes_clear_s - (now.t_s - reopened)
            assert f"{S.eyes.eyes_clear_s:g} s eyes open: {left:.1f} s left" in why, why
            return
    pytest.fail("no microsleep reopening in the story")


def test_rows_list_every_active_alert_most_urgent_then_newest_first(story) -> None:
    ann = VideoAnnotator(S, panel=True)
    frame = np.zeros((120, 160, 3), np.uint8)
    same_level = mixed = False
    for r in story:
        ann.frame(frame, None, r)
        rows = [title for title, _, colour in ann.rows(r) if not title.startswith("cleared")]
        active = r.state.policy.active_alerts
        assert len(rows) == len(active)
        keys = [(int(t[1]), float(re.findall(r"raised (\d+\.\d+) s", t)[0])) for t in rows]
        assert keys == sorted(keys, reverse=True), rows  # level, then the newest, first
        for a in active:
            assert any(f"{a.type.value.upper()}: {a.reason.value}" in t for t in rows)
        same_level |= len({a.level for a in active}) < len(active)
        mixed |= len({a.level for a in active}) > 1
    assert same_level and mixed  # L1 glance beside the L1 sunglasses; L1-3 beside L2 nods


def test_a_cleared_alert_stays_listed_as_cleared_for_a_while(story) -> None:
    ann = VideoAnnotator(S)
    frame = np.zeros((120, 160, 3), np.uint8)
    cleared_at = None
    for r in story:
        ann.frame(frame, None, r)
        if cleared_at is None and any(e.phase is Phase.CLEARED for e in r.events):
            cleared_at = r.t_s
        if cleared_at is not None and r.t_s < cleared_at + ann.CLEARED_S:
            assert any(t.startswith("cleared") for t, _, _ in ann.rows(r))
        if cleared_at is not None and r.t_s >= cleared_at + ann.CLEARED_S:
            break


def test_a_face_the_engine_did_not_use_is_drawn_and_said_so(story) -> None:
    """A detector box on a frame without a usable face: dashed grey, never the solid box,
    and the text says "face found, not used" (never "no face")."""
    lost = next(r for r in story if r.relative is None and r.state.calibrated)
    box = FaceBox(40, 30, 120, 110, 0.9)
    assert face_seen(box, lost) == FACE_UNUSABLE and face_seen(None, lost) == NO_FACE
    ann = VideoAnnotator(S, panel=True)
    frame = np.zeros((240, 320, 3), np.uint8)
    raw = HeadPose(np.eye(3), 0.0, 0.0, 0.0, confidence=0.2)
    out = ann.frame(frame, box, lost, raw_pose=raw)
    lines = ann.text_lines(lost, box, raw)
    assert any(line.startswith("face found, not used (pose confidence 0.20 < 0.50)")
               for line in lines), lines
    assert not any("no face" in line for line in lines)
    cam = out[:240, :320]
    assert not ((cam[..., 0] == 255) & (cam[..., 1] == 255) & (cam[..., 2] == 0)).any()
    assert out.shape == (480, 320 + ann.PANEL_W, 3)
    used = next(r for r in story if r.relative is not None and r.state.calibrated)
    cam = ann.frame(frame, box, used)[:240, :320]
    assert ((cam[..., 0] == 255) & (cam[..., 1] == 255) & (cam[..., 2] == 0)).any()


def test_the_eye_line_names_the_rule_that_holds(story) -> None:
    """Head down is "head is down", not "head turned"; openness is relative to the driver's
    usual aperture, not a percentage above 100."""
    down = next(r for r in story if r.state.policy.eyes is not None
                and r.state.policy.eyes.why == "head_turned" and r.relative is not None
                and r.relative.pitch_deg < -S.eyes.judge_pitch_down_deg)
    line = eye_line(down.state.policy.eyes, down.relative, S)
    assert "head is down" in line and "turned" not in line, line
    turned = next(r for r in story if r.state.policy.eyes is not None
                  and r.state.policy.eyes.why == "head_turned" and r.relative is not None
                  and abs(r.relative.yaw_deg) > S.eyes.judge_yaw_deg)
    assert "head is turned" in eye_line(turned.state.policy.eyes, turned.relative, S)
    open_ = next(r for r in story if r.state.policy.eyes is not None
                 and r.state.policy.eyes.rules == "eyes" and not r.state.policy.eyes.closed)
    line = eye_line(open_.state.policy.eyes, open_.relative, S)
    assert re.match(r"eyes: open \(lids \d\.\d\dx usual\)", line) and "%" not in line.split(
        ",")[0], line
    closed = next(r for r in story if r.state.policy.eyes is not None
                  and r.state.policy.eyes.closed and r.state.policy.eyes.closed_s < 0.5)
    assert eye_line(closed.state.policy.eyes, None, S).endswith(
        f"(microsleep at {S.eyes.microsleep_s:g} s)")


def test_no_angle_reads_minus_zero() -> None:
    assert [signed(v) for v in (-0.4, 0.0, 0.4, -0.6, 12.5, -12.5)] == [
        "0", "0", "0", "-1", "+12", "-12"]


def test_every_frame_has_the_clock_of_the_run(story) -> None:
    ann = VideoAnnotator(S, panel=True)
    frame = np.zeros((240, 320, 3), np.uint8)
    a, b = (ann.frame(frame, None, story[i]) for i in (40, 41))
    panel = (slice(0, 30), slice(320, 320 + ann.PANEL_W))
    assert not np.array_equal(a[panel], b[panel])  # t 2.00 s vs t 2.05 s
    assert ann.text_lines(story[40], None)[0] == "t 2.00 s"
