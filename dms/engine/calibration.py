"""Neutral-pose calibration: the head rotation of *this* driver looking at the road.

Two pure pieces (no I/O, no clock; storage is :mod:`dms.calibration_store`):

* :func:`calibrate_neutral` - explicit calibration from a few seconds of poses (``dms
  calibrate``): robust centre, outlier rejection, and a refusal with a reason when the face was
  missing or the driver moved too much.
* :class:`OnlineNeutral` - a slow running mean learned while driving attentively (openpilot
  style): time-weighted, memory capped, usable after ``online_min_s``, its offset from the
  base (explicit calibration or mount prior) clamped to a documented range.

Poses relative to neutral are always ``R_neutral.T @ R`` (:func:`dms.geometry.relative_rotation`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from dms.engine.settings import CalibrationSettings, MountSettings
from dms.errors import DmsError
from dms.geometry import (
    euler_from_rotation,
    geodesic_deg,
    mean_rotation,
    relative_rotation,
    rotation_from_euler,
)
from dms.types import Observation


class CalibrationRefused(DmsError):
    """Explicit calibration refused; ``code`` is machine readable, the message says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class NeutralPose:
    """A neutral head rotation (head -> camera) and where it came from.

    ``source`` is ``explicit`` (dms calibrate), ``online`` (learned while driving) or
    ``mount`` (the camera mount prior)."""

    rotation: np.ndarray
    source: str = "explicit"
    sample_count: int = 0
    spread_deg: float = 0.0

    @property
    def euler_deg(self) -> tuple[float, float, float]:
        """(pitch, yaw, roll) in degrees, AFLW2000 convention."""
        return euler_from_rotation(self.rotation)

    @classmethod
    def from_euler(cls, pitch_deg: float, yaw_deg: float, roll_deg: float,
                   source: str = "explicit", sample_count: int = 0,
                   spread_deg: float = 0.0) -> NeutralPose:
        return cls(rotation_from_euler(pitch_deg, yaw_deg, roll_deg), source, sample_count,
                   spread_deg)


def mount_prior(mount: MountSettings) -> NeutralPose:
    """The neutral pose the camera mount profile expects."""
    return NeutralPose.from_euler(mount.neutral_pitch_deg, mount.neutral_yaw_deg,
                                  mount.neutral_roll_deg, source="mount")


@dataclass(frozen=True, slots=True)
class CalibrationResult:
    """Outcome of an accepted explicit calibration."""

    neutral: NeutralPose
    sample_count: int  # poses kept
    rejected_count: int  # poses dropped as outliers
    missing_count: int  # frames without a usable face
    spread_deg: float  # RMS angle of the kept poses around the neutral
    duration_s: float

    def to_dict(self) -> dict[str, object]:
        pitch, yaw, roll = self.neutral.euler_deg
        return {"pitch_deg": round(pitch, 3), "yaw_deg": round(yaw, 3), "roll_deg": round(roll, 3),
                "sample_count": self.sample_count, "rejected_count": self.rejected_count,
                "missing_count": self.missing_count, "spread_deg": round(self.spread_deg, 3),
                "duration_s": round(self.duration_s, 3)}


