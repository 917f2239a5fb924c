"""The eye rules (dms.engine.eyes through the engine): stories with event times derived from
the settings. Observations are built frame by frame here (30 Hz), so each story states
exactly what the eyes, mouth and head do."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import pytest

from dms.engine.calibration import NeutralPose
from dms.engine.engine import Engine
from dms.engine.events import Event, EventType, Phase, Reason
from dms.engine.settings import EngineSettings, EyeSettings, load_engine_settings
from dms.geometry import rotation_from_euler
from dms.types import EyeObservation, HeadPose, Observation

S = EngineSettings()
E = S.eyes
P = S.policy
RATE = 30.0
DT = 1.0 / RATE
OPEN = 0.30  # this driver's open aperture
SHUT = 0.03

Frame = tuple[float, float, EyeObservation | None]  # (rel pitch, rel yaw, eyes) at t


def eyes(openness: float | None = OPEN, conf: float = 0.9, gaze: tuple[float, float] = (0, 0),
         mouth: float = 0.0) -> EyeObservation:
    return EyeObservation(openness, openness, conf, gaze[0], gaze[1], mouth)


def frames(duration_s: float, at: Callable[[float], Frame], t0: float) -> list[Observation]:
    out = []
    n = int(round(duration_s * RATE))
    for i in range(n):
        t = t0 + i * DT
        pitch, yaw, ey = at(t - t0)
        R = rotation_from_euler(pitch, yaw, 0.0)
        out.append(Observation(t, HeadPose(R, pitch, yaw, 0.0, 0.95), eyes=ey))
    return out


class Story:
    """Segments appended in time; ``t`` is where the next one starts."""

    def __init__(self) -> None:
        self.obs: list[Observation] = []
        self.t = 0.0

    def add(self, duration_s: float, at: Callable[[float], Frame]) -> float:
        start = self.t
        self.obs += frames(duration_s, at, start)
        self.t = start + round(duration_s * RATE) * DT
        return start

    def road(self, duration_s: float, ey: EyeObservation | None = None) -> float:
        e = eyes() if ey is None else ey
        return self.add(duration_s, lambda u: (0.0, 0.0, e))

    def run(self, settings: EngineSettings = S, neutral: NeutralPose | None = None
            ) -> list[Event]:
        engine = Engine(settings, neutral or NeutralPose.from_euler(0, 0, 0))
        events: list[Event] = []
        for o in self.obs:
            events += engine.step(o).events
        return events


def raised(events: list[Event], type_: EventType | None = None) -> list[Event]:
    return [e for e in events if e.phase is Phase.RAISED and (type_ is None or e.type is type_)]


def only(events: list[Event], type_: EventType, phase: Phase) -> Event:
    found = [e for e in events if e.type is type_ and e.phase is phase]
    assert len(found) == 1, (type_, phase, events)
    return found[0]


def near(t: float, want: float, slack: float = 2 * DT) -> bool:
    return want - 1e-6 <= t <= want + slack


def test_microsleep_raises_drowsiness_at_microsleep_s_and_clears_after_eyes_clear_s() -> None:
    st = Story()
    st.road(10)
    close = st.road(1.6, eyes(SHUT))
    reopen = st.road(10)
    events = st.run()
    up = only(events, EventType.DROWSINESS, Phase.RAISED)
    assert up.reason is Reason.MICROSLEEP and up.level == E.microsleep_level
    assert near(up.t_s, close + E.microsleep_s) and abs(up.started_t_s - close) < 1e-6
    down = only(events, EventType.DROWSINESS, Phase.CLEARED)
    assert near(down.t_s, reopen + E.eyes_clear_s)
    assert {e.type for e in events} == {EventType.DROWSINESS}  # no distraction, no other


def test_sleep_escalates_to_level3_and_unresponsive_at_unresponsive_s() -> None:
    st = Story()
    st.road(10)
    close = st.road(7.0, eyes(SHUT))
    reopen = st.road(8)
    events = st.run()
    up = only(events, EventType.DROWSINESS, Phase.RAISED)
    assert up.reason is Reason.MICROSLEEP and near(up.t_s, close + E.microsleep_s)
    esc = only(events, EventType.DROWSINESS, Phase.ESCALATED)
    assert esc.reason is Reason.SLEEP and esc.level == 3 and near(esc.t_s, close + E.sleep_s)
    un = only(events, EventType.UNRESPONSIVE, Phase.RAISED)
    assert un.reason is Reason.EYES_CLOSED and un.level == 3
    assert near(un.t_s, close + E.unresponsive_s)
    for type_ in (EventType.UNRESPONSIVE, EventType.DROWSINESS):
        assert near(only(events, type_, Phase.CLEARED).t_s, reopen + E.eyes_clear_s)
    assert not raised(events, EventType.DISTRACTION)


def test_long_yawn_with_eyes_shut_is_drowsiness_not_distraction() -> None:
    # the head tilts back beyond the road zone's pitch_up_deg while the mouth is wide open
    # and the eyes shut: without the eye rules this is a long off-road glance
    tilt = S.zones.pitch_up_deg + 5.0
    assert tilt < E.judge_pitch_up_deg
    st = Story()
    st.road(10)
    ramp = 0.6

    def yawn(u: float) -> Frame:
        k = min(u / ramp, 1.0, (5.6 - u) / ramp)
        shut = ramp <= u <= 5.6 - ramp
        return (tilt * max(k, 0.0), 0.0, eyes(SHUT if shut else OPEN, mouth=0.9 * max(k, 0)))

    start = st.add(5.6, yawn)
    st.road(8)
    events = st.run()
    assert not raised(events, EventType.DISTRACTION)
    up = only(events, EventType.DROWSINESS, Phase.RAISED)
    assert up.reason is Reason.MICROSLEEP
    assert near(up.t_s, start + ramp + E.microsleep_s)
    # the same yawn without eye measurements is read as a long glance (what dms did before)
    st2 = Story()
    st2.obs = [dataclasses.replace(o, eyes=None) for o in st.obs]
    assert raised(st2.run(), EventType.DISTRACTION)


def test_eyes_only_glance_to_the_screen_is_a_long_glance() -> None:
    st = Story()
    st.road(10)
    gaze = (30.0, -25.0)  # eyes toward the infotainment screen, head still
    look = st.road(3.4, eyes(gaze=gaze))
    st.road(6)
    events = st.run()
    up = only(events, EventType.DISTRACTION, Phase.RAISED)
    assert up.reason is Reason.LONG_GLANCE
    # the gaze low-pass delays the glance's start by a few of its time constants at most
    assert look + P.long_glance_s <= up.t_s <= look + P.long_glance_s + 3 * E.gaze_smoothing_s
    assert up.pose.zone == "infotainment"
    assert only(events, EventType.DISTRACTION, Phase.CLEARED)
    # with gaze_weight 0 (head only) the same drive raises nothing
    head_only = dataclasses.replace(S, eyes=dataclasses.replace(E, gaze_weight=0.0))
    assert st.run(head_only) == []


def test_small_gaze_jitter_is_not_a_glance() -> None:
    rng = np.random.default_rng(3)
    st = Story()
    st.add(90, lambda u: (0.0, 0.0, eyes(gaze=tuple(rng.normal(0, 2.5, 2)))))  # type: ignore
    assert st.run() == []


def test_sunglasses_raise_eyes_not_visible_within_occluded_s_and_fall_back_to_head() -> None:
    assert E.occluded_s <= 10.0  # Euro NCAP: tell an occluded driver within 10 s
    st = Story()
    st.road(10)
    on = st.road(15, eyes(None, conf=0.0))
    off = st.road(5)
    events = st.run()
    up = only(events, EventType.EYES_NOT_VISIBLE, Phase.RAISED)
    assert up.reason is Reason.EYES_OCCLUDED and up.level == E.notice_level
    assert near(up.t_s, on + E.occluded_s)
    assert near(only(events, EventType.EYES_NOT_VISIBLE, Phase.CLEARED).t_s,
                off + E.visible_clear_s)
    engine = Engine(S, NeutralPose.from_euler(0, 0, 0))
    for o in st.obs:
        r = engine.step(o)
        if on + 1 < o.t_s < off:
            eyes_state = r.state.to_dict()["eyes"]
            assert eyes_state["rules"] == "head_only" and eyes_state["why"] == "not_visible"


def test_sunglasses_during_a_head_glance_are_not_occlusion() -> None:
    st = Story()
    st.road(10)
    st.add(8, lambda u: (-30.0, 30.0, eyes(None, conf=0.0)))  # head down-and-right, lids away
    st.road(5)
    assert not raised(st.run(), EventType.EYES_NOT_VISIBLE)


def test_normal_blinking_raises_nothing_and_counts_the_rate() -> None:
    st = Story()

    def blinking(u: float) -> Frame:  # a 0.2 s closure every 4 s: 15 blinks a minute
        return (0.0, 0.0, eyes(SHUT if (u % 4.0) >= 3.8 else OPEN))

    st.add(120, blinking)
    engine = Engine(S, NeutralPose.from_euler(0, 0, 0))
    events: list[Event] = []
    last = None
    for o in st.obs:
        last = engine.step(o)
        events += last.events
    assert events == []
    assert last is not None
    state = last.state.to_dict()["eyes"]
    assert state["blinks_per_min"] == pytest.approx(15, abs=1.5)
    assert state["perclos"] < E.perclos_clear


def test_a_blink_does_not_split_a_head_glance() -> None:
    st = Story()
    st.road(10)

    def glance(u: float) -> Frame:  # rear-view mirror (eyes still judged there), a blink
        return (10.0, 32.0, eyes(SHUT if 1.0 <= u < 1.2 else OPEN))

    start = st.add(4, glance)
    st.road(5)
    up = only(st.run(), EventType.DISTRACTION, Phase.RAISED)
    # the same glance without the blink: the same raise time (the head filter's lag included)
    steady = Story()
    steady.obs = [dataclasses.replace(o, eyes=eyes()) for o in st.obs]
    assert up.t_s == only(steady.run(), EventType.DISTRACTION, Phase.RAISED).t_s
    assert near(up.t_s, start + P.long_glance_s, slack=0.3)


def test_eyes_closed_looking_down_at_a_phone_is_a_glance_not_a_microsleep() -> None:
    st = Story()
    st.road(10)
    # lids low, head lowered over 1 s down and to the right (phone on the seat)
    start = st.add(4, lambda u: (-40.0 * min(u, 1.0), 20.0 * min(u, 1.0), eyes(SHUT)))
    st.road(5)
    events = st.run()
    assert not raised(events, EventType.DROWSINESS)
    up = only(events, EventType.DISTRACTION, Phase.RAISED)
    assert start + P.long_glance_s < up.t_s < start + 1.0 + P.long_glance_s


def test_perclos_raises_drowsiness_level1() -> None:
    st = Story()

    def droopy(u: float) -> Frame:  # 0.8 s closed in every 4 s: 20 %, never a microsleep
        return (0.0, 0.0, eyes(SHUT if (u % 4.0) >= 3.2 else OPEN))

    st.add(90, droopy)
    assert E.microsleep_s > 0.8
    events = st.run()
    up = only(events, EventType.DROWSINESS, Phase.RAISED)
    assert up.reason is Reason.PERCLOS and up.level == 1
    # PERCLOS is reported once readings cover perclos_min_coverage of the window
    assert up.t_s >= E.perclos_min_coverage * E.perclos_window_s


def test_three_yawns_raise_drowsiness_yawning() -> None:
    st = Story()
    st.road(10)
    starts = []
    for _ in range(E.yawns_for_alert):
        starts.append(st.add(3, lambda u: (15.0, 0.0, eyes(mouth=0.8))))
        st.road(20)
    events = st.run()
    up = only(events, EventType.DROWSINESS, Phase.RAISED)
    assert up.reason is Reason.YAWNING and up.level == 1
    assert near(up.t_s, starts[-1] + E.yawn_min_s)
    assert not raised(events, EventType.DISTRACTION)


def test_a_narrow_eyed_driver_is_judged_against_their_own_baseline() -> None:
    narrow, narrow_shut = 0.16, 0.05  # a fixed 0.1 threshold would never see this closure
    st = Story()
    st.road(10, eyes(narrow))
    close = st.road(1.5, eyes(narrow_shut))
    st.road(8, eyes(narrow))
    up = only(st.run(), EventType.DROWSINESS, Phase.RAISED)
    assert near(up.t_s, close + E.microsleep_s)


def test_closure_rules_wait_for_the_baseline_unless_calibrated() -> None:
    st = Story()
    st.road(1.0)
    close = st.road(1.5, eyes(SHUT))
    st.road(8)
    assert E.baseline_settle_s > 1.0  # not learned yet when the eyes close
    assert not raised(st.run(), EventType.DROWSINESS)
    calibrated = NeutralPose.from_euler(0, 0, 0)
    calibrated = dataclasses.replace(calibrated, eye_openness=OPEN)
    up = only(st.run(neutral=calibrated), EventType.DROWSINESS, Phase.RAISED)
    assert near(up.t_s, close + E.microsleep_s)


def test_without_eye_measurements_the_rules_are_head_only() -> None:
    st = Story()
    st.road(10, None)
    st.obs = [dataclasses.replace(o, eyes=None) for o in st.obs]
    engine = Engine(S, NeutralPose.from_euler(0, 0, 0))
    for o in st.obs:
        r = engine.step(o)
    assert r.events == ()
    state = r.state.to_dict()["eyes"]
    assert state["rules"] == "head_only" and state["why"] == "not_measured"


def test_eye_settings_are_validated_and_loaded_from_the_config_table() -> None:
    s = load_engine_settings({"eyes": {"microsleep_s": 1.5, "occluded_s": 8}})
    assert s.eyes.microsleep_s == 1.5 and s.eyes.occluded_s == 8
    for bad in ({"closed_ratio": 0.7}, {"sleep_s": 0.8}, {"occluded_s": 0},
                {"gaze_weight": 2.0}, {"judge_yaw_deg": 120}):
        with pytest.raises(Exception, match="eyes|ratio|_s|gaze|deg"):
            load_engine_settings({"eyes": bad})
    assert EyeSettings().microsleep_s < EyeSettings().sleep_s < EyeSettings().unresponsive_s
