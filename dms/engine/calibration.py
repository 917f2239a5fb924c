"""Neutral-pose calibration: the head rotation of *this* driver looking at the road.

Pure pieces (no I/O, no clock; storage is :mod:`dms.calibration_store`):

* :func:`calibrate_neutral` - explicit calibration from a few seconds of poses (``dms
  calibrate``): robust centre, outlier rejection, and a refusal with a reason when the face was
  missing or the driver moved too much; :class:`CalibrationCapture` collects those seconds
  frame by frame (``dms run``'s calibrate command and ``dms calibrate``).
* :class:`DominantPoseNeutral` - the default, which needs no mount: the neutral is the
  driver's own dominant pose while driving (at speed the road is where drivers look most of
  the time), found as the peak of a time-decayed histogram of (yaw, pitch), refined by the
  mean of the poses around it. Bounded only by physical plausibility; trusted ("settled")
  once enough poses agree. A mount profile is an optional hint that settles it sooner.
* :class:`OnlineNeutral` - after an explicit calibration: a slow running mean learned while
  driving attentively (openpilot style), its offset from the calibration clamped to a
  documented range, used after ``online_refine_min_s``.

Poses relative to neutral are always ``R_neutral.T @ R`` (:func:`dms.geometry.relative_rotation`).
"""

from __future__ import annotations

import logging
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

log = logging.getLogger(__name__)


class CalibrationRefused(DmsError):
    """Explicit calibration refused; ``code`` is machine readable, the message says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class NeutralPose:
    """A neutral head rotation (head -> camera) and where it came from.

    ``source`` is ``explicit`` (dms calibrate), ``online`` (learned while driving),
    ``prior`` (the camera mount hint, before any pose was learned) or ``none`` (nothing known
    yet: no hint and no pose)."""

    rotation: np.ndarray
    source: str = "explicit"
    sample_count: int = 0
    spread_deg: float = 0.0
    eye_openness: float | None = None  # the driver's open-eye aperture (explicit only)

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
                                  mount.neutral_roll_deg, source="prior")


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
    observations = list(observations)
    Rs, missing, duration = _usable_rotations(observations, settings)
    neutral, keep, spread = _robust_neutral(Rs, settings)
    _check_at_road(neutral, settings, mount)
    return CalibrationResult(
        neutral=NeutralPose(neutral, "explicit", int(keep.sum()), spread,
                            open_eye_aperture(observations)),
        sample_count=int(keep.sum()), rejected_count=int((~keep).sum()), missing_count=missing,
        spread_deg=spread, duration_s=duration)


class CalibrationCapture:
    """One explicit calibration being taken: the observations of ``duration_s`` seconds from
    the first one added. ``add(obs)`` returns None while it collects, then, once, the outcome:
    the :class:`CalibrationResult`, or the :class:`CalibrationRefused` saying why (returned,
    not raised). ``finish()`` ends it now with what it has (a video that ended early).
    What ``dms run`` (the ``calibrate`` command) and ``dms calibrate`` both use; pure."""

    def __init__(self, duration_s: float, settings: CalibrationSettings,
                 mount: MountSettings | None = None) -> None:
        self.duration_s = duration_s
        self._settings = settings
        self._mount = mount
        self._until_s: float | None = None
        self._observations: list[Observation] = []
        self._done = False

    @property
    def done(self) -> bool:
        return self._done

    def add(self, obs: Observation) -> CalibrationResult | CalibrationRefused | None:
        if self._done:
            return None
        if self._until_s is None:
            self._until_s = obs.t_s + self.duration_s
        self._observations.append(obs)
        return self.finish() if obs.t_s >= self._until_s else None

    def finish(self) -> CalibrationResult | CalibrationRefused:
        """The outcome with the observations added so far (they are let go)."""
        observations, self._observations, self._done = self._observations, [], True
        try:
            return calibrate_neutral(observations, self._settings, self._mount)
        except CalibrationRefused as refused:
            return refused


def open_eye_aperture(observations: Iterable[Observation],
                      min_confidence: float = 0.5) -> float | None:
    """The driver's open-eye aperture while looking at the road: the median openness of the
    confident eye readings (a blink or two is the low tail), None with fewer than 10."""
    vals = [o.eyes.openness for o in observations
            if o.pose is not None and o.eyes is not None and o.eyes.openness is not None
            and o.eyes.confidence >= min_confidence]
    finite = [v for v in vals if v is not None and np.isfinite(v)]
    return float(np.median(finite)) if len(finite) >= 10 else None


def _usable_rotations(observations: Iterable[Observation],
                      settings: CalibrationSettings) -> tuple[np.ndarray, int, float]:
    """(stacked confident rotations, frames without one, time span); refuses too few."""
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
    return np.stack(rotations), missing, duration


def _robust_neutral(Rs: np.ndarray,
                    settings: CalibrationSettings) -> tuple[np.ndarray, np.ndarray, float]:
    """(neutral, mask of the poses kept, RMS spread in degrees); refuses a driver who moved."""
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
    return neutral, keep, spread


def _check_at_road(neutral: np.ndarray, settings: CalibrationSettings,
                   mount: MountSettings | None) -> None:
    """Refuse a neutral no camera mount could see of a driver looking at the road."""
    n_pitch, n_yaw, _ = euler_from_rotation(neutral)
    (ylo, yhi), (plo, phi) = settings.neutral_yaw_range_deg, settings.neutral_pitch_range_deg
    if not (ylo <= n_yaw <= yhi and plo <= n_pitch <= phi):
        raise CalibrationRefused(
            "not_at_road",
            f"neutral yaw {n_yaw:.0f} / pitch {n_pitch:.0f} deg is outside what any camera "
            f"mount can see of a driver looking at the road (yaw {ylo:g}..{yhi:g}, pitch "
            f"{plo:g}..{phi:g}): look at the road, or move the camera")
    if mount is not None and mount.hint:
        off = geodesic_deg(mount_prior(mount).rotation, neutral)
        if off > settings.max_offset_from_mount_deg:
            raise CalibrationRefused(
                "not_at_road",
                f"neutral is {off:.0f} deg from what the '{mount.name}' mount expects (max "
                f"{settings.max_offset_from_mount_deg:g}): look at the road, or check the "
                "mount profile")


class OnlineNeutral:
    """After an explicit calibration: running, time-weighted mean of attentive poses, clamped
    around it.

    Feed :meth:`update` every frame with whether the frame may be learned from (the engine
    decides: face confident, moving, driver on the road and not alerted). The running mean
    weighs each pose by its time step; its total weight is capped at ``online_memory_s`` so
    old poses fade. :meth:`neutral` is the base until ``online_refine_min_s`` of learning, then
    the base composed with the learned offset, clamped in yaw and pitch.
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
    def ready(self) -> bool:
        return self._learned_s >= self.settings.online_refine_min_s

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


