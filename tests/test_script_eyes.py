"""The eye and mouth steps of the scenario language (blink, close, yawn, look, sunglasses):
the grammar, the one truth both consumers share (face_at), and the eyes the engine's story
builder measures from it - with the poses untouched."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dms.engine.settings import EngineSettings
from dms.sim import script as G
from dms.sim.scenarios import (
    EYE_BASELINE_RANGE,
    EYE_CONFIDENCE,
    ScenarioBuilder,
    bench_scenario,
    build_script,
)
from dms.sim.script import ScriptError, face_at, parse

S = EngineSettings()


# ----------------------------------------------------------------- grammar


def test_eye_steps_parse_with_their_meaning() -> None:
    sc = parse("road 5s; blink; close 1.6s; yawn 6s eyes-closed; yawn 4s; "
               "look infotainment 3s; look -10,5 1s; look passenger 2s")
    steps = [s for s in sc.steps if s.verb != "road"]
    assert [s.verb for s in steps] == ["blink", "close", "yawn", "yawn", "look", "look", "look"]
    blink, close, yawn_shut, yawn, info, xy, passenger = steps
    assert blink.duration_s == pytest.approx(G.BLINK_S) and blink.start_s == 5.0
    assert pytest.approx(G.BLINK_DOWN_S + G.BLINK_SHUT_S + G.BLINK_UP_S) == G.BLINK_S
    assert close.start_s == pytest.approx(5.0 + G.BLINK_S) and close.duration_s == 1.6
    assert close.pitch_deg == -G.CLOSE_DROOP_DEG
    assert (yawn_shut.value, yawn.value) == (1.0, 0.0)
    assert yawn.pitch_deg == G.YAWN_PITCH_DEG > S.zones.pitch_up_deg  # beyond the road zone
    zone = {z.name: z for z in S.zones.glance}["infotainment"]
    # the eyes go as far toward the zone as they reach
    assert info.yaw_deg == min(zone.yaw_inboard_deg, G.EYE_MAX_YAW_DEG)
    assert info.pitch_deg == max(zone.pitch_deg, -G.EYE_MAX_PITCH_DEG)
    assert (xy.yaw_deg, xy.pitch_deg) == (-10.0, 5.0)
    assert passenger.yaw_deg == G.EYE_MAX_YAW_DEG  # 70 deg inboard, clamped
    assert sc.duration_s == pytest.approx(5 + G.BLINK_S + 1.6 + 6 + 4 + 3 + 1 + 2)


def test_blinks_spread_over_a_duration() -> None:
    sc = parse("road 5s; blink x15 over 60s")
    blinks = [s for s in sc.steps if s.verb == "blink"]
    assert len(blinks) == 15 and sc.duration_s == pytest.approx(65.0)
    gaps = np.diff([b.start_s for b in blinks])
    assert gaps == pytest.approx(np.full(14, 4.0))
    assert all(b.text == "blink x15 over 60s" for b in blinks)


@pytest.mark.parametrize(("text", "needle"), [
    ("road 5s; blink x0", "blink count must be >= 1"),
    ("road 5s; blink x3 over 0.5s", "3 blinks need at least 0.9s"),
    ("road 5s; blink twice", "unexpected 'twice' (expected 'blink [xN] [over DURATION]')"),
    ("road 5s; close", "expected 'close DURATION'"),
    ("road 5s; close 0.2s", "close needs at least 0.25s (lids down and up)"),
    ("road 5s; yawn 1s", "yawn needs at least 2.2s"),
    ("road 5s; yawn 5s eyes-open", "expected 'yawn DURATION' or 'yawn DURATION eyes-closed'"),
    ("road 5s; look moon 2s", "unknown glance target 'moon'"),
    ("road 5s; look infotainment", "expected 'look TARGET DURATION'"),
    ("road 5s; look 10,5,3 2s", "the eyes do not roll"),
    ("road 5s; look left-mirror 0.1s", "look needs at least 0.2s (saccades out and back)"),
    ("road 5s; close 2s; expect drowsiness/dozing L2 5..7", "drowsiness has no reason 'dozing'"),
])
def test_eye_step_errors_name_line_and_token(text: str, needle: str) -> None:
    with pytest.raises(ScriptError, match="line 1") as err:
        parse(text, source="t.toml")
    assert needle in str(err.value)


def test_expect_lines_name_the_eye_alerts() -> None:
    sc = parse("road 10s; close 7s\n"
               "expect drowsiness/microsleep L2..3 10.4..11.6\n"
               "expect unresponsive 15.4..16.6\n"
               "road 10s; sunglasses on; road 12s\n"
               "expect eyes_not_visible L1 27..37")
    kinds = [(e.type, e.reason, e.level, e.max_level) for e in sc.expectations]
    assert kinds == [("drowsiness", "microsleep", 2, 3),
                     ("unresponsive", "eyes_closed", None, None),
                     ("eyes_not_visible", "eyes_occluded", 1, 1)]
    for reason in ("nodding", "microsleep", "sleep", "yawning", "perclos"):
        assert parse(f"road 9s\nexpect drowsiness/{reason} 1..2").expectations[0].reason == reason


# ----------------------------------------------------------------- the truth


def _truth(text: str, verb: str, u: float) -> G.FaceTruth:
    step = next(s for s in parse(text).steps if s.verb == verb)
    return face_at(step, u)


def test_face_truth_of_each_step() -> None:
    blink = "road 1s; blink"
    assert _truth(blink, "blink", 0.0).eye_open == 1.0
    assert _truth(blink, "blink", G.BLINK_DOWN_S + 0.5 * G.BLINK_SHUT_S).eye_open == 0.0
    assert _truth(blink, "blink", G.BLINK_S).eye_open == pytest.approx(1.0)
    close = "road 1s; close 2s"
    assert _truth(close, "close", 0.0).eye_open == 1.0
    assert _truth(close, "close", G.LID_CLOSE_S).eye_open == 0.0
    assert _truth(close, "close", 2.0 - G.LID_OPEN_S - 0.01).eye_open == 0.0
    assert _truth(close, "close", 2.0).eye_open == pytest.approx(1.0)
    yawn = "road 1s; yawn 6s eyes-closed"
    hold = _truth(yawn, "yawn", 3.0)
    assert (hold.mouth_open, hold.eye_open) == (1.0, 0.0)
    assert _truth(yawn, "yawn", 0.0).mouth_open == 0.0
    assert _truth(yawn, "yawn", G.YAWN_OPEN_S - G.LID_CLOSE_S).eye_open == 1.0
    assert _truth("road 1s; yawn 6s", "yawn", 3.0).eye_open == 1.0
    look = "road 1s; look infotainment 3s"
    held = _truth(look, "look", 1.5)
    assert (held.gaze_yaw_deg, held.gaze_pitch_deg) == (30.0, -G.EYE_MAX_PITCH_DEG)
    # looking down lowers the upper lid a little, never to a closure
    assert held.eye_open == pytest.approx(1.0 - G.LID_DROP_PER_DOWN_DEG * G.EYE_MAX_PITCH_DEG)
    assert held.eye_open > 0.5
    assert _truth(look, "look", 0.0).gaze_yaw_deg == 0.0
    assert _truth(look, "look", G.SACCADE_S).gaze_yaw_deg == pytest.approx(30.0)
    assert _truth("road 1s; look 0,20 1s", "look", 0.5).eye_open == 1.0  # up: lids stay
    assert face_at(parse("road 1s").steps[0], 0.5) == G.FaceTruth()


# ----------------------------------------------------------------- the engine's stories


def test_story_eyes_follow_the_truth() -> None:
    sc = build_script("road 5s; close 2s; road 2s; look infotainment 3s; road 2s; "
                      "yawn 5s; road 1s", S, seed=3)
    obs = sc.observations
    eyes = [o.eyes for o in obs]
    assert all(e is not None for e in eyes)
    opens = np.array([e.openness for e in eyes if e is not None], dtype=float)
    road = opens[:90]  # 4.5 s at 20 Hz
    baseline = float(np.median(road))
    assert EYE_BASELINE_RANGE[0] - 0.01 <= baseline <= EYE_BASELINE_RANGE[1] + 0.01
    assert np.std(road) < 0.02  # noise, not structure
    t = np.array([o.t_s for o in obs])
    shut = (t >= 5.2) & (t <= 6.8)
    assert opens[shut].max() < 0.1 * baseline + 0.04
    look = (t >= 9.2) & (t <= 11.8)
    gy = np.array([o.eyes.gaze_yaw_deg for o in obs if o.eyes is not None], dtype=float)
    gp = np.array([o.eyes.gaze_pitch_deg for o in obs if o.eyes is not None], dtype=float)
    assert abs(float(np.mean(gy[look])) - 30.0) < 1.5
    assert abs(float(np.mean(gp[look])) + G.EYE_MAX_PITCH_DEG) < 1.5
    assert 1.0 < float(np.std(gy[t < 5])) < 4.0  # a few degrees of gaze noise
    mouth = np.array([o.eyes.mouth_open for o in obs if o.eyes is not None], dtype=float)
    assert float(mouth[(t >= 15.0) & (t <= 17.5)].min()) > 0.9
    assert float(mouth[t < 5].max()) < 0.1
    assert all(e is not None and e.confidence == EYE_CONFIDENCE for e in eyes[:100])
    # the head stays at the road while the eyes look; it tilts back in the yawn
    neutral = obs[0].pose
    assert neutral is not None
    for o in obs:
        if o.pose is not None and 9.0 <= o.t_s <= 12.0:
            assert abs(o.pose.pitch_deg - neutral.pitch_deg) < 1e-6
    from dms.geometry import euler_from_rotation

    tilt = max(euler_from_rotation(neutral.rotation.T @ o.pose.rotation)[0]
               for o in obs if o.pose is not None)
    assert tilt == pytest.approx(G.YAWN_PITCH_DEG, abs=0.5)


def test_no_face_no_eyes_and_sunglasses_hide_them() -> None:
    sc = build_script("road 5s; lost 2s; road 1s; sunglasses on; road 3s; sunglasses off; "
                      "road 1s; away 3s", S)
    for o in sc.observations:
        if o.pose is None:
            assert o.eyes is None, o.t_s
        elif 8.0 <= o.t_s < 11.0:
            assert o.eyes is not None
            assert (o.eyes.openness_right, o.eyes.openness_left, o.eyes.confidence) == (
                None, None, 0.0)
            assert o.eyes.gaze_yaw_deg is None and o.eyes.mouth_open is not None
        else:
            assert o.eyes is not None and o.eyes.openness is not None
    assert any(o.pose is None for o in sc.observations if 5.0 <= o.t_s < 7.0)


def test_eye_confidence_falls_with_head_yaw() -> None:
    sc = build_script("road 5s; glance passenger 3s", S)
    conf = {round(o.t_s, 2): (abs(o.pose.yaw_deg), o.eyes.confidence)
            for o in sc.observations if o.pose is not None and o.eyes is not None}
    held = conf[6.5]
    assert held[0] > 45.0 and held[1] < EYE_CONFIDENCE - 0.05
    assert conf[1.0][1] == EYE_CONFIDENCE


def test_right_hand_drive_gaze_is_mirrored() -> None:
    text = "road 5s; look infotainment 3s"
    lhd = build_script(text, S, seed=1).observations
    rhd = build_script(text, S, seed=1, right_hand_drive=True).observations
    at = [i for i, o in enumerate(lhd) if math.isclose(o.t_s, 6.5)][0]
    a, b = lhd[at].eyes, rhd[at].eyes
    assert a is not None and b is not None and a.gaze_yaw_deg is not None
    assert a.gaze_yaw_deg > 20.0  # inboard for a left-hand drive: the driver's right
    assert b.gaze_yaw_deg is not None and b.gaze_yaw_deg < -20.0


def test_the_eyes_do_not_touch_the_poses() -> None:
    """The eye noise has its own generator: noisy stories with dropped frames and outliers
    keep every pose and every dropped frame whatever the eyes do (the scenario bench and the
    mount suite are measured on these poses)."""
    def poses(sc):  # type: ignore[no-untyped-def]
        return [(o.t_s, None if o.pose is None else o.pose.rotation.tobytes())
                for o in sc.observations]

    kw = dict(noise_deg=1.5, drop_prob=0.1, outlier_prob=0.02, seed=7)
    plain = ScenarioBuilder(S, **kw).road(5).glance("left_mirror", 1.0).road(5).build()  # type: ignore[arg-type]
    loud = ScenarioBuilder(S, eye_noise=0.2, gaze_noise_deg=20.0, mouth_noise=0.5,
                           **kw).road(5).glance("left_mirror", 1.0).road(5).build()  # type: ignore[arg-type]
    assert poses(plain) == poses(loud)
    assert plain.observations[3].eyes != loud.observations[3].eyes
    sc = bench_scenario(3, 0, S)
    assert poses(sc) == poses(bench_scenario(3, 0, S))
    # blinks keep the head at the road: the same poses as plain road
    road = build_script("road 5s; road 4s", S, noise_deg=1.0, seed=2)
    blinks = build_script("road 5s; blink x4 over 4s", S, noise_deg=1.0, seed=2)
    assert poses(road) == poses(blinks)
    assert min(o.eyes.openness for o in blinks.observations  # type: ignore[union-attr]
               if o.eyes is not None and o.eyes.openness is not None) < 0.1
