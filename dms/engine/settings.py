"""Every threshold of the driver-state engine, in one frozen settings object.

Each field has a default, its unit in the name and a ``doc`` naming where the number comes
from: **Euro NCAP** (2023 driver state monitoring protocol), **openpilot** (its open-source
driver monitoring policy), **EU ADDW** (regulation 2023/2590) or **tuned here** (chosen for
this project; see docs/engine.md for the reasoning). Load from the ``[engine]`` table of the
config file with :func:`load_engine_settings`; the shipped camera-mount profiles in
``calibration/*.toml`` are such tables.

Angles of the road zone and glance zones are relative to the driver's neutral pose and use
*inboard* yaw: positive toward the centre of the car (the driver's right in a left-hand-drive
car). The engine converts camera yaw to inboard yaw with ``right_hand_drive``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dms.settings import load_settings


def _doc(text: str) -> dict[str, str]:
    return {"doc": text}


@dataclass(frozen=True, slots=True)
class FilterSettings:
    """One Euro filter on the head rotation, plus outlier and frame-drop handling."""

    min_cutoff_hz: float = field(default=0.8, metadata=_doc(
        "Cutoff of the rotation low-pass when the head is still; lower = less jitter, more "
        "lag (time constant 1/(2*pi*f)). Tuned here (One Euro filter, Casiez et al. 2012)."))
    beta_per_deg: float = field(default=0.02, metadata=_doc(
        "Cutoff increase per deg/s of filtered angular speed: fast head turns get little lag. "
        "Tuned here."))
    derivative_cutoff_hz: float = field(default=1.0, metadata=_doc(
        "Cutoff of the angular-speed estimate that drives the adaptive cutoff. One Euro "
        "default."))
    max_head_speed_dps: float = field(default=600.0, metadata=_doc(
        "A jump implying a faster head rotation than this is a suspect outlier, held back "
        "until the next frame confirms it. Tuned here (fast human head turns peak at "
        "about 400-600 deg/s)."))
    outlier_min_jump_deg: float = field(default=15.0, metadata=_doc(
        "Jumps smaller than this are never treated as outliers, whatever the frame rate. "
        "Tuned here."))
    confirm_deg: float = field(default=10.0, metadata=_doc(
        "A suspect frame is confirmed (real motion) when the next frame lies within this "
        "angle of it. Tuned here."))
    reset_gap_s: float = field(default=0.5, metadata=_doc(
        "After a gap without usable poses longer than this, the filter restarts from the next "
        "pose instead of sliding from a stale one. Tuned here."))

    plausible_pitch_deg: float = field(default=80.0, metadata=_doc(
        "A camera-frame pitch beyond +-this is not a head pose (a landmark fit flipping at "
        "profile reads pitch and roll near +-180): the frame counts as no usable face. Tuned "
        "here (head flexion/extension stays within about 60-70 deg, plus the camera's tilt)."))
    plausible_roll_deg: float = field(default=60.0, metadata=_doc(
        "A camera-frame roll beyond +-this is not a head pose (lateral bending stays within "
        "about 40-45 deg): the frame counts as no usable face. Tuned here."))
    flip_jump_deg: float = field(default=30.0, metadata=_doc(
        "Pitch or roll jumping by more than this (plus flip_rate_dps times the time since the "
        "last accepted pose) is a fit flipping, not motion: the frame counts as no usable "
        "face until the pose is consistent again. Tuned here."))
    flip_rate_dps: float = field(default=120.0, metadata=_doc(
        "Pitch/roll speed a real head can sustain, used to widen flip_jump_deg with time: a "
        "new pose that persists is accepted once it could have been reached. Tuned here "
        "(nods peak at about 100 deg/s)."))

    def validate(self) -> None:
        for name in ("plausible_pitch_deg", "plausible_roll_deg", "flip_jump_deg",
                     "flip_rate_dps", "max_head_speed_dps", "outlier_min_jump_deg",
                     "confirm_deg"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 (got {getattr(self, name)})")
        if self.min_cutoff_hz <= 0 or self.derivative_cutoff_hz <= 0:
            raise ValueError("min_cutoff_hz and derivative_cutoff_hz must be > 0")
        if self.beta_per_deg < 0 or self.reset_gap_s <= 0:
            raise ValueError("beta_per_deg must be >= 0 and reset_gap_s > 0")


@dataclass(frozen=True, slots=True)
class MountSettings:
    """Where the camera sits: the head pose it sees when the driver looks at the road.

    Optional. The default configuration needs no mount: the neutral pose is learned from the
    driver's own dominant pose (``[engine.calibration]``). A profile with ``hint = true``
    (every profile in ``calibration/``) only speeds that up; a hint that contradicts what the
    driver does is logged and reported, never obeyed. Without a hint the angles below are
    only the default camera geometry of the synthetic tools (``dms synth``, scenarios)."""

    name: str = field(default="dashboard-centre", metadata=_doc(
        "Name of the camera mount profile (calibration/NAME.toml)."))
    hint: bool = field(default=False, metadata=_doc(
        "Use this mount's neutral as a hint: the learned neutral is trusted after "
        "hint_settle_s instead of online_settle_s when the driver's dominant pose agrees "
        "with it (within hint_agree_deg). Off by default: no mount is assumed."))
    neutral_pitch_deg: float = field(default=8.0, metadata=_doc(
        "Neutral pitch this mount expects (AFLW2000 angles, camera frame). Tuned here per "
        "mount."))
    neutral_yaw_deg: float = field(default=-20.0, metadata=_doc(
        "Neutral yaw this mount expects (camera frame: positive = nose toward image left). "
        "Tuned here per mount."))
    neutral_roll_deg: float = field(default=0.0, metadata=_doc("Neutral roll this mount "
                                                                "expects."))

    def validate(self) -> None:
        _in_range(self, ("neutral_pitch_deg", "neutral_yaw_deg", "neutral_roll_deg"), 90.0)


@dataclass(frozen=True, slots=True)
class GlanceZone:
    """A named glance target, relative to neutral (inboard yaw, pitch < 0 = down)."""

    name: str = field(default="zone", metadata=_doc("Zone name reported in events."))
    yaw_inboard_deg: float = field(default=0.0, metadata=_doc("Centre yaw, inboard positive."))
    pitch_deg: float = field(default=0.0, metadata=_doc("Centre pitch, negative = down."))
    radius_deg: float = field(default=12.0, metadata=_doc(
        "A pose within this angle of the centre is reported as this zone."))

    def validate(self) -> None:
        _in_range(self, ("yaw_inboard_deg",), 180.0)
        _in_range(self, ("pitch_deg",), 90.0)
        if not 0 < self.radius_deg <= 90:
            raise ValueError(f"radius_deg must be in (0, 90], got {self.radius_deg}")


def _positive_bounded(obj: Any) -> None:
    """Every ``*_s`` field in (0, 3600] and every ``*_deg`` field in (0, 90]."""
    for f in dataclasses.fields(obj):
        limit = 3600.0 if f.name.endswith("_s") else 90.0 if f.name.endswith("_deg") else None
        value = getattr(obj, f.name)
        if limit is not None and not 0 < value <= limit:
            raise ValueError(f"{f.name} must be in (0, {limit:g}] (got {value})")


def _in_range(obj: object, names: tuple[str, ...], limit: float) -> None:
    for name in names:
        value = getattr(obj, name)
        if not -limit <= value <= limit:
            raise ValueError(f"{name} must be within +-{limit:g} deg (got {value})")


def _default_glance_zones() -> tuple[GlanceZone, ...]:
    # Euro NCAP glance targets; head-turn angles typical for a left-hand-drive car (tuned here).
    # Head pose sees head turns, not eye movements: the cluster is mostly an eye glance, so its
    # head pitch stays inside the road zone (as for openpilot).
    return (
        GlanceZone("left_mirror", -45.0, -5.0, 15.0),
        GlanceZone("left_window", -70.0, 0.0, 15.0),
        GlanceZone("rearview_mirror", 32.0, 10.0, 10.0),
        GlanceZone("right_mirror", 60.0, -5.0, 15.0),
        GlanceZone("cluster", 0.0, -10.0, 6.0),
        GlanceZone("infotainment", 30.0, -30.0, 15.0),
        GlanceZone("passenger", 70.0, 0.0, 15.0),
        GlanceZone("passenger_footwell", 40.0, -50.0, 15.0),
        GlanceZone("glovebox", 50.0, -35.0, 10.0),
        GlanceZone("phone_lap", 0.0, -45.0, 12.0),
    )


@dataclass(frozen=True, slots=True)
class ZoneSettings:
    """The road zone (with hysteresis) and the named glance zones."""

    yaw_inboard_deg: float = field(default=26.0, metadata=_doc(
        "Off-road beyond this yaw toward the car's centre. openpilot: 23-29 deg."))
    yaw_outboard_deg: float = field(default=26.0, metadata=_doc(
        "Off-road beyond this yaw toward the door. openpilot: 23-29 deg."))
    pitch_down_deg: float = field(default=18.0, metadata=_doc(
        "Off-road when looking down more than this. openpilot: 17.9-18.5 deg."))
    pitch_up_deg: float = field(default=25.0, metadata=_doc(
        "Off-road when looking up more than this (openpilot ignores up; tuned here)."))
    hysteresis_deg: float = field(default=4.0, metadata=_doc(
        "Back on the road only once inside every limit by this margin; a pose wobbling on "
        "the border does not toggle. Tuned here."))
    steer_deadband_deg: float = field(default=30.0, metadata=_doc(
        "Steering angle above which the road zone widens in the steering direction. "
        "openpilot."))
    steer_gain: float = field(default=0.25, metadata=_doc(
        "Widening per degree of steering beyond the deadband (deg of yaw per deg). Tuned "
        "here."))
    steer_max_extra_deg: float = field(default=22.5, metadata=_doc(
        "Cap on the steering widening. openpilot."))
    glance: tuple[GlanceZone, ...] = field(default_factory=_default_glance_zones, metadata=_doc(
        "Named glance targets (array of tables [[engine.zones.glance]])."))

    def validate(self) -> None:
        limits = (self.yaw_inboard_deg, self.yaw_outboard_deg, self.pitch_down_deg,
                  self.pitch_up_deg)
        if min(limits) <= self.hysteresis_deg or self.hysteresis_deg < 0:
            raise ValueError("every road limit must exceed hysteresis_deg >= 0")
        if max(limits) > 90:
            raise ValueError("road limits are angles from the neutral: at most 90 deg")


@dataclass(frozen=True, slots=True)
class CalibrationSettings:
    """Explicit neutral-pose calibration and the online (running) estimate."""

    duration_s: float = field(default=5.0, metadata=_doc(
        "How long `dms calibrate` collects poses while the driver looks at the road. "
        "Tuned here."))
    min_samples: int = field(default=30, metadata=_doc(
        "Fewest usable poses for an explicit calibration. Tuned here."))
    max_missing_fraction: float = field(default=0.3, metadata=_doc(
        "Refuse when the face was missing (or unsure) in more than this share of frames. "
        "Tuned here."))
    outlier_deg: float = field(default=8.0, metadata=_doc(
        "Poses further than this from the robust centre are rejected. Tuned here."))
    max_outlier_fraction: float = field(default=0.25, metadata=_doc(
        "Refuse (driver moved) when more than this share of poses is rejected. Tuned here."))
    max_spread_deg: float = field(default=4.0, metadata=_doc(
        "Refuse (driver moved) when the RMS angle of the kept poses around their mean "
        "exceeds this. Tuned here."))
    max_offset_from_mount_deg: float = field(default=35.0, metadata=_doc(
        "With a mount hint: refuse when the neutral is further than this from the mount's "
        "expectation (not looking at the road, or wrong mount profile). Tuned here."))
    neutral_yaw_range_deg: tuple[float, float] = field(default=(-50.0, 50.0), metadata=_doc(
        "Physically plausible neutral yaw in the camera frame: a camera anywhere from the "
        "A-pillar to the centre console sees the road-facing head within this range. Only "
        "poses inside it can become the neutral; explicit calibrations outside are refused. "
        "Tuned here (mounts: A-pillar +30, dashboard centre -20, centre console -35)."))
    neutral_pitch_range_deg: tuple[float, float] = field(default=(-35.0, 35.0), metadata=_doc(
        "Physically plausible neutral pitch in the camera frame (camera below or above the "
        "eyes). Tuned here (mounts: steering column +15, rear-view mirror -15)."))
    min_confidence: float = field(default=0.5, metadata=_doc(
        "Poses below this confidence are treated as missing. Tuned here."))
    online_enabled: bool = field(default=True, metadata=_doc(
        "Learn the neutral pose while driving attentively. openpilot."))
    online_min_speed_kmh: float = field(default=30.0, metadata=_doc(
        "Learn only above this speed, when speed is known. openpilot uses 13 m/s; lower "
        "here so town driving also calibrates."))
    online_requires_speed: bool = field(default=False, metadata=_doc(
        "If true, never learn when the vehicle speed is unknown. Tuned here."))
    online_settle_s: float = field(default=3.0, metadata=_doc(
        "Seconds of learnable face data before the learned neutral may be trusted (and "
        "alerts that depend on it armed), provided the dominant pose holds "
        "online_dominant_fraction of them. Tuned here: long enough for a steady driver's "
        "sway to average out, short enough that stories 5 s in are covered; the dominance "
        "test, not the time, keeps a glance from being learned."))
    online_dominant_fraction: float = field(default=0.7, metadata=_doc(
        "Share of the (time-decayed) learnable poses that must lie within "
        "online_cluster_radius_deg of the dominant pose before it is trusted. Drivers look "
        "at the road 80-90 % of the time at speed. Tuned here."))
    online_cluster_radius_deg: float = field(default=8.0, metadata=_doc(
        "Radius of the dominant-pose cluster (yaw, pitch) around the road: a driver's road "
        "gaze spreads a few degrees; mirror and cluster glances lie further out. Tuned here."))
    online_switch_ratio: float = field(default=1.25, metadata=_doc(
        "Once trusted, the neutral moves to another cluster only when that cluster's weight "
        "exceeds the current one's by this factor (no flapping between two targets). Tuned "
        "here."))
    online_alert_weight: float = field(default=0.25, metadata=_doc(
        "Weight of poses learned while a distraction or slump alert is active: low, so that "
        "a long distraction (time sharing, a phone) does not become the neutral, yet not "
        "zero, so that a wrongly learned neutral still corrects itself. Tuned here."))
    online_memory_s: float = field(default=360.0, metadata=_doc(
        "Time constant of the exponential forgetting of learned poses (older poses fade). "
        "openpilot keeps about 6 minutes."))
    hint_settle_s: float = field(default=1.5, metadata=_doc(
        "With a mount hint that the dominant pose agrees with: trusted after this many "
        "seconds instead of online_settle_s. Tuned here."))
    hint_agree_deg: float = field(default=10.0, metadata=_doc(
        "The dominant pose agrees with the mount hint when within this angle; further away "
        "the hint is reported as contradicted and ignored. Tuned here."))
    online_gate_deg: float = field(default=20.0, metadata=_doc(
        "After an explicit calibration: refine it only from poses within this angle of the "
        "current neutral. Tuned here."))
    online_yaw_range_deg: tuple[float, float] = field(default=(-15.0, 15.0), metadata=_doc(
        "After an explicit calibration: clamp of the learned yaw offset from it (camera "
        "frame). openpilot clamps to a documented range (-1.4..16.6 for its mount)."))
    online_pitch_range_deg: tuple[float, float] = field(default=(-6.0, 8.0), metadata=_doc(
        "After an explicit calibration: clamp of the learned pitch offset. openpilot: -5..7 "
        "deg."))
    online_refine_min_s: float = field(default=60.0, metadata=_doc(
        "After an explicit calibration: seconds of attentive driving before the refinement "
        "replaces it. openpilot."))

    def validate(self) -> None:
        for name in ("online_settle_s", "online_cluster_radius_deg", "online_memory_s",
                     "hint_settle_s", "hint_agree_deg", "online_gate_deg",
                     "online_refine_min_s", "duration_s", "outlier_deg", "max_spread_deg",
                     "max_offset_from_mount_deg"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0 (got {getattr(self, name)})")
        if not 0.5 < self.online_dominant_fraction <= 1:
            raise ValueError("online_dominant_fraction must be in (0.5, 1]")
        if not self.online_switch_ratio >= 1:
            raise ValueError("online_switch_ratio must be >= 1")
        if not 0 <= self.online_alert_weight <= 1:
            raise ValueError("online_alert_weight must be in [0, 1]")
        self._validate_ranges()
        if not 0 <= self.max_missing_fraction <= 1 or not 0 <= self.max_outlier_fraction <= 1:
            raise ValueError("fractions must be within [0, 1]")

    def _validate_ranges(self) -> None:
        for name in ("online_yaw_range_deg", "online_pitch_range_deg", "neutral_yaw_range_deg",
                     "neutral_pitch_range_deg"):
            lo, hi = getattr(self, name)
            if lo > hi:
                raise ValueError(f"{name}: lower bound {lo} above upper bound {hi}")


@dataclass(frozen=True, slots=True)
class PolicySettings:
    """The state machine: distraction, face loss, drowsiness, escalation and gating."""

    min_confidence: float = field(default=0.5, metadata=_doc(
        "Poses below this confidence count as no face. Tuned here."))
    long_glance_s: float = field(default=3.0, metadata=_doc(
        "Long distraction: one glance away at least this long. Euro NCAP."))
    vats_window_s: float = field(default=30.0, metadata=_doc(
        "Visual attention time sharing window. Euro NCAP."))
    vats_total_s: float = field(default=10.0, metadata=_doc(
        "Time sharing: this much time away within the window. Euro NCAP."))
    vats_reset_on_road_s: float = field(default=2.0, metadata=_doc(
        "The time-sharing window resets after this long continuously on the road. "
        "Euro NCAP."))
    level2_after_s: float = field(default=2.0, metadata=_doc(
        "Escalate to level 2 (audible) after this much more time away once raised. openpilot "
        "(level 1 at 3 s, level 2 at 5 s)."))
    level3_after_s: float = field(default=3.0, metadata=_doc(
        "Escalate to level 3 (urgent, unresponsive driver) after this much time away once "
        "raised. Euro NCAP: no return within 3 s of a warning, or away >= 6 s."))
    clear_on_road_s: float = field(default=1.0, metadata=_doc(
        "A distraction or slump alert clears after this long continuously back on the road "
        "(face visible). openpilot: a 0.5 s reappearance must not clear."))
    turning_speed_dps: float = field(default=40.0, metadata=_doc(
        "Face lost while the yaw moved away from neutral faster than this = head turning "
        "away; the loss then counts as time away. Tuned here."))
    turning_min_yaw_deg: float = field(default=12.0, metadata=_doc(
        "...and only if the yaw was at least this far from neutral when the face was lost: "
        "the last usable yaw carried on at its speed until the loss, for at most "
        "turning_lead_max_s. Tuned here."))
    turning_lead_max_s: float = field(default=0.1, metadata=_doc(
        "Longest time the last usable yaw is carried on at its speed to where the face was "
        "lost (one frame interval down to 10 fps). A fast "
        "turn out of view is seen mid-turn on its last frames (dms demo's turn-away: last "
        "usable frame at about 200 deg/s, lost one 15-fps frame later). Tuned here."))
    not_visible_s: float = field(default=1.0, metadata=_doc(
        "Face lost while frontal for this long raises driver_not_visible. Tuned here."))
    degraded_s: float = field(default=10.0, metadata=_doc(
        "Face not visible for this long raises system_degraded. Euro NCAP: tell the driver "
        "within 10 s."))
    visible_clear_s: float = field(default=0.5, metadata=_doc(
        "driver_not_visible / system_degraded clear after the face is back this long. "
        "Tuned here."))
    nod_depth_deg: float = field(default=15.0, metadata=_doc(
        "A nod: pitch drops more than this below neutral. Tuned here (reference 10-15 deg; "
        "the upper end keeps noisy cluster glances out)."))
    nod_max_yaw_deg: float = field(default=12.0, metadata=_doc(
        "A pitch drop counts as a nod only while the head is within this yaw of neutral; "
        "looking down-and-sideways (infotainment, glovebox) is a glance. Tuned here."))
    nod_onset_deg: float = field(default=4.0, metadata=_doc(
        "The drop is timed from the last pose above -nod_onset_deg. Tuned here."))
    nod_max_drop_s: float = field(default=0.8, metadata=_doc(
        "The drop from -nod_onset_deg to -nod_depth_deg must take at most this long (fast). "
        "Tuned here."))
    nod_return_deg: float = field(default=6.0, metadata=_doc(
        "The head has returned when pitch is back above -nod_return_deg. Tuned here."))
    nod_max_return_s: float = field(default=3.0, metadata=_doc(
        "A nod returns within this time of reaching depth; otherwise it is a slump. "
        "Tuned here (reference: 0.3-3 s)."))
    nods_for_alert: int = field(default=3, metadata=_doc(
        "Nods within the window that raise drowsiness. Tuned here."))
    nods_for_level3: int = field(default=5, metadata=_doc(
        "Nods within the window that escalate drowsiness to level 3. Tuned here."))
    nod_window_s: float = field(default=60.0, metadata=_doc(
        "Window for counting nods; drowsiness clears once it holds no nod. Tuned here."))
    drowsy_level: int = field(default=2, metadata=_doc(
        "Level at which drowsiness is raised (audible). Tuned here."))
    slump_s: float = field(default=3.0, metadata=_doc(
        "Head down (after a fast drop) without return for longer than this: slump, level 3. "
        "Euro NCAP sleep: eyes closed > 3 s."))
    min_speed_kmh: float = field(default=10.0, metadata=_doc(
        "Below this speed (when known) alerts do not escalate past standstill_max_level. "
        "openpilot stops at level 1 at standstill."))
    standstill_max_level: int = field(default=1, metadata=_doc(
        "Highest level while below min_speed_kmh. openpilot."))
    right_hand_drive: bool = field(default=False, metadata=_doc(
        "Mirror yaw so zones stay inboard/outboard. openpilot flips yaw for RHD."))

    def validate(self) -> None:
        self._validate_ranges()
        if not 0 < self.min_confidence <= 1:
            raise ValueError("min_confidence must be in (0, 1]")
        if self.min_speed_kmh < 0:
            raise ValueError("min_speed_kmh must be >= 0")
        if not self.vats_total_s <= self.vats_window_s:
            raise ValueError("need vats_total_s <= vats_window_s")
        if not 0 < self.level2_after_s <= self.level3_after_s:
            raise ValueError("need 0 < level2_after_s <= level3_after_s")
        self._validate_nods()
        if self.drowsy_level not in (1, 2, 3) or self.standstill_max_level not in (1, 2, 3):
            raise ValueError("levels are 1, 2 or 3")

    def _validate_ranges(self) -> None:
        # every time and angle threshold must be positive: a zero or negative one would
        # silently disable (or always trigger) an alert; and bounded: an hour is beyond any
        # rule's horizon, 90 deg the largest angle from the neutral
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name.endswith(("_s", "_deg", "_dps")) and not value > 0:
                raise ValueError(f"{f.name} must be > 0 (got {value})")
            limit = {"_s": 3600.0, "_deg": 90.0}.get("_" + f.name.rsplit("_", 1)[-1])
            if limit is not None and value > limit:
                raise ValueError(f"{f.name} must be <= {limit:g} (got {value})")

    def _validate_nods(self) -> None:
        if not self.nod_return_deg < self.nod_depth_deg or self.nod_onset_deg >= self.nod_depth_deg:
            raise ValueError("need nod_onset_deg and nod_return_deg below nod_depth_deg")
        if not 1 <= self.nods_for_alert <= self.nods_for_level3:
            raise ValueError("need 1 <= nods_for_alert <= nods_for_level3")


@dataclass(frozen=True, slots=True)
class EyeSettings:
    """The eye rules ([engine.eyes]): closure, blinks, PERCLOS, yawns, gaze and occlusion.

    They run only on frames whose observation carries eye measurements (a pipeline that
    measures no eyes runs the head-only rules). Openness is judged relative to the driver's
    own open-eye aperture, learned online (and in ``dms calibrate``): glasses and eye shape
    shift raw readings, a fixed threshold fails. Eyes are *judged* only while the head is
    near the road (within ``judge_yaw_deg`` / ``judge_pitch_down_deg`` /
    ``judge_pitch_up_deg`` of the neutral) and the measurement is confident: looking down
    lowers the lids without closing them, and a head turned or down is the head rules'
    business (glances, nods, slump)."""

    enabled: bool = field(default=True, metadata=_doc(
        "Run the eye rules when eye measurements arrive. Off: head-only rules."))
    min_confidence: float = field(default=0.5, metadata=_doc(
        "Eye measurements below this confidence count as not visible. Tuned here."))
    judge_yaw_deg: float = field(default=40.0, metadata=_doc(
        "Eyes are judged only while the head's yaw is within this of the neutral. Tuned "
        "here (eye landmarks degrade past about 45 deg)."))
    judge_pitch_down_deg: float = field(default=15.0, metadata=_doc(
        "...and its pitch no lower than this below the neutral: looking down lowers the lids "
        "(a phone glance must not read as closed eyes). Below the road zone's pitch_down_deg "
        "(18) so that a downward glance is always judged by the head rules. Tuned here."))
    judge_pitch_up_deg: float = field(default=40.0, metadata=_doc(
        "...and no higher than this above it (a yawn tilts the head back 20-35 deg). Tuned "
        "here."))
    baseline_percentile: float = field(default=80.0, metadata=_doc(
        "The driver's open aperture is this percentile of the judged openness readings "
        "(blinks and closures are the low tail). Tuned here."))
    baseline_memory_s: float = field(default=120.0, metadata=_doc(
        "Time constant of the exponential forgetting of openness readings. Tuned here."))
    baseline_settle_s: float = field(default=3.0, metadata=_doc(
        "Seconds of judged eye readings before the baseline is trusted and the closure rules "
        "armed (like the neutral pose's online_settle_s). Tuned here."))
    baseline_min: float = field(default=0.12, metadata=_doc(
        "A learned baseline below this raw openness is not an open eye (the eyes were shut "
        "or the measurement failed from the start): the closure rules stay unarmed. Tuned "
        "here (open eyes read 0.2-0.4)."))
    closed_ratio: float = field(default=0.5, metadata=_doc(
        "Eyes closed when openness falls below this share of the driver's open aperture "
        "(a P50 closure; PERCLOS counts the same state). Tuned here on renders: shut eyes "
        "read 0.3 of the aperture facing the camera but 0.45-0.5 with the head tilted 30 "
        "deg back (a yawn); eyes looking 15-25 deg down read 0.58-0.75 and must stay open "
        "(docs/benchmarks.md, section 8)."))
    open_ratio: float = field(default=0.55, metadata=_doc(
        "...and open again above this share (hysteresis against noise: readings of a still "
        "eye jitter by about 0.03 of the aperture). Tuned here."))
    max_gap_s: float = field(default=0.5, metadata=_doc(
        "Frames without a judged reading shorter than this keep the closure going; longer, "
        "the closure is forgotten (unknown, not counted). Tuned here."))
    blink_max_s: float = field(default=0.5, metadata=_doc(
        "A closure up to this long is a blink (counted for the blink rate, never a glance "
        "break). Blinks last 0.1-0.4 s."))
    blink_window_s: float = field(default=60.0, metadata=_doc(
        "Window of the blink rate (blinks per minute in the state). Tuned here."))
    microsleep_s: float = field(default=1.0, metadata=_doc(
        "Eyes closed this long: drowsiness (microsleep). Euro NCAP 2026: microsleep = eyes "
        "closed 1-2 s."))
    microsleep_level: int = field(default=2, metadata=_doc(
        "Level of a microsleep alert. Issue 14 / Euro NCAP: a warning."))
    sleep_s: float = field(default=3.0, metadata=_doc(
        "Eyes closed this long: sleep, drowsiness escalated to level 3. Euro NCAP 2026: "
        "sleep = eyes closed >= 3 s."))
    unresponsive_s: float = field(default=6.0, metadata=_doc(
        "Eyes closed this long: unresponsive driver (level 3). Euro NCAP 2026: eyes closed "
        ">= 6 s."))
    eyes_clear_s: float = field(default=5.0, metadata=_doc(
        "Eye-caused drowsiness and unresponsive alerts clear after the eyes have been open "
        "this long (and no other cause holds). Tuned here."))
    perclos_window_s: float = field(default=60.0, metadata=_doc(
        "PERCLOS window (share of judged time with the eyes closed). Wierwille et al.: "
        "1-minute windows are common."))
    perclos_min_coverage: float = field(default=0.5, metadata=_doc(
        "PERCLOS is reported only once judged readings cover this share of the window. "
        "Tuned here."))
    perclos_alert: float = field(default=0.15, metadata=_doc(
        "PERCLOS at or above this raises drowsiness (level 1). Literature: 0.12-0.15 marks "
        "drowsiness; normal blinking is 0.03-0.08."))
    perclos_clear: float = field(default=0.10, metadata=_doc(
        "...which clears once PERCLOS is back below this. Tuned here."))
    yawn_mouth_open: float = field(default=0.5, metadata=_doc(
        "Mouth open this wide (inner-lip aperture / mouth width) is a yawn posture; the pose "
        "of a yawn is then never read as a glance. Tuned here (speech reads below 0.3)."))
    yawn_min_s: float = field(default=1.5, metadata=_doc(
        "Mouth wide open this long counts one yawn. Yawns last 4-7 s; speech never holds "
        "it this long."))
    yawns_for_alert: int = field(default=3, metadata=_doc(
        "Yawns within yawn_window_s that raise drowsiness (level 1); 0 turns the yawn cue "
        "off. Tuned here."))
    yawn_window_s: float = field(default=300.0, metadata=_doc(
        "Window for counting yawns. Tuned here."))
    gaze_weight: float = field(default=1.0, metadata=_doc(
        "Share of the eye-in-head gaze added to the head pose to judge the road zone: 1 = "
        "eyes-only glances count as glances, 0 = head only. Tuned here."))
    gaze_deadband_deg: float = field(default=8.0, metadata=_doc(
        "Gaze offsets (yaw, pitch together) smaller than this are taken as straight ahead: "
        "eye-in-head readings jitter by a few degrees and eyes-only glances to mirrors and "
        "screens turn the eyes 15-35 deg. Tuned here."))
    gaze_smoothing_s: float = field(default=0.15, metadata=_doc(
        "Time constant of the low-pass on the measured gaze (saccades take 30-80 ms). "
        "Tuned here."))
    gaze_max_deg: float = field(default=45.0, metadata=_doc(
        "Eye-in-head readings beyond this are not gaze (the eyes rotate at most about "
        "45 deg): the gaze is ignored on that frame. Physiology."))
    occluded_s: float = field(default=5.0, metadata=_doc(
        "Face visible and near the road but the eyes not measurable this long: "
        "eyes_not_visible notice (the eye rules fall back to head-only). Euro NCAP 2026: "
        "tell an occluded driver within 10 s."))
    visible_clear_s: float = field(default=1.0, metadata=_doc(
        "eyes_not_visible clears after the eyes are measurable again this long. Tuned "
        "here."))
    notice_level: int = field(default=1, metadata=_doc(
        "Level of the eyes_not_visible notice. Tuned here."))

    def validate(self) -> None:
        _positive_bounded(self)
        if not 0 < self.min_confidence <= 1 or not 0 < self.perclos_min_coverage <= 1:
            raise ValueError("min_confidence and perclos_min_coverage must be in (0, 1]")
        if not 0 < self.closed_ratio < self.open_ratio < 1:
            raise ValueError("need 0 < closed_ratio < open_ratio < 1")
        if not 0 < self.perclos_clear <= self.perclos_alert <= 1:
            raise ValueError("need 0 < perclos_clear <= perclos_alert <= 1")
        if not 0 < self.baseline_percentile < 100 or not 0 <= self.gaze_weight <= 1:
            raise ValueError("baseline_percentile must be in (0, 100), gaze_weight in [0, 1]")
        self._validate_times()

    def _validate_times(self) -> None:
        if not self.blink_max_s < self.microsleep_s <= self.sleep_s <= self.unresponsive_s:
            raise ValueError("need blink_max_s < microsleep_s <= sleep_s <= unresponsive_s")
        if self.microsleep_level not in (1, 2, 3) or self.notice_level not in (1, 2, 3):
            raise ValueError("levels are 1, 2 or 3")
        if self.yawns_for_alert < 0 or not 0 < self.baseline_min < 1:
            raise ValueError("yawns_for_alert must be >= 0 and baseline_min in (0, 1)")


@dataclass(frozen=True, slots=True)
class EngineSettings:
    """The whole engine: ``[engine]`` with sub-tables ``filter``, ``mount``, ``zones``,
    ``calibration``, ``policy`` and ``eyes``."""

    filter: FilterSettings = field(default_factory=FilterSettings, metadata=_doc(
        "Rotation filter ([engine.filter])."))
    mount: MountSettings = field(default_factory=MountSettings, metadata=_doc(
        "Camera mount prior ([engine.mount])."))
    zones: ZoneSettings = field(default_factory=ZoneSettings, metadata=_doc(
        "Road and glance zones ([engine.zones])."))
    calibration: CalibrationSettings = field(default_factory=CalibrationSettings, metadata=_doc(
        "Neutral-pose calibration ([engine.calibration])."))
    policy: PolicySettings = field(default_factory=PolicySettings, metadata=_doc(
        "State machine ([engine.policy])."))
    eyes: EyeSettings = field(default_factory=EyeSettings, metadata=_doc(
        "Eye rules: closure, blinks, PERCLOS, yawns, gaze, occlusion ([engine.eyes])."))


def load_engine_settings(table: Mapping[str, Any] | None, where: str = "engine") -> EngineSettings:
    """EngineSettings from the ``[engine]`` table of a config file (None = all defaults)."""
    return load_settings(EngineSettings, table, where)


def merge_tables(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge of two TOML tables (``over`` wins); used to layer a mount profile and a
    config file."""
    out: dict[str, Any] = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_tables(out[key], value)
        else:
            out[key] = value
    return out
