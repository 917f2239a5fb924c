"""The eye rules' memory: per-driver open aperture, closures and blinks, PERCLOS, yawns,
gaze and occlusion. Pure: time arrives with each frame; every threshold is in
:class:`~dms.engine.settings.EyeSettings`.

:class:`EyeRules` is fed one frame at a time by the policy (:mod:`dms.engine.policy`) with
the raw :class:`~dms.types.EyeObservation` and the head pose relative to the neutral, and
answers what the alert rules need:

1. **Judged?** Eye readings count only when the measurement is confident
   (``min_confidence``, at least one eye measured) and the head is near the road
   (``judge_yaw_deg``, ``judge_pitch_down_deg``, ``judge_pitch_up_deg``). Looking down
   lowers the lids without closing them, and a head turned or dropped is judged by the head
   rules (glances, nods, slump), so closure is never timed there.
2. **Baseline** (:class:`OpenBaseline`): the driver's open aperture is the
   ``baseline_percentile`` of the judged readings, exponentially forgotten
   (``baseline_memory_s``); trusted after ``baseline_settle_s`` of readings and only if it
   is at least ``baseline_min``. An explicit calibration (``dms calibrate``) gives a prior
   that is trusted at once. Openness is then a *ratio* to the baseline.
3. **Closure** (:class:`Closure`): closed below ``closed_ratio``, open again above
   ``open_ratio``; gaps without a judged reading up to ``max_gap_s`` keep the state, longer
   ones forget the closure. A closure up to ``blink_max_s`` is a blink.
4. **PERCLOS** (:class:`Perclos`): closed share of the judged time in ``perclos_window_s``.
5. **Yawns** (:class:`Yawns`): mouth at least ``yawn_mouth_open`` for ``yawn_min_s``.
6. **Gaze** (:class:`Gaze`): the eye-in-head direction, low-passed (``gaze_smoothing_s``),
   relative to the driver's own straight-ahead gaze (the median while the eyes are judged
   open), zero within ``gaze_deadband_deg``, weighted by ``gaze_weight``: the policy adds
   it to the head pose to judge the road zone, so an eyes-only glance is a glance.
7. **Occlusion**: the face is visible near the road but the eyes are not measurable.

While the eyes are shut past a blink, or the mouth is wide open (a yawn), the head pose is not
read as a glance: a yawn that tilts the head back is not looking away.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

from dms.engine.events import Reason
from dms.engine.settings import EyeSettings
from dms.types import EyeObservation


class DecayingHistogram:
    """Exponentially forgotten histogram of readings on a fixed grid, with quantiles."""

    __slots__ = ("lo", "step", "memory_s", "bins", "_t")

    def __init__(self, lo: float, hi: float, step: float, memory_s: float) -> None:
        self.lo, self.step, self.memory_s = lo, step, memory_s
        self.bins = np.zeros(int(round((hi - lo) / step)) + 1)
        self._t: float | None = None

    def add(self, t: float, value: float, weight: float = 1.0) -> None:
        if self._t is not None and t > self._t:
            self.bins *= math.exp(-(t - self._t) / self.memory_s)
        self._t = t
        i = int(round((value - self.lo) / self.step))
        self.bins[min(max(i, 0), len(self.bins) - 1)] += weight

    def quantile(self, q: float) -> float | None:
        """The value below which a share ``q`` of the weight lies (None when empty)."""
        total = float(self.bins.sum())
        if total <= 0:
            return None
        i = int(np.searchsorted(np.cumsum(self.bins), q * total))
        return self.lo + self.step * min(i, len(self.bins) - 1)


class OpenBaseline:
    """Step 2: the driver's open-eye aperture (raw openness units)."""

    __slots__ = ("s", "hist", "seconds", "prior")

    def __init__(self, settings: EyeSettings) -> None:
        self.s = settings
        self.hist = DecayingHistogram(0.0, 1.0, 0.005, settings.baseline_memory_s)
        self.seconds = 0.0  # judged reading time so far
        self.prior: float | None = None  # from an explicit calibration

    def add(self, t: float, dt: float, openness: float) -> None:
        self.hist.add(t, openness)
        self.seconds += dt

    @property
    def progress(self) -> float:
        return 1.0 if self.prior is not None else min(1.0, self.seconds / self.s.baseline_settle_s)

    def value(self) -> float | None:
        """The trusted baseline, or None while learning (or when it is implausibly low)."""
        learned = None
        if self.seconds >= self.s.baseline_settle_s:
            learned = self.hist.quantile(self.s.baseline_percentile / 100.0)
        if learned is None or learned < self.s.baseline_min:
            learned = None
        if learned is None:
            return self.prior
        return learned


