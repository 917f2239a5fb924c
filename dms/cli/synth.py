"""``dms synth``: synthetic driver videos with ground truth.

    dms synth render SCRIPT_OR_NAME --out DIR [--photo PATH|astronaut|grace_hopper]
                     [--fps N] [--size WxH] [--ir] [--seed S] [--force]
    dms synth eval DIR [--detector D] [--pose-model NAME|PATH] [--stride N]
    dms synth list

``render`` writes ``DIR/video.mp4``, ``DIR/poses.csv`` (t,yaw,pitch,roll,face: the
``dms replay --poses`` format) and ``DIR/expected_events.json``; ``eval`` prints one JSON
object with the estimator's MAE per axis and face-found rate on that clip.
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
    from dms.cli._common import build_models
    from dms.synth.evaluate import evaluate_dir

    detector, estimator = build_models(args)
    result = evaluate_dir(args.dir, detector, estimator, stride=args.stride)
    print(json.dumps(result.to_dict()))
    return 0
