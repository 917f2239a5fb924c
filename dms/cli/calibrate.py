"""``dms calibrate``: learn the driver's neutral head pose and store it in the state directory.

    dms calibrate --poses FILE.csv [--profile NAME] [--state-dir DIR] [--settings FILE.toml]
    dms calibrate --source CAMERA_OR_VIDEO [--duration-s 5] ...

The driver looks at the road for ``--duration-s`` seconds. Prints the stored result as JSON,
and on stderr how it will be used (``dms run`` loads the profile its configuration names in
``[service] profile``), or a refusal (exit 3) saying why: face missing, moved too much, not
looking at the road.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Generator
from pathlib import Path
from typing import Any

from dms.errors import InputError


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "calibrate", help="store the driver's neutral head pose (look at the road)",
        description="Collect poses while the driver looks at the road, reject outliers and "
        "store the neutral pose per driver profile.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--source", help="camera device, URL or video file (full pipeline)")
    src.add_argument("--poses", type=Path, metavar="FILE.csv", help="poses CSV (as replay)")
    p.add_argument("--duration-s", type=float, default=None,
                   help="seconds to collect (default: engine.calibration.duration_s)")
    p.add_argument("--profile", default="default", help="driver profile name")
    p.add_argument("--state-dir", type=Path, default=None,
                   help="state directory (default: as `dms run`: $STATE_DIRECTORY, else the "
                   "config's service.state_dir, else ~/.local/state/dms)")
    p.add_argument("--config", type=Path, default=None, metavar="FILE.toml",
                   help="dms configuration (its [engine] settings, profile and state directory)")
    p.add_argument("--settings", type=Path, action="append", default=[], metavar="FILE.toml",
                   help="TOML with an [engine] table (repeatable; e.g. a calibration/ profile)")
    p.add_argument("--detector", default=None, help="face detector (--source only)")
    p.add_argument("--pose-model", default=None, help="head-pose model (--source only)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dms.calibration_store import profile_path, save_calibration
    from dms.config import load_config
    from dms.config import state_dir as resolve_state_dir
    from dms.engine.calibration import CalibrationCapture, CalibrationRefused
    from dms.replay import iter_poses_csv, load_settings_files

    cfg = load_config(args.config)
    settings = cfg.engine if args.config and not args.settings else load_settings_files(
        args.settings)
    state_dir = args.state_dir or resolve_state_dir(cfg)
    profile_path(state_dir, args.profile)  # a bad profile name fails before the camera starts
    duration = args.duration_s if args.duration_s is not None else settings.calibration.duration_s
    if duration <= 0:
        raise InputError(f"--duration-s {duration:g}: must be > 0")
    capture = CalibrationCapture(duration, settings.calibration, settings.mount)
    observations = (iter_poses_csv(args.poses) if args.poses is not None
                    else _source_observations(args, cfg, settings))
    outcome = None
    with contextlib.closing(observations):  # a camera is released as soon as it is done
        for obs in observations:
            outcome = capture.add(obs)
            if outcome is not None:
                break
    if outcome is None:  # the file or the source ended first: what was collected
        outcome = capture.finish()
    if isinstance(outcome, CalibrationRefused):
        print(json.dumps({"ok": False, "profile": args.profile, "code": outcome.code,
                          "reason": str(outcome)}))
        print(f"dms calibrate: refused: {outcome}", file=sys.stderr)
        return 3
    result = outcome
    path = save_calibration(state_dir, args.profile, result, mount=settings.mount.name)
    print(json.dumps({"ok": True, "profile": args.profile, "path": str(path),
                      **result.to_dict()}))
    print(how_it_is_used(args.profile, cfg.service.profile, args.config), file=sys.stderr)
    return 0


def how_it_is_used(profile: str, configured: str, config: Path | None) -> str:
    """What happens to a stored profile: `dms run` loads the one its configuration names."""
    where = f"{config}" if config else "the configuration"
    if profile == configured:
        return (f"dms calibrate: stored profile {profile!r}; `dms run` with {where} "
                f"([service] profile = \"{profile}\") uses this neutral pose from its first "
                "frame (restart the service to load it)")
    return (f"dms calibrate: stored profile {profile!r}; {where} names profile "
            f"{configured!r}, so `dms run` uses this one only with [service] profile = "
            f"\"{profile}\" (until then it is not used)")


def _source_observations(args: argparse.Namespace, cfg: Any, settings: Any
                         ) -> Generator[Any, None, None]:
    """The observations of the service's per-frame step on ``--source``."""
    from dataclasses import replace

    from dms.capture import frames_from_source
    from dms.monitor import DriverMonitor

    vision = cfg.vision
    if args.detector:
        vision = replace(vision, detector=replace(vision.detector, model=args.detector))
    if args.pose_model:
        vision = replace(vision, pose=replace(vision.pose, model=args.pose_model))
    monitor = DriverMonitor.from_settings(vision, settings)
    frames = frames_from_source(args.source)
    try:
        for frame in frames:
            yield monitor.step(frame.image, frame.t_s).frame.observation()
    finally:
        frames.close()  # type: ignore[attr-defined]
