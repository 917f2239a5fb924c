"""``dms bench``: per-stage latency and end-to-end frames per second of the per-frame step
(perception + engine: :class:`dms.pipeline.DriverMonitor`, the same step ``dms run`` uses)."""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from dms.cli._common import add_model_args, build_eyes, build_models


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="time the perception pipeline on a video")
    p.add_argument("--video", help="video file (default: an offline 640x480 clip, made once)")
    p.add_argument("--frames", type=int, default=300, help="frames to time (after warm-up)")
    p.add_argument("--warmup", type=int, default=20, help="frames run before timing")
    p.add_argument("--no-tracking", action="store_true", help="detect on every frame")
    p.add_argument("--no-eyes", action="store_true",
                   help="no eye measurement (head pose only, as before issue 14)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_model_args(p)
    p.set_defaults(func=run)


def _stats(ms: list[float]) -> dict[str, float | int]:
    import numpy as np

    if not ms:
        return {"calls": 0}
    a = np.asarray(ms)
    return {
        "calls": len(ms),
        "p50_ms": round(float(np.percentile(a, 50)), 3),
        "p99_ms": round(float(np.percentile(a, 99)), 3),
        "mean_ms": round(float(a.mean()), 3),
    }


def _input_size(detector: object) -> list[int] | None:
    """The detector's network input as [width, height] (int or pair attributes)."""
    size = getattr(detector, "input_size", None)
    if size is None:
        return None
    return [int(size), int(size)] if isinstance(size, int) else [int(v) for v in size]


def run(args: argparse.Namespace) -> int:
    from dms.benchclip import default_clip
    from dms.capture import video_frames
    from dms.engine.engine import Engine
    from dms.errors import InputError
    from dms.pipeline import DriverMonitor, Perception, TrackingSettings

    video = args.video or str(default_clip())
    if args.frames < 1 or args.warmup < 0:
        raise InputError("--frames must be >= 1 and --warmup >= 0")
    clip = [f.image for f in video_frames(video, max_frames=args.frames + args.warmup)]
    if not clip:
        raise InputError(f"{video}: no frames could be read")
    # A clip shorter than warm-up + timed frames plays forward and back again (no jump cut,
    # so tracking sees continuous motion) until the requested number of frames is reached.
    period = max(1, 2 * len(clip) - 2)
    order = [k % period for k in range(args.frames + args.warmup)]
    frames = [clip[k if k < len(clip) else period - k] for k in order]
    detector, estimator = build_models(args)
    perception = Perception(detector, estimator, TrackingSettings(enabled=not args.no_tracking),
                            eyes=build_eyes(args))
    monitor = DriverMonitor(perception, Engine())
    for i in range(args.warmup):
        monitor.step(frames[i], i / 30.0)
    detect, pose, eyes, engine, total, found = [], [], [], [], [], 0
    landmarks: list[float] = []  # the one landmark pass in front of a CNN (part of "pose")
    one_pass = hasattr(perception.estimator, "landmark_ms")
    timed = frames[args.warmup:]
    perception.detections = 0
    # CPU time of the whole process (every thread) over the timed frames: what a frame costs
    # in work, which a shared machine's load does not inflate as it does the wall time
    cpu0 = time.process_time()
    for i, img in enumerate(timed):
        t0 = time.perf_counter()
        r = monitor.step(img, (args.warmup + i) / 30.0).frame
        total.append((time.perf_counter() - t0) * 1e3)
        if r.detected:
            detect.append(r.detect_ms)
        pose.append(r.pose_ms)
        if one_pass:
            landmarks.append(float(perception.estimator.landmark_ms))
        if perception.eyes is not None:
            eyes.append(r.eyes_ms)
        engine.append(max(total[-1] - r.detect_ms - r.pose_ms - r.eyes_ms, 0.0))
        found += r.pose is not None
    cpu_ms = (time.process_time() - cpu0) * 1e3 / len(timed)
    tot = _stats(total)
    out = {
        "video": video,
        "frames": len(timed),
        "clip_frames": len(clip),
        "size": list(timed[0].shape[1::-1]),
        "tracking": not args.no_tracking,
        "detector": detector.name,
        "detector_input": _input_size(detector),
        "pose_model": estimator.name,
        "fps_p50": round(1000.0 / float(tot["p50_ms"]), 1),
        "fps_mean": round(1000.0 / float(tot["mean_ms"]), 1),
        "cpu_ms_per_frame": round(cpu_ms, 3),
        "face_found_fraction": round(found / len(timed), 3),
        "detector_runs_per_frame": round(len(detect) / len(timed), 3),
        "eyes": perception.eyes is not None,
        "stages": {"detect": _stats(detect), "pose": _stats(pose),
                   "landmarks": _stats(landmarks), "eyes": _stats(eyes),
                   "engine": _stats(engine), "total": tot},
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "python": platform.python_version(),
    }
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"{Path(video).name}: {out['frames']} frames {out['size'][0]}x{out['size'][1]}, "
          f"detector {out['detector']}, pose {out['pose_model']}, tracking {out['tracking']}, "
          f"eyes {out['eyes']}")
    for name, s in out["stages"].items():  # type: ignore[union-attr]
        if s.get("calls"):
            print(f"  {name:7s} p50 {s['p50_ms']:7.2f} ms  p99 {s['p99_ms']:7.2f} ms  "
                  f"({s['calls']} calls)")
    print(f"  CPU time: {out['cpu_ms_per_frame']:.2f} ms a frame (all threads)")
    print(f"  end-to-end: {out['fps_p50']} FPS at p50 ({out['fps_mean']} mean); face found in "
          f"{out['face_found_fraction']:.0%} of frames; detector ran on "
          f"{out['detector_runs_per_frame']:.0%} of frames")
    return 0
