"""Driver-state stories: 120 s sequences through the whole Engine, event times derived from the
settings (never hard-coded seconds).

Timing model used by the assertions (docs/engine.md, "How filter delay and hysteresis shift
the alert"): a glance starting at ``g`` leaves the road zone (filtered pose) no earlier than
``g`` and no later than ``g + crossing bound`` (ramp + filter settling at its slowest cutoff +
one held frame + one frame of sampling); every rule then counts from that moment.
"""

from __future__ import annotations

import dataclasses
import math

import pytest

from dms.engine import Engine, EngineSettings, EventType, Phase, Reason
from dms.engine.events import Event
from dms.engine.settings import PolicySettings
from dms.sim.scenarios import (
    ScenarioBuilder,
    crossing_delay_bound_s,
    library,
    long_glance_window_s,
    raised,
    run,
)

S = EngineSettings()
P = S.policy
RATE = 20.0
FRAME = 1.0 / RATE
EPS = 1e-6


def only(events: list[Event], type_: EventType, phase: Phase) -> list[Event]:
    return [e for e in events if e.type is type_ and e.phase is phase]


def crossing_bound(seg) -> float:  # type: ignore[no-untyped-def]
    lo, hi = long_glance_window_s(S, seg, RATE)
    return hi - lo


@pytest.fixture(scope="module")
def lib():  # type: ignore[no-untyped-def]
    return library(S, seed=3, rate_hz=RATE)


def test_attentive_driver_with_noise_gets_no_event(lib) -> None:  # type: ignore[no-untyped-def]
    assert run(lib["attentive"]) == []


def test_mirror_checks_raise_nothing(lib) -> None:  # type: ignore[no-untyped-def]
    sc = lib["mirror_checks"]
    assert len(sc.segments_of("glance")) >= 20
    assert run(sc) == []


def test_short_infotainment_glances_spaced_beyond_the_vats_reset_raise_nothing(lib) -> None:  # type: ignore[no-untyped-def]
    sc = lib["infotainment_short"]
    glances = sc.segments_of("glance")
    assert sum(g.duration_s for g in glances) > P.vats_total_s  # would be time sharing...
    assert all(r.duration_s > P.vats_reset_on_road_s for r in sc.segments_of("road"))
    assert run(sc) == []  # ...but each road stretch resets the window


def test_single_4s_glance_raises_long_distraction_at_3s_and_clears(lib) -> None:  # type: ignore[no-untyped-def]
    sc = lib["long_glance"]
    (g,) = sc.segments_of("glance")
    events = run(sc)
    (up,) = only(events, EventType.DISTRACTION, Phase.RAISED)
    lo, hi = long_glance_window_s(S, g, RATE)
    assert lo - EPS <= up.t_s <= hi + EPS
    assert up.reason is Reason.LONG_GLANCE and up.level == 1
    assert g.start_s <= up.started_t_s <= g.start_s + crossing_bound(g)
    # exact in the engine's own time: long_glance_s after the glance left the road zone
    assert 0 <= up.t_s - up.started_t_s - P.long_glance_s < FRAME + EPS
    assert up.pose.zone == "infotainment" and up.pose.on_road is False
    # 4 s < long_glance_s + level2_after_s: it never escalates
    assert g.duration_s < P.long_glance_s + P.level2_after_s
    assert only(events, EventType.DISTRACTION, Phase.ESCALATED) == []
    (down,) = only(events, EventType.DISTRACTION, Phase.CLEARED)
    # back on the road during the return ramp at the earliest, then clear_on_road_s
    assert g.end_s - g.turn_s + P.clear_on_road_s - EPS <= down.t_s
    assert down.t_s <= g.end_s + P.clear_on_road_s + crossing_bound(g) + EPS
    assert {e.alert_id for e in events} == {up.alert_id}


