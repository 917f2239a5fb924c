"""One perception step per frame: frame -> driver's face -> head pose, with tracking.

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

On every frame with a face, the eyes and mouth are measured (:mod:`dms.vision.eyes`: from
the tracker's landmarks, with the attention mesh's refined eyes when they are there, or from
the detector's eye keypoints when no landmark model runs) and go to the engine as
``Observation.eyes``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

import numpy as np

from dms import geometry
from dms.types import EyeObservation, FaceBox, HeadPose, Observation
from dms.vision.canonical import load_canonical_mesh
from dms.vision.detect import DriverChoice, FaceDetector, select_driver
from dms.vision.eyes import EyeMeasurer
from dms.vision.facemesh import (
    FaceLandmarks,
    FaceMeshLandmarker,
    aflw_box,
    roi_from_face_box,
    roi_from_landmarks,
)
from dms.vision.headpose import HeadPoseEstimator
from dms.vision.landmark_pose import FaceMeshTrack, LandmarkHeadPose
from dms.vision.plausible import ramp
from dms.vision.settings import EyeSettings, TrackingSettings

log = logging.getLogger(__name__)



class TrackingEstimator(Protocol):
    """A pose estimator that can follow a face from its own previous result."""

    def track(
        self, image_bgr: np.ndarray, previous: Any
    ) -> tuple[FaceBox, HeadPose, Any] | None: ...

    def start(self, image_bgr: np.ndarray, face: FaceBox) -> tuple[FaceBox, HeadPose, Any] | None:
        ...


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

    def _run(self, image: np.ndarray, roi: Any, min_presence: float
             ) -> tuple[FaceBox, HeadPose, FaceMeshTrack] | None:
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

    def start(self, image: np.ndarray, face: FaceBox
              ) -> tuple[FaceBox, HeadPose, FaceMeshTrack] | None:
        """After a detection: the detector has said a face is there, so a pose is returned
        whatever the presence (the caller keeps tracking only if it is high enough)."""
        return self._run(image, roi_from_face_box(face), 0.0)

    def track(self, image: np.ndarray, previous: FaceMeshTrack
              ) -> tuple[FaceBox, HeadPose, FaceMeshTrack] | None:
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
    ) -> None:
        """``eyes``: the eye measurer; "default" builds one with the default
        :class:`EyeSettings` on the CPU; None measures no eyes (``Observation.eyes`` None)."""
        self.detector = detector
        # a CNN pose model gets the one landmark pass a frame ([vision.tracking] landmark_model)
        self.estimator = with_landmark_pass(estimator, tracking)
        estimator = self.estimator
        self.tracking = tracking
        self.driver_choice = driver_choice
        self.eyes = EyeMeasurer.from_settings(EyeSettings()) if eyes == "default" else eyes
        if self.eyes is not None and not gives_refined_eyes(estimator):
            self.eyes.iris  # noqa: B018 - load the iris model now, not on the first frame
        self._tracker: Any = estimator if hasattr(estimator, "track") else None
        self._track_state: Any = None
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
        out = [("detector", str(getattr(self.detector, "name", type(self.detector).__name__)))]
        est = self.estimator
        if isinstance(est, MeshTrackedPose):
            out += [("pose", est.pose.name), ("landmarks", est.landmarker.name)]
        else:
            out.append(("pose", est.name))
            mirror = getattr(est, "mirror_landmarker", None)
            if mirror is not None:
                out.append(("pose_mirror", mirror.name))
        if self.eyes is not None and self.eyes.iris_loaded:
            out.append(("eyes", self.eyes.iris.name))
        return out

    def _detect(self, image: np.ndarray) -> FaceBox | None:
        self.detections += 1
        self._since_detect = 0
        return select_driver(self.detector.detect(image), image.shape, self.driver_choice)

    def process(self, image: np.ndarray, t_s: float) -> FrameResult:
        self.frames += 1
        self._since_detect += 1
        tr = self.tracking
        t0 = time.perf_counter()
        detect_ms = 0.0
        detected = False
        face: FaceBox | None = None
        pose: HeadPose | None = None
        state: Any = None
        due = self._since_detect >= tr.redetect_interval_frames
        if self._tracker is not None:
            if tr.enabled and self._track_state is not None and not due:
                out = self._tracker.track(image, self._track_state)
                if out is not None and self._follows(out[1], out[2]):
                    face, pose, state = out
                    self._track_state = state
            if pose is None:
                t1 = time.perf_counter()
                box = self._detect(image)
                detect_ms = (time.perf_counter() - t1) * 1e3
                detected = True
                self._track_state = None
                if box is not None:
                    out = self._tracker.start(image, box)
                    if out is not None:
                        face, pose, state = out
                        # keep following it only while the tracker is confident
                        if self._follows(pose, state):
                            self._track_state = state
        else:
            reuse = tr.enabled and self._box is not None and self._since_detect <= max(
                tr.box_reuse_frames, 0
            )
            if not reuse or due:
                t1 = time.perf_counter()
                self._box = self._detect(image)
                detect_ms = (time.perf_counter() - t1) * 1e3
                detected = True
            face = self._box
            if face is not None:
                pose = self.estimator.estimate(image, face)
            if pose is None:
                self._box = None
        t2 = time.perf_counter()
        eyes = self._measure_eyes(image, face, pose, state)
        eyes_ms = (time.perf_counter() - t2) * 1e3
        pose_ms = (t2 - t0) * 1e3 - detect_ms
        return FrameResult(t_s, face, pose, detected, detect_ms, pose_ms, eyes, eyes_ms)

    def _follows(self, pose: HeadPose, state: Any) -> bool:
        """Whether the next frame may track from this one: the tracker's confidence, or with
        a CNN behind the landmark pass the mesh's face presence (see MeshTrackedPose)."""
        if isinstance(self._tracker, MeshTrackedPose):
            return float(state.landmarks.presence) >= self._tracker.min_presence
        return pose.confidence >= self.tracking.track_min_confidence

    def _measure_eyes(self, image: np.ndarray, face: FaceBox | None, pose: HeadPose | None,
                      state: Any) -> EyeObservation | None:
        if self.eyes is None or pose is None:
            return None
        lm = getattr(state, "landmarks", None)
        landmarks = getattr(lm, "points_px", None)
        box = self._box if landmarks is None else face  # the detector's box has keypoints
        try:
            return self.eyes.measure(image, pose, landmarks, box,
                                     eyes_px=getattr(lm, "eyes_px", None),
                                     irises_px=getattr(lm, "irises_px", None))
        except Exception as exc:  # noqa: BLE001 - the eyes failing must not lose the head pose
            self.eye_errors += 1
            if self.eye_errors == 1 or self.eye_errors % 100 == 0:
                log.warning("eye measurement failed (%s: %s); %d frames without eyes so far",
                            type(exc).__name__, exc, self.eye_errors)
            return None


