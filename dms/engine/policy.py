"""The driver-state policy: a pure state machine from timestamped poses to alert events.

Read this file on its own. It never reads a clock, a file or a device: time arrives in each
:class:`PolicyInput` (``t_s``, monotonic seconds) and every threshold in
:class:`~dms.engine.settings.PolicySettings` / :class:`~dms.engine.settings.ZoneSettings`.
Poses are relative to the driver's neutral pose (the engine composes rotations before this).

One :meth:`DriverPolicy.update` runs these small steps, in order. Each step's memory is one
small tracker class below, readable alone (named in brackets); ``DriverPolicy`` composes them
and adds one short rule per alert type.

1. **Usable face?** Face present and confidence >= ``min_confidence``. Then the **eyes**
   (:class:`dms.engine.eyes.EyeRules`, settings ``[engine.eyes]``): judged only near the road
   with a confident measurement, relative to the driver's learned open aperture; closures,
   blinks, PERCLOS, yawns, gaze and occlusion. Without eye measurements every eye rule is off
   (head-only, as before).
2. **Road zone** (:class:`RoadZone`, hysteresis): where the driver *looks*: the head pose plus
   the eyes' gaze offset (an eyes-only glance is a glance). Off the road beyond any limit; back only
   once inside every limit by ``hysteresis_deg``. Steering beyond ``steer_deadband_deg``
   widens the limit on the steering side. Right-hand drive mirrors yaw (zones are
   inboard/outboard).
3. **Face loss** (:class:`FaceLoss`): when the face disappears, it counts as *away* if the
   head was already off the road, was turning away (yaw moving outward faster than
   ``turning_speed_dps`` beyond ``turning_min_yaw_deg``), or a distraction alert was active
   (hiding does not clear it); otherwise it is *not visible* (``driver_not_visible`` after
   ``not_visible_s``). Any loss longer than ``degraded_s`` raises ``system_degraded``.
4. **Nods and slump** (:class:`NodTracker`): a *fast* pitch drop (from above
   ``-nod_onset_deg`` to below ``-nod_depth_deg`` within ``nod_max_drop_s``) starts a nod;
   turning beyond ``nod_max_yaw_deg`` while down cancels it (a glance down-and-sideways).
   Back above ``-nod_return_deg`` within ``nod_max_return_s`` = one nod. Still down after
   ``slump_s`` = slump (level 3).
   While a nod is down, the head-down time is drowsiness, not a glance; so is the time the
   eyes are shut past a blink or the mouth held wide open (a yawn that tilts the head back
   is not looking away).
5. **Glances** (:class:`GlanceWindow`): a glance is a run of *away* frames; its start is the
   first away frame. Long distraction when one glance lasts ``long_glance_s``; time sharing
   when away time within the last ``vats_window_s`` reaches ``vats_total_s``. The window is
   emptied after ``vats_reset_on_road_s`` continuously on the road, and when a distraction
   alert clears.
6. **Alerts** (:class:`AlertBook`; one rule per type in ``DriverPolicy``): each alert type
   has a target level; the emitted level is the target capped at ``standstill_max_level``
   when the speed is known and below ``min_speed_kmh``. A level only goes up while the alert
   is active (``escalated`` records); it ends with one ``cleared``.

**Before the neutral pose is known** (``neutral_known`` false: the engine is still learning
it and has no explicit calibration), angles relative to it mean nothing yet: every usable
face counts as on the road, no nod is tracked and a face loss is never "turning away".
Face loss still raises ``driver_not_visible`` / ``system_degraded``.

Escalation of distraction: level 1 when raised, 2 after ``level2_after_s`` more time away,
3 (unresponsive) after ``level3_after_s``; only time spent away counts.
Drowsiness has one alert with several causes; the record's reason is the cause of its level:
``nodding`` (nods in the window), ``microsleep`` (eyes closed ``microsleep_s``, level
``microsleep_level``), ``sleep`` (closed ``sleep_s``, level 3), ``perclos`` (level 1),
``yawning`` (level 1). Eyes closed ``unresponsive_s`` also raises ``unresponsive`` (level 3);
the face seen near the road with the eyes unmeasurable for ``occluded_s`` raises the
``eyes_not_visible`` notice.

Clearing: distraction and slump after ``clear_on_road_s`` continuously on the road with the
face visible (head up for slump; for time sharing the longer of that and
``vats_reset_on_road_s``); drowsiness once no cause holds (no nod left in ``nod_window_s``,
eyes open ``eyes_clear_s`` after a microsleep, PERCLOS below ``perclos_clear``, yawns out of
their window); unresponsive once the eyes have been open ``eyes_clear_s``;
not-visible and degraded after ``visible_clear_s`` with a usable face; eyes_not_visible after
the eyes are measurable ``visible_clear_s`` (eye settings).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from dms.engine.events import Event, EventType, Phase, PoseSnapshot, Reason
from dms.engine.eyes import EyeRules, EyeStatus
from dms.engine.settings import EyeSettings, PolicySettings, ZoneSettings
from dms.types import EyeObservation


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
    eyes: EyeObservation | None = None  # raw eye measurements (None: head-only rules)


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
    eyes: EyeStatus | None = None
    # read-only timers for explaining why an alert is still active (the video and preview
    # overlays); not part of the state topic
    on_road_s: float = 0.0  # on the road, face visible, continuously (distraction clears)
    head_up_s: float = 0.0  # head back up after a drop (slump clears at clear_on_road_s)
    face_visible_s: float = 0.0  # usable face continuously (not visible / degraded clear)
    last_nod_t_s: float | None = None  # newest nod in the window (nodding: + nod_window_s)

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


# ----------------------------------------------------------------- the trackers
#
# Each tracker owns one group of memory and is updated once per frame by DriverPolicy, in the
# order of the module docstring. None of them reads a clock, a file or another tracker: what
# it needs from the others arrives as arguments.


class RoadZone:
    """Step 2: where the head points. Road zone with hysteresis, glance-zone name, and what a
    face loss needs to know about the last usable pose (its yaw and how fast it turned)."""

    __slots__ = ("zones", "right_hand_drive", "usable", "on_road", "yaw_deg", "pitch_deg",
                 "roll_deg", "yaw_out_speed_dps", "zone", "t_s")

    def __init__(self, zones: ZoneSettings, right_hand_drive: bool) -> None:
        self.zones = zones
        self.right_hand_drive = right_hand_drive
        self.usable = False  # this frame has a usable face
        self.on_road = True
        self.yaw_deg: float | None = None  # last usable pose (kept while the face is lost)
        self.pitch_deg: float | None = None
        self.roll_deg: float | None = None
        self.yaw_out_speed_dps = 0.0  # d|yaw|/dt between the last two usable frames
        self.zone: str | None = None
        self.t_s: float | None = None  # time of the last usable pose

    def observe(self, obs: PolicyInput, usable: bool, dt: float,
                gaze: tuple[float, float] | None = None) -> None:
        """``gaze``: the eyes' offset from straight ahead (yaw, pitch), added to the head
        pose for the road and zone tests (an eyes-only glance is a glance); the pose kept
        for records and face loss stays the head's."""
        if usable:
            assert obs.yaw_deg is not None and obs.pitch_deg is not None
            if self.usable and self.yaw_deg is not None and dt > 0:
                self.yaw_out_speed_dps = (abs(obs.yaw_deg) - abs(self.yaw_deg)) / dt
            gy, gp = gaze if gaze is not None else (0.0, 0.0)
            look_yaw, look_pitch = obs.yaw_deg + gy, obs.pitch_deg + gp
            self.on_road = not obs.neutral_known or self._inside(obs, look_yaw, look_pitch)
            self.yaw_deg, self.pitch_deg, self.roll_deg = obs.yaw_deg, obs.pitch_deg, obs.roll_deg
            self.zone = self._zone_name(look_yaw, look_pitch) if obs.neutral_known else None
            self.t_s = obs.t_s
        self.usable = usable

    def forget_zone(self) -> None:
        """The face was lost while away: no glance zone to report until it is back."""
        self.zone = None

    def turning_away(self, s: PolicySettings, t_s: float) -> bool:
        """The last usable yaw was moving outward fast, and was off-centre by the time the face
        was lost at ``t_s`` (carried on at that speed for at most ``turning_lead_max_s``: a
        fast turn out of view shows its last frames mid-turn)."""
        if self.yaw_deg is None or self.t_s is None:
            return False
        lead_s = min(max(0.0, t_s - self.t_s), s.turning_lead_max_s)
        return (self.yaw_out_speed_dps >= s.turning_speed_dps
                and abs(self.yaw_deg) + self.yaw_out_speed_dps * lead_s
                >= s.turning_min_yaw_deg)

    def snapshot(self) -> PoseSnapshot:
        """The pose for event records (nulls when this frame has no usable face)."""
        if not self.usable:
            return PoseSnapshot(None, None, None, None, False, None)
        assert self.yaw_deg is not None
        return PoseSnapshot(self.yaw_deg, self.pitch_deg, self.roll_deg,
                            inboard_yaw(self.yaw_deg, self.right_hand_drive), self.on_road,
                            self.zone)

    def _inside(self, obs: PolicyInput, yaw_deg: float, pitch_deg: float) -> bool:
        limits = road_limits(self.zones, obs.steering_deg, self.right_hand_drive)
        return is_on_road(self.on_road, yaw_deg, pitch_deg, self.zones, limits)

    def _zone_name(self, yaw_deg: float, pitch_deg: float) -> str | None:
        if self.on_road:
            return "road"
        return glance_zone(self.zones, inboard_yaw(yaw_deg, self.right_hand_drive), pitch_deg)