class Closure:
    """Step 3: the eyes' closed/open state with hysteresis, the current closure, blinks and
    the memory of a microsleep until the eyes have been open ``eyes_clear_s``."""

    __slots__ = ("s", "closed", "closed_since", "open_since", "last_judged_t", "blinks",
                 "microsleep_t")

    def __init__(self, settings: EyeSettings) -> None:
        self.s = settings
        self.closed = False
        self.closed_since: float | None = None
        self.open_since: float | None = None  # judged open continuously since
        self.last_judged_t: float | None = None
        self.blinks: deque[float] = deque()
        self.microsleep_t: float | None = None  # start of the last closure >= microsleep_s

    def observe(self, t: float, ratio: float | None) -> None:
        """``ratio`` = openness / baseline on a judged frame, None on any other frame."""
        if ratio is None:
            self._unjudged(t)
            return
        self.last_judged_t = t
        if self.closed and ratio > self.s.open_ratio:
            self._reopen(t)
        elif not self.closed and ratio < self.s.closed_ratio:
            self.closed, self.closed_since, self.open_since = True, t, None
        elif not self.closed and self.open_since is None:
            self.open_since = t
        if self.closed and self.closed_s(t) >= self.s.microsleep_s:
            self.microsleep_t = self.closed_since

    def closed_s(self, t: float) -> float:
        return 0.0 if self.closed_since is None else t - self.closed_since

    def open_s(self, t: float) -> float:
        return 0.0 if self.open_since is None else t - self.open_since

    def blinks_in_window(self, t: float) -> int:
        while self.blinks and self.blinks[0] < t - self.s.blink_window_s:
            self.blinks.popleft()
        return len(self.blinks)

    def microsleep_holds(self, t: float) -> bool:
        """A microsleep happened and the eyes have not yet been open ``eyes_clear_s``."""
        if self.microsleep_t is not None and self.open_s(t) >= self.s.eyes_clear_s:
            self.microsleep_t = None
        return self.microsleep_t is not None

    def _reopen(self, t: float) -> None:
        assert self.closed_since is not None
        if t - self.closed_since <= self.s.blink_max_s:
            self.blinks.append(t)
        self.closed, self.closed_since, self.open_since = False, None, t

    def _unjudged(self, t: float) -> None:
        self.open_since = None
        if self.last_judged_t is not None and t - self.last_judged_t > self.s.max_gap_s:
            self.closed, self.closed_since = False, None  # unknown: not counted


class Perclos:
    """Step 4: closed share of the judged time in the window (running sums)."""

    __slots__ = ("s", "samples", "judged_s", "closed_s_sum", "high")

    def __init__(self, settings: EyeSettings) -> None:
        self.s = settings
        self.samples: deque[tuple[float, float, bool]] = deque()
        self.judged_s = 0.0
        self.closed_s_sum = 0.0
        self.high = False  # at or above perclos_alert, until below perclos_clear

    def observe(self, t: float, dt: float, closed: bool | None) -> None:
        """``closed``: the judged state this frame (None: not judged)."""
        if closed is not None and dt > 0:
            self._add(t, min(dt, self.s.max_gap_s), closed)
        while self.samples and self.samples[0][0] < t - self.s.perclos_window_s:
            _, old_dt, old_closed = self.samples.popleft()
            self._sum(-old_dt, old_closed)
        value = self.value()
        if value is not None and value >= self.s.perclos_alert:
            self.high = True
        elif value is None or value < self.s.perclos_clear:
            self.high = False

    def _add(self, t: float, dt: float, closed: bool) -> None:
        self.samples.append((t, dt, closed))
        self._sum(dt, closed)

    def _sum(self, dt: float, closed: bool) -> None:
        self.judged_s += dt
        if closed:
            self.closed_s_sum += dt

    def value(self) -> float | None:
        if self.judged_s < self.s.perclos_min_coverage * self.s.perclos_window_s:
            return None
        return max(0.0, self.closed_s_sum) / self.judged_s


