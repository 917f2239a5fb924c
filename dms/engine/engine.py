"""The engine: one ``step`` per observation, chaining the pure pieces.

    Observation -> PoseGate (implausible or flipping fits = no face) -> RotationFilter
                -> relative to neutral (R_neutral.T @ R) -> DriverPolicy (events; the eye
                   rules of dms.engine.eyes run inside it on the observation's eyes)
                -> neutral learning: DominantPoseNeutral (default, mount-free) or, after an
                   explicit calibration, OnlineNeutral (clamped refinement)

Until the neutral is known (settled) the policy is told so and raises no alert that depends
on it (distraction, nods, slump); face loss is still reported.

The service and ``dms replay`` call only :meth:`Engine.step`. No clock, no I/O.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from dms.engine.calibration import (
    DominantPoseNeutral,
    NeutralPose,
    OnlineNeutral,
    mount_prior,
)
from dms.engine.events import Event
from dms.engine.filter import PoseGate, RotationFilter
from dms.engine.policy import DriverPolicy, PolicyInput, PolicyState, inboard_yaw
from dms.engine.settings import EngineSettings
from dms.geometry import euler_from_rotation, relative_rotation
from dms.settings import settings_version
from dms.types import HeadPose, Observation

log = logging.getLogger(__name__)

STATE_SCHEMA_VERSION = 1


@dataclass(frozen=True, slots=True)
class RelativePose:
    """Head pose relative to the neutral pose (degrees, AFLW2000 signs; inboard yaw is
    positive toward the centre of the car)."""

    rotation: np.ndarray
    pitch_deg: float
    yaw_deg: float
    roll_deg: float
    yaw_inboard_deg: float


@dataclass(frozen=True, slots=True)
class CalibrationStatus:
    """Where the neutral pose stands, for the ``state`` topic, the demo and the plot.

    ``state`` is ``calibrated`` once alerts that depend on the neutral are armed (explicit
    calibration, or the learned neutral settled), else ``calibrating``; ``progress`` 0..1;
    ``source`` of the neutral in use: ``explicit``, ``online``, ``prior`` (mount hint) or
    ``none``; ``mount_mismatch_deg`` when a mount hint contradicts the driver's pose."""

    state: str
    progress: float
    source: str
    mount_hint: str | None = None
    mount_mismatch_deg: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state, "progress": round(self.progress, 3), "source": self.source,
                "mount_hint": self.mount_hint,
                "mount_mismatch_deg": None if self.mount_mismatch_deg is None
                else round(self.mount_mismatch_deg, 1)}


@dataclass(frozen=True, slots=True)
class EngineState:
    """Summary for the ``state`` topic."""

    t_s: float | None
    driver_state: str
    calibrated: bool
    neutral_source: str  # explicit | online | prior | none
    neutral_pitch_deg: float
    neutral_yaw_deg: float
    policy: PolicyState
    calibration: CalibrationStatus | None = None

    def to_dict(self) -> dict[str, Any]:
        p = self.policy
        return {
            "schema_version": STATE_SCHEMA_VERSION,
            "t_s": None if self.t_s is None else round(self.t_s, 4),
            "driver_state": self.driver_state,
            "calibrated": self.calibrated,
            "neutral_source": self.neutral_source,
            "neutral_pitch_deg": round(self.neutral_pitch_deg, 2),
            "neutral_yaw_deg": round(self.neutral_yaw_deg, 2),
            "calibration": None if self.calibration is None else self.calibration.to_dict(),
            "face_visible": p.face_visible,
            "on_road": p.on_road,
            "glance_s": round(p.glance_s, 3),
            "zone": p.zone,
            "nods_in_window": p.nods_in_window,
            "max_level": p.max_level,
            "active_alerts": [a.to_dict() for a in p.active_alerts],
            "eyes": None if p.eyes is None else p.eyes.to_dict(),
        }


@dataclass(frozen=True, slots=True)
class StepResult:
    """What one step produced: events, filtered absolute pose, relative pose, state."""

    t_s: float
    events: tuple[Event, ...]
    pose: HeadPose | None  # filtered absolute pose (None when no face this frame)
    relative: RelativePose | None
    state: EngineState


