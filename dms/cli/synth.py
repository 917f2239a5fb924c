"""``dms synth``: synthetic driver videos with ground truth.

    dms synth render SCRIPT_OR_NAME --out DIR [--photo PATH|astronaut|grace_hopper]
                     [--fps N] [--size WxH] [--ir] [--seed S] [--force]
    dms synth eval DIR [--detector D] [--pose-model NAME|PATH] [--stride N]
    dms synth list
    dms synth yaw-fit [--photo NAME ...] [--max-yaw DEG] [--step DEG]

``render`` writes ``DIR/video.mp4``, ``DIR/poses.csv`` (t,yaw,pitch,roll,face then
eye_open,gaze_yaw_deg,gaze_pitch_deg,mouth_open: the
``dms replay --poses`` format) and ``DIR/expected_events.json``; ``eval`` prints one JSON
object with the estimator's MAE per axis and face-found rate on that clip. ``yaw-fit`` renders
still heads over a yaw x pitch x roll grid and prints (JSON) the landmark estimator's
large-yaw correction fitted on them (``[vision.pose.landmarks] yaw_knee_deg``/``yaw_gain``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from dms.cli._common import add_model_args


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("synth", help="synthetic driver videos with ground truth",
                              description="Render scripted driver videos from a face photo.")
    sub = p.add_subparsers(dest="synth_command", metavar="ACTION", required=True)
    r = sub.add_parser("render", help="render a scenario to DIR/video.mp4 + poses.csv + "
                       "expected_events.json")
    r.add_argument("scenario", metavar="SCRIPT_OR_NAME",
                   help="shipped scenario name (see `dms synth list`), a scenario .toml, or "
                   "an inline script such as 'road 5s; glance left-mirror 1.2s; road 3s'")
    r.add_argument("--out", type=Path, required=True, metavar="DIR")
    r.add_argument("--photo", default=None, metavar="PATH|astronaut|grace_hopper")
    r.add_argument("--fps", type=float, default=None)
    r.add_argument("--size", default=None, metavar="WxH")
    r.add_argument("--ir", action="store_true", default=None,
                   help="near-infrared-style grayscale")
    r.add_argument("--seed", type=int, default=None)
    r.add_argument("--force", action="store_true", help="render even if DIR holds the same clip")
    e = sub.add_parser("eval", help="head-pose MAE of an estimator on a rendered clip")
    e.add_argument("dir", type=Path, metavar="DIR")
    add_model_args(e)
    e.add_argument("--stride", type=int, default=1, help="evaluate every N-th frame")
    sub.add_parser("list", help="the shipped scenarios")
    y = sub.add_parser("yaw-fit", help="fit the embedded estimator's large-yaw correction on "
                       "rendered heads (prints yaw_knee_deg and yaw_gain)")
    y.add_argument("--photo", action="append", default=None, metavar="PATH|NAME",
                   help="face photo to lift (repeat; default: astronaut and grace_hopper)")
    y.add_argument("--max-yaw", type=float, default=55.0, metavar="DEG",
                   help="largest rendered |yaw| (renders are faithful to about 60 deg)")
    y.add_argument("--step", type=float, default=5.0, metavar="DEG", help="yaw grid step")
    y.add_argument("--config", default=None, metavar="FILE",
                   help="the other [vision.pose.landmarks] settings from this dms TOML "
                   "(the correction is refitted for them; e.g. flip_average = false)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.synth_command == "list":
        from dms.synth.script import list_scenarios, load_scenario

        for name in list_scenarios():
            sc = load_scenario(name)
            print(f"{name:16s} {sc.script.duration_s:5.1f} s  {sc.description}")
        return 0
    if args.synth_command == "render":
        from dms.synth.render import render_scenario

        res = render_scenario(args.scenario, args.out, photo=args.photo, fps=args.fps,
                              size=args.size, ir=args.ir, seed=args.seed,
                              use_cache=not args.force)
        print(json.dumps({"video": str(res.video), "poses_csv": str(res.poses_csv),
                          "expected_events": str(res.expected_events), "frames": res.frames,
                          "fps": res.fps, "cached": res.cached}))
        return 0
    if args.synth_command == "yaw-fit":
        return _yaw_fit(args)
    from dms.cli._common import build_models
    from dms.synth.evaluate import evaluate_dir

    detector, estimator = build_models(args)
    result = evaluate_dir(args.dir, detector, estimator, stride=args.stride)
    print(json.dumps(result.to_dict()))
    return 0


def _yaw_fit(args: argparse.Namespace) -> int:
    from dms.errors import InputError
    from dms.synth.yawfit import DEFAULT_PHOTOS, fit_yaw_expansion, sweep
    from dms.vision.headpose import PoseModelSettings, create_pose_estimator
    from dms.vision.landmark_pose import LandmarkHeadPose

    if not 0.0 < args.step <= args.max_yaw < 90.0:
        raise InputError(f"--max-yaw {args.max_yaw} / --step {args.step}: need "
                         "0 < step <= max-yaw < 90")
    pose = PoseModelSettings(model="facemesh")  # the correction is the landmark path's
    if args.config:
        from dms.config import load_config

        pose = PoseModelSettings(model="facemesh",
                                 landmarks=load_config(args.config).vision.pose.landmarks)
    estimator = create_pose_estimator(pose)  # the embedded FaceMesh estimator
    assert isinstance(estimator, LandmarkHeadPose)
    rows = sweep(estimator, photos=args.photo or DEFAULT_PHOTOS, max_yaw_deg=args.max_yaw,
                 step_deg=args.step)
    fit = fit_yaw_expansion(rows[:, 1], rows[:, 4])
    print(json.dumps(fit.to_dict() | {"photos": list(args.photo or DEFAULT_PHOTOS),
                                      "max_yaw_deg": args.max_yaw}))
    return 0
