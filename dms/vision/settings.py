"""Settings of the vision stack (``[vision.detector]``, ``[vision.pose]`` with its
``landmarks`` and ``limits``, ``[vision.tracking]``; ``[vision.runtime]`` is
:class:`dms.vision.runtime.RuntimeSettings`): plain dataclasses that import no model code,
so the configuration (:mod:`dms.config`) and ``dms config check`` load neither OpenCV nor
onnxruntime. The components import them from here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from dms.vision.plausible import PoseLimits
from dms.vision.runtime import RuntimeSettings

DriverChoice = Literal["largest", "central", "largest_central"]

__all__ = ["DetectorSettings", "DriverChoice", "LandmarkPoseSettings", "PoseLimits",
           "PoseModelSettings", "RuntimeSettings", "TrackingSettings"]


@dataclass(frozen=True, slots=True)
class DetectorSettings:
    """The ``[vision.detector]`` table."""

    model: str = field(
        default="blazeface",
        metadata={"doc": "manifest name (see `dms models list`) or path of a detector ONNX"},
    )
    score_threshold: float = field(default=0.5, metadata={"doc": "minimum face score"})
    input_size: int = field(
        default=320,
        metadata={"doc": "SCRFD: square input side in pixels for models with a dynamic input"},
    )
    driver_choice: DriverChoice = field(
        default="largest_central",
        metadata={
            "doc": "which face is the driver: 'largest', 'central' (nearest the image "
            "centre) or 'largest_central' (area minus a penalty for distance from centre)"
        },
    )

    def validate(self) -> None:
        if not 0.0 < self.score_threshold < 1.0:
            raise ValueError("score_threshold must be in (0, 1)")
        if self.input_size < 64 or self.input_size % 32:
            raise ValueError("input_size must be a multiple of 32, at least 64")


@dataclass(frozen=True, slots=True)
class LandmarkPoseSettings:
    """Tuning of the landmark estimator (choices measured in docs/benchmarks.md section 1;
    the large-yaw correction is fitted on rendered heads only, never on evaluation faces)."""

    points: Literal["procrustes", "all"] = field(
        default="all",
        metadata={"doc": "fit on MediaPipe's 33 weighted Procrustes landmarks or all 468"},
    )
    refine_steps: int = field(
        default=1, metadata={"doc": "still images: re-crop from the landmarks this many times"}
    )
    flip_average: bool = field(
        default=True,
        metadata={
            "doc": "also fit FaceMesh on the mirrored crop and average the two rotations "
            "(cancels FaceMesh's left/right asymmetry; one more landmark run per frame)"
        },
    )
    yaw_knee_deg: float = field(
        default=18.0,
        metadata={
            "doc": "large-yaw correction: |yaw| beyond this many degrees is expanded "
            "(fitted by `dms synth yaw-fit` on rendered heads)"
        },
    )
    yaw_gain: float = field(
        default=0.0,
        metadata={
            "doc": "large-yaw correction: yaw += gain * (|yaw| - knee) beyond the knee, "
            "away from zero (0 = off, the default: the render-fitted 0.46 hurts real faces "
            "below 60 deg; fit your own with `dms synth yaw-fit`)"
        },
    )
    min_presence: float = field(
        default=0.5,
        metadata={
            "doc": "tracking: FaceMesh presence below this means the face left the ROI "
            "(after a fresh detection the pose is returned anyway, with confidence = presence)"
        },
    )

    def validate(self) -> None:
        if self.refine_steps < 0:
            raise ValueError(f"refine_steps must be >= 0, got {self.refine_steps}")
        if not 0.0 <= self.yaw_knee_deg < 90.0:
            raise ValueError(f"yaw_knee_deg must be in [0, 90), got {self.yaw_knee_deg}")
        if not 0.0 <= self.yaw_gain <= 2.0:
            raise ValueError(f"yaw_gain must be in [0, 2], got {self.yaw_gain}")
        if not 0.0 <= self.min_presence <= 1.0:
            raise ValueError(f"min_presence must be in [0, 1], got {self.min_presence}")


@dataclass(frozen=True, slots=True)
class PoseModelSettings:
    """The ``[vision.pose]`` table."""

    model: str = field(
        default="facemesh",
        metadata={"doc": "manifest name (see `dms models list`) or path of a head-pose ONNX"},
    )
    output: str = field(
        default="",
        metadata={
            "doc": "override the output format of a CNN ONNX: 'rotation_matrix', '6d', "
            "'matrix9', 'euler:yaw,pitch,roll' (any order) or 'bins:yaw,pitch,roll'"
        },
    )
    landmarks: LandmarkPoseSettings = field(
        default_factory=LandmarkPoseSettings,
        metadata={"doc": "the embedded landmark estimator ([vision.pose.landmarks])"},
    )
    limits: PoseLimits = field(
        default_factory=PoseLimits,
        metadata={"doc": "poses beyond these get confidence 0, any model ([vision.pose.limits])"},
    )


@dataclass(frozen=True, slots=True)
class TrackingSettings:
    """The ``[vision.tracking]`` table."""

    enabled: bool = field(default=True, metadata={"doc": "follow the face between detections"})
    redetect_interval_frames: int = field(
        default=30,
        metadata={"doc": "run the detector at least every N frames even while tracking"},
    )
    box_reuse_frames: int = field(
        default=3,
        metadata={
            "doc": "estimators without a tracker (CNN): re-use the last detector box for N "
            "frames before detecting again"
        },
    )
    track_min_confidence: float = field(
        default=0.5,
        metadata={"doc": "below this tracker confidence the next frame runs the detector"},
    )

    def validate(self) -> None:
        if self.redetect_interval_frames < 1 or self.box_reuse_frames < 0:
            raise ValueError("redetect_interval_frames must be >= 1, box_reuse_frames >= 0")