class FaceLoss:
    """Step 3: when the face went and came back. A loss is classified once, on its first
    frame: *away* (time away from the road) or not (``driver_not_visible``)."""

    __slots__ = ("lost_since", "away", "visible_since")

    def __init__(self) -> None:
        self.lost_since: float | None = None
        self.away = False  # the last loss was classified as away (kept after the face is back)
        self.visible_since: float | None = None

    def observe(self, t: float, usable: bool, away_if_lost: bool) -> bool:
        """Advance; True when the face has just been lost and the loss counts as away."""
        if usable:
            self.lost_since = None
            if self.visible_since is None:
                self.visible_since = t
            return False
        self.visible_since = None
        if self.lost_since is not None:
            return False
        self.lost_since = t
        self.away = away_if_lost
        return self.away

    def lost_s(self, t: float) -> float:
        return 0.0 if self.lost_since is None else t - self.lost_since

    def visible_s(self, t: float) -> float:
        return 0.0 if self.visible_since is None else t - self.visible_since


class NodTracker:
    """Step 4: fast pitch drops near straight ahead, their return (a nod) or not (a slump).
    Fed only frames with a usable face and a known neutral; a lost face keeps the state."""

    __slots__ = ("s", "above_onset_t", "down_t", "head_up_since", "nods")

    def __init__(self, settings: PolicySettings) -> None:
        self.s = settings
        self.above_onset_t: float | None = None  # last time above -nod_onset_deg
        self.down_t: float | None = None  # when the current fast drop reached depth
        self.head_up_since: float | None = None  # above -nod_return_deg since
        self.nods: deque[float] = deque()  # return times of counted nods

    @property
    def down(self) -> bool:
        """A nod is down: its head-down time is drowsiness, not a glance."""
        return self.down_t is not None

    def observe(self, t: float, pitch_deg: float, yaw_deg: float) -> None:
        s = self.s
        if self.down_t is not None and abs(yaw_deg) > s.nod_max_yaw_deg:
            self.down_t = None  # turning while down: a glance (e.g. glovebox), not a nod
        if pitch_deg >= -s.nod_onset_deg and self.down_t is None:
            self.above_onset_t = t
        if pitch_deg >= -s.nod_return_deg:
            self._head_up(t)
        else:
            self._head_down(t, pitch_deg, yaw_deg)

    def forget_drop(self) -> None:
        """Angles relative to an unknown neutral: no drop can be timed."""
        self.down_t = self.above_onset_t = None

    def head_up_s(self, t: float, usable: bool) -> float:
        """How long the head has been back up (0 on a frame without a usable face)."""
        if self.head_up_since is None or not usable:
            return 0.0
        return t - self.head_up_since

    def in_window(self, t: float) -> int:
        """Nods within the last ``nod_window_s`` (older ones are forgotten)."""
        while self.nods and self.nods[0] < t - self.s.nod_window_s:
            self.nods.popleft()
        return len(self.nods)

    def _head_up(self, t: float) -> None:
        if self.head_up_since is None:
            self.head_up_since = t
        if self.down_t is not None:
            if t - self.down_t <= self.s.nod_max_return_s:
                self.nods.append(t)
            self.down_t = None

    def _head_down(self, t: float, pitch_deg: float, yaw_deg: float) -> None:
        self.head_up_since = None
        if self.down_t is None and self._fast_drop(t, pitch_deg, yaw_deg):
            self.down_t = t
            self.above_onset_t = None

    def _fast_drop(self, t: float, pitch_deg: float, yaw_deg: float) -> bool:
        s = self.s
        return (pitch_deg < -s.nod_depth_deg and abs(yaw_deg) <= s.nod_max_yaw_deg
                and self.above_onset_t is not None
                and t - self.above_onset_t <= s.nod_max_drop_s)


