"""The one per-frame step of the product: frame -> :class:`dms.perception.Perception` ->
:class:`dms.engine.engine.Engine`.

``dms run``, ``dms replay VIDEO``, ``dms demo``, ``dms calibrate --source`` and ``dms bench``
all call :meth:`DriverMonitor.step`; they differ only in where frames come from and where
results go (an explicit calibration is captured by the caller:
:class:`dms.engine.calibration.CalibrationCapture`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np

from dms.capture import as_bgr
from dms.config import VisionSettings
from dms.engine.calibration import NeutralPose
from dms.engine.engine import Engine, StepResult
from dms.engine.settings import EngineSettings
from dms.perception import FrameResult, Perception
from dms.vision.eyes import EyeMeasurer

log = logging.getLogger(__name__)

__all__ = ["DriverMonitor", "MonitorStep"]


@dataclass(frozen=True, slots=True)
class MonitorStep:
    """What one frame produced: perception's result and the engine's. ``error`` says why the
    frame could not be used (then the engine saw no face at ``t_s``)."""

    frame: FrameResult
    result: StepResult
    error: str = ""


class DriverMonitor:
    """Frame -> perception -> engine (see the module doc).

    No frame stops it: frames are converted to BGR where they can be (GRAY8 from IR cameras,
    BGRA, 16-bit; :func:`dms.capture.as_bgr`); a frame that cannot be used, or on which the
    models fail (an exception, a non-finite pose), is counted in ``bad_frames`` and reaches
    the engine as "no face" at its time, so a camera that keeps sending garbage raises
    ``driver_not_visible`` and then ``system_degraded`` like a lost face.
    """

    LOG_EVERY = 100  # after the first, log one bad frame in this many

    def __init__(self, perception: Perception, engine: Engine) -> None:
        self.perception = perception
        self.engine = engine
        self.frames = 0
        self.bad_frames = 0

    @classmethod
    def from_settings(cls, vision: VisionSettings, engine_settings: EngineSettings, *,
                      neutral: NeutralPose | None = None, run_id: str = "run",
                      trt_cache_dir: str | None = None) -> DriverMonitor:
        """Models from the ``[vision]`` settings and a fresh Engine."""
        from dms.vision.detect import create_detector
        from dms.vision.headpose import create_pose_estimator

        rt = vision.runtime
        if trt_cache_dir and not rt.trt_engine_cache_dir:
            rt = replace(rt, trt_engine_cache_dir=trt_cache_dir)
        eye_settings = vision.eyes
        eyes = EyeMeasurer.from_settings(eye_settings, rt) if eye_settings.enabled else None
        # Perception picks the tracker (the landmark pass, or without eyes the CNN's own
        # landmarks) on the same runtime
        perception = Perception(create_detector(vision.detector, rt),
                                create_pose_estimator(vision.pose, rt), vision.tracking,
                                vision.detector.driver_choice, eyes, runtime=rt)
        return cls(perception, Engine(engine_settings, neutral, run_id))

    def step(self, image: np.ndarray, t_s: float) -> MonitorStep:
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
        result = self.engine.step(fr.observation())
        self.frames += 1
        return MonitorStep(fr, result, error)