class DominantPoseNeutral:
    """The mount-free default: the neutral is the driver's own dominant pose while driving.

    Every learnable pose (face confident, vehicle moving when the speed is known) adds its time
    step to a 1-degree (yaw, pitch) histogram of camera-frame angles that covers only the
    physically plausible neutral range (``neutral_yaw_range_deg`` / ``neutral_pitch_range_deg``)
    and fades with the time constant ``online_memory_s``. Poses outside the range still count
    in the total, so they lower the dominance. Every ``REFRESH_S`` the dominant pose is the
    peak of the histogram blurred by half the cluster radius, refined by the mean of the
    poses within ``online_cluster_radius_deg`` of it (mean shift); roll is their mean roll.

    It is *settled* (trusted for alerts) once ``online_settle_s`` of poses were learned and the
    dominant cluster holds ``online_dominant_fraction`` of them; with a mount hint that the
    cluster agrees with (within ``hint_agree_deg``) after ``hint_settle_s``. A hint the
    cluster contradicts is reported (:attr:`mismatch_deg`) and ignored. Once settled, the
    neutral follows its cluster and moves to another only when that one outweighs it by
    ``online_switch_ratio``. Poses learned while an alert is active are weighted by
    ``online_alert_weight`` (the caller passes it).
    """

    REFRESH_S = 0.25
    BIN_DEG = 1.0
    MAX_GAIN = 1e12  # the stored weights are renormalised beyond this gain

    def __init__(self, settings: CalibrationSettings, hint: NeutralPose | None = None) -> None:
        s = self.settings = settings
        self.hint = hint
        (ylo, yhi), (plo, phi) = s.neutral_yaw_range_deg, s.neutral_pitch_range_deg
        self._yaw_c = ylo + self.BIN_DEG * (np.arange(max(1, math.ceil(yhi - ylo))) + 0.5)
        self._pitch_c = plo + self.BIN_DEG * (np.arange(max(1, math.ceil(phi - plo))) + 0.5)
        shape = (len(self._yaw_c), len(self._pitch_c))
        self._w = np.zeros(shape)  # weight (seconds) per bin
        self._wy = np.zeros(shape)  # weight * yaw
        self._wp = np.zeros(shape)  # weight * pitch
        self._wr = np.zeros(shape)  # weight * roll
        self._total = 0.0  # all learned weight, in range or not
        # the per-bin arrays hold weight x _gain: fading divides the gain instead of every bin
        # (renormalised when the gain grows large)
        self._gain = 1.0
        sigma = max(s.online_cluster_radius_deg / 2.0, 0.5) / self.BIN_DEG
        self._ky = _gauss_matrix(len(self._yaw_c), sigma)
        self._kp = _gauss_matrix(len(self._pitch_c), sigma)
        # the blurred histogram, kept up to date bin by bin (blurring is linear): weight
        # learned since the last refresh waits in _pending, by bin
        self._blurred = np.zeros(shape)
        self._pending: dict[tuple[int, int], float] = {}
        self._window_bins = int(math.ceil(s.online_cluster_radius_deg / self.BIN_DEG)) + 1
        self._dist_y = self._yaw_c[:, None]
        self._dist_p = self._pitch_c[None, :]
        self._t_s: float | None = None
        self._decayed_t_s: float | None = None
        self._refresh_at_s = -math.inf
        self._centre: tuple[float, float] | None = None  # (yaw, pitch)
        self._cluster_w = 0.0
        self._settled = False
        self._mismatch_deg: float | None = None
        self._current = hint if hint is not None else NeutralPose(np.eye(3), "none")

    # ------------------------------------------------------------- read-outs

    @property
    def settled(self) -> bool:
        return self._settled

    @property
    def dominance(self) -> float:
        return self._cluster_w / self._total if self._total > 0 else 0.0

    @property
    def mismatch_deg(self) -> float | None:
        """Angle between the mount hint and the driver's dominant pose, when the hint is
        contradicted (None when there is no hint or it agrees)."""
        return self._mismatch_deg

    @property
    def progress(self) -> float:
        """0..1: how far the estimate is from being trusted (1 = settled)."""
        if self._settled:
            return 1.0
        need = self.settings.online_settle_s
        if self.hint is not None and self._mismatch_deg is None:
            need = self.settings.hint_settle_s
        frac = self.dominance / self.settings.online_dominant_fraction
        return float(min(0.99, min(1.0, self._total / need) * min(1.0, frac)))

    def neutral(self) -> NeutralPose:
        return self._current

    # ------------------------------------------------------------- learning

    def update(self, t_s: float, R: np.ndarray | None, learnable: bool,
               weight: float = 1.0) -> NeutralPose:
        dt = 0.0 if self._t_s is None else min(max(t_s - self._t_s, 0.0), 0.5)
        if self._t_s is not None and t_s <= self._t_s:
            return self._current
        self._t_s = t_s
        if self._decayed_t_s is None:
            self._decayed_t_s = t_s
        if learnable and R is not None:
            self._add(R, dt * weight)
        if t_s >= self._refresh_at_s:  # every REFRESH_S: fade, then find the dominant pose
            self._refresh_at_s = t_s + self.REFRESH_S
            self._decay(t_s)
            self._refresh()
        return self._current

    def _add(self, R: np.ndarray, w: float) -> None:
        """Learn one pose with weight ``w`` (seconds): in the total, and in its histogram bin
        when inside the plausible neutral range. Nothing on the first frame (no time step),
        with a zero weight or with learning disabled."""
        if not (self.settings.online_enabled and w > 0):
            return
        pitch, yaw, roll = euler_from_rotation(R)
        self._total += w
        iy = int(math.floor((yaw - self._yaw_c[0] + 0.5 * self.BIN_DEG) / self.BIN_DEG))
        ip = int(math.floor((pitch - self._pitch_c[0] + 0.5 * self.BIN_DEG) / self.BIN_DEG))
        if 0 <= iy < self._w.shape[0] and 0 <= ip < self._w.shape[1]:
            g = w * self._gain
            self._w[iy, ip] += g
            self._wy[iy, ip] += g * yaw
            self._wp[iy, ip] += g * pitch
            self._wr[iy, ip] += g * roll
            self._pending[(iy, ip)] = self._pending.get((iy, ip), 0.0) + g

    def _blur_pending(self) -> None:
        """Add the blur of the weight learned since the last refresh to the blurred histogram:
        one separable Gaussian (an outer product) per bin that was hit, instead of blurring
        the whole histogram (two large matrix products) every REFRESH_S."""
        if not self._pending:
            return
        iys = [iy for iy, _ in self._pending]
        ips = [ip for _, ip in self._pending]
        ws = np.fromiter(self._pending.values(), float, len(self._pending))
        # the sum over the bins hit of w * outer(ky[:, iy], kp[ip, :]): one small product
        self._blurred += (self._ky[:, iys] * ws) @ self._kp[ips, :]
        self._pending.clear()

    def _decay(self, t_s: float) -> None:
        assert self._decayed_t_s is not None
        k = math.exp(-(t_s - self._decayed_t_s) / self.settings.online_memory_s)
        self._decayed_t_s = t_s
        self._blur_pending()  # what was learned since fades with the rest, as in _w
        if k < 1.0:
            self._gain /= k
            self._total *= k
            self._cluster_w *= k
            if self._gain > self.MAX_GAIN:
                for a in (self._w, self._wy, self._wp, self._wr, self._blurred):
                    a /= self._gain
                self._gain = 1.0

    def _shift(self, centre: tuple[float, float]) -> tuple[tuple[float, float], float, float]:
        """Mean shift from ``centre``: (centre, cluster weight, mean roll)."""
        r2 = self.settings.online_cluster_radius_deg ** 2
        y, p = centre
        w_sum, roll = 0.0, 0.0
        for _ in range(6):
            # only the bins around the centre can be within the radius
            ys, ps = self._window(y, self._yaw_c), self._window(p, self._pitch_c)
            mask = (self._dist_y[ys] - y) ** 2 + (self._dist_p[:, ps] - p) ** 2 <= r2
            stored = float(self._w[ys, ps][mask].sum())
            if stored <= 0:
                return centre, 0.0, 0.0
            w_sum = stored / self._gain
            ny = float(self._wy[ys, ps][mask].sum()) / stored
            npitch = float(self._wp[ys, ps][mask].sum()) / stored
            roll = float(self._wr[ys, ps][mask].sum()) / stored
            moved = abs(ny - y) + abs(npitch - p)
            y, p = ny, npitch
            if moved < 0.01:
                break
        return (y, p), w_sum, roll

    def _window(self, centre: float, bins: np.ndarray) -> slice:
        """The bins of ``bins`` (centres) that may lie within the cluster radius of
        ``centre``."""
        i = int(math.floor((centre - bins[0]) / self.BIN_DEG + 0.5))
        return slice(max(0, i - self._window_bins), max(0, i + self._window_bins + 1))

    def _refresh(self) -> None:
        if self._total <= 0 or not self._w.any():
            return
        centre, cluster_w, roll = self._dominant_cluster()
        self._centre, self._cluster_w = centre, cluster_w
        self._judge(centre)
        if self._settled or self.hint is None or self._mismatch_deg is not None:
            self._current = NeutralPose.from_euler(centre[1], centre[0], roll, "online",
                                                   int(round(self._total)), 0.0)

    def _dominant_cluster(self) -> tuple[tuple[float, float], float, float]:
        """(centre, weight, mean roll) of the dominant cluster: the peak of the blurred
        histogram, or, once settled, the current cluster unless the peak outweighs it by
        ``online_switch_ratio``."""
        s = self.settings
        blurred = self._blurred
        iy, ip = np.unravel_index(int(np.argmax(blurred)), blurred.shape)
        peak, peak_w, peak_roll = self._shift((float(self._yaw_c[iy]), float(self._pitch_c[ip])))
        if self._settled and self._centre is not None:
            here, here_w, here_roll = self._shift(self._centre)
            apart = math.hypot(peak[0] - here[0], peak[1] - here[1])
            if apart > s.online_cluster_radius_deg and peak_w <= s.online_switch_ratio * here_w:
                return here, here_w, here_roll
            if apart > s.online_cluster_radius_deg:
                log.warning("learned neutral moved %.0f deg to yaw %.1f pitch %.1f: the "
                            "driver's dominant pose changed", apart, peak[0], peak[1])
        return peak, peak_w, peak_roll

    def _judge(self, centre: tuple[float, float]) -> None:
        """Settle once the dominant cluster holds enough of the poses (sooner when it agrees
        with the mount hint); note a hint it contradicts."""
        s = self.settings
        dominant = self.dominance >= s.online_dominant_fraction
        if self.hint is not None and dominant and self._total >= s.hint_settle_s:
            self._compare_hint(self.hint, centre)
        if not self._settled and dominant and self._total >= s.online_settle_s:
            self._settle("learned")

    def _compare_hint(self, hint: NeutralPose, centre: tuple[float, float]) -> None:
        h_pitch, h_yaw, _ = hint.euler_deg
        off = math.hypot(centre[0] - h_yaw, centre[1] - h_pitch)
        if off > self.settings.hint_agree_deg:
            if self._mismatch_deg is None:
                log.warning("the driver's dominant pose (yaw %.1f, pitch %.1f) is %.0f deg "
                            "from what the mount hint expects (yaw %.1f, pitch %.1f): "
                            "ignoring the hint", centre[0], centre[1], off, h_yaw, h_pitch)
            self._mismatch_deg = off
        else:
            self._mismatch_deg = None
            if not self._settled:
                self._settle("agrees with the mount hint")

    def _settle(self, why: str) -> None:
        self._settled = True
        assert self._centre is not None
        log.info("neutral pose %s after %.1f s of poses: yaw %.1f, pitch %.1f (%.0f%% of poses)",
                 why, self._total, self._centre[0], self._centre[1], 100 * self.dominance)


def _gauss_matrix(n: int, sigma: float) -> np.ndarray:
    i = np.arange(n)
    return np.exp(-((i[:, None] - i[None, :]) ** 2) / (2.0 * sigma * sigma))