def gives_refined_eyes(estimator: Any) -> bool:
    """Whether every frame's landmarks from ``estimator`` carry the attention mesh's refined
    eyes (then the eye stage never needs the iris model)."""
    if isinstance(estimator, MeshTrackedPose):
        return estimator.landmarker.refined
    landmarker = getattr(estimator, "landmarker", None)
    if landmarker is None:
        return False
    mirror = getattr(estimator, "mirror_landmarker", None)
    flip = bool(getattr(getattr(estimator, "settings", None), "flip_average", False))
    return bool(landmarker.refined or (flip and mirror is not None and mirror.refined))


def with_landmark_pass(estimator: HeadPoseEstimator, tracking: TrackingSettings,
                       runtime: Any = None) -> Any:
    """``estimator`` behind one landmark pass a frame (:class:`MeshTrackedPose`) when it has no
    landmark tracker of its own (a CNN) and ``tracking.landmark_model`` names one; otherwise
    ``estimator`` itself (the landmark head pose tracks with its own passes)."""
    if hasattr(estimator, "track") or not tracking.landmark_model:
        return estimator
    from pathlib import Path

    from dms.vision.registry import resolve_model
    from dms.vision.runtime import CPU_ONLY, create_session

    path, entry = resolve_model(tracking.landmark_model, task="face_landmarks",
                                also=("head_pose",))
    name = entry.name if entry is not None else Path(path).stem
    landmarker = FaceMeshLandmarker(create_session(path, runtime or CPU_ONLY), name=name)
    fit = LandmarkHeadPose(landmarker, load_canonical_mesh())
    return MeshTrackedPose(landmarker, estimator, tracking.landmark_min_presence, fit=fit,
                           agree_deg=tracking.mesh_agree_deg, zero_deg=tracking.mesh_zero_deg)


def frames_from_source(source: str, timeout_s: float = 5.0) -> Iterator[Any]:
    """Frames of a video file in order, or live frames of a camera source until it stops
    delivering for ``timeout_s``."""
    from dms.capture import LatestFrameReader, source_kind, video_frames

    if source_kind(source) == "file":
        yield from video_frames(source)
        return
    reader = LatestFrameReader(source)
    try:
        while (f := reader.read(timeout_s=timeout_s)) is not None:
            yield f
    finally:
        reader.close()


# ----------------------------------------------------------------- the per-frame step


@dataclass(frozen=True, slots=True)
class MonitorStep:
    """What one frame produced: perception's result and the engine's. ``error`` says why the
    frame could not be used (then the engine saw no face at ``t_s``)."""

    frame: FrameResult
    result: Any  # dms.engine.engine.StepResult
    error: str = ""