def test_long_glance_escalates_level_2_then_3_unresponsive() -> None:
    b = ScenarioBuilder(S, rate_hz=RATE).road(10).glance("passenger", 9.0).road(20)
    sc = b.build()
    (g,) = sc.segments_of("glance")
    events = run(sc)
    up = only(events, EventType.DISTRACTION, Phase.RAISED)[0]
    esc = only(events, EventType.DISTRACTION, Phase.ESCALATED)
    assert [e.level for e in esc] == [2, 3]
    assert esc[0].t_s == pytest.approx(up.t_s + P.level2_after_s, abs=FRAME + EPS)
    assert esc[1].t_s == pytest.approx(up.t_s + P.level3_after_s, abs=FRAME + EPS)
    # Euro NCAP unresponsive: level 3 no later than away >= long_glance_s + level3_after_s
    assert esc[1].t_s <= g.start_s + P.long_glance_s + P.level3_after_s + crossing_bound(g)
    (down,) = only(events, EventType.DISTRACTION, Phase.CLEARED)
    assert down.level == 3 and down.t_s > g.end_s


def test_vats_pattern_of_1_8s_glances_raises_time_sharing(lib) -> None:  # type: ignore[no-untyped-def]
    sc = lib["vats"]
    glances = sc.segments_of("glance")
    gap = sc.segments_of("road")[1].duration_s
    assert gap < P.vats_reset_on_road_s and all(g.duration_s < P.long_glance_s for g in glances)
    events = run(sc)
    up = only(events, EventType.DISTRACTION, Phase.RAISED)
    assert len(up) == 1 and up[0].reason is Reason.TIME_SHARING
    # each glance is away at most its duration and at least (duration - ramp - crossing bound)
    g0 = glances[0]
    most = g0.duration_s
    least = g0.duration_s - g0.turn_s - crossing_bound(g0)
    first = math.ceil(P.vats_total_s / most) - 1  # index of the earliest glance that can raise
    last = math.ceil(P.vats_total_s / least) - 1
    assert glances[first].start_s <= up[0].t_s <= glances[last].end_s + EPS
    # the gaps never reach the reset time, so it stays raised and escalates while away
    assert [e.level for e in only(events, EventType.DISTRACTION, Phase.ESCALATED)] == [2, 3]
    (down,) = only(events, EventType.DISTRACTION, Phase.CLEARED)
    assert down.t_s >= glances[-1].end_s + max(P.clear_on_road_s, P.vats_reset_on_road_s) - \
        glances[-1].turn_s - EPS


def test_three_nods_within_a_minute_raise_drowsiness_and_it_clears_after_the_window(lib) -> None:  # type: ignore[no-untyped-def]
    sc = lib["nodding"]
    nods = sc.segments_of("nod")
    assert len(nods) == P.nods_for_alert
    events = run(sc)
    (up,) = only(events, EventType.DROWSINESS, Phase.RAISED)
    third = nods[P.nods_for_alert - 1]
    bound = crossing_delay_bound_s(S, 1.0, 0.999, 0.0, RATE)
    assert third.start_s <= up.t_s <= third.end_s + bound
    assert up.reason is Reason.NODDING and up.level == P.drowsy_level
    assert nods[0].start_s <= up.started_t_s <= nods[0].end_s + bound
    (down,) = only(events, EventType.DROWSINESS, Phase.CLEARED)
    assert third.start_s + P.nod_window_s <= down.t_s <= third.end_s + P.nod_window_s + bound
    assert not [e for e in events if e.type is EventType.DISTRACTION]


def test_two_nods_are_not_enough() -> None:
    b = ScenarioBuilder(S, rate_hz=RATE).road(10)
    for _ in range(P.nods_for_alert - 1):
        b.nod().road(5)
    assert run(b.road(20).build()) == []


def test_head_down_without_return_is_a_slump_at_the_most_urgent_level(lib) -> None:  # type: ignore[no-untyped-def]
    sc = lib["slump"]
    (s,) = sc.segments_of("slump")
    events = run(sc)
    (up,) = only(events, EventType.SLUMP, Phase.RAISED)
    assert up.level == 3 and up.reason is Reason.HEAD_DOWN
    assert s.start_s + P.slump_s <= up.t_s <= s.start_s + P.slump_s + s.turn_s + 2 * FRAME + EPS
    (down,) = only(events, EventType.SLUMP, Phase.CLEARED)
    assert s.end_s - s.rise_s + P.clear_on_road_s <= down.t_s <= s.end_s + P.clear_on_road_s + 0.5
    # the head-down time is drowsiness, not a glance: no distraction on top
    assert [e.type for e in events] == [EventType.SLUMP, EventType.SLUMP]


