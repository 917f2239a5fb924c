"""The driver-state policy: a pure state machine from timestamped poses to alert events.

Read this file on its own. It never reads a clock, a file or a device: time arrives in each
:class:`PolicyInput` (``t_s``, monotonic seconds) and every threshold in
:class:`~dms.engine.settings.PolicySettings` / :class:`~dms.engine.settings.ZoneSettings`.
Poses are relative to the driver's neutral pose (the engine composes rotations before this).

One :meth:`DriverPolicy.update` runs these small steps, in order:

1. **Usable face?** Face present and confidence >= ``min_confidence``.
2. **Road zone** (hysteresis): off the road beyond any limit; back only once inside every
   limit by ``hysteresis_deg``. Steering beyond ``steer_deadband_deg`` widens the limit on the
   steering side. Right-hand drive mirrors yaw (zones are inboard/outboard).
3. **Face loss**: when the face disappears, it counts as *away* if the head was already off
   the road, was turning away (yaw moving outward faster than ``turning_speed_dps`` beyond
   ``turning_min_yaw_deg``), or a distraction alert was active (hiding does not clear it);
   otherwise it is *not visible* (``driver_not_visible`` after ``not_visible_s``). Any loss
   longer than ``degraded_s`` raises ``system_degraded``.
4. **Nods and slump**: a *fast* pitch drop (from above ``-nod_onset_deg`` to below
   ``-nod_depth_deg`` within ``nod_max_drop_s``) starts a nod; turning beyond
   ``nod_max_yaw_deg`` while down cancels it (a glance down-and-sideways). Back above
   ``-nod_return_deg`` within ``nod_max_return_s`` = one nod. Still down after ``slump_s``
   = slump (level 3).
   While a nod is down, the head-down time is drowsiness, not a glance.
5. **Glances**: a glance is a run of *away* frames; its start is the first away frame.
   Long distraction when one glance lasts ``long_glance_s``; time sharing when away time
   within the last ``vats_window_s`` reaches ``vats_total_s``. The window is emptied after
   ``vats_reset_on_road_s`` continuously on the road, and when a distraction alert clears.
6. **Alerts**: each alert type has a target level; the emitted level is the target capped at
   ``standstill_max_level`` when the speed is known and below ``min_speed_kmh``. A level only
   goes up while the alert is active (``escalated`` records); it ends with one ``cleared``.

**Before the neutral pose is known** (``neutral_known`` false: the engine is still learning
it and has no explicit calibration), angles relative to it mean nothing yet: every usable
face counts as on the road, no nod is tracked and a face loss is never "turning away".
Face loss still raises ``driver_not_visible`` / ``system_degraded``.

Escalation of distraction: level 1 when raised, 2 after ``level2_after_s`` more time away,
3 (unresponsive) after ``level3_after_s``; only time spent away counts.
Clearing: distraction and slump after ``clear_on_road_s`` continuously on the road with the
face visible (head up for slump; for time sharing the longer of that and
``vats_reset_on_road_s``); drowsiness once no nod is left in ``nod_window_s``;
not-visible and degraded after ``visible_clear_s`` with a usable face.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from dms.engine.events import Event, EventType, Phase, PoseSnapshot, Reason
from dms.engine.settings import PolicySettings, ZoneSettings


@dataclass(frozen=True, slots=True)
class PolicyInput:
    """One frame as the policy sees it: pose relative to neutral, camera yaw sign (positive =
    nose toward image left = the driver's right), pitch < 0 = head down."""

    t_s: float
    face_present: bool
    yaw_deg: float | None = None
    pitch_deg: float | None = None
    roll_deg: float | None = None
    confidence: float = 1.0
    speed_kmh: float | None = None
    steering_deg: float | None = None
    neutral_known: bool = True  # False while the neutral pose is still being learned


@dataclass(frozen=True, slots=True)
class ActiveAlert:
    type: EventType
    reason: Reason
    level: int
    started_t_s: float
    alert_id: int

    def to_dict(self) -> dict[str, object]:
        return {"type": self.type.value, "reason": self.reason.value, "level": self.level,
                "started_t_s": round(self.started_t_s, 4), "alert_id": self.alert_id}


@dataclass(frozen=True, slots=True)
class PolicyState:
    """What the policy thinks now (for the ``state`` topic and the plot)."""

    t_s: float | None
    driver_state: str  # attentive | glancing | distracted | drowsy | slumped | not_visible
    face_visible: bool
    on_road: bool
    away: bool
    glance_s: float  # length of the current glance so far (0 when on the road)
    zone: str | None
    nods_in_window: int
    active_alerts: tuple[ActiveAlert, ...]

    @property
    def max_level(self) -> int:
        return max((a.level for a in self.active_alerts), default=0)


# ----------------------------------------------------------------- small pure steps


def road_limits(zones: ZoneSettings, steering_deg: float | None,
                right_hand_drive: bool) -> tuple[float, float]:
    """(left, right) yaw limits in degrees, driver's left/right, widened by steering.

    Positive steering is a left turn (openpilot convention); the driver then looks left."""
    left, right = zones.yaw_outboard_deg, zones.yaw_inboard_deg
    if right_hand_drive:
        left, right = right, left
    if steering_deg is not None:
        extra = min(max(abs(steering_deg) - zones.steer_deadband_deg, 0.0) * zones.steer_gain,
                    zones.steer_max_extra_deg)
        if steering_deg > 0:
            left += extra
        else:
            right += extra
    return left, right


def is_on_road(was_on_road: bool, yaw_deg: float, pitch_deg: float, zones: ZoneSettings,
               limits: tuple[float, float]) -> bool:
    """Road-zone test with hysteresis. ``yaw_deg`` in camera sign: negative = driver's left."""
    margin = 0.0 if was_on_road else zones.hysteresis_deg
    left, right = limits
    return (-(left - margin) <= yaw_deg <= right - margin
            and -(zones.pitch_down_deg - margin) <= pitch_deg <= zones.pitch_up_deg - margin)


def inboard_yaw(yaw_deg: float, right_hand_drive: bool) -> float:
    """Yaw toward the centre of the car (camera yaw is positive toward the driver's right)."""
    return -yaw_deg if right_hand_drive else yaw_deg


def glance_zone(zones: ZoneSettings, yaw_inboard_deg: float, pitch_deg: float) -> str | None:
    """Name of the nearest glance zone whose radius contains the pose, else None."""
    best, best_d = None, math.inf
    for z in zones.glance:
        d = math.hypot(yaw_inboard_deg - z.yaw_inboard_deg, pitch_deg - z.pitch_deg)
        if d <= z.radius_deg and d < best_d:
            best, best_d = z.name, d
    return best


class _Alert:
    """Book-keeping of one active alert (mutable, private to the policy)."""

    __slots__ = ("type", "reason", "level", "started_t_s", "alert_id")

    def __init__(self, type_: EventType, reason: Reason, started_t_s: float, alert_id: int):
        self.type, self.reason, self.started_t_s, self.alert_id = (
            type_, reason, started_t_s, alert_id)
        self.level = 0


# ----------------------------------------------------------------- the state machine


class DriverPolicy:
    """``update(PolicyInput) -> list[Event]``. Holds only the memory the rules need."""

    def __init__(self, settings: PolicySettings, zones: ZoneSettings,
                 settings_version: str = "", run_id: str = "run") -> None:
        self.s = settings
        self.zones = zones
        self.settings_version = settings_version
        self.run_id = run_id
        self._t: float | None = None
        self._seq = 0
        self._next_alert_id = 1
        self._alerts: dict[EventType, _Alert] = {}
        # pose memory
        self._usable = False
        self._on_road = True
        self._yaw: float | None = None
        self._pitch: float | None = None
        self._roll: float | None = None
        self._yaw_out_speed_dps = 0.0  # d|yaw|/dt of the last usable frames
        self._zone: str | None = None
        # face loss
        self._lost_since: float | None = None
        self._lost_away = False
        self._visible_since: float | None = None
        # glances
        self._away = False
        self._glance_start: float | None = None
        self._on_road_since: float | None = None
        self._away_spans: deque[list[float]] = deque()  # [start, end] of away time, VATS
        self._escalation_s = 0.0  # time away since the distraction alert was raised
        # nods
        self._above_onset_t: float | None = None
        self._nod_down_t: float | None = None
        self._head_up_since: float | None = None
        self._nods: deque[float] = deque()

    # ------------------------------------------------------------- public

    def update(self, obs: PolicyInput) -> list[Event]:
        """Advance to ``obs.t_s`` and return the events this frame produced.

        Frames whose time does not increase are ignored (no events)."""
        s = self.s
        if self._t is not None and obs.t_s <= self._t:
            return []
        t = obs.t_s
        dt = 0.0 if self._t is None else t - self._t
        was_away = self._away
        events: list[Event] = []

        # 1. usable face?
        usable = (obs.face_present and obs.yaw_deg is not None and obs.pitch_deg is not None
                  and obs.confidence >= s.min_confidence)

        # 2. road zone, yaw speed, zone name
        if usable:
            assert obs.yaw_deg is not None and obs.pitch_deg is not None
            if self._usable and self._yaw is not None and dt > 0:
                self._yaw_out_speed_dps = (abs(obs.yaw_deg) - abs(self._yaw)) / dt
            limits = road_limits(self.zones, obs.steering_deg, s.right_hand_drive)
            self._on_road = (not obs.neutral_known) or is_on_road(
                self._on_road, obs.yaw_deg, obs.pitch_deg, self.zones, limits)
            self._yaw, self._pitch, self._roll = obs.yaw_deg, obs.pitch_deg, obs.roll_deg
            yaw_in = inboard_yaw(obs.yaw_deg, s.right_hand_drive)
            self._zone = "road" if self._on_road else glance_zone(self.zones, yaw_in,
                                                                  obs.pitch_deg)
            if not obs.neutral_known:
                self._zone = None

        # 3. face loss
        if usable:
            self._lost_since = None
            if self._visible_since is None:
                self._visible_since = t
        else:
            self._visible_since = None
            if self._lost_since is None:  # the face has just been lost: classify the loss
                self._lost_since = t
                turning = (obs.neutral_known and self._yaw is not None
                           and abs(self._yaw) >= s.turning_min_yaw_deg
                           and self._yaw_out_speed_dps >= s.turning_speed_dps)
                self._lost_away = (not self._on_road) or turning or (
                    EventType.DISTRACTION in self._alerts)
                if self._lost_away:
                    self._zone = None
        self._usable = usable

        # 4. nods and slump (pitch only known on usable frames; a lost face keeps the state)
        if usable and obs.neutral_known:
            assert obs.pitch_deg is not None
            assert obs.yaw_deg is not None
            self._nod_step(t, obs.pitch_deg, obs.yaw_deg)
        elif usable:  # angles relative to an unknown neutral: no nod can be timed
            self._nod_down_t = self._above_onset_t = None
        nod_down = self._nod_down_t is not None

        # 5. glances: away = off the road (or lost while away), except a nod's head-down time
        if usable:
            away = (not self._on_road) and not nod_down
        else:
            away = (self._lost_away or EventType.DISTRACTION in self._alerts) and not nod_down
        self._away = away
        if away:
            if self._glance_start is None:
                self._glance_start = t
                self._away_spans.append([t, t])
            else:
                self._away_spans[-1][1] = t
            self._on_road_since = None
        else:
            self._glance_start = None
            on_road_now = usable and self._on_road and not nod_down
            if not on_road_now:
                self._on_road_since = None
            elif self._on_road_since is None:
                self._on_road_since = t
        if was_away and away:
            self._escalation_s += dt
        on_road_s = 0.0 if self._on_road_since is None else t - self._on_road_since
        if on_road_s >= s.vats_reset_on_road_s:
            self._away_spans.clear()
        while self._away_spans and self._away_spans[0][1] < t - s.vats_window_s:
            self._away_spans.popleft()

        cap = self._level_cap(obs.speed_kmh)
        pose = self._snapshot()

        # 6a. distraction: raise, escalate, clear
        distraction = self._alerts.get(EventType.DISTRACTION)
        if distraction is None and away:
            assert self._glance_start is not None
            if t - self._glance_start >= s.long_glance_s:
                distraction = self._open(EventType.DISTRACTION, Reason.LONG_GLANCE,
                                         self._glance_start)
            elif self._away_time_in_window(t) >= s.vats_total_s:
                distraction = self._open(EventType.DISTRACTION, Reason.TIME_SHARING,
                                         self._away_spans[0][0])
            self._escalation_s = 0.0
        if distraction is not None:
            clear_s = s.clear_on_road_s
            if distraction.reason is Reason.TIME_SHARING:  # the window's own reset rule
                clear_s = max(clear_s, s.vats_reset_on_road_s)
            if on_road_s >= clear_s:
                events.append(self._close(distraction, t, pose))
                self._away_spans.clear()
            else:
                target = 1 + (self._escalation_s >= s.level2_after_s) + (
                    self._escalation_s >= s.level3_after_s)
                events += self._set_level(distraction, min(target, cap), t, pose)

        # 6b. slump: head down after a fast drop, no return within slump_s
        slump = self._alerts.get(EventType.SLUMP)
        if slump is None and nod_down:
            assert self._nod_down_t is not None
            if t - self._nod_down_t > s.slump_s:
                slump = self._open(EventType.SLUMP, Reason.HEAD_DOWN, self._nod_down_t)
        if slump is not None:
            head_up_s = 0.0 if (self._head_up_since is None or not usable) else (
                t - self._head_up_since)
            if not nod_down and head_up_s >= s.clear_on_road_s:
                events.append(self._close(slump, t, pose))
            else:
                events += self._set_level(slump, min(3, cap), t, pose)

        # 6c. drowsiness: nods within the window
        while self._nods and self._nods[0] < t - s.nod_window_s:
            self._nods.popleft()
        drowsy = self._alerts.get(EventType.DROWSINESS)
        if drowsy is None and len(self._nods) >= s.nods_for_alert:
            drowsy = self._open(EventType.DROWSINESS, Reason.NODDING, self._nods[0])
        if drowsy is not None:
            if not self._nods:
                events.append(self._close(drowsy, t, pose))
            else:
                target = 3 if len(self._nods) >= s.nods_for_level3 else s.drowsy_level
                events += self._set_level(drowsy, min(max(target, drowsy.level), cap), t, pose)

        # 6d. face not visible / system degraded
        lost_s = 0.0 if self._lost_since is None else t - self._lost_since
        visible_s = 0.0 if self._visible_since is None else t - self._visible_since
        for type_, reason, due, level in (
            (EventType.DRIVER_NOT_VISIBLE, Reason.FACE_LOST, s.not_visible_s, 1),
            (EventType.SYSTEM_DEGRADED, Reason.NO_FACE, s.degraded_s, 2),
        ):
            alert = self._alerts.get(type_)
            frontal_only = type_ is EventType.DRIVER_NOT_VISIBLE
            if (alert is None and self._lost_since is not None and lost_s >= due
                    and not (frontal_only and self._lost_away)):
                alert = self._open(type_, reason, self._lost_since)
            if alert is not None:
                if visible_s >= s.visible_clear_s:
                    events.append(self._close(alert, t, pose))
                else:
                    events += self._set_level(alert, min(level, cap), t, pose)

        self._t = t
        return events

    @property
    def attentive(self) -> bool:
        """Face usable, on the road, no nod in progress and no active alert: the engine learns
        the neutral pose only from such frames."""
        return (self._usable and self._on_road and not self._away and self._nod_down_t is None
                and not self._alerts)

    @property
    def alert_active(self) -> bool:
        """A distraction or slump alert is active (the engine learns the neutral pose at a
        low weight then)."""
        return EventType.DISTRACTION in self._alerts or EventType.SLUMP in self._alerts

    def state(self) -> PolicyState:
        alerts = tuple(
            ActiveAlert(a.type, a.reason, a.level, a.started_t_s, a.alert_id)
            for a in sorted(self._alerts.values(), key=lambda a: a.alert_id) if a.level > 0)
        types = {a.type for a in alerts}
        if EventType.SLUMP in types:
            driver = "slumped"
        elif EventType.DROWSINESS in types:
            driver = "drowsy"
        elif EventType.DISTRACTION in types:
            driver = "distracted"
        elif not self._usable and not self._lost_away and self._t is not None:
            driver = "not_visible"
        elif self._away:
            driver = "glancing"
        else:
            driver = "attentive" if self._t is not None else "unknown"
        glance_s = 0.0 if (self._glance_start is None or self._t is None) else (
            self._t - self._glance_start)
        return PolicyState(self._t, driver, self._usable, self._on_road, self._away, glance_s,
                           self._zone, len(self._nods), alerts)

    # ------------------------------------------------------------- helpers

    def _nod_step(self, t: float, pitch_deg: float, yaw_deg: float) -> None:
        """Track fast pitch drops (head near straight in yaw) and their return; count nods."""
        s = self.s
        if self._nod_down_t is not None and abs(yaw_deg) > s.nod_max_yaw_deg:
            self._nod_down_t = None  # turning while down: a glance (e.g. glovebox), not a nod
        if pitch_deg >= -s.nod_onset_deg and self._nod_down_t is None:
            self._above_onset_t = t
        if pitch_deg >= -s.nod_return_deg:
            if self._head_up_since is None:
                self._head_up_since = t
            if self._nod_down_t is not None:
                if t - self._nod_down_t <= s.nod_max_return_s:
                    self._nods.append(t)
                self._nod_down_t = None
        else:
            self._head_up_since = None
            if (self._nod_down_t is None and pitch_deg < -s.nod_depth_deg
                    and abs(yaw_deg) <= s.nod_max_yaw_deg and self._above_onset_t is not None
                    and t - self._above_onset_t <= s.nod_max_drop_s):
                self._nod_down_t = t
                self._above_onset_t = None

    def _away_time_in_window(self, t: float) -> float:
        lo = t - self.s.vats_window_s
        return sum(max(0.0, end - max(start, lo)) for start, end in self._away_spans)

    def _level_cap(self, speed_kmh: float | None) -> int:
        if speed_kmh is not None and speed_kmh < self.s.min_speed_kmh:
            return self.s.standstill_max_level
        return 3

    def _snapshot(self) -> PoseSnapshot:
        if not self._usable:
            return PoseSnapshot(None, None, None, None, False, None)
        assert self._yaw is not None
        return PoseSnapshot(self._yaw, self._pitch, self._roll,
                            inboard_yaw(self._yaw, self.s.right_hand_drive), self._on_road,
                            self._zone)

    def _open(self, type_: EventType, reason: Reason, started_t_s: float) -> _Alert:
        alert = _Alert(type_, reason, started_t_s, self._next_alert_id)
        self._next_alert_id += 1
        self._alerts[type_] = alert
        return alert

    def _record(self, alert: _Alert, phase: Phase, t: float, pose: PoseSnapshot) -> Event:
        self._seq += 1
        return Event(type=alert.type, reason=alert.reason, level=alert.level, phase=phase,
                     t_s=t, started_t_s=alert.started_t_s, alert_id=alert.alert_id,
                     event_id=f"{self.run_id}-{self._seq}", pose=pose,
                     settings_version=self.settings_version)

    def _set_level(self, alert: _Alert, level: int, t: float, pose: PoseSnapshot) -> list[Event]:
        """Raise (first time) or escalate; a level never goes down while active."""
        if level <= alert.level:
            return []
        phase = Phase.RAISED if alert.level == 0 else Phase.ESCALATED
        alert.level = level
        return [self._record(alert, phase, t, pose)]

    def _close(self, alert: _Alert, t: float, pose: PoseSnapshot) -> Event:
        del self._alerts[alert.type]
        return self._record(alert, Phase.CLEARED, t, pose)
