"""``dms bench``: per-stage latency and end-to-end frames per second of the per-frame step
(perception + engine: :class:`dms.monitor.DriverMonitor`, the same step ``dms run`` uses).

``--engine-only`` times the engine step alone (no models) on a scripted drive at 30 Hz,
``--repeat`` times over; each frame counts with its best run, so what another process on a
shared machine adds (it only ever adds) is left out. BLAS and OpenMP threads are as the
environment sets them (the default: one per core; the systemd unit pins them to one)."""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from dms.cli._common import (
    add_model_args,
    build_eyes,
    build_models,
    runtime_and_settings,
    tracking_settings,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("bench", help="time the perception pipeline on a video")
    p.add_argument("--video", help="video file (default: an offline 640x480 clip, made once)")
    p.add_argument("--frames", type=int, default=300, help="frames to time (after warm-up)")
    p.add_argument("--warmup", type=int, default=20, help="frames run before timing")
    p.add_argument("--no-tracking", action="store_true", help="detect on every frame")
    p.add_argument("--no-eyes", action="store_true",
                   help="no eye measurement (head pose only, as before issue 14)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--engine-only", action="store_true",
                   help="time only the engine step on a scripted 2-minute drive (no models)")
    p.add_argument("--repeat", type=int, default=5,
                   help="--engine-only: runs of the drive; each frame counts its best run")
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


ENGINE_DRIVE = ("road 20s; glance left-mirror 2s; road 6s; glance infotainment 4s; road 8s; "
                "nod x3 over 12s; road 10s; glance right-mirror 3s; road 10s; close 4s; "
                "road 10s; look infotainment 3s; road 10s; slump 4s; road 15s")


def _timed_engine() -> Any:
    """An Engine whose ``step`` also records its wall milliseconds in ``ms``."""
    from dms.engine.engine import Engine

    class TimedEngine(Engine):
        def __init__(self) -> None:
            super().__init__()
            self.ms: list[float] = []

        def step(self, obs: Any) -> Any:
            t0 = time.perf_counter()
            result = super().step(obs)
            self.ms.append((time.perf_counter() - t0) * 1e3)
            return result

    return TimedEngine()


def _threads_env() -> dict[str, str]:
    import os

    return {k: os.environ.get(k, "default") for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}


def run_engine_only(args: argparse.Namespace) -> int:
    import numpy as np

    from dms.engine.engine import Engine
    from dms.errors import InputError
    from dms.sim.scenarios import build_script

    if args.repeat < 1:
        raise InputError("--repeat must be >= 1")
    scenario = build_script(ENGINE_DRIVE, rate_hz=30.0, noise_deg=1.0, seed=1)
    runs = []
    for _ in range(args.repeat):
        engine, ms = Engine(scenario.settings), []
        for obs in scenario.observations:
            t0 = time.perf_counter()
            engine.step(obs)
            ms.append((time.perf_counter() - t0) * 1e3)
        runs.append(ms)
    best = np.min(np.asarray(runs), axis=0).tolist()
    out = {"frames": len(best), "repeat": args.repeat, "engine": _stats(best),
           "engine_first_run": _stats(runs[0]), "threads": _threads_env(),
           "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
           "python": platform.python_version()}
    if args.json:
        print(json.dumps(out))
        return 0
    e, f = out["engine"], out["engine_first_run"]
    print(f"engine step, {len(best)} frames at 30 Hz, best of {args.repeat} runs: p50 "
          f"{e['p50_ms']:.3f} ms  p99 {e['p99_ms']:.3f} ms  (first run alone: p50 "
          f"{f['p50_ms']:.3f}, p99 {f['p99_ms']:.3f}); threads {out['threads']}")
    return 0


def run(args: argparse.Namespace) -> int:
    if args.engine_only:
        return run_engine_only(args)
    from dms.benchclip import default_clip
    from dms.capture import video_frames
    from dms.errors import InputError
    from dms.monitor import DriverMonitor
    from dms.perception import MeshTrackedPose, Perception

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
    runtime, _, _ = runtime_and_settings(args)
    tracking = replace(tracking_settings(args), enabled=not args.no_tracking)
    perception = Perception(detector, estimator, tracking,
                            eyes=build_eyes(args), runtime=runtime)
    timed_engine = _timed_engine()
    monitor = DriverMonitor(perception, timed_engine)
    for i in range(args.warmup):
        monitor.step(frames[i], i / 30.0)
    detect, pose, eyes, total, found = [], [], [], [], 0
    landmarks: list[float] = []  # the one landmark pass in front of a CNN (part of "pose")
    one_pass = perception.estimator if isinstance(perception.estimator, MeshTrackedPose) else None
    timed = frames[args.warmup:]
    perception.detections = 0
    timed_engine.ms.clear()
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
        if one_pass is not None:
            landmarks.append(one_pass.landmark_ms)
        if perception.eyes is not None:
            eyes.append(r.eyes_ms)
        found += r.pose is not None
    cpu_ms = (time.process_time() - cpu0) * 1e3 / len(timed)
    engine = timed_engine.ms  # the engine step itself, timed around its call
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