class GlanceWindow:
    """Step 5: the current glance, the on-road streak and the time-sharing window (the
    [start, end] spans of away time within the last ``vats_window_s``)."""

    __slots__ = ("s", "away", "glance_start", "on_road_since", "spans", "escalation_s")

    def __init__(self, settings: PolicySettings) -> None:
        self.s = settings
        self.away = False
        self.glance_start: float | None = None  # first away frame of the current glance
        self.on_road_since: float | None = None
        self.spans: deque[list[float]] = deque()
        # time away on consecutive away frames since restart_escalation(): the policy
        # restarts it on every away frame without a distraction alert, so while one is
        # active it is the time away since the alert was raised
        self.escalation_s = 0.0

    def observe(self, t: float, dt: float, away: bool, on_road: bool) -> None:
        """``away`` and ``on_road`` (face visible, on the road, no nod down) exclude each
        other; neither is true while the face is lost frontally, or during a nod."""
        was_away, self.away = self.away, away
        if away:
            self._extend(t)
        else:
            self.glance_start = None
            self._on_road(t, on_road)
        if was_away and away:
            self.escalation_s += dt
        if self.on_road_s(t) >= self.s.vats_reset_on_road_s:
            self.spans.clear()
        while self.spans and self.spans[0][1] < t - self.s.vats_window_s:
            self.spans.popleft()

    def on_road_s(self, t: float) -> float:
        return 0.0 if self.on_road_since is None else t - self.on_road_since

    def glance_s(self, t: float) -> float:
        return 0.0 if self.glance_start is None else t - self.glance_start

    def away_in_window_s(self, t: float) -> float:
        lo = t - self.s.vats_window_s
        return sum(max(0.0, end - max(start, lo)) for start, end in self.spans)

    def clear(self) -> None:
        """Empty the time-sharing window (a fresh start)."""
        self.spans.clear()

    def restart_escalation(self) -> None:
        self.escalation_s = 0.0

    def _extend(self, t: float) -> None:
        if self.glance_start is None:
            self.glance_start = t
            self.spans.append([t, t])
        else:
            self.spans[-1][1] = t
        self.on_road_since = None

    def _on_road(self, t: float, on_road: bool) -> None:
        if not on_road:
            self.on_road_since = None
        elif self.on_road_since is None:
            self.on_road_since = t


