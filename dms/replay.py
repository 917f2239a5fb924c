"""The whole product over a recorded video: frames -> :class:`dms.pipeline.DriverMonitor`
(the same per-frame step as ``dms run``) -> outputs.

Used by ``dms replay VIDEO`` and ``dms demo``. Events go to ``outputs`` (the same
:class:`dms.outputs.routing.AlertOutputs` that ``dms run`` uses) as they happen; optionally an
annotated copy of the video is written (H.264 MP4 through imageio-ffmpeg's ffmpeg:
:mod:`dms.videofile`), marked by a sidecar ``<video>.dms.json`` so that replaying the annotated
copy (whose overlays would disturb the face detector) is refused with a pointer to the clean
clip.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dms.errors import InputError

log = logging.getLogger(__name__)

Sample = tuple[float, float | None, float | None, float | None]
EyeSample = tuple[float, float | None, bool]  # t, openness / driver's baseline, closed
ANNOTATED_MARK = ".dms.json"  # sidecar suffix of an annotated video


@dataclass
class VideoReplay:
    samples: list[Sample] = field(default_factory=list)  # (t, rel yaw, pitch, roll)
    eye_samples: list[EyeSample] = field(default_factory=list)  # (t, open ratio, closed)
    traces: list[Any] = field(default_factory=list)  # dms.viz.FrameTrace per frame
    events: list[Any] = field(default_factory=list)
    frames: int = 0
    faces: int = 0
    calibrated_at_s: float | None = None  # when the neutral became known (None: never)
    video_codec: str | None = None  # of the annotated video written: h264 (or mp4v)


def annotated_source(video: str | Path) -> str | None:
    """The clean clip an annotated video was made from, when ``video`` is one of ours."""
    mark = Path(str(video) + ANNOTATED_MARK)
    if not mark.is_file():
        return None
    try:
        return str(json.loads(mark.read_text(encoding="utf-8")).get("source", ""))
    except (OSError, ValueError):
        return ""


def refuse_annotated(video: str | Path) -> None:
    source = annotated_source(video)
    if source is not None:
        raise InputError(
            f"{video}: this is dms's annotated output (its overlays cover the face and would "
            f"change the result); replay the clean clip instead: {source or 'the original'}")


def replay_video(
    video: str | Path,
    settings: Any,
    outputs: Any,
    *,
    vision: Any = None,
    detector: str | None = None,
    pose_model: str | None = None,
    out_video: Path | None = None,
    on_frame: Callable[[int], None] | None = None,
    on_calibrated: Callable[[float, Any], None] | None = None,
) -> VideoReplay:
    """Replay ``video`` through the per-frame step with engine ``settings`` and the
    ``vision`` settings (``VisionSettings``; None: the defaults), ``detector`` / ``pose_model``
    overriding their models."""
    from dms.capture import video_fps, video_frames
    from dms.config import VisionSettings
    from dms.pipeline import DriverMonitor
    from dms.videofile import VideoFileWriter
    from dms.viz import FrameTrace, VideoAnnotator

    refuse_annotated(video)
    vision = vision or VisionSettings()
    if detector:
        vision = replace(vision, detector=replace(vision.detector, model=detector))
    if pose_model:
        vision = replace(vision, pose=replace(vision.pose, model=pose_model))
    monitor = DriverMonitor.from_settings(vision, settings)
    res = VideoReplay()
    writer = None
    annotator = VideoAnnotator(settings, panel=True)
    try:
        for frame in video_frames(str(video)):
            step = monitor.step(frame.image, frame.t_s)
            fr, result = step.frame, step.result
            for event in result.events:
                outputs.publish_event(event.to_dict())
            res.events.extend(result.events)
            if res.calibrated_at_s is None and result.state.calibrated:
                res.calibrated_at_s = frame.t_s
                if on_calibrated is not None:
                    on_calibrated(frame.t_s, result.state)
            res.frames += 1
            res.faces += fr.pose is not None
            r = result.relative
            res.samples.append((frame.t_s, None, None, None) if r is None
                               else (frame.t_s, r.yaw_deg, r.pitch_deg, r.roll_deg))
            eyes = result.state.policy.eyes
            if eyes is not None:
                res.eye_samples.append((frame.t_s, eyes.ratio, eyes.closed))
            res.traces.append(FrameTrace.of(fr.face, result))
            if out_video is not None:
                img = annotator.frame(frame.image, fr.face, result, raw_pose=fr.pose)
                if writer is None:
                    writer = VideoFileWriter(out_video, video_fps(str(video)),
                                             img.shape[1::-1])
                    res.video_codec = writer.codec
                writer.write(img)
            if on_frame is not None:
                on_frame(res.frames)
    finally:
        if writer is not None:
            writer.close()
    if out_video is not None and writer is not None:
        Path(str(out_video) + ANNOTATED_MARK).write_text(
            json.dumps({"annotated_by": "dms", "source": str(video)}) + "\n", encoding="utf-8")
    return res