def test_face_lost_while_turning_away_counts_as_away(lib) -> None:  # type: ignore[no-untyped-def]
    sc = lib["face_lost_turning"]
    (g,) = sc.segments_of("glance_lost")
    assert sum(o.pose is None for o in sc.observations) > RATE * 3  # the face really is lost
    events = run(sc)
    (up,) = only(events, EventType.DISTRACTION, Phase.RAISED)
    lo, hi = long_glance_window_s(S, g, RATE)
    assert lo - EPS <= up.t_s <= hi + EPS and up.reason is Reason.LONG_GLANCE
    assert 0 <= up.t_s - up.started_t_s - P.long_glance_s < FRAME + EPS
    assert up.pose.yaw_deg is None  # no face at that moment
    assert not [e for e in events if e.type is EventType.DRIVER_NOT_VISIBLE]


def test_face_lost_while_frontal_is_not_visible_then_degraded(lib) -> None:  # type: ignore[no-untyped-def]
    sc = lib["face_lost_frontal"]
    (lost,) = sc.segments_of("lost")
    events = run(sc)
    (nv,) = only(events, EventType.DRIVER_NOT_VISIBLE, Phase.RAISED)
    (dg,) = only(events, EventType.SYSTEM_DEGRADED, Phase.RAISED)
    assert nv.t_s == pytest.approx(lost.start_s + P.not_visible_s, abs=FRAME + EPS)
    assert dg.t_s == pytest.approx(lost.start_s + P.degraded_s, abs=FRAME + EPS)
    assert dg.t_s - lost.start_s <= 10.0 + FRAME  # Euro NCAP: within 10 s
    for type_ in (EventType.DRIVER_NOT_VISIBLE, EventType.SYSTEM_DEGRADED):
        (c,) = only(events, type_, Phase.CLEARED)
        assert c.t_s == pytest.approx(lost.end_s + P.visible_clear_s, abs=FRAME + EPS)
    assert not [e for e in events if e.type is EventType.DISTRACTION]


def test_short_face_loss_while_frontal_raises_nothing() -> None:
    sc = ScenarioBuilder(S, rate_hz=RATE).road(10).lost(P.not_visible_s * 0.5).road(10).build()
    assert run(sc) == []


def test_noise_outliers_and_dropped_frames_keep_the_timing(lib) -> None:  # type: ignore[no-untyped-def]
    sc = lib["noisy_drops"]
    assert len(sc.observations) < sc.duration_s * RATE * 0.95  # frames really were dropped
    short, long_ = sc.segments_of("glance")
    events = run(sc)
    (up,) = raised(events)
    lo, hi = long_glance_window_s(S, long_, RATE)
    # a dropped frame can delay the first frame that sees the condition by one more frame
    assert lo - EPS <= up.t_s <= hi + 2 * FRAME + EPS
    assert 0 <= up.t_s - up.started_t_s - P.long_glance_s < 2 * FRAME + EPS
    assert not any(short.start_s <= e.t_s <= short.end_s + 1 for e in events)


def test_driver_dodges_the_camera_after_level_2() -> None:
    """openpilot story: hiding from the camera does not clear an alert; it keeps escalating."""
    t_l2 = P.long_glance_s + P.level2_after_s
    b = ScenarioBuilder(S, rate_hz=RATE).road(10).glance("passenger", t_l2 + 0.5)
    sc = b.lost(6.0).road(10).build()
    events = run(sc)
    lost = sc.segments_of("lost")[0]
    assert [e.level for e in events if e.type is EventType.DISTRACTION
            and e.phase is not Phase.CLEARED] == [1, 2, 3]
    (down,) = only(events, EventType.DISTRACTION, Phase.CLEARED)
    assert down.t_s >= lost.end_s + P.clear_on_road_s - EPS
    assert not [e for e in events if e.type is EventType.DRIVER_NOT_VISIBLE]


