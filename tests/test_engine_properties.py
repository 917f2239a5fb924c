"""Properties of the whole engine over random driving stories (hypothesis)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dms.engine import Engine, EngineSettings, NeutralPose, Phase
from dms.sim.scenarios import ScenarioBuilder

S = EngineSettings()
P, Z = S.policy, S.zones
FAST = settings(max_examples=20, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# on-road targets: inside every limit by the hysteresis and a noise margin, and never deep
# enough to be a nod
_margin = Z.hysteresis_deg + 3.0
on_road_target = st.tuples(
    st.floats(-(Z.yaw_outboard_deg - _margin), Z.yaw_inboard_deg - _margin),
    st.floats(-(P.nod_depth_deg - 3.0), Z.pitch_up_deg - _margin),
)

step = st.one_of(
    st.tuples(st.just("road"), st.floats(0.2, 8.0)),
    st.tuples(st.just("glance"), st.sampled_from([z.name for z in Z.glance]),
              st.floats(0.3, 12.0)),
    st.tuples(st.just("nod"), st.floats(14.0, 30.0)),
    st.tuples(st.just("slump"), st.floats(1.0, 8.0)),
    st.tuples(st.just("lost"), st.floats(0.2, 15.0)),
    st.tuples(st.just("glance_lost"), st.sampled_from(["passenger", "left_window"]),
              st.floats(1.0, 10.0)),
    st.tuples(st.just("speed"), st.sampled_from([None, 0.0, 5.0, 30.0, 90.0])),
)


def builder(rate: float, noise: float, drop: float, seed: int) -> ScenarioBuilder:
    return ScenarioBuilder(S, rate_hz=rate, noise_deg=noise, drop_prob=drop, seed=seed)


def apply(b: ScenarioBuilder, s: tuple) -> None:  # type: ignore[type-arg]
    kind = s[0]
    if kind == "road":
        b.road(s[1])
    elif kind in ("glance", "glance_lost"):
        getattr(b, kind)(s[1], s[2])
    elif kind == "nod":
        b.nod(depth_deg=s[1])
    elif kind == "slump":
        b.slump(s[1])
    elif kind == "lost":
        b.lost(s[1])
    else:
        b.speed(s[1])


@FAST
@given(targets=st.lists(st.tuples(on_road_target, st.floats(0.3, 6.0)), min_size=1,
                        max_size=12),
       rate=st.sampled_from([10.0, 20.0, 30.0]), noise=st.floats(0.0, 1.0),
       drop=st.floats(0.0, 0.2), seed=st.integers(0, 1000),
       speed=st.sampled_from([None, 0.0, 50.0, 120.0]),
       steer=st.sampled_from([None, -90.0, 0.0, 45.0]))
def test_never_an_alert_while_always_on_the_road(targets, rate, noise, drop, seed, speed,
                                                 steer) -> None:  # type: ignore[no-untyped-def]
    b = ScenarioBuilder(S, rate_hz=rate, noise_deg=noise, drop_prob=drop, seed=seed,
                        speed_kmh=speed, steering_deg=steer).road(2.0)
    for target, duration in targets:
        b.glance(target, duration).road(0.5)
    # A property of the rules given the driver's neutral (explicitly calibrated): a driver
    # who holds one on-road pose longer than the road itself teaches a mount-free learner
    # that pose as the road, which no learner can avoid; the mount-free default has its own
    # property (a constant plausible pose never alerts: test_engine_mountfree.py).
    eng = Engine(S, neutral=NeutralPose(b.R_neutral))
    for o in b.build().observations:
        assert eng.step(o).events == ()


@FAST
@given(story=st.lists(step, min_size=1, max_size=8), rate=st.sampled_from([10.0, 20.0, 25.0]),
       noise=st.floats(0.0, 1.5), drop=st.floats(0.0, 0.15), seed=st.integers(0, 1000))
def test_every_alert_clears_once_the_driver_is_back(story, rate, noise, drop, seed) -> None:  # type: ignore[no-untyped-def]
    b = builder(rate, noise, drop, seed).road(1.0)
    for s in story:
        apply(b, s)
    # back: moving, on the road, long enough for the slowest clearing rule (drowsiness)
    b.speed(80.0).road(P.nod_window_s + P.slump_s + 5.0)
    # the rules' property, given the neutral: a story that holds one off-road pose longer
    # than the road from the first second (three slumps in a row) teaches a mount-free
    # learner that pose as the road; the mount-free engine's alerts clearing is measured on
    # realistic drives instead (the random-mount suite: test_engine_mountfree.py)
    eng = Engine(S, neutral=NeutralPose(b.R_neutral))
    opened: dict[int, int] = {}
    cleared: set[int] = set()
    for o in b.build().observations:
        for e in eng.step(o).events:
            if e.phase is Phase.RAISED:
                opened[e.alert_id] = 1
            elif e.phase is Phase.CLEARED:
                cleared.add(e.alert_id)
    assert set(opened) == cleared
    assert eng.state.policy.active_alerts == ()
    assert eng.state.driver_state == "attentive"


@FAST
@given(story=st.lists(step, min_size=1, max_size=10), rate=st.sampled_from([10.0, 20.0, 30.0]),
       noise=st.floats(0.0, 1.5), drop=st.floats(0.0, 0.15), seed=st.integers(0, 1000))
def test_levels_never_skip_down_while_the_alert_persists(story, rate, noise, drop, seed) -> None:  # type: ignore[no-untyped-def]
    b = builder(rate, noise, drop, seed).road(1.0)
    for s in story:
        apply(b, s)
    eng = Engine(S)
    history: dict[int, list] = {}  # type: ignore[type-arg]
    for o in b.road(2.0).build().observations:
        for e in eng.step(o).events:
            history.setdefault(e.alert_id, []).append(e)
    for records in history.values():
        phases = [e.phase for e in records]
        assert phases[0] is Phase.RAISED
        assert Phase.RAISED not in phases[1:]
        assert Phase.CLEARED not in phases[:-1]  # nothing after a clear
        active = [e for e in records if e.phase is not Phase.CLEARED]
        levels = [e.level for e in active]
        assert levels == sorted(set(levels)), levels  # strictly up while active
        assert all(1 <= lv <= 3 for lv in levels)
        if phases[-1] is Phase.CLEARED:
            assert records[-1].level == levels[-1]
        assert len({(e.type, e.reason, e.started_t_s) for e in records}) == 1
        assert all(e.t_s >= e.started_t_s for e in records)
