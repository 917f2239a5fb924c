"""The full pipeline over a recorded video: frames -> perception -> engine -> outputs.

Used by ``dms replay VIDEO`` and ``dms demo``. Events go to ``outputs`` (the same
:class:`dms.service.AlertOutputs` that ``dms run`` uses) as they happen; optionally an
annotated copy of the video is written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dms.errors import InputError

Sample = tuple[float, float | None, float | None, float | None]


@dataclass
class VideoReplay:
    samples: list[Sample] = field(default_factory=list)  # (t, rel yaw, pitch, roll)
    events: list[Any] = field(default_factory=list)
    frames: int = 0
    faces: int = 0
    calibrated_at_s: float | None = None  # when the neutral became known (None: never)


def replay_video(
    video: str | Path,
    settings: Any,
    outputs: Any,
    *,
    detector: str | None = None,
    pose_model: str | None = None,
    out_video: Path | None = None,
    on_frame: Callable[[int], None] | None = None,
    on_calibrated: Callable[[float, Any], None] | None = None,
) -> VideoReplay:
    import cv2

    from dms.capture import video_fps, video_frames
    from dms.engine.engine import Engine
    from dms.pipeline import build_perception
    from dms.viz import annotate_frame

    perception = build_perception(detector, pose_model)
    engine = Engine(settings)
    res = VideoReplay()
    writer = None
    try:
        for frame in video_frames(str(video)):
            fr = perception.process(frame.image, frame.t_s)
            result = engine.step(fr.observation())
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
            if out_video is not None:
                img = annotate_frame(frame.image, fr.face, result.pose, result.state,
                                     result.events)
                if writer is None:
                    out_video.parent.mkdir(parents=True, exist_ok=True)
                    writer = cv2.VideoWriter(str(out_video), cv2.VideoWriter_fourcc(*"mp4v"),
                                             video_fps(str(video)), img.shape[1::-1])
                    if not writer.isOpened():
                        raise InputError(f"{out_video}: cannot write video here")
                writer.write(img)
            if on_frame is not None:
                on_frame(res.frames)
    finally:
        if writer is not None:
            writer.release()
    return res