class Engine:
    """``Engine(settings, neutral=None).step(obs) -> StepResult``.

    ``neutral`` is the driver's stored explicit calibration (:class:`NeutralPose`), which takes
    precedence and is refined within a clamp; None learns the neutral from the driver's
    dominant pose (mount-free; a mount profile with ``hint = true`` speeds it up).
    ``run_id`` prefixes event ids (the service passes a per-boot id)."""

    def __init__(self, settings: EngineSettings | None = None,
                 neutral: NeutralPose | None = None, run_id: str = "run") -> None:
        self.settings = settings or EngineSettings()
        s = self.settings
        self.version = settings_version(s)
        self._gate = PoseGate(s.filter)
        self._filter = RotationFilter(s.filter)
        self._online: OnlineNeutral | None = None
        self._learner: DominantPoseNeutral | None = None
        if neutral is not None:
            self.set_neutral(neutral)
        else:
            self._learner = DominantPoseNeutral(
                s.calibration, mount_prior(s.mount) if s.mount.hint else None)
        self._policy = DriverPolicy(s.policy, s.zones, self.version, run_id, s.eyes)
        if neutral is not None:
            self._policy.set_eye_prior(neutral.eye_openness)
        self._state = self._summary(None)

    @property
    def neutral(self) -> NeutralPose:
        if self._online is not None:
            return self._online.neutral()
        assert self._learner is not None
        return self._learner.neutral()

    @property
    def calibrated(self) -> bool:
        """The neutral is known: explicit calibration, or the learned neutral settled."""
        if self._online is not None:
            return True
        assert self._learner is not None
        return self._learner.settled

    def calibration_status(self) -> CalibrationStatus:
        s = self.settings
        hint = s.mount.name if s.mount.hint else None
        if self._online is not None:
            src = "online" if self._online.ready else "explicit"
            return CalibrationStatus("calibrated", 1.0, src, hint)
        assert self._learner is not None
        lr = self._learner
        return CalibrationStatus("calibrated" if lr.settled else "calibrating", lr.progress,
                                 lr.neutral().source, hint, lr.mismatch_deg)

    def set_neutral(self, neutral: NeutralPose) -> None:
        """Use a new explicit calibration (e.g. ``dms calibrate`` ran while the service runs);
        the clamped online refinement restarts around it."""
        self._online = OnlineNeutral(self.settings.calibration, neutral)
        self._learner = None
        if hasattr(self, "_policy"):
            self._policy.set_eye_prior(neutral.eye_openness)

    @property
    def state(self) -> EngineState:
        return self._state

    def step(self, obs: Observation) -> StepResult:
        pose, rel = self._perceive(obs)
        events = self._policy.update(self._policy_input(obs, rel))
        self._learn(obs, pose)
        self._state = self._summary(obs.t_s)
        return StepResult(obs.t_s, tuple(events), pose, rel, self._state)

    def _perceive(self, obs: Observation) -> tuple[HeadPose | None, RelativePose | None]:
        """Gate and filter the pose; (filtered absolute, relative to neutral), or Nones."""
        s = self.settings
        pose_in = obs.pose
        usable = (pose_in is not None and pose_in.confidence >= s.policy.min_confidence
                  and self._gate.accept(obs.t_s, pose_in.pitch_deg, pose_in.roll_deg))
        out = self._filter.update(obs.t_s, pose_in.rotation if usable and pose_in else None)
        if not usable or pose_in is None or out.rotation is None:
            return None, None
        R = out.rotation
        pitch, yaw, roll = euler_from_rotation(R)
        pose = HeadPose(R, pitch, yaw, roll, pose_in.confidence)
        Rrel = relative_rotation(self.neutral.rotation, R)
        rp, ry, rr = euler_from_rotation(Rrel)
        return pose, RelativePose(Rrel, rp, ry, rr, inboard_yaw(ry, s.policy.right_hand_drive))

    def _policy_input(self, obs: Observation, rel: RelativePose | None) -> PolicyInput:
        confidence = 1.0 if obs.pose is None else obs.pose.confidence
        if rel is None:
            return PolicyInput(t_s=obs.t_s, face_present=False, confidence=confidence,
                               speed_kmh=obs.speed_kmh, steering_deg=obs.steering_deg,
                               neutral_known=self.calibrated)
        return PolicyInput(t_s=obs.t_s, face_present=True, yaw_deg=rel.yaw_deg,
                           pitch_deg=rel.pitch_deg, roll_deg=rel.roll_deg, confidence=confidence,
                           speed_kmh=obs.speed_kmh, steering_deg=obs.steering_deg,
                           neutral_known=self.calibrated, eyes=obs.eyes)

    def _learn(self, obs: Observation, pose: HeadPose | None) -> None:
        """Feed the neutral learner: the clamped refinement of an explicit calibration, or
        the mount-free dominant-pose learner."""
        c = self.settings.calibration
        moving = self._moving(obs.speed_kmh)
        confident = pose is not None and pose.confidence >= c.min_confidence
        R_learn = None if pose is None else pose.rotation
        if self._online is not None:
            self._refine(self._online, obs.t_s, R_learn,
                         confident and moving and self._policy.attentive)
            return
        assert self._learner is not None
        # Before the neutral is known it is learned at any speed (a first estimate, kept
        # honest by the dominance test); once settled only while moving, as openpilot.
        weight = c.online_alert_weight if self._policy.alert_active else 1.0
        self._learner.update(obs.t_s, R_learn,
                             confident and (moving or not self._learner.settled), weight)

    def _moving(self, speed_kmh: float | None) -> bool:
        """Fast enough to learn from (unknown speed counts unless speed is required)."""
        c = self.settings.calibration
        if speed_kmh is None:
            return not c.online_requires_speed
        return speed_kmh >= c.online_min_speed_kmh

    def _refine(self, online: OnlineNeutral, t_s: float, R: np.ndarray | None,
                learnable: bool) -> None:
        before = online.ready
        online.update(t_s, R, learnable)
        if online.ready and not before:
            log.info("online refinement of the calibration ready at t=%.1f s: %s",
                     t_s, self.neutral.euler_deg)

    def _summary(self, t_s: float | None) -> EngineState:
        n = self.neutral
        pitch, yaw, _ = n.euler_deg
        policy = self._policy.state()
        return EngineState(t_s, policy.driver_state, self.calibrated, n.source, pitch, yaw,
                           policy, self.calibration_status())