class _Alert:
    """Book-keeping of one active alert (mutable, private to the policy)."""

    __slots__ = ("type", "reason", "level", "started_t_s", "alert_id")

    def __init__(self, type_: EventType, reason: Reason, started_t_s: float, alert_id: int):
        self.type, self.reason, self.started_t_s, self.alert_id = (
            type_, reason, started_t_s, alert_id)
        self.level = 0


class AlertBook:
    """Step 6's book-keeping: at most one active alert per type, alert and event ids, and the
    records (``raised`` / ``escalated`` / ``cleared``). Levels only go up while active."""

    __slots__ = ("run_id", "settings_version", "_alerts", "_next_alert_id", "_seq")

    def __init__(self, run_id: str, settings_version: str) -> None:
        self.run_id = run_id
        self.settings_version = settings_version
        self._alerts: dict[EventType, _Alert] = {}
        self._next_alert_id = 1
        self._seq = 0

    def __contains__(self, type_: EventType) -> bool:
        return type_ in self._alerts

    def __bool__(self) -> bool:
        return bool(self._alerts)

    def get(self, type_: EventType) -> _Alert | None:
        return self._alerts.get(type_)

    def active(self) -> tuple[ActiveAlert, ...]:
        """The raised alerts (level > 0), oldest first."""
        return tuple(
            ActiveAlert(a.type, a.reason, a.level, a.started_t_s, a.alert_id)
            for a in sorted(self._alerts.values(), key=lambda a: a.alert_id) if a.level > 0)

    def open(self, type_: EventType, reason: Reason, started_t_s: float) -> _Alert:
        """A new alert at level 0: :meth:`set_level` raises it."""
        alert = _Alert(type_, reason, started_t_s, self._next_alert_id)
        self._next_alert_id += 1
        self._alerts[type_] = alert
        return alert

    def set_level(self, alert: _Alert, level: int, t: float, pose: PoseSnapshot) -> list[Event]:
        """Raise (first time) or escalate; a level never goes down while active."""
        if level <= alert.level:
            return []
        phase = Phase.RAISED if alert.level == 0 else Phase.ESCALATED
        alert.level = level
        return [self._record(alert, phase, t, pose)]

    def close(self, alert: _Alert, t: float, pose: PoseSnapshot) -> list[Event]:
        del self._alerts[alert.type]
        return [self._record(alert, Phase.CLEARED, t, pose)]

    def _record(self, alert: _Alert, phase: Phase, t: float, pose: PoseSnapshot) -> Event:
        self._seq += 1
        return Event(type=alert.type, reason=alert.reason, level=alert.level, phase=phase,
                     t_s=t, started_t_s=alert.started_t_s, alert_id=alert.alert_id,
                     event_id=f"{self.run_id}-{self._seq}", pose=pose,
                     settings_version=self.settings_version)