class Yawns:
    """Step 5: a mouth held wide open; yawns counted in the window."""

    __slots__ = ("s", "open_since", "counted", "yawns")

    def __init__(self, settings: EyeSettings) -> None:
        self.s = settings
        self.open_since: float | None = None
        self.counted = False
        self.yawns: deque[float] = deque()

    def observe(self, t: float, mouth_open: float | None) -> None:
        if mouth_open is None or mouth_open < self.s.yawn_mouth_open:
            self.open_since, self.counted = None, False
            return
        if self.open_since is None:
            self.open_since = t
        if not self.counted and t - self.open_since >= self.s.yawn_min_s:
            self.yawns.append(self.open_since)
            self.counted = True

    @property
    def yawning(self) -> bool:
        return self.open_since is not None

    def in_window(self, t: float) -> int:
        while self.yawns and self.yawns[0] < t - self.s.yawn_window_s:
            self.yawns.popleft()
        return len(self.yawns)


class Gaze:
    """Step 6: eye-in-head gaze, low-passed, relative to the driver's straight-ahead gaze."""

    __slots__ = ("s", "yaw", "pitch", "_t", "centre_yaw", "centre_pitch", "seconds")

    def __init__(self, settings: EyeSettings) -> None:
        self.s = settings
        self.yaw: float | None = None
        self.pitch: float | None = None
        self._t: float | None = None
        self.centre_yaw = DecayingHistogram(-45.0, 45.0, 0.5, settings.baseline_memory_s)
        self.centre_pitch = DecayingHistogram(-45.0, 45.0, 0.5, settings.baseline_memory_s)
        self.seconds = 0.0

    def observe(self, t: float, dt: float, yaw: float | None, pitch: float | None,
                learn: bool) -> None:
        """A reading (None: no usable gaze this frame; the low-pass restarts after a gap)."""
        lim = self.s.gaze_max_deg
        if yaw is None or pitch is None or abs(yaw) > lim or abs(pitch) > lim:
            self.yaw = self.pitch = None
            return
        if self.yaw is None or self.pitch is None or self._t is None:
            self.yaw, self.pitch = yaw, pitch
        else:
            a = 1.0 - math.exp(-max(t - self._t, 0.0) / self.s.gaze_smoothing_s)
            self.yaw += a * (yaw - self.yaw)
            self.pitch += a * (pitch - self.pitch)
        self._t = t
        if learn:
            self.centre_yaw.add(t, yaw)
            self.centre_pitch.add(t, pitch)
            self.seconds += dt

    def offset(self) -> tuple[float, float] | None:
        """(yaw, pitch) of the gaze from the driver's straight ahead, weighted; None while
        the straight-ahead gaze is still being learned or there is no gaze now."""
        if self.yaw is None or self.pitch is None or self.seconds < self.s.baseline_settle_s:
            return None
        cy, cp = self.centre_yaw.quantile(0.5), self.centre_pitch.quantile(0.5)
        if cy is None or cp is None:
            return None
        dy, dp = self.yaw - cy, self.pitch - cp
        if math.hypot(dy, dp) < self.s.gaze_deadband_deg:
            return (0.0, 0.0)
        w = self.s.gaze_weight
        return (w * dy, w * dp)