def test_short_reappearance_on_the_road_does_not_clear() -> None:
    brief = 0.5 * P.clear_on_road_s
    sc = (ScenarioBuilder(S, rate_hz=RATE, turn_s=0.05).road(10).glance("passenger", 4.0)
          .road(brief).glance("passenger", 3.0).road(10).build())
    events = [e for e in run(sc) if e.type is EventType.DISTRACTION]
    assert [e.phase for e in events][:1] == [Phase.RAISED]
    assert len({e.alert_id for e in events}) == 1
    assert [e.phase for e in events][-1] is Phase.CLEARED
    assert only(events, EventType.DISTRACTION, Phase.CLEARED)[0].t_s > sc.segments[-1].start_s


def test_long_red_light_stops_at_level_1_and_escalates_when_moving() -> None:
    stop = dataclasses.replace(P).min_speed_kmh - 1
    b = ScenarioBuilder(S, rate_hz=RATE, speed_kmh=stop).road(5)
    sc = b.glance("passenger", 30.0).road(5).build()
    events = run(sc)
    assert [e.level for e in events if e.phase is not Phase.CLEARED] == [
        P.standstill_max_level]
    # same story, the car pulls away during the glance: escalation resumes
    sc2 = (ScenarioBuilder(S, rate_hz=RATE, speed_kmh=stop).road(5)
           .glance("passenger", 15.0).speed(50).glance("passenger", 10.0).road(5).build())
    levels = [e.level for e in run(sc2) if e.phase is not Phase.CLEARED]
    assert levels[0] == 1 and max(levels) == 3 and levels == sorted(levels)


def test_unknown_speed_does_not_gate() -> None:
    sc = ScenarioBuilder(S, rate_hz=RATE, speed_kmh=None).road(5).glance("passenger", 9).road(
        5).build()
    assert max(e.level for e in run(sc)) == 3


def test_steering_widens_the_road_zone_in_the_turn_direction() -> None:
    # a look 35 deg to the driver's left (outboard in a left-hand-drive car)
    target = (-35.0, 0.0)
    z = S.zones
    assert abs(target[0]) > z.yaw_outboard_deg
    steer = z.steer_deadband_deg + (abs(target[0]) - z.yaw_outboard_deg + 2) / z.steer_gain
    straight = ScenarioBuilder(S, rate_hz=RATE).road(5).glance(target, 5).road(5).build()
    turning = (ScenarioBuilder(S, rate_hz=RATE, steering_deg=steer).road(5).glance(target, 5)
               .road(5).build())
    right_turn = (ScenarioBuilder(S, rate_hz=RATE, steering_deg=-steer).road(5)
                  .glance(target, 5).road(5).build())
    assert raised(run(straight))
    assert run(turning) == []  # left turn (positive steering): looking left is on the road
    assert raised(run(right_turn))  # the widening is only on the steering side


def test_right_hand_drive_mirrors_yaw() -> None:
    rhd = dataclasses.replace(S, policy=dataclasses.replace(P, right_hand_drive=True))
    story = "road 5; glance infotainment 4; road 3; glance left_mirror 1; road 5"
    lhd_events = run(ScenarioBuilder(S, rate_hz=RATE).script(story).build())
    rhd_sc = ScenarioBuilder(rhd, rate_hz=RATE).script(story).build()
    rhd_events = run(rhd_sc)
    strip = [(e.type, e.reason, e.level, e.phase, round(e.t_s, 3)) for e in lhd_events]
    assert strip == [(e.type, e.reason, e.level, e.phase, round(e.t_s, 3)) for e in rhd_events]
    up = raised(rhd_events)[0]
    assert up.pose.yaw_inboard_deg > 0 > up.pose.yaw_deg  # camera yaw mirrored, inboard kept
    assert up.pose.zone == "infotainment"


def test_low_confidence_counts_as_no_face() -> None:
    sc = ScenarioBuilder(S, rate_hz=RATE, confidence=P.min_confidence / 2).road(15).build()
    assert {e.type for e in raised(run(sc))} == {EventType.DRIVER_NOT_VISIBLE,
                                                 EventType.SYSTEM_DEGRADED}


