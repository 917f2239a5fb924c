"""The range of head poses a driver can take, and what an estimator does outside it.

A head-pose fit can return a rotation no head takes: near a full profile the landmark fit's
pitch and roll flip to about +-170 deg for whole seconds (issue 10), and a CNN asked about a
face turned past its training range can answer anything. Such a pose is not motion, so it
keeps its angles (for logs) but gets confidence 0: the pipeline and the engine then treat the
frame as "pose unknown", which at a profile means "looking away" rather than a jump of the
head.

The limits are wide on purpose: AFLW2000's own faces stay within |roll| 60 deg, and pitch
beyond 80 deg (chin on the chest, face to the roof) leaves too little of the face to fit.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from dms.types import HeadPose


@dataclass(frozen=True, slots=True)
class PoseLimits:
    """``[vision.pose]`` plausibility limits (degrees, AFLW Euler angles; 0 turns one off)."""

    max_abs_pitch_deg: float = field(
        default=80.0,
        metadata={"doc": "a pose with |pitch| beyond this is reported with confidence 0"},
    )
    max_abs_roll_deg: float = field(
        default=60.0,
        metadata={"doc": "a pose with |roll| beyond this is reported with confidence 0 "
                         "(the landmark fit's +-170 deg flips at a profile)"},
    )

    def validate(self) -> None:
        for name in ("max_abs_pitch_deg", "max_abs_roll_deg"):
            v = getattr(self, name)
            if not 0.0 <= v <= 180.0:
                raise ValueError(f"{name} must be in [0, 180] (0 = no limit), got {v}")

    def plausible(self, pose: HeadPose) -> bool:
        if self.max_abs_pitch_deg and abs(pose.pitch_deg) > self.max_abs_pitch_deg:
            return False
        return not (self.max_abs_roll_deg and abs(pose.roll_deg) > self.max_abs_roll_deg)


DEFAULT_LIMITS = PoseLimits()
NO_LIMITS = PoseLimits(0.0, 0.0)


def ramp(x: float, zero: float, full: float) -> float:
    """0 at ``zero``, 1 at ``full``, linear between (either direction), clipped: how the
    confidence factors fade (eyes, CNN flip consistency and yaw range)."""
    if full == zero:
        return 1.0 if x >= full else 0.0
    return float(min(1.0, max(0.0, (x - zero) / (full - zero))))


def limit_confidence(pose: HeadPose, limits: PoseLimits) -> HeadPose:
    """``pose`` unchanged when plausible, else the same angles with confidence 0."""
    return pose if limits.plausible(pose) else replace(pose, confidence=0.0)