@dataclass(frozen=True, slots=True)
class EyeStatus:
    """The eyes for the ``state`` topic: ``rules`` is ``eyes`` when this frame's eyes were
    judged, else ``head_only`` with ``why`` (not_measured, disabled, no_face, head_turned,
    not_visible, learning_baseline)."""

    rules: str
    why: str | None
    openness: float | None
    baseline: float | None
    ratio: float | None
    closed: bool
    closed_s: float
    blinks_per_min: float | None
    perclos: float | None
    gaze_yaw_deg: float | None
    gaze_pitch_deg: float | None
    yawning: bool
    yawns_in_window: int
    baseline_progress: float
    # read-only timers for explaining the eye alerts (the video and preview overlays); not
    # part of the state topic
    open_s: float = 0.0  # judged open continuously (microsleep, unresponsive: eyes_clear_s)
    visible_s: float = 0.0  # judged continuously (eyes_not_visible: visible_clear_s)
    microsleep: bool = False  # a microsleep still holds drowsiness (until open eyes_clear_s)
    perclos_high: bool = False  # PERCLOS holds drowsiness (until below perclos_clear)

    def to_dict(self) -> dict[str, Any]:
        def r(v: float | None, n: int = 3) -> float | None:
            return None if v is None else round(float(v), n)

        return {"rules": self.rules, "why": self.why, "openness": r(self.openness),
                "baseline": r(self.baseline), "ratio": r(self.ratio), "closed": self.closed,
                "closed_s": r(self.closed_s), "blinks_per_min": r(self.blinks_per_min, 1),
                "perclos": r(self.perclos), "gaze_yaw_deg": r(self.gaze_yaw_deg, 1),
                "gaze_pitch_deg": r(self.gaze_pitch_deg, 1), "yawning": self.yawning,
                "yawns_in_window": self.yawns_in_window,
                "baseline_progress": r(self.baseline_progress)}


