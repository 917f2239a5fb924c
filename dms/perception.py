"""Perception, one step per frame: frame -> the driver's face -> head pose and eyes, with
tracking. (:mod:`dms.monitor` joins it to the engine.)

The detector does not run on every frame. After a detection, the face is followed by the
pose estimator's own tracker when it has one (FaceMesh re-centres its region of interest on
the previous landmarks, as MediaPipe does), otherwise by re-using the previous box. The
detector runs again when tracking loses the face, when the tracker's confidence drops below
``track_min_confidence``, or after ``redetect_interval_frames`` frames in any case.

With a CNN head-pose model, one landmark model runs a frame (:class:`MeshTrackedPose`,
``[vision.tracking] landmark_model``, MediaPipe's attention mesh by default): it is the
tracker (the ROI from its previous landmarks), it gives the CNN its face box from the same
frame's mesh (:func:`dms.vision.facemesh.aflw_box`, the box convention the CNNs are evaluated
with), and its refined eyes and irises are the eye measurement's input, so neither FaceMesh
nor the iris model runs.

Without eyes, a CNN with a 68-landmark output (the tddfa students) needs no landmark model:
it follows the face from its own landmarks (:class:`CnnTrackedPose`, ``[vision.tracking]
cnn_landmarks``), one CNN run a frame.

On every frame with a face, the eyes and mouth are measured (:mod:`dms.vision.eyes`: from
the tracker's landmarks, with the attention mesh's refined eyes when they are there, or from
the detector's eye keypoints when no landmark model runs) and go to the engine as
``Observation.eyes``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal, TypeAlias

import cv2
import numpy as np

from dms import geometry
from dms.errors import ModelError
from dms.types import EyeObservation, FaceBox, HeadPose, Observation
from dms.vision.canonical import load_canonical_mesh
from dms.vision.detect import FaceDetector, select_driver
from dms.vision.eyes import EyeMeasurer
from dms.vision.facemesh import (
    FaceLandmarks,
    FaceMeshLandmarker,
    FaceRoi,
    aflw_box,
    roi_from_face_box,
    roi_from_landmarks,
)
from dms.vision.headpose import CnnHeadPose, HeadPoseEstimator
from dms.vision.landmark_pose import FaceMeshTrack, LandmarkHeadPose, Tracked
from dms.vision.landmarks68 import box_from_landmarks68, rotation_from_landmarks68
from dms.vision.plausible import ramp
from dms.vision.runtime import CPU_ONLY, RuntimeSettings
from dms.vision.settings import DriverChoice, EyeSettings, TrackingSettings

log = logging.getLogger(__name__)

__all__ = ["CnnTrack", "CnnTrackedPose", "FrameResult", "MeshTrackedPose", "Perception",
           "Tracker", "gives_refined_eyes", "with_landmark_pass"]


class MeshTrackedPose:
    """A CNN head-pose model behind one landmark pass a frame (see the module doc).

    :meth:`start` (after a detection) runs the landmark model on the ROI from the detector
    box, :meth:`track` on the ROI from the previous frame's landmarks; either way the CNN then
    reads the face in :func:`aflw_box` of this frame's mesh. The pose is the CNN's; its
    confidence is the CNN's times its agreement with the mesh's own fit to the canonical face
    (``fit``, a :class:`dms.vision.landmark_pose.LandmarkHeadPose`; 1 within ``agree_deg``, 0
    from ``zero_deg``): a hand or an object over part of the face can make the CNN read a
    turn that the mesh, following the visible points, does not. Tracking goes on while the
    mesh's face presence is at least ``min_presence``
    (the CNN's confidence falls at large yaw, where the mesh still follows the face); a
    tracked frame below it returns None (the face left the ROI: the caller detects again).
    The state handed back is a :class:`dms.vision.landmark_pose.FaceMeshTrack`, whose
    landmarks the eyes read.
    """

    def __init__(self, landmarker: FaceMeshLandmarker, pose: HeadPoseEstimator,
                 min_presence: float = 0.5, *, fit: LandmarkHeadPose | None = None,
                 agree_deg: float = 15.0, zero_deg: float = 25.0) -> None:
        self.landmarker = landmarker
        self.pose = pose
        self.name = pose.name
        self.min_presence = min_presence
        self.fit = fit
        self.agree_deg = agree_deg
        self.zero_deg = zero_deg
        self.landmark_ms = 0.0  # the last landmark run (dms bench's stage figures)

    def _run(self, image: np.ndarray, roi: FaceRoi, min_presence: float) -> Tracked | None:
        t0 = time.perf_counter()
        lm = self.landmarker.landmarks(image, roi)
        self.landmark_ms = (time.perf_counter() - t0) * 1e3
        if lm.presence < min_presence:
            return None
        box = aflw_box(lm.points_px, lm.presence)
        pose = self.pose.estimate(image, box)
        if pose is None:
            return None
        if self.fit is not None and pose.confidence > 0.0:
            apart = geometry.geodesic_deg(self.fit.rotation_from_landmarks(lm.points_px),
                                          pose.rotation)
            agree = ramp(apart, self.zero_deg, self.agree_deg)
            pose = replace(pose, confidence=pose.confidence * agree)
        return box, pose, FaceMeshTrack(roi_from_landmarks(lm.points_px), lm)

    def start(self, image: np.ndarray, face: FaceBox) -> Tracked | None:
        """After a detection: the detector has said a face is there, so a pose is returned
        whatever the presence (the caller keeps tracking only if it is high enough)."""
        return self._run(image, roi_from_face_box(face), 0.0)

    def track(self, image: np.ndarray, previous: FaceMeshTrack) -> Tracked | None:
        return self._run(image, previous.roi, self.min_presence)

    def estimate(self, image: np.ndarray, face: FaceBox) -> HeadPose | None:
        out = self.start(image, face)
        return None if out is None else out[1]

    def estimate_with_landmarks(self, image: np.ndarray, face: FaceBox
                                ) -> tuple[HeadPose, FaceLandmarks]:
        """A still image: the landmarks on the ROI from ``face``, once more on the ROI from
        those (what tracking would do on the next frame: a detector or ground-truth box is
        a rougher ROI than the mesh's own), then the CNN on their :func:`aflw_box`."""
        lm = self.landmarker.landmarks(image, roi_from_face_box(face))
        lm = self.landmarker.landmarks(image, roi_from_landmarks(lm.points_px))
        pose = self.pose.estimate(image, aflw_box(lm.points_px, lm.presence))
        if pose is None:
            raise ValueError(f"{self.name}: no pose for the face at {face.as_list()}")
        return pose, lm


MIN_TRACK_SIDE_PX = 16.0  # a tracked box smaller than this has lost the face
_TRACKING = TrackingSettings()  # the defaults of CnnTrackedPose's agreement ramp


@dataclass(frozen=True, slots=True)
class CnnTrack:
    """The tracking state of :class:`CnnTrackedPose`: the next frame's box and this frame's
    68 landmarks (image pixels)."""

    box: FaceBox
    landmarks_px: np.ndarray
    rotation: np.ndarray  # this frame's head rotation (the turn-speed check of the next)
    contrast: float = 0.0  # grey-level standard deviation in the box this frame was read in


class CnnTrackedPose:
    """A CNN head-pose model with a 68-landmark output that follows the face from its own
    landmarks, with no landmark model ([vision.tracking] cnn_landmarks): each frame the CNN
    reads the box :func:`dms.vision.landmarks68.box_from_landmarks68` made from the previous
    frame's landmarks (the way 3DDFA_V2 tracks). One CNN run a frame is all the per-frame work:
    with ``[vision.pose.cnn] flip_average = "auto"`` the mirrored run is left out here.

    Confidence: the CNN's own (yaw range, limits, and the flip agreement where the mirrored
    run is made) times the agreement of its rotation with the rotation its own 68 landmarks
    show (:func:`dms.vision.landmarks68.rotation_from_landmarks68`; two heads of the network
    read the head separately: 1 within ``agree_deg``, 0 from ``zero_deg``).

    The CNN has no face-presence output: tracking goes on while the box stays in the image
    and at least ``MIN_TRACK_SIDE_PX`` wide, has a face's contrast (:func:`grey_contrast`,
    ``[vision.tracking] cnn_min_contrast``: a covered lens has none) and the pose turns no
    faster than a head can (``cnn_max_turn_dps``: a hand or an object over the face is read
    as a sudden jump); :class:`Perception` checks the last two and runs the detector on a
    frame that fails them. The detector's re-run every ``redetect_interval_frames`` bounds
    how long it could follow anything else that is no longer a face.
    """

    def __init__(self, pose: CnnHeadPose, *,
                 agree_deg: float = _TRACKING.cnn_landmarks_agree_deg,
                 zero_deg: float = _TRACKING.cnn_landmarks_zero_deg) -> None:
        if pose.landmark_output is None:
            raise ModelError(f"{pose.name}: no 68-landmark output to track with")
        self.pose = pose
        self.name = pose.name
        self.flip = pose.settings.flip_average is True  # "auto": one run
        self.agree_deg = agree_deg
        self.zero_deg = zero_deg

    @classmethod
    def from_settings(cls, pose: CnnHeadPose, tracking: TrackingSettings) -> CnnTrackedPose:
        """With the agreement ramp of ``[vision.tracking]``."""
        return cls(pose, agree_deg=tracking.cnn_landmarks_agree_deg,
                   zero_deg=tracking.cnn_landmarks_zero_deg)

    def _run(self, image: np.ndarray, box: FaceBox) -> tuple[FaceBox, HeadPose, CnnTrack]:
        pose, lm = self.pose.estimate_with_landmarks(image, box, flip=self.flip)
        if pose.confidence > 0.0:
            apart = geometry.geodesic_deg(rotation_from_landmarks68(lm), pose.rotation)
            pose = replace(pose, confidence=pose.confidence * ramp(apart, self.zero_deg,
                                                                   self.agree_deg))
        face = box_from_landmarks68(lm, box.score, pose.yaw_deg)  # the next frame reads it
        return face, pose, CnnTrack(face, lm, pose.rotation, grey_contrast(image, box))

    def start(self, image: np.ndarray, face: FaceBox) -> tuple[FaceBox, HeadPose, CnnTrack]:
        return self._run(image, face)

    def track(self, image: np.ndarray, previous: CnnTrack
              ) -> tuple[FaceBox, HeadPose, CnnTrack] | None:
        """None when the previous frame's landmarks left no usable box (the caller detects)."""
        if not self.usable(previous.box, image.shape):
            return None
        return self._run(image, previous.box)

    @staticmethod
    def usable(box: FaceBox, shape: tuple[int, ...]) -> bool:
        """A box to track from: its centre in the image, at least MIN_TRACK_SIDE_PX wide."""
        cx, cy = box.center
        return bool(box.width >= MIN_TRACK_SIDE_PX and 0.0 <= cx < shape[1]
                    and 0.0 <= cy < shape[0])

    def estimate(self, image: np.ndarray, face: FaceBox) -> HeadPose:
        """A still image: the CNN on ``face``, then once more on the box its landmarks give
        (what tracking reads on the next frame; ``dms eval --own-landmarks``)."""
        first = self._run(image, face)
        return self._run(image, first[2].box)[1]


CONTRAST_THUMB_PX = 24  # grey_contrast reads the box at this size


def grey_contrast(image: np.ndarray, box: FaceBox) -> float:
    """The standard deviation of the grey levels (0-255) in ``box``, read from a
    CONTRAST_THUMB_PX-pixel thumbnail (area-averaged: sensor noise does not count as
    texture): a face has eyes, brows, nostrils and a mouth; a covered lens has none."""
    n = CONTRAST_THUMB_PX
    side = max(box.width, box.height, 1.0)
    k = n / side
    A = np.array([[k, 0.0, -box.x1 * k], [0.0, k, -box.y1 * k]])
    thumb = cv2.warpAffine(image, A, (n, n), flags=cv2.INTER_AREA,
                           borderMode=cv2.BORDER_REPLICATE)
    if thumb.ndim == 3:
        thumb = cv2.cvtColor(thumb, cv2.COLOR_BGR2GRAY)
    return float(thumb.std())


Tracker: TypeAlias = "LandmarkHeadPose | MeshTrackedPose | CnnTrackedPose"
"""A pose estimator that follows the face from its own previous landmarks."""
TrackState: TypeAlias = "FaceMeshTrack | CnnTrack"


@dataclass(frozen=True, slots=True)
class FrameResult:
    t_s: float
    face: FaceBox | None
    pose: HeadPose | None
    detected: bool  # the detector ran on this frame
    detect_ms: float
    pose_ms: float  # landmarks and pose (not the detector, not the eyes)
    eyes: EyeObservation | None = None
    eyes_ms: float = 0.0

    def observation(self) -> Observation:
        return Observation(t_s=self.t_s, pose=self.pose, face_box=self.face, eyes=self.eyes)


class Perception:
    """Stateful per-frame perception (the state is only the tracking memory)."""

    def __init__(
        self,
        detector: FaceDetector,
        estimator: HeadPoseEstimator,
        tracking: TrackingSettings = TrackingSettings(),
        driver_choice: DriverChoice = "largest_central",
        eyes: EyeMeasurer | None | Literal["default"] = "default",
        runtime: RuntimeSettings = CPU_ONLY,
    ) -> None:
        """``eyes``: the eye measurer; "default" builds one with the default
        :class:`EyeSettings` on the CPU; None measures no eyes (``Observation.eyes`` None).
        ``runtime``: how the landmark pass runs when this adds one in front of a CNN (the
        detector and the pose model come made)."""
        self.detector = detector
        # a CNN pose model gets the one landmark pass a frame ([vision.tracking] landmark_model)
        # or, without eyes, tracks on its own landmarks (cnn_landmarks)
        self.eyes = EyeMeasurer.from_settings(EyeSettings()) if eyes == "default" else eyes
        self.estimator = with_landmark_pass(estimator, tracking, runtime,
                                            eyes=self.eyes is not None)
        self.tracking = tracking
        self.driver_choice = driver_choice
        if self.eyes is not None and not gives_refined_eyes(self.estimator):
            self.eyes.iris  # noqa: B018 - load the iris model now, not on the first frame
        est = self.estimator
        self._tracker: Tracker | None = (
            est if isinstance(est, (LandmarkHeadPose, MeshTrackedPose, CnnTrackedPose)) else None)
        self._track_state: TrackState | None = None
        self._track_t_s = 0.0  # the time of the frame _track_state comes from
        self._box: FaceBox | None = None
        self._since_detect = 0
        self.detections = 0
        self.frames = 0
        self.eye_errors = 0  # frames whose eye measurement raised (eyes None, pose kept)

    def reset(self) -> None:
        self._track_state, self._box, self._since_detect = None, None, 0

    def models_in_use(self) -> list[tuple[str, str]]:
        """(task, model name) of each model that runs a frame: the detector, the pose model,
        the landmark pass in front of a CNN or the landmark pose's mirrored pass, and the
        iris model only where it is loaded (with the attention mesh's refined eyes it is
        not). For status pages that list each model with its licence."""
        out = [("detector", self.detector.name)]
        est = self.estimator
        if isinstance(est, MeshTrackedPose):
            out += [("pose", est.pose.name), ("landmarks", est.landmarker.name)]
        else:
            out.append(("pose", est.name))
            if isinstance(est, LandmarkHeadPose) and est.mirror_landmarker is not None:
                out.append(("pose_mirror", est.mirror_landmarker.name))
        if self.eyes is not None and self.eyes.iris_loaded:
            out.append(("eyes", self.eyes.iris.name))
        return out

    def _detect(self, image: np.ndarray) -> FaceBox | None:
        self.detections += 1
        self._since_detect = 0
        return select_driver(self.detector.detect(image), image.shape, self.driver_choice)

    def process(self, image: np.ndarray, t_s: float) -> FrameResult:
        """The driver's face, head pose and eyes in one frame (see the module doc)."""
        self.frames += 1
        self._since_detect += 1
        t0 = time.perf_counter()
        due = self._since_detect >= self.tracking.redetect_interval_frames
        if self._tracker is not None:
            face, pose, state, detect_ms = self._tracked(self._tracker, image, t_s, due)
        else:
            face, pose, detect_ms = self._boxed(image, due)
            state = None
        t2 = time.perf_counter()
        eyes = self._measure_eyes(image, face, pose, state)
        eyes_ms = (time.perf_counter() - t2) * 1e3
        pose_ms = (t2 - t0) * 1e3 - detect_ms
        detected = self._since_detect == 0  # _detect ran on this frame
        return FrameResult(t_s, face, pose, detected, detect_ms, pose_ms, eyes, eyes_ms)

    def _tracked(self, tracker: Tracker, image: np.ndarray, t_s: float, due: bool
                 ) -> tuple[FaceBox | None, HeadPose | None, TrackState | None, float]:
        """A tracker's frame: follow the previous landmarks, or detect and start again.
        Returns (face, pose, tracking state, detector milliseconds)."""
        if self.tracking.enabled and self._track_state is not None and not due:
            out = tracker.track(image, self._track_state)  # type: ignore[arg-type]
            if out is not None and self._follows(out) and self._still_a_face(out[2], t_s):
                self._track_state, self._track_t_s = out[2], t_s
                return out[0], out[1], out[2], 0.0
        t1 = time.perf_counter()
        box = self._detect(image)
        detect_ms = (time.perf_counter() - t1) * 1e3
        self._track_state = None
        started = tracker.start(image, box) if box is not None else None
        if started is None:
            return None, None, None, detect_ms
        if self._follows(started):  # keep following it only while the tracker is confident
            self._track_state, self._track_t_s = started[2], t_s
        return started[0], started[1], started[2], detect_ms

    def _still_a_face(self, state: TrackState, t_s: float) -> bool:
        """For a CNN tracking on its own landmarks, which has no face-presence output: the
        box it read has a face's contrast (``cnn_min_contrast``: a covered lens has none)
        and the pose turned since the previous frame no faster than a head can
        (``cnn_max_turn_dps``; jumps under ``cnn_min_jump_deg`` always pass: a hand or an
        object over the face reads as a sudden jump). Other trackers check presence."""
        prev = self._track_state
        if not (isinstance(state, CnnTrack) and isinstance(prev, CnnTrack)):
            return True
        tr = self.tracking
        if state.contrast < tr.cnn_min_contrast:
            return False
        jump = geometry.geodesic_deg(prev.rotation, state.rotation)
        return jump <= max(tr.cnn_min_jump_deg, tr.cnn_max_turn_dps * (t_s - self._track_t_s))

    def _boxed(self, image: np.ndarray, due: bool
               ) -> tuple[FaceBox | None, HeadPose | None, float]:
        """An estimator without a tracker: the detector's box, re-used for up to
        ``box_reuse_frames`` frames. Returns (face, pose, detector milliseconds)."""
        tr = self.tracking
        reuse = tr.enabled and self._box is not None and \
            self._since_detect <= max(tr.box_reuse_frames, 0)
        detect_ms = 0.0
        if not reuse or due:
            t1 = time.perf_counter()
            self._box = self._detect(image)
            detect_ms = (time.perf_counter() - t1) * 1e3
        face = self._box
        pose = self.estimator.estimate(image, face) if face is not None else None
        if pose is None:
            self._box = None
        return face, pose, detect_ms

    def _follows(self, out: tuple[FaceBox, HeadPose, TrackState]) -> bool:
        """Whether the next frame may track from this one: the tracker's confidence, with a
        CNN behind the landmark pass the mesh's face presence (see MeshTrackedPose), with a
        CNN on its own landmarks a usable box (see CnnTrackedPose)."""
        state = out[2]
        if isinstance(state, CnnTrack):
            return True  # CnnTrackedPose.track checks the box it is handed
        if isinstance(self._tracker, MeshTrackedPose):
            return float(state.landmarks.presence) >= self._tracker.min_presence
        return out[1].confidence >= self.tracking.track_min_confidence

    def _measure_eyes(self, image: np.ndarray, face: FaceBox | None, pose: HeadPose | None,
                      state: TrackState | None) -> EyeObservation | None:
        if self.eyes is None or pose is None:
            return None
        lm = state.landmarks if isinstance(state, FaceMeshTrack) else None
        # the detector's box has keypoints, and so has a CNN's own-landmark box
        box = state.box if isinstance(state, CnnTrack) else self._box if lm is None else face
        try:
            if lm is None:
                return self.eyes.measure(image, pose, None, box)
            return self.eyes.measure(image, pose, lm.points_px, box, eyes_px=lm.eyes_px,
                                     irises_px=lm.irises_px)
        except Exception as exc:  # noqa: BLE001 - the eyes failing must not lose the head pose
            self.eye_errors += 1
            if self.eye_errors == 1 or self.eye_errors % 100 == 0:
                log.warning("eye measurement failed (%s: %s); %d frames without eyes so far",
                            type(exc).__name__, exc, self.eye_errors)
            return None


def gives_refined_eyes(estimator: HeadPoseEstimator) -> bool:
    """Whether every frame's landmarks from ``estimator`` carry the attention mesh's refined
    eyes (then the eye stage never needs the iris model)."""
    if isinstance(estimator, MeshTrackedPose):
        return estimator.landmarker.refined
    if not isinstance(estimator, LandmarkHeadPose):
        return False
    mirror = estimator.mirror_landmarker
    flip = estimator.settings.flip_average
    return bool(estimator.landmarker.refined or (flip and mirror is not None and mirror.refined))


def with_landmark_pass(estimator: HeadPoseEstimator, tracking: TrackingSettings,
                       runtime: RuntimeSettings = CPU_ONLY, *, eyes: bool = True
                       ) -> HeadPoseEstimator:
    """The tracker for ``estimator``: a CNN with a 68-landmark output on its own landmarks
    (:class:`CnnTrackedPose`) where ``tracking.cnn_landmarks`` says so for a pipeline that
    measures ``eyes`` or not; another CNN behind one landmark pass a frame
    (:class:`MeshTrackedPose`) when ``tracking.landmark_model`` names one; otherwise
    ``estimator`` itself (the landmark head pose tracks with its own passes)."""
    if isinstance(estimator, (LandmarkHeadPose, MeshTrackedPose, CnnTrackedPose)):
        return estimator
    own = tracking.cnn_landmarks == "always" or (
        tracking.cnn_landmarks == "without_eyes" and not eyes)
    if own and isinstance(estimator, CnnHeadPose) and estimator.landmark_output is not None:
        return CnnTrackedPose.from_settings(estimator, tracking)
    if not tracking.landmark_model:
        return estimator
    from dms.vision.registry import resolve_model
    from dms.vision.runtime import create_session

    path, entry = resolve_model(tracking.landmark_model, task="face_landmarks",
                                also=("head_pose",))
    name = entry.name if entry is not None else Path(path).stem
    landmarker = FaceMeshLandmarker(create_session(path, runtime), name=name)
    fit = LandmarkHeadPose(landmarker, load_canonical_mesh())
    return MeshTrackedPose(landmarker, estimator, tracking.landmark_min_presence, fit=fit,
                           agree_deg=tracking.mesh_agree_deg, zero_deg=tracking.mesh_zero_deg)
