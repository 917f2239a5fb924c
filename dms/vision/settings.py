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

__all__ = ["CnnPoseSettings", "DetectorSettings", "DriverChoice", "EyeSettings",
           "LandmarkPoseSettings", "PoseLimits", "PoseModelSettings", "RuntimeSettings",
           "TrackingSettings"]


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
    mirror_model: str = field(
        default="facemesh_attention",
        metadata={
            "doc": "landmark model of the mirrored pass of flip averaging: a manifest name "
            "(task face_landmarks, or a facemesh head-pose model) or an ONNX path; empty: the "
            "model of [vision.pose] itself. Default: the mesh of MediaPipe's attention "
            "FaceMesh, better on real faces in every |yaw| bin than FaceMesh twice "
            "(aflw2000-dev, docs/benchmarks.md s.11). The confidence is the lower of the two "
            "passes' presence (the attention mesh alone reads a confident frontal face on the "
            "back of a rendered head, so it is not offered as a head-pose model)"
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
class CnnPoseSettings:
    """The ``[vision.pose.cnn]`` table: a CNN head-pose ONNX (6D / rotation matrix / Euler /
    bins), not the embedded landmark path.

    A network with one rotation output has no confidence of its own: past its range it still
    answers, confidently wrong. Flip consistency gives it one: the model also reads the
    mirrored crop, whose pose mirrored back (yaw and roll negated) must be the same head. The
    two are averaged (test-time flip augmentation) and their disagreement sets the confidence
    (1 up to ``flip_agree_deg``, 0 from ``flip_zero_deg``, linear between). Near profile both
    crops can be read the same wrong way, so the confidence also falls with |yaw| past the
    model's range (``range_full_yaw_deg`` -> ``range_zero_yaw_deg``), in either mode. Defaults
    chosen on renders and held-out training faces, never on the evaluation set
    (docs/training.md, "Second round").
    """

    flip_average: bool | Literal["auto"] = field(
        default="auto",
        metadata={"doc": "also run the model on the mirrored crop: average the two rotations "
                         "and take the confidence from how well they agree (one more run a "
                         "frame; false: confidence from the yaw range and the plausibility "
                         "limits only). Off saves about a sixth of a frame's CPU without a GPU "
                         "for 0.1 deg of mean error (student_tddfa: 3.30 against 3.21 on "
                         "aflw2000-dev; docs/benchmarks.md s.15, s.17). \"auto\": true, except "
                         "where the CNN tracks on its own landmarks ([vision.tracking] "
                         "cnn_landmarks), whose agreement with its rotation gives the confidence "
                         "instead (head pose only: half the pipeline's CPU, s.18)"},
    )
    flip_agree_deg: float = field(
        default=10.0,
        metadata={"doc": "confidence 1 while the crop and its mirror image agree within this "
                         "many degrees (geodesic angle between the two rotations)"},
    )
    flip_zero_deg: float = field(
        default=25.0,
        metadata={"doc": "confidence 0 from this disagreement on: a pose the model cannot "
                         "read the same way twice (past its range, not a face) is reported "
                         "unsure, not as motion"},
    )
    range_full_yaw_deg: float = field(
        default=65.0,
        metadata={"doc": "confidence 1 up to this |yaw| (deg): the range where the model's "
                         "pitch and roll hold; beyond it they can be wild while the yaw is "
                         "right (renders: 5 frames at |yaw| 80-90 with pitch or roll off by "
                         "> 25 deg, read the same way on both crops)"},
    )
    range_zero_yaw_deg: float = field(
        default=75.0,
        metadata={"doc": "confidence 0 from this |yaw| on (linear between): a turn past the "
                         "model's range is reported unsure, which the engine treats as "
                         "looking away, not as motion"},
    )

    def validate(self) -> None:
        if not 0.0 < self.range_full_yaw_deg < self.range_zero_yaw_deg <= 180.0:
            raise ValueError("cnn: need 0 < range_full_yaw_deg < range_zero_yaw_deg <= 180, "
                             f"got {self.range_full_yaw_deg} and {self.range_zero_yaw_deg}")
        if not 0.0 <= self.flip_agree_deg < self.flip_zero_deg <= 180.0:
            raise ValueError("cnn: need 0 <= flip_agree_deg < flip_zero_deg <= 180, got "
                             f"{self.flip_agree_deg} and {self.flip_zero_deg}")


@dataclass(frozen=True, slots=True)
class PoseModelSettings:
    """The ``[vision.pose]`` table."""

    model: str = field(
        default="student_tddfa",
        metadata={"doc": "manifest name (see `dms models list`) or path of a head-pose ONNX; "
                         "default: our CNN student (research / non-commercial licence, see "
                         "models/MODELS.md); 'facemesh' is the Apache-2.0 landmark path"},
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
    cnn: CnnPoseSettings = field(
        default_factory=CnnPoseSettings,
        metadata={"doc": "a CNN head-pose ONNX: flip consistency ([vision.pose.cnn])"},
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
    landmark_model: str = field(
        default="facemesh_attention",
        metadata={
            "doc": "with a CNN head-pose model: the one landmark model run a frame (manifest "
            "name or ONNX path), which tracks the face (the ROI from the previous frame's "
            "landmarks, as MediaPipe does), gives the CNN its face box (the extent of AFLW's 21 "
            "points, dms.vision.facemesh.aflw_box) and, with the attention mesh, the "
            "eyes. Empty: the CNN re-uses the detector's box for box_reuse_frames frames and "
            "the eyes come from the iris model at the detector's eye keypoints"
        },
    )
    landmark_min_presence: float = field(
        default=0.5,
        metadata={"doc": "with landmark_model: the mesh's face presence from which the next "
                  "frame tracks from this one (instead of track_min_confidence, the CNN's "
                  "confidence); below it on a tracked frame the face left the ROI and the "
                  "detector runs on that frame"},
    )

    mesh_agree_deg: float = field(
        default=15.0,
        metadata={"doc": "with landmark_model: the CNN's pose is fully confident while it agrees "
                  "within this angle with the mesh's own fit to the canonical face (two "
                  "independent readings of one head; measured 5-13 deg apart on the demo "
                  "render's faces up to |yaw| 62, where the mesh under-reads large turns)"},
    )
    mesh_zero_deg: float = field(
        default=25.0,
        metadata={"doc": "... and has no confidence from this disagreement on (22 deg on the "
                  "demo's frame where a hand covers half the face: the CNN read it as a fast "
                  "turn, the mesh did not); linear between"},
    )

    cnn_landmarks: Literal["without_eyes", "always", "never"] = field(
        default="without_eyes",
        metadata={"doc": "with a CNN head-pose model that has a 68-landmark output (the "
                  "tddfa students): when the CNN follows the face from its own landmarks (the "
                  "next frame's box from this frame's 68 points, no landmark model run): "
                  "\"without_eyes\" when no eyes are measured (head pose only: one CNN run "
                  "instead of the mesh and the CNN, aflw2000-dev 3.28 against 3.21 deg, "
                  "docs/benchmarks.md s.18; the mesh agreement check is then not made), "
                  "\"always\" (the eyes then come from the iris model at the CNN's eye "
                  "points), \"never\" (landmark_model always runs)"},
    )

    cnn_landmarks_agree_deg: float = field(
        default=10.0,
        metadata={"doc": "with cnn_landmarks in use: the pose is fully confident while the "
                  "CNN's rotation agrees within this angle with the rotation its own 68 "
                  "landmarks show (dms.vision.landmarks68; on 1860 held-out faces-aflw photos "
                  "the student's two read 1.4 deg apart at the median, 9.9 at the 99th "
                  "percentile; its error against the ensemble 2.3 deg within 10, 16.7 beyond)"},
    )
    cnn_landmarks_zero_deg: float = field(
        default=20.0,
        metadata={"doc": "... and has no confidence from this disagreement on; linear between"},
    )

    cnn_min_contrast: float = field(
        default=4.0,
        metadata={"doc": "with cnn_landmarks in use: a tracked frame whose box has a grey-level "
                  "standard deviation under this (0-255, on a 24-pixel thumbnail) is not a "
                  "face and the detector runs on it instead (a covered or blocked lens: 0.4-1.7 "
                  "on dms's renders; faces: 25 and up on the renders, dim light and IR "
                  "included, 8.2 the lowest of 4000 faces-aflw photos)"},
    )
    cnn_max_turn_dps: float = field(
        default=600.0,
        metadata={"doc": "with cnn_landmarks in use: a tracked frame whose pose turned faster "
                  "than this since the previous frame is not taken and the detector runs on "
                  "it instead (the CNN has no face-presence output: a hand or an object over "
                  "the face reads as a sudden jump, 52 deg in one 15-fps frame on dms demo's "
                  "covered face; fast human head turns peak at about 400-600 deg/s, as the "
                  "engine's max_head_speed_dps)"},
    )
    cnn_min_jump_deg: float = field(
        default=15.0,
        metadata={"doc": "... and a jump smaller than this always passes, whatever the frame "
                  "rate"},
    )

    def validate(self) -> None:
        if self.cnn_min_contrast < 0.0:
            raise ValueError("cnn_min_contrast must be >= 0")
        if self.cnn_max_turn_dps <= 0.0 or not 0.0 <= self.cnn_min_jump_deg <= 180.0:
            raise ValueError("need cnn_max_turn_dps > 0 and 0 <= cnn_min_jump_deg <= 180")
        if not 0.0 < self.cnn_landmarks_agree_deg < self.cnn_landmarks_zero_deg <= 180.0:
            raise ValueError("need 0 < cnn_landmarks_agree_deg < cnn_landmarks_zero_deg <= 180")
        if self.redetect_interval_frames < 1 or self.box_reuse_frames < 0:
            raise ValueError("redetect_interval_frames must be >= 1, box_reuse_frames >= 0")
        if not 0.0 <= self.landmark_min_presence <= 1.0:
            raise ValueError("landmark_min_presence must be in [0, 1]")
        if not 0.0 < self.mesh_agree_deg < self.mesh_zero_deg <= 180.0:
            raise ValueError("need 0 < mesh_agree_deg < mesh_zero_deg <= 180")


@dataclass(frozen=True, slots=True)
class EyeSettings:
    """The ``[vision.eyes]`` table: eye openness, eye-in-head gaze and mouth opening
    (:mod:`dms.vision.eyes`; the choices are measured in models/MODELS.md, section iris)."""

    enabled: bool = field(
        default=True, metadata={"doc": "measure eyes and mouth on every frame with a face"}
    )
    model: str = field(
        default="iris",
        metadata={"doc": "manifest name (see `dms models list`) or path of the iris ONNX (run "
                  "only where the eyes are not read from the landmark pass: see source)"},
    )
    source: Literal["mesh", "iris"] = field(
        default="mesh",
        metadata={
            "doc": "eye contour and iris: 'mesh' = the attention mesh's refined eyes and irises "
            "from the frame's one landmark pass when it has them (no more model runs; the iris "
            "model only for frames without them), 'iris' = the iris model on a crop of each "
            "eye (two more runs a frame). Measured side by side in docs/benchmarks.md s.13"
        },
    )
    openness_source: Literal["iris", "facemesh"] = field(
        default="iris",
        metadata={
            "doc": "eyelid points for the openness ratio: the iris model's eye contour "
            "('iris') or FaceMesh's own lid landmarks ('facemesh')"
        },
    )
    crop_scale: float = field(
        default=2.3,
        metadata={"doc": "eye crop side over the eye-corner distance (MediaPipe's iris graph)"},
    )
    keypoint_eye_width: float = field(
        default=0.45,
        metadata={
            "doc": "without FaceMesh (CNN pose model): eye width over the distance between "
            "the detector's eye keypoints (anthropometric ~30 mm / ~63 mm)"
        },
    )
    min_eye_width_px: float = field(
        default=6.0, metadata={"doc": "eyes narrower than this (pixels) are not measured"}
    )
    max_eye_yaw_deg: float = field(
        default=45.0,
        metadata={
            "doc": "the eye on the far side of a head turned more than this (deg) is not "
            "measured (None): it is hidden behind the nose"
        },
    )
    confidence_yaw_full_deg: float = field(
        default=30.0, metadata={"doc": "head |yaw| (deg) up to which yaw costs no confidence"}
    )
    confidence_yaw_zero_deg: float = field(
        default=70.0, metadata={"doc": "head |yaw| (deg) from which eye confidence is 0"}
    )
    dark_ratio_zero: float = field(
        default=0.10,
        metadata={
            "doc": "eye-region over cheek/nose median brightness at which confidence is 0 "
            "(rendered IR-opaque sunglasses read 0.10; open real eyes, faces-aflw at |yaw| < "
            "30: 5th percentile 0.14, median 0.52)"
        },
    )
    dark_ratio_full: float = field(
        default=0.18,
        metadata={"doc": "eye-region over cheek/nose brightness from which darkness costs "
                  "no confidence"},
    )
    eyeball_radius_cm: float = field(
        default=1.2, metadata={"doc": "gaze model: eyeball radius (adult average ~12 mm)"}
    )
    eyeball_depth_cm: float = field(
        default=0.85,
        metadata={
            "doc": "gaze model: eyeball centre behind the midpoint of the eye corners, in "
            "the canonical face mesh (its lid centres sit ~0.35 cm in front of that "
            "midpoint, i.e. on a 1.2 cm eyeball whose centre is ~0.85 cm behind it)"
        },
    )
    eyeball_height_cm: float = field(
        default=0.18,
        metadata={
            "doc": "gaze model: eyeball centre above the midpoint of the eye corners (the iris "
            "of an eye looking straight ahead sits above the corner line; fitted on renders: "
            "`dms eval --eyes --format synth`, pitch bias +10 deg at 0)"
        },
    )
    gaze_min_openness: float = field(
        default=0.12, metadata={"doc": "eyes less open than this give no gaze (iris hidden)"}
    )
    gaze_yaw_gain: float = field(
        default=1.6,
        metadata={
            "doc": "the iris model under-reads eye rotation: measured eye-in-head yaw is "
            "multiplied by this. Fitted on renders (docs/benchmarks.md, gaze sweep: slope of "
            "measured over true yaw 0.56 astronaut, 0.66 grace_hopper, +-30 deg); not "
            "checked on real gaze data (none here)"
        },
    )
    gaze_pitch_gain: float = field(
        default=1.0,
        metadata={
            "doc": "the same for pitch; the iris barely moves under the lid when looking "
            "down (renders: slope 0.1-0.2), so pitch is left as measured and eyes-only "
            "glances are caught by their yaw"
        },
    )

    def validate(self) -> None:
        if not (0.5 <= self.gaze_yaw_gain <= 3.0 and 0.5 <= self.gaze_pitch_gain <= 3.0):
            raise ValueError("gaze_yaw_gain and gaze_pitch_gain must be in [0.5, 3]")
        if not 1.0 < self.crop_scale <= 5.0:
            raise ValueError(f"crop_scale must be in (1, 5], got {self.crop_scale}")
        if not 0.1 <= self.keypoint_eye_width <= 1.0:
            raise ValueError(f"keypoint_eye_width must be in [0.1, 1], got "
                             f"{self.keypoint_eye_width}")
        if self.min_eye_width_px < 0:
            raise ValueError("min_eye_width_px must be >= 0")
        if not 0.0 <= self.max_eye_yaw_deg <= 90.0:
            raise ValueError(f"max_eye_yaw_deg must be in [0, 90], got {self.max_eye_yaw_deg}")
        if not 0.0 <= self.confidence_yaw_full_deg < self.confidence_yaw_zero_deg <= 90.0:
            raise ValueError("need 0 <= confidence_yaw_full_deg < confidence_yaw_zero_deg <= 90")
        if not 0.0 <= self.dark_ratio_zero < self.dark_ratio_full <= 1.5:
            raise ValueError("need 0 <= dark_ratio_zero < dark_ratio_full <= 1.5")
        if not 0.6 < self.eyeball_radius_cm < 2.0 or not 0.0 <= self.eyeball_depth_cm < 2.0:
            raise ValueError("eyeball_radius_cm must be in (0.6, 2), eyeball_depth_cm in [0, 2)")
        if not 0.0 <= self.gaze_min_openness < 1.0:
            raise ValueError("gaze_min_openness must be in [0, 1)")