class EyeRules:
    """Steps 1-7 composed. ``observe`` once per frame; the policy then asks."""

    def __init__(self, settings: EyeSettings) -> None:
        self.s = settings
        self.baseline = OpenBaseline(settings)
        self.closure = Closure(settings)
        self.perclos = Perclos(settings)
        self.yawns = Yawns(settings)
        self.gaze = Gaze(settings)
        self.why: str | None = "not_measured"
        self.openness: float | None = None
        self.ratio: float | None = None
        self.occluded_s = 0.0  # eyes unmeasurable near the road (paused while turned away)
        self.occluded_since: float | None = None  # first frame of that run
        self.visible_since: float | None = None
        self._t: float | None = None

    def set_prior(self, openness: float | None) -> None:
        """The open aperture measured by an explicit calibration (trusted at once)."""
        if openness is not None and openness >= self.s.baseline_min:
            self.baseline.prior = openness

    def observe(self, t: float, eyes: EyeObservation | None, yaw_deg: float | None,
                pitch_deg: float | None) -> None:
        """One frame: ``eyes`` as measured (None: not measured, or no usable face, then the
        angles are None too); ``yaw_deg`` / ``pitch_deg`` the head relative to neutral."""
        dt = 0.0 if self._t is None else max(t - self._t, 0.0)
        self._t = t
        self.why = self._why_not_judged(eyes, yaw_deg, pitch_deg)
        self.openness = None if eyes is None else eyes.openness
        self._occlusion(t, dt)
        ratio = self._learn_and_ratio(t, dt)
        self.ratio = ratio
        self.closure.observe(t, ratio)
        self.perclos.observe(t, dt, None if ratio is None else self.closure.closed)
        self.yawns.observe(t, None if eyes is None or yaw_deg is None else eyes.mouth_open)
        self._gaze(t, dt, eyes, ratio)

    # ---- what the policy asks

    @property
    def judged(self) -> bool:
        return self.why is None

    @property
    def holds_head(self) -> bool:
        """The head pose is not a glance now: eyes shut past a blink, or a yawn."""
        shut = self.closure.closed and self._t is not None and (
            self.closure.closed_s(self._t) > self.s.blink_max_s)
        return shut or self.yawns.yawning

    def gaze_offset(self) -> tuple[float, float] | None:
        """Eye-in-head gaze from straight ahead (camera yaw sign, pitch up > 0) to add to
        the head pose, or None (head only)."""
        if not self.judged or self.closure.closed or self.s.gaze_weight == 0:
            return None
        return self.gaze.offset()

    def drowsy_cause(self, t: float) -> tuple[Reason, int, float] | None:
        """The strongest eye cause of drowsiness now: (reason, target level, since)."""
        c, s = self.closure, self.s
        if c.closed and c.closed_since is not None and c.closed_s(t) >= s.sleep_s:
            return (Reason.SLEEP, 3, c.closed_since)
        if c.microsleep_holds(t):
            assert c.microsleep_t is not None
            return (Reason.MICROSLEEP, s.microsleep_level, c.microsleep_t)
        if self.perclos.high:
            return (Reason.PERCLOS, 1, t)
        if 0 < s.yawns_for_alert <= self.yawns.in_window(t):
            return (Reason.YAWNING, 1, self.yawns.yawns[0])
        return None

    def unresponsive_since(self, t: float) -> float | None:
        c = self.closure
        if c.closed and c.closed_since is not None and c.closed_s(t) >= self.s.unresponsive_s:
            return c.closed_since
        return None

    def status(self, t: float | None) -> EyeStatus:
        c, now = self.closure, (self._t if t is None else t)
        off = self.gaze.offset()
        return EyeStatus(
            "eyes" if self.judged else "head_only", self.why, self.openness,
            self.baseline.value(), self.ratio, c.closed,
            0.0 if now is None else c.closed_s(now), self._blinks_per_min(now),
            self.perclos.value(), None if off is None else off[0],
            None if off is None else off[1], self.yawns.yawning,
            0 if now is None else self.yawns.in_window(now), self.baseline.progress,
            open_s=0.0 if now is None else c.open_s(now), visible_s=self._visible_s(now),
            microsleep=c.microsleep_t is not None, perclos_high=self.perclos.high)

    def _blinks_per_min(self, now: float | None) -> float | None:
        if now is None or self.baseline.seconds < self.s.blink_window_s:
            return None
        return self.closure.blinks_in_window(now) * 60.0 / self.s.blink_window_s

    def _visible_s(self, now: float | None) -> float:
        return 0.0 if now is None or self.visible_since is None else now - self.visible_since

    # ---- steps

    def _why_not_judged(self, eyes: EyeObservation | None, yaw_deg: float | None,
                        pitch_deg: float | None) -> str | None:
        s = self.s
        if not s.enabled:
            return "disabled"
        if yaw_deg is None or pitch_deg is None:
            return "no_face"
        if eyes is None:
            return "not_measured"
        if (abs(yaw_deg) > s.judge_yaw_deg or pitch_deg < -s.judge_pitch_down_deg
                or pitch_deg > s.judge_pitch_up_deg):
            return "head_turned"
        if eyes.confidence < s.min_confidence or eyes.openness is None:
            return "not_visible"
        return None

    def _learn_and_ratio(self, t: float, dt: float) -> float | None:
        """Feed the baseline with a judged reading; openness / baseline, or None (not
        judged, or the baseline still learning: ``why`` says so)."""
        if self.why is not None or self.openness is None:
            return None
        self.baseline.add(t, dt, self.openness)
        base = self.baseline.value()
        if base is None:
            self.why = "learning_baseline"
            return None
        return self.openness / base

    def _occlusion(self, t: float, dt: float) -> None:
        """Face near the road with the eyes measured-but-unusable adds to the occluded time;
        usable eyes reset it. Anything else (no face, head turned, no eye measurement)
        pauses it: a driver in sunglasses who checks the mirrors is still occluded."""
        if self.why == "not_visible":
            self.visible_since = None
            if self.occluded_since is None:
                self.occluded_since = t
            else:
                self.occluded_s += min(dt, self.s.max_gap_s)
        elif self.why is None:
            self.occluded_s, self.occluded_since = 0.0, None
            if self.visible_since is None:
                self.visible_since = t

    def _gaze(self, t: float, dt: float, eyes: EyeObservation | None,
              ratio: float | None) -> None:
        if eyes is None or ratio is None or self.closure.closed:
            self.gaze.observe(t, dt, None, None, False)
            return
        self.gaze.observe(t, dt, eyes.gaze_yaw_deg, eyes.gaze_pitch_deg,
                          learn=ratio >= self.s.open_ratio)
