"""Temporal filter of the head rotation: a One Euro filter on SO(3).

The filter works on rotation matrices, never on wrapped Euler angles: each step moves the
filtered rotation a fraction ``alpha`` of the way along the geodesic toward the measurement
(``R_f <- R_f @ exp(alpha * log(R_f.T @ R_m))``). ``alpha`` comes from the actual time step,
so dropped frames are handled exactly, and from an adaptive cutoff (One Euro: Casiez, Roussel
and Vogel, CHI 2012): ``cutoff = min_cutoff_hz + beta_per_deg * angular_speed_dps``. A still
head gets a low cutoff (little jitter), a turning head a high one (little lag).

Two guards around it:

* **Single-frame outliers.** A jump implying a head speed above ``max_head_speed_dps`` is held
  back for one frame (the previous output is repeated). If the next frame lies within
  ``confirm_deg`` of it, the motion was real and the filter follows; otherwise the frame is
  dropped. A real step is therefore delayed by at most one frame.
* **Gaps.** After ``reset_gap_s`` without usable poses the filter restarts from the next pose.

Delay bound (used by tests and docs): once the input has settled at a new pose, the filtered
error shrinks every step by at least the factor ``1 - alpha_min`` where ``alpha_min`` is the
smoothing factor at ``min_cutoff_hz`` (the adaptive term only makes it faster). See
:func:`settle_delay_bound_s`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dms.engine.settings import FilterSettings


def rotvec_from_matrix(R: np.ndarray) -> np.ndarray:
    """Rotation vector (axis * angle, radians) of a rotation matrix (log map)."""
    c = (float(np.trace(R)) - 1.0) * 0.5
    c = min(1.0, max(-1.0, c))
    angle = math.acos(c)
    v = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]])
    if angle < 1e-7:
        return 0.5 * v
    if math.pi - angle < 1e-4:  # near 180 deg: axis from the symmetric part
        B = 0.5 * (R + np.eye(3))
        axis = np.sqrt(np.clip(np.diag(B), 0.0, None))
        k = int(np.argmax(axis))
        axis = B[:, k] / max(axis[k], 1e-12)
        rotvec: np.ndarray = axis / np.linalg.norm(axis) * angle
        return rotvec
    return v * (angle / (2.0 * math.sin(angle)))


def matrix_from_rotvec(w: np.ndarray) -> np.ndarray:
    """Rotation matrix of a rotation vector (Rodrigues, exp map)."""
    angle = float(np.linalg.norm(w))
    if angle < 1e-12:
        return np.eye(3)
    k = w / angle
    K = np.array([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]])
    R: np.ndarray = np.eye(3) + math.sin(angle) * K + (1.0 - math.cos(angle)) * (K @ K)
    return R


def smoothing_alpha(dt_s: float, cutoff_hz: float) -> float:
    """Exponential smoothing factor of a first-order low-pass for one step of ``dt_s``."""
    tau = 1.0 / (2.0 * math.pi * cutoff_hz)
    return 1.0 / (1.0 + tau / dt_s)


def settle_delay_bound_s(settings: FilterSettings, fraction: float, dt_s: float) -> float:
    """Upper bound on the time the filtered pose needs to cover ``fraction`` (0..1) of a step
    once the input has settled, at frame period ``dt_s``; add one frame for a step that was
    first held back as a suspect outlier."""
    if fraction <= 0:
        return 0.0
    if fraction >= 1:
        return math.inf
    keep = 1.0 - smoothing_alpha(dt_s, settings.min_cutoff_hz)
    steps = math.ceil(math.log(1.0 - fraction) / math.log(keep))
    return steps * dt_s


@dataclass(frozen=True, slots=True)
class FilterOutput:
    """One filter step: the filtered rotation (None when no pose was ever seen), whether the
    input was held back as a suspect outlier, and whether the filter restarted."""

    rotation: np.ndarray | None
    held: bool = False
    restarted: bool = False


class RotationFilter:
    """One Euro filter on rotations with outlier hold and gap reset. Pure: time comes in."""

    def __init__(self, settings: FilterSettings) -> None:
        self.settings = settings
        self._R: np.ndarray | None = None
        self._velocity_dps = np.zeros(3)
        self._t_s: float | None = None  # time of the last accepted pose
        self._suspect: np.ndarray | None = None

    @property
    def rotation(self) -> np.ndarray | None:
        return self._R

    def reset(self) -> None:
        self._R, self._t_s, self._suspect = None, None, None
        self._velocity_dps = np.zeros(3)

    def update(self, t_s: float, R: np.ndarray | None) -> FilterOutput:
        """Feed one frame; ``R`` is None when no usable pose was seen this frame."""
        s = self.settings
        if R is None:
            self._suspect = None
            return FilterOutput(self._R)
        R = np.asarray(R, dtype=np.float64)
        if self._R is None or self._t_s is None or t_s - self._t_s > s.reset_gap_s:
            self._R, self._t_s, self._suspect = R.copy(), t_s, None
            self._velocity_dps = np.zeros(3)
            return FilterOutput(self._R, restarted=True)
        dt = t_s - self._t_s
        if dt <= 0:  # duplicate or out-of-order timestamp: ignore the frame
            return FilterOutput(self._R)
        w = rotvec_from_matrix(self._R.T @ R)
        jump_deg = math.degrees(float(np.linalg.norm(w)))
        suspect = jump_deg > max(s.outlier_min_jump_deg, s.max_head_speed_dps * dt)
        if suspect:
            confirmed = (self._suspect is not None and math.degrees(
                float(np.linalg.norm(rotvec_from_matrix(self._suspect.T @ R)))) <= s.confirm_deg)
            if not confirmed:
                self._suspect = R.copy()
                return FilterOutput(self._R, held=True)
        self._suspect = None
        # One Euro: low-pass the signed angular velocity (a vector, so noise averages out),
        # then raise the cutoff with its magnitude.
        velocity = np.degrees(w) / dt
        self._velocity_dps += smoothing_alpha(dt, s.derivative_cutoff_hz) * (
            velocity - self._velocity_dps)
        cutoff = s.min_cutoff_hz + s.beta_per_deg * float(np.linalg.norm(self._velocity_dps))
        a = smoothing_alpha(dt, cutoff)
        self._R = self._R @ matrix_from_rotvec(a * w)
        self._t_s = t_s
        return FilterOutput(self._R)


class PoseGate:
    """Rejects poses that are not head motion, before the filter (pure: time comes in).

    A pose is rejected (the frame then counts as no usable face) when its camera-frame pitch
    or roll is beyond what a head can do (``plausible_pitch_deg`` / ``plausible_roll_deg``:
    a landmark fit that flips at profile reads pitch and roll near +-180), or when pitch or
    roll jumped from the last accepted pose by more than ``flip_jump_deg + flip_rate_dps *
    elapsed``: a fit flipping for a few frames as the head turns to profile is then face
    lost while turning (away), not the driver looking down or up. A new pose that persists is
    accepted once a real head could have reached it."""

    def __init__(self, settings: FilterSettings) -> None:
        self.settings = settings
        self._last: tuple[float, float, float] | None = None  # t, pitch, roll accepted
        self.rejected = 0

    def accept(self, t_s: float, pitch_deg: float, roll_deg: float) -> bool:
        s = self.settings
        ok = (math.isfinite(pitch_deg) and math.isfinite(roll_deg)
              and abs(pitch_deg) <= s.plausible_pitch_deg
              and abs(roll_deg) <= s.plausible_roll_deg)
        if ok and self._last is not None:
            t0, p0, r0 = self._last
            allow = s.flip_jump_deg + s.flip_rate_dps * max(t_s - t0, 0.0)
            ok = abs(pitch_deg - p0) <= allow and abs(roll_deg - r0) <= allow
        if ok:
            self._last = (t_s, pitch_deg, roll_deg)
        else:
            self.rejected += 1
        return ok