def test_thresholds_come_from_settings() -> None:
    """Halving long_glance_s moves the alert by exactly that much."""
    fast = dataclasses.replace(S, policy=dataclasses.replace(P, long_glance_s=1.5))
    sc_a = ScenarioBuilder(S, rate_hz=RATE).road(5).glance("passenger", 4).road(5).build()
    sc_b = ScenarioBuilder(fast, rate_hz=RATE).road(5).glance("passenger", 4).road(5).build()
    a, b = raised(run(sc_a))[0], raised(run(sc_b))[0]
    assert a.t_s - b.t_s == pytest.approx(P.long_glance_s - 1.5, abs=FRAME + EPS)


def test_events_are_json_records_with_the_contract_fields() -> None:
    import json

    from dms.engine.events import event_from_dict

    sc = ScenarioBuilder(S, rate_hz=RATE).road(5).glance("passenger", 9).road(5).build()
    eng = Engine(S, run_id="boot42")
    events = run(sc, eng)
    assert events
    ids = set()
    for e in events:
        d = json.loads(e.to_json())
        assert {"type", "reason", "level", "phase", "t_s", "started_t_s", "event_id",
                "alert_id", "pose", "settings_version", "schema_version"} <= set(d)
        assert d["settings_version"] == eng.version
        assert d["event_id"].startswith("boot42-") and d["event_id"] not in ids
        ids.add(d["event_id"])
        assert 1 <= d["level"] <= 3
        assert event_from_dict(d).to_dict() == d


def test_state_summary_tracks_the_story() -> None:
    sc = ScenarioBuilder(S, rate_hz=RATE).road(5).glance("passenger", 5).road(5).build()
    eng = Engine(S)
    states = [eng.step(o).state for o in sc.observations]
    assert states[0].driver_state == "attentive" and not states[0].calibrated
    kinds = [s.driver_state for s in states]
    assert "glancing" in kinds and "distracted" in kinds
    assert kinds[-1] == "attentive"
    d = max(states, key=lambda s: s.policy.max_level).to_dict()
    assert d["active_alerts"][0]["type"] == "distraction" and d["max_level"] >= 1


def test_policy_ignores_non_increasing_time() -> None:
    from dms.engine.policy import DriverPolicy, PolicyInput

    pol = DriverPolicy(PolicySettings(), S.zones)
    assert pol.update(PolicyInput(1.0, True, 0.0, 0.0, 0.0)) == []
    assert pol.update(PolicyInput(1.0, False)) == []
    assert pol.update(PolicyInput(0.5, False)) == []
    assert pol.state().t_s == 1.0


def test_turning_away_carries_the_last_usable_yaw_on_to_the_loss() -> None:
    """A fast turn out of view is seen mid-turn on its last frames: the last usable yaw,
    carried on at its outward speed until the face was lost (for at most
    turning_lead_max_s), must be turning_min_yaw_deg from neutral."""
    from dms.engine.policy import RoadZone

    road = RoadZone(S.zones, right_hand_drive=False)
    assert not road.turning_away(P, 1.0)  # no usable pose yet
    fast = 3.0 * P.turning_speed_dps
    road.yaw_deg, road.yaw_out_speed_dps, road.t_s = -(P.turning_min_yaw_deg - 1.0), fast, 10.0
    assert not road.turning_away(P, 10.0)  # as it was: short of the minimum
    gap = 1.0 / fast + 1e-6  # long enough at that speed to cover the missing degree
    assert gap < P.turning_lead_max_s
    assert road.turning_away(P, 10.0 + gap)
    # carried on for at most turning_lead_max_s, however long the face took to be lost
    road.yaw_out_speed_dps = P.turning_speed_dps
    reach = P.turning_speed_dps * P.turning_lead_max_s
    road.yaw_deg = P.turning_min_yaw_deg - reach + 0.1
    assert road.turning_away(P, 10.0 + 5.0)
    road.yaw_deg = P.turning_min_yaw_deg - reach - 0.1
    assert not road.turning_away(P, 10.0 + 5.0)
    # moving outward too slowly: never a turn away, wherever it was
    road.yaw_deg, road.yaw_out_speed_dps = 60.0, P.turning_speed_dps * 0.9
    assert not road.turning_away(P, 10.05)