def calibrate_neutral(
    observations: Iterable[Observation],
    settings: CalibrationSettings,
    mount: MountSettings | None = None,
) -> CalibrationResult:
    """Neutral pose from poses taken while the driver looks at the road.

    Raises :class:`CalibrationRefused` (code ``no_frames``, ``face_missing``,
    ``too_few_samples``, ``moved_too_much`` or ``not_at_road``) with a message saying why.
    """
    rotations: list[np.ndarray] = []
    times: list[float] = []
    frames = 0
    for obs in observations:
        frames += 1
        times.append(obs.t_s)
        if obs.pose is not None and obs.pose.confidence >= settings.min_confidence:
            rotations.append(np.asarray(obs.pose.rotation, dtype=np.float64))
    if frames == 0:
        raise CalibrationRefused("no_frames", "no frames were received")
    missing = frames - len(rotations)
    duration = max(times) - min(times) if times else 0.0
    if missing / frames > settings.max_missing_fraction:
        raise CalibrationRefused(
            "face_missing",
            f"face missing or unsure in {missing} of {frames} frames "
            f"({100 * missing / frames:.0f}% > {100 * settings.max_missing_fraction:.0f}%): "
            "keep the face in view of the camera")
    if len(rotations) < settings.min_samples:
        raise CalibrationRefused(
            "too_few_samples",
            f"only {len(rotations)} usable poses (need {settings.min_samples}): "
            "calibrate for longer")
    Rs = np.stack(rotations)
    # Robust centre: start from the chordal mean, then re-centre on the closest half twice.
    centre = mean_rotation(Rs)
    for _ in range(2):
        d = np.array([geodesic_deg(centre, R) for R in Rs])
        centre = mean_rotation(Rs[d <= np.median(d)])
    d = np.array([geodesic_deg(centre, R) for R in Rs])
    keep = d <= settings.outlier_deg
    rejected = int((~keep).sum())
    if rejected / len(Rs) > settings.max_outlier_fraction:
        raise CalibrationRefused(
            "moved_too_much",
            f"{rejected} of {len(Rs)} poses were more than {settings.outlier_deg:g} deg from the "
            "centre: the driver moved; look at the road and keep still")
    neutral = mean_rotation(Rs[keep])
    spread = math.sqrt(float(np.mean([geodesic_deg(neutral, R) ** 2 for R in Rs[keep]])))
    if spread > settings.max_spread_deg:
        raise CalibrationRefused(
            "moved_too_much",
            f"poses spread {spread:.1f} deg RMS (max {settings.max_spread_deg:g}): the driver "
            "moved; look at the road and keep still")
    if mount is not None:
        off = geodesic_deg(mount_prior(mount).rotation, neutral)
        if off > settings.max_offset_from_mount_deg:
            raise CalibrationRefused(
                "not_at_road",
                f"neutral is {off:.0f} deg from what the '{mount.name}' mount expects (max "
                f"{settings.max_offset_from_mount_deg:g}): look at the road, or check the "
                "mount profile")
    return CalibrationResult(
        neutral=NeutralPose(neutral, "explicit", int(keep.sum()), spread),
        sample_count=int(keep.sum()), rejected_count=rejected, missing_count=missing,
        spread_deg=spread, duration_s=duration)


class OnlineNeutral:
    """Running, time-weighted mean of attentive poses, clamped around a base neutral.

    Feed :meth:`update` every frame with whether the frame may be learned from (the engine
    decides: face confident, moving, driver on the road and not alerted). The running mean
    weighs each pose by its time step; its total weight is capped at ``online_memory_s`` so
    old poses fade. :meth:`neutral` is the base until ``online_min_s`` of learning, then the
    base composed with the learned offset, clamped in yaw and pitch.
    """

    def __init__(self, settings: CalibrationSettings, base: NeutralPose) -> None:
        self.settings = settings
        self.base = base
        self._mean = np.zeros((3, 3))
        self._weight_s = 0.0
        self._learned_s = 0.0
        self._t_s: float | None = None
        self._current = base
        self._refresh_at_s = 0.0

    @property
    def learned_s(self) -> float:
        return self._learned_s

    @property
    def ready(self) -> bool:
        return self._learned_s >= self.settings.online_min_s

    def neutral(self) -> NeutralPose:
        return self._current

    def update(self, t_s: float, R: np.ndarray | None, learnable: bool) -> NeutralPose:
        s = self.settings
        dt = 0.0 if self._t_s is None else min(max(t_s - self._t_s, 0.0), 0.5)
        self._t_s = t_s
        if not (s.online_enabled and learnable and R is not None and dt > 0):
            return self._current
        if geodesic_deg(self._current.rotation, R) > s.online_gate_deg:
            return self._current
        self._weight_s = min(self._weight_s + dt, s.online_memory_s)
        self._mean += (dt / self._weight_s) * (np.asarray(R) - self._mean)
        self._learned_s += dt
        if self.ready and self._learned_s >= self._refresh_at_s:  # re-project once a second
            self._refresh_at_s = self._learned_s + 1.0
            self._current = self._clamped(mean_rotation(self._mean[None]))
        return self._current

    def _clamped(self, learned: np.ndarray) -> NeutralPose:
        s = self.settings
        pitch, yaw, roll = euler_from_rotation(relative_rotation(self.base.rotation, learned))
        pitch = min(max(pitch, s.online_pitch_range_deg[0]), s.online_pitch_range_deg[1])
        yaw = min(max(yaw, s.online_yaw_range_deg[0]), s.online_yaw_range_deg[1])
        offset = rotation_from_euler(pitch, yaw, 0.0)  # roll is not learned
        return NeutralPose(self.base.rotation @ offset, "online",
                           int(round(self._learned_s)), 0.0)
