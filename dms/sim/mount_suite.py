"""The random-mount suite: the default engine on drives seen from any camera position.

Each scenario puts the driver's neutral pose (as the camera sees it) uniformly within
``YAW_RANGE_DEG`` x ``PITCH_RANGE_DEG`` (roll within +-``ROLL_RANGE_DEG``), adds sensor noise
(0.3-2 deg), dropped frames (0-10 %), single-frame outliers (0-1 %, 40 deg) and bursts of
flipped fits during turns (pitch and roll jumping by 25-170 deg for 1-8 frames, as a landmark
fit does near profile), and drives from t = 0:

* **normal driving** throughout: road stretches with short mirror, cluster and infotainment
  glances (0.4-1.5 s), spaced beyond the time-sharing reset so that no rule should fire. A
  third of the drives start with such a glance instead of the road;
* from ``EVENT_AFTER_S`` (60 s) on, one event by scenario index: ``normal`` (none),
  ``long_glance`` (3.5-8 s to a target outside the road zone), ``time_sharing`` (1.8 s
  infotainment glances, 1 s apart, until the rule must have fired), ``nods``
  (``nods_for_alert`` nods, 8 s apart) or ``slump`` (6-8 s), then normal driving again.

An event is *caught* when its alert is raised within the window the engine's story tests
use (``tests/test_engine_policy.py``): long glance from ``long_glance_window_s``; time sharing
between the start of the earliest and the end of the latest glance that can complete
``vats_total_s``; drowsiness between the last nod's start and its end plus the filter's
crossing bound; slump between ``slump_s`` and ``slump_s`` + drop + two frames after it
starts. Any other raised distraction, drowsiness or slump alert is false.

Pure and deterministic for a seed; ``dms scenarios mounts`` prints the figures.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from dms.engine.calibration import NeutralPose
from dms.engine.engine import Engine
from dms.engine.events import Event, EventType, Phase, Reason
from dms.engine.settings import EngineSettings
from dms.geometry import euler_from_rotation, geodesic_deg, rotation_from_euler
from dms.sim.scenarios import (
    Scenario,
    ScenarioBuilder,
    Segment,
    crossing_delay_bound_s,
    long_glance_window_s,
)
from dms.types import HeadPose, Observation

YAW_RANGE_DEG = 35.0
PITCH_RANGE_DEG = 20.0
ROLL_RANGE_DEG = 3.0
EVENT_AFTER_S = 60.0
KINDS = ("normal", "long_glance", "time_sharing", "nods", "slump")
NORMAL_TARGETS = ("left_mirror", "rearview_mirror", "right_mirror", "cluster", "infotainment")
FLIP_MIN_YAW_DEG = 35.0  # flipped fits happen on turned heads only
EPS = 1e-6

ALERT_TYPES = (EventType.DISTRACTION, EventType.DROWSINESS, EventType.SLUMP)


@dataclass(frozen=True, slots=True)
class Expected:
    """The alert an event must raise, within [lo_s, hi_s]; ``start_s`` is the event start."""

    type: EventType
    lo_s: float
    hi_s: float
    start_s: float
    reason: Reason


@dataclass(frozen=True, slots=True)
class MountCase:
    index: int
    kind: str
    neutral_deg: tuple[float, float, float]
    scenario: Scenario
    expected: Expected | None


@dataclass(slots=True)
class SuiteResult:
    scenarios: int = 0
    expected: dict[str, int] = field(default_factory=dict)  # per kind
    caught: dict[str, int] = field(default_factory=dict)
    latencies_s: dict[str, list[float]] = field(default_factory=dict)  # raise - event start
    false_alerts: dict[str, int] = field(default_factory=dict)  # per alert type
    false_alert_times_s: list[float] = field(default_factory=list)
    scenarios_with_false_alert: int = 0
    # alerts still active when the drive ends, 40 s of driving after its event (drowsiness,
    # which lasts nod_window_s after the last nod, is not counted)
    uncleared: int = 0
    settled_at_s: list[float] = field(default_factory=list)
    neutral_error_deg: list[float] = field(default_factory=list)  # at the end of each drive
    misses: list[str] = field(default_factory=list)

    def add(self, i: int, case: MountCase, events: list[Event], settled: float | None,
            err_deg: float) -> None:
        """Score drive ``i``: its expected alert (caught or missed) and false alerts."""
        self.scenarios += 1
        if settled is not None:
            self.settled_at_s.append(settled)
        self.neutral_error_deg.append(err_deg)
        raised = [e for e in events if e.phase is Phase.RAISED and e.type in ALERT_TYPES]
        hit = self._score_expected(i, case, raised)
        false_here = 0
        for e in raised:
            if e is hit or _same_event(case.expected, e):
                continue
            false_here += 1
            self.false_alerts[e.type.value] = self.false_alerts.get(e.type.value, 0) + 1
            self.false_alert_times_s.append(e.t_s)
        self.scenarios_with_false_alert += false_here > 0
        self.uncleared += _uncleared(events)

    def _score_expected(self, i: int, case: MountCase, raised: list[Event]) -> Event | None:
        exp = case.expected
        if exp is None:
            return None
        self.expected[case.kind] = self.expected.get(case.kind, 0) + 1
        hit = next((e for e in raised
                    if e.type is exp.type and exp.lo_s - EPS <= e.t_s <= exp.hi_s + EPS), None)
        if hit is not None:
            self.caught[case.kind] = self.caught.get(case.kind, 0) + 1
            self.latencies_s.setdefault(case.kind, []).append(hit.t_s - exp.start_s)
        else:
            got = [(e.type.value, round(e.t_s, 2)) for e in raised]
            self.misses.append(f"#{i} {case.kind} window {exp.lo_s:.2f}-{exp.hi_s:.2f} "
                               f"got {got}")
        return hit

    def recall(self, kind: str | None = None) -> float:
        kinds = [kind] if kind else list(self.expected)
        n = sum(self.expected.get(k, 0) for k in kinds)
        return sum(self.caught.get(k, 0) for k in kinds) / n if n else math.nan

    def to_dict(self) -> dict[str, object]:
        def med(v: list[float]) -> float | None:
            return round(float(np.median(v)), 3) if v else None

        return {
            "scenarios": self.scenarios,
            "recall": round(self.recall(), 4),
            "per_kind": {k: {"expected": n, "caught": self.caught.get(k, 0),
                             "recall": round(self.recall(k), 4),
                             "latency_median_s": med(self.latencies_s.get(k, [])),
                             "latency_max_s": round(max(self.latencies_s[k]), 3)
                             if self.latencies_s.get(k) else None}
                         for k, n in sorted(self.expected.items())},
            "false_alerts": dict(self.false_alerts),
            "false_alerts_total": sum(self.false_alerts.values()),
            "scenarios_with_false_alert": self.scenarios_with_false_alert,
            "uncleared": self.uncleared,
            "settled_median_s": med(self.settled_at_s),
            "settled_max_s": round(max(self.settled_at_s), 3) if self.settled_at_s else None,
            "never_settled": self.scenarios - len(self.settled_at_s),
            "neutral_error_median_deg": med(self.neutral_error_deg),
            "neutral_error_max_deg": round(max(self.neutral_error_deg), 3)
            if self.neutral_error_deg else None,
            "misses": list(self.misses[:20]),
        }


def _normal(b: ScenarioBuilder, rng: random.Random, until_s: float, gap_min_s: float) -> None:
    while b.t_s < until_s:
        b.road(rng.uniform(gap_min_s, 9.0))
        if b.t_s < until_s - 2.0:
            b.glance(rng.choice(NORMAL_TARGETS), rng.uniform(0.4, 1.5))


def _away_targets(settings: EngineSettings) -> list[str]:
    from dms.engine.policy import is_on_road, road_limits

    limits = road_limits(settings.zones, None, False)
    return [z.name for z in settings.zones.glance
            if not is_on_road(True, z.yaw_inboard_deg, z.pitch_deg, settings.zones, limits)
            and z.name != "phone_lap"]  # straight down is a slump or a nod, not a glance


def mount_case(i: int, seed: int, settings: EngineSettings) -> MountCase:
    """Scenario ``i`` of the suite (the kind is ``KINDS[i % 5]``)."""
    rng = random.Random(seed * 1_000_003 + i)
    kind = KINDS[i % len(KINDS)]
    neutral = (rng.uniform(-PITCH_RANGE_DEG, PITCH_RANGE_DEG),
               rng.uniform(-YAW_RANGE_DEG, YAW_RANGE_DEG),
               rng.uniform(-ROLL_RANGE_DEG, ROLL_RANGE_DEG))
    rate = rng.choice([15.0, 20.0, 25.0, 30.0])
    b = ScenarioBuilder(settings, rate_hz=rate, noise_deg=rng.uniform(0.3, 2.0),
                        drop_prob=rng.uniform(0.0, 0.1), outlier_prob=rng.uniform(0.0, 0.01),
                        seed=rng.randrange(1 << 30), turn_s=rng.uniform(0.15, 0.4),
                        neutral_deg=neutral)
    gap = settings.policy.vats_reset_on_road_s + 0.5
    if rng.random() < 1 / 3:
        b.glance(rng.choice(NORMAL_TARGETS), rng.uniform(0.4, 1.5))
    _normal(b, rng, EVENT_AFTER_S, gap)
    b.road(rng.uniform(gap, 4.0))
    start = b.t_s
    _add_event(kind, b, rng, settings)
    b.road(10.0)
    _normal(b, rng, b.t_s + 30.0, gap)
    sc = b.build()
    segs = [s for s in sc.segments if s.start_s >= start - EPS]
    expect = _EXPECTED.get(kind)
    expected = None if expect is None else expect(segs, settings, rate)
    sc = dataclasses.replace(sc, observations=_with_flips(sc, rng))
    return MountCase(i, kind, neutral, sc, expected)


def _add_event(kind: str, b: ScenarioBuilder, rng: random.Random,
               settings: EngineSettings) -> None:
    """The event of a ``kind`` (none for ``normal``), appended to the drive."""
    p = settings.policy
    if kind == "long_glance":
        b.glance(rng.choice(_away_targets(settings)), rng.uniform(3.5, 8.0))
    elif kind == "time_sharing":
        for _ in range(_vats_glances(settings)):
            b.glance("infotainment", 1.8).road(0.5 * p.vats_reset_on_road_s)
    elif kind == "nods":
        for k in range(p.nods_for_alert):
            b.nod()
            if k < p.nods_for_alert - 1:
                b.road(8.0)
    elif kind == "slump":
        b.slump(rng.uniform(6.0, 8.0))


def _vats_glances(settings: EngineSettings) -> int:
    return math.ceil(settings.policy.vats_total_s / 1.0) + 1  # even if each glance counts 1 s


def _expect_long_glance(segs: list[Segment], settings: EngineSettings,
                        rate: float) -> Expected:
    g = next(s for s in segs if s.kind == "glance")
    lo, hi = long_glance_window_s(settings, g, rate)
    return Expected(EventType.DISTRACTION, lo, hi, g.start_s, Reason.LONG_GLANCE)


def _expect_time_sharing(segs: list[Segment], settings: EngineSettings,
                         rate: float) -> Expected:
    p = settings.policy
    gl = [s for s in segs if s.kind == "glance"][: _vats_glances(settings)]
    g0 = gl[0]
    bound = long_glance_window_s(settings, g0, rate)
    least = g0.duration_s - g0.turn_s - (bound[1] - bound[0])
    first = math.ceil(p.vats_total_s / g0.duration_s) - 1
    last = min(math.ceil(p.vats_total_s / least) - 1, len(gl) - 1)
    return Expected(EventType.DISTRACTION, gl[first].start_s, gl[last].end_s, g0.start_s,
                    Reason.TIME_SHARING)


def _expect_nods(segs: list[Segment], settings: EngineSettings, rate: float) -> Expected:
    nods = [s for s in segs if s.kind == "nod"]
    third = nods[settings.policy.nods_for_alert - 1]
    bound = crossing_delay_bound_s(settings, 1.0, 0.999, 0.0, rate)
    return Expected(EventType.DROWSINESS, third.start_s, third.end_s + bound, nods[0].start_s,
                    Reason.NODDING)


def _expect_slump(segs: list[Segment], settings: EngineSettings, rate: float) -> Expected:
    s_ = next(s for s in segs if s.kind == "slump")
    lo = s_.start_s + settings.policy.slump_s
    return Expected(EventType.SLUMP, lo, lo + s_.turn_s + 2 * (1.0 / rate), s_.start_s,
                    Reason.HEAD_DOWN)


# the window each event kind must raise its alert in (the story tests' windows)
_EXPECTED: dict[str, Callable[[list[Segment], EngineSettings, float], Expected]] = {
    "long_glance": _expect_long_glance, "time_sharing": _expect_time_sharing,
    "nods": _expect_nods, "slump": _expect_slump,
}


def _same_event(exp: Expected | None, e: Event) -> bool:
    """An alert of the event's own type raised while the event lasts is the same event (e.g.
    a long glance escalating into time sharing), not a false alert."""
    return exp is not None and e.type is exp.type and exp.start_s <= e.t_s <= exp.hi_s + 10


def _with_flips(sc: Scenario, rng: random.Random) -> tuple[Observation, ...]:
    """Bursts of flipped fits on turned heads: pitch and roll jump by 25-170 deg."""
    out: list[Observation] = []
    left = 0
    jump = (0.0, 0.0)
    for o in sc.observations:
        if o.pose is None:
            out.append(o)
            left = 0
            continue
        p, y, r = o.pose.pitch_deg, o.pose.yaw_deg, o.pose.roll_deg
        turned = _turned(sc.segments, o.t_s)
        if left == 0 and turned and rng.random() < 0.03:
            left = rng.randint(1, 8)
            big = rng.random() < 0.3
            lo, hi = (150.0, 170.0) if big else (25.0, 60.0)
            jump = (rng.choice((-1, 1)) * rng.uniform(lo, hi),
                    rng.choice((-1, 1)) * rng.uniform(lo, hi))
        if left > 0 and turned:
            left -= 1
            R = rotation_from_euler(p + jump[0], y, r + jump[1])
            fp, fy, fr = euler_from_rotation(R)
            out.append(dataclasses.replace(o, pose=HeadPose(R, fp, fy, fr, o.pose.confidence)))
            continue
        left = 0
        out.append(o)
    return tuple(out)


def _turned(segments: tuple[Segment, ...], t_s: float) -> bool:
    for s in segments:
        if s.start_s <= t_s < s.end_s:
            return s.kind in ("glance", "glance_lost") and abs(
                s.yaw_inboard_deg) >= FLIP_MIN_YAW_DEG
    return False


def run_case(case: MountCase, settings: EngineSettings, explicit: bool = False
             ) -> tuple[list[Event], float | None, float]:
    """(events, time the engine settled or None, final neutral error in deg). ``explicit``
    gives the engine the true neutral as an explicit calibration (the ceiling)."""
    truth = rotation_from_euler(*case.neutral_deg)
    eng = Engine(settings, neutral=NeutralPose(truth) if explicit else None)
    events: list[Event] = []
    settled: float | None = None
    for o in case.scenario.observations:
        events.extend(eng.step(o).events)
        if settled is None and eng.calibrated:
            settled = o.t_s
    return events, settled, geodesic_deg(truth, eng.neutral.rotation)


def hinted(settings: EngineSettings, neutral_deg: tuple[float, float, float],
           yaw_error_deg: float) -> EngineSettings:
    """Settings with a mount hint ``yaw_error_deg`` off the true neutral in yaw."""
    mount = dataclasses.replace(settings.mount, name="wrong-mount", hint=True,
                                neutral_pitch_deg=neutral_deg[0],
                                neutral_yaw_deg=neutral_deg[1] + yaw_error_deg,
                                neutral_roll_deg=0.0)
    return dataclasses.replace(settings, mount=mount)


def run_suite(n: int = 200, seed: int = 0, settings: EngineSettings | None = None, *,
              hint_yaw_error_deg: float | None = None, explicit: bool = False,
              progress: Callable[[int, int], None] | None = None) -> SuiteResult:
    """Run ``n`` scenarios; with ``hint_yaw_error_deg`` each drive gets a mount hint that is
    that far off its true neutral in yaw (sign alternating); with ``explicit`` the engine is
    given the true neutral (what a perfect `dms calibrate` would give: the ceiling)."""
    s = settings or EngineSettings()
    res = SuiteResult()
    for i in range(n):
        case = mount_case(i, seed, s)
        run_settings = s
        if hint_yaw_error_deg is not None:
            sign = 1.0 if i % 2 == 0 else -1.0
            run_settings = hinted(s, case.neutral_deg, sign * hint_yaw_error_deg)
        events, settled, err = run_case(case, run_settings, explicit)
        res.add(i, case, events, settled, err)
        if progress is not None:
            progress(i + 1, n)
    return res


def _uncleared(events: list[Event]) -> int:
    """Alerts raised and still active at the end (drowsiness, which lasts nod_window_s after
    the last nod, not counted)."""
    opened = {e.alert_id for e in events
              if e.phase is Phase.RAISED and e.type is not EventType.DROWSINESS}
    closed = {e.alert_id for e in events if e.phase is Phase.CLEARED}
    return len(opened - closed)