# ----------------------------------------------------------------- the state machine

_ALERT_DRIVER_STATES = ((EventType.UNRESPONSIVE, "unresponsive"), (EventType.SLUMP, "slumped"),
                        (EventType.DROWSINESS, "drowsy"), (EventType.DISTRACTION, "distracted"))


class DriverPolicy:
    """``update(PolicyInput) -> list[Event]``: the trackers above, composed in the order of
    the module docstring, then one small rule per alert type."""

    def __init__(self, settings: PolicySettings, zones: ZoneSettings,
                 settings_version: str = "", run_id: str = "run",
                 eyes: EyeSettings | None = None) -> None:
        self.s = settings
        self.zones = zones
        self.settings_version = settings_version
        self.run_id = run_id
        self._t: float | None = None
        self._road = RoadZone(zones, settings.right_hand_drive)
        self._loss = FaceLoss()
        self._nods = NodTracker(settings)
        self._glances = GlanceWindow(settings)
        self._alerts = AlertBook(run_id, settings_version)
        self._eyes = EyeRules(eyes or EyeSettings())

    # ------------------------------------------------------------- public

    def set_eye_prior(self, openness: float | None) -> None:
        """The driver's open-eye aperture from an explicit calibration."""
        self._eyes.set_prior(openness)

    def update(self, obs: PolicyInput) -> list[Event]:
        """Advance to ``obs.t_s`` and return the events this frame produced.

        Frames whose time does not increase are ignored (no events)."""
        if self._t is not None and obs.t_s <= self._t:
            return []
        t = obs.t_s
        usable = self._usable(obs)
        self._observe(obs, usable, 0.0 if self._t is None else t - self._t)
        cap = self._level_cap(obs.speed_kmh)
        pose = self._road.snapshot()
        events = (self._distraction(t, cap, pose) + self._slump(t, usable, cap, pose)
                  + self._drowsiness(t, cap, pose) + self._unresponsive(t, cap, pose)
                  + self._not_visible(t, cap, pose) + self._eyes_not_visible(t, cap, pose))
        self._t = t
        return events

    @property
    def attentive(self) -> bool:
        """Face usable, on the road, no nod in progress and no active alert: the engine learns
        the neutral pose only from such frames."""
        return (self._road.usable and self._road.on_road and not self._glances.away
                and not self._nods.down and not self._alerts and not self._eyes.holds_head)

    @property
    def alert_active(self) -> bool:
        """A distraction or slump alert is active, or the head pose is held by the eyes (shut
        past a blink, a yawn): the engine learns the neutral pose at a low weight then."""
        return (EventType.DISTRACTION in self._alerts or EventType.SLUMP in self._alerts
                or self._eyes.holds_head)

    def state(self) -> PolicyState:
        alerts = self._alerts.active()
        t = self._t
        return PolicyState(
            t, self._driver_state(alerts), self._road.usable, self._road.on_road,
            self._glances.away, 0.0 if t is None else self._glances.glance_s(t),
            self._road.zone, len(self._nods.nods), alerts, self._eyes.status(t),
            on_road_s=0.0 if t is None else self._glances.on_road_s(t),
            head_up_s=0.0 if t is None else self._nods.head_up_s(t, self._road.usable),
            face_visible_s=0.0 if t is None else self._loss.visible_s(t),
            last_nod_t_s=self._nods.nods[-1] if self._nods.nods else None)

    # ------------------------------------------------------------- steps 1-5: the trackers

    def _usable(self, obs: PolicyInput) -> bool:
        return (obs.face_present and obs.yaw_deg is not None and obs.pitch_deg is not None
                and obs.confidence >= self.s.min_confidence)

    def _observe(self, obs: PolicyInput, usable: bool, dt: float) -> None:
        t, road, eyes = obs.t_s, self._road, self._eyes
        self._observe_eyes(obs, usable)
        road.observe(obs, usable, dt, eyes.gaze_offset() if obs.neutral_known else None)
        if self._loss.observe(t, usable, self._loss_is_away(obs)):
            road.forget_zone()
        if usable:
            self._observe_nods(obs)
        held = self._nods.down or eyes.holds_head  # a nod, shut eyes or a yawn: no glance
        self._glances.observe(t, dt, self._away(usable) and not held,
                              usable and road.on_road and not held)

    def _away(self, usable: bool) -> bool:
        """The frame is time away: off the road, or a face loss that counts as away (or
        hides from an active distraction alert)."""
        if usable:
            return not self._road.on_road
        return self._loss.away or EventType.DISTRACTION in self._alerts

    def _observe_eyes(self, obs: PolicyInput, usable: bool) -> None:
        if usable:
            self._eyes.observe(obs.t_s, obs.eyes, obs.yaw_deg, obs.pitch_deg)
        else:
            self._eyes.observe(obs.t_s, None, None, None)

    def _loss_is_away(self, obs: PolicyInput) -> bool:
        """Classify a face loss: already off the road, turning away (only with a known
        neutral), or hiding from an active distraction alert."""
        return (not self._road.on_road
                or (obs.neutral_known and self._road.turning_away(self.s, obs.t_s))
                or EventType.DISTRACTION in self._alerts)

    def _observe_nods(self, obs: PolicyInput) -> None:
        if not obs.neutral_known:
            self._nods.forget_drop()
            return
        assert obs.pitch_deg is not None and obs.yaw_deg is not None
        self._nods.observe(obs.t_s, obs.pitch_deg, obs.yaw_deg)

    # ------------------------------------------------------------- step 6: one rule per alert

    def _distraction(self, t: float, cap: int, pose: PoseSnapshot) -> list[Event]:
        """Raise on a long glance or full time-sharing window, escalate with time away,
        clear after time on the road (emptying the window)."""
        s, g = self.s, self._glances
        alert = self._alerts.get(EventType.DISTRACTION)
        if alert is None and g.away:
            alert = self._open_distraction(t)
            g.restart_escalation()
        if alert is None:
            return []
        clear_s = s.clear_on_road_s
        if alert.reason is Reason.TIME_SHARING:  # the window's own reset rule
            clear_s = max(clear_s, s.vats_reset_on_road_s)
        if g.on_road_s(t) >= clear_s:
            g.clear()
            return self._alerts.close(alert, t, pose)
        target = 1 + (g.escalation_s >= s.level2_after_s) + (g.escalation_s >= s.level3_after_s)
        return self._alerts.set_level(alert, min(target, cap), t, pose)

    def _open_distraction(self, t: float) -> _Alert | None:
        g = self._glances
        assert g.glance_start is not None
        if t - g.glance_start >= self.s.long_glance_s:
            return self._alerts.open(EventType.DISTRACTION, Reason.LONG_GLANCE, g.glance_start)
        if g.away_in_window_s(t) >= self.s.vats_total_s:
            return self._alerts.open(EventType.DISTRACTION, Reason.TIME_SHARING,
                                     g.spans[0][0])
        return None

    def _slump(self, t: float, usable: bool, cap: int, pose: PoseSnapshot) -> list[Event]:
        """Head down after a fast drop for longer than ``slump_s``; clears once back up."""
        nods = self._nods
        alert = self._alerts.get(EventType.SLUMP)
        if alert is None and nods.down_t is not None and t - nods.down_t > self.s.slump_s:
            alert = self._alerts.open(EventType.SLUMP, Reason.HEAD_DOWN, nods.down_t)
        if alert is None:
            return []
        if not nods.down and nods.head_up_s(t, usable) >= self.s.clear_on_road_s:
            return self._alerts.close(alert, t, pose)
        return self._alerts.set_level(alert, min(3, cap), t, pose)

    def _drowsiness(self, t: float, cap: int, pose: PoseSnapshot) -> list[Event]:
        """Nods within the window, or an eye cause (microsleep, sleep, PERCLOS, yawns);
        clears once no cause holds (no nod left in the window, eyes open long enough).
        The record's reason is the cause of its level."""
        cause = self._drowsy_cause(t)
        alert = self._alerts.get(EventType.DROWSINESS)
        if alert is None and cause is not None:
            alert = self._alerts.open(EventType.DROWSINESS, cause[0], cause[2])
        if alert is None:
            return []
        if cause is None:
            return self._alerts.close(alert, t, pose)
        reason, target, _ = cause
        if min(target, cap) > alert.level:
            alert.reason = reason
        return self._alerts.set_level(alert, min(max(target, alert.level), cap), t, pose)

    def _drowsy_cause(self, t: float) -> tuple[Reason, int, float] | None:
        """The strongest cause now: (reason, target level, since); nods first on a tie."""
        s, n = self.s, self._nods.in_window(t)
        nods = None
        if n >= s.nods_for_alert or (n > 0 and EventType.DROWSINESS in self._alerts):
            nods = (Reason.NODDING, 3 if n >= s.nods_for_level3 else s.drowsy_level,
                    self._nods.nods[0])
        eye = self._eyes.drowsy_cause(t)
        if nods is None or (eye is not None and eye[1] > nods[1]):
            return eye
        return nods

    def _unresponsive(self, t: float, cap: int, pose: PoseSnapshot) -> list[Event]:
        """Eyes closed for ``unresponsive_s`` (level 3); clears once they have been open
        ``eyes_clear_s``."""
        since = self._eyes.unresponsive_since(t)
        alert = self._alerts.get(EventType.UNRESPONSIVE)
        if alert is None and since is not None:
            alert = self._alerts.open(EventType.UNRESPONSIVE, Reason.EYES_CLOSED, since)
        if alert is None:
            return []
        if self._eyes.closure.open_s(t) >= self._eyes.s.eyes_clear_s:
            return self._alerts.close(alert, t, pose)
        return self._alerts.set_level(alert, min(3, cap), t, pose)

    def _eyes_not_visible(self, t: float, cap: int, pose: PoseSnapshot) -> list[Event]:
        """The face is seen near the road but the eyes cannot be measured for
        ``occluded_s`` (sunglasses, a mask): a notice; the eye rules meanwhile fall back to
        the head's. Clears after the eyes are measurable for ``visible_clear_s``."""
        es, eyes = self._eyes.s, self._eyes
        alert = self._alerts.get(EventType.EYES_NOT_VISIBLE)
        since = eyes.occluded_since
        if alert is None and since is not None and eyes.occluded_s >= es.occluded_s:
            alert = self._alerts.open(EventType.EYES_NOT_VISIBLE, Reason.EYES_OCCLUDED, since)
        if alert is None:
            return []
        if eyes.visible_since is not None and t - eyes.visible_since >= es.visible_clear_s:
            return self._alerts.close(alert, t, pose)
        return self._alerts.set_level(alert, min(es.notice_level, cap), t, pose)

    def _not_visible(self, t: float, cap: int, pose: PoseSnapshot) -> list[Event]:
        """driver_not_visible (frontal losses only) and system_degraded (any loss)."""
        s = self.s
        return (self._face_loss_alert(EventType.DRIVER_NOT_VISIBLE, Reason.FACE_LOST,
                                      s.not_visible_s, 1, t, cap, pose)
                + self._face_loss_alert(EventType.SYSTEM_DEGRADED, Reason.NO_FACE,
                                        s.degraded_s, 2, t, cap, pose))

    def _face_loss_alert(self, type_: EventType, reason: Reason, due_s: float, level: int,
                         t: float, cap: int, pose: PoseSnapshot) -> list[Event]:
        loss = self._loss
        alert = self._alerts.get(type_)
        frontal_only = type_ is EventType.DRIVER_NOT_VISIBLE
        if (alert is None and loss.lost_since is not None and loss.lost_s(t) >= due_s
                and not (frontal_only and loss.away)):
            alert = self._alerts.open(type_, reason, loss.lost_since)
        if alert is None:
            return []
        if loss.visible_s(t) >= self.s.visible_clear_s:
            return self._alerts.close(alert, t, pose)
        return self._alerts.set_level(alert, min(level, cap), t, pose)

    # ------------------------------------------------------------- helpers

    def _level_cap(self, speed_kmh: float | None) -> int:
        if speed_kmh is not None and speed_kmh < self.s.min_speed_kmh:
            return self.s.standstill_max_level
        return 3

    def _driver_state(self, alerts: tuple[ActiveAlert, ...]) -> str:
        types = {a.type for a in alerts}
        for type_, name in _ALERT_DRIVER_STATES:
            if type_ in types:
                return name
        if self._t is None:
            return "unknown"
        if not self._road.usable and not self._loss.away:
            return "not_visible"
        return "glancing" if self._glances.away else "attentive"