class DriverMonitor:
    """The one per-frame step of the product: frame -> perception -> engine, plus the capture
    of an explicit calibration when one was asked for.

    ``dms run``, ``dms replay VIDEO``, ``dms demo``, ``dms calibrate --source`` and ``dms
    bench`` all call :meth:`step`; they differ only in where frames come from and where
    results go. :meth:`calibrate` arms a calibration of ``duration_s`` seconds starting at
    the next frame; when it ends, the neutral pose is computed (``calibrate_neutral``), given
    to the engine on success, and ``on_done(result_or_refusal)`` is called.

    No frame stops it: frames are converted to BGR where they can be (GRAY8 from IR cameras,
    BGRA, 16-bit; :func:`dms.capture.as_bgr`); a frame that cannot be used, or on which the
    models fail (an exception, a non-finite pose), is counted in ``bad_frames`` and reaches
    the engine as "no face" at its time, so a camera that keeps sending garbage raises
    ``driver_not_visible`` and then ``system_degraded`` like a lost face.
    """

    LOG_EVERY = 100  # after the first, log one bad frame in this many

    def __init__(self, perception: Perception, engine: Any) -> None:
        self.perception = perception
        self.engine = engine
        self.frames = 0
        self.bad_frames = 0
        self._cal_duration_s: float | None = None
        self._cal_until: float | None = None
        self._cal_obs: list[Observation] = []
        self._cal_done: Any = None

    @classmethod
    def from_settings(cls, vision: Any, engine_settings: Any, *, neutral: Any = None,
                      run_id: str = "run", trt_cache_dir: str | None = None) -> DriverMonitor:
        """Models from the ``[vision]`` settings (``VisionSettings``) and a fresh Engine."""
        from dataclasses import replace

        from dms.engine.engine import Engine
        from dms.vision.detect import create_detector
        from dms.vision.headpose import create_pose_estimator

        rt = vision.runtime
        if trt_cache_dir and not rt.trt_engine_cache_dir:
            rt = replace(rt, trt_engine_cache_dir=trt_cache_dir)
        eye_settings = vision.eyes
        eyes = EyeMeasurer.from_settings(eye_settings, rt) if eye_settings.enabled else None
        perception = Perception(create_detector(vision.detector, rt),
                                with_landmark_pass(create_pose_estimator(vision.pose, rt),
                                                   vision.tracking, rt),
                                vision.tracking, vision.detector.driver_choice, eyes)
        return cls(perception, Engine(engine_settings, neutral, run_id))

    @property
    def calibrating(self) -> bool:
        return self._cal_duration_s is not None

    def calibrate(self, duration_s: float, on_done: Any = None) -> None:
        """Arm an explicit calibration over the next ``duration_s`` seconds of frames."""
        self._cal_duration_s, self._cal_until, self._cal_obs = duration_s, None, []
        self._cal_done = on_done

    def step(self, image: np.ndarray, t_s: float) -> MonitorStep:
        from dms.capture import as_bgr

        img, error = as_bgr(image)
        fr = FrameResult(t_s, None, None, False, 0.0, 0.0)
        if img is not None:
            try:
                fr = self.perception.process(img, t_s)
                if fr.pose is not None and not np.isfinite(fr.pose.rotation).all():
                    error = "the head-pose model returned a non-finite pose"
            except Exception as exc:  # noqa: BLE001 - one frame must never stop monitoring
                error = f"perception failed: {type(exc).__name__}: {exc}"
                self.perception.reset()
        if error:
            self.bad_frames += 1
            if self.bad_frames == 1 or self.bad_frames % self.LOG_EVERY == 0:
                log.warning("frame at t=%.2f s skipped (%s); %d bad frames so far", t_s, error,
                            self.bad_frames)
            fr = FrameResult(t_s, None, None, fr.detected, fr.detect_ms, fr.pose_ms)
        obs = fr.observation()
        if self._cal_duration_s is not None:
            self._calibration_frame(obs)
        result = self.engine.step(obs)
        self.frames += 1
        return MonitorStep(fr, result, error)

    def _calibration_frame(self, obs: Observation) -> None:
        assert self._cal_duration_s is not None
        if self._cal_until is None:
            self._cal_until = obs.t_s + self._cal_duration_s
        self._cal_obs.append(obs)
        if obs.t_s >= self._cal_until:
            self.finish_calibration()

    def finish_calibration(self) -> None:
        """End an armed calibration now with the frames collected so far (a video that ended
        early); nothing happens when none is armed."""
        from dms.engine.calibration import CalibrationRefused, calibrate_neutral

        if self._cal_duration_s is None:
            return
        observations, done = self._cal_obs, self._cal_done
        self._cal_duration_s, self._cal_until, self._cal_obs, self._cal_done = (
            None, None, [], None)
        s = self.engine.settings
        outcome: Any
        try:
            outcome = calibrate_neutral(observations, s.calibration, s.mount)
        except CalibrationRefused as exc:
            log.warning("calibration refused: %s", exc)
            outcome = exc
        else:
            self.engine.set_neutral(outcome.neutral)
            log.info("calibration done: %s", outcome.to_dict())
        if done is not None:
            done(outcome)
