"""``dms eval --format aflw2000 DIR``: head-pose MAE under the standard protocol."""

from __future__ import annotations

import argparse
import json

from dms.cli._common import add_model_args, build_models


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="head-pose accuracy on a labelled face set")
    p.add_argument("directory", metavar="DIR")
    p.add_argument("--format", choices=["aflw2000"], default="aflw2000")
    p.add_argument(
        "--boxes",
        choices=["gt", "detector"],
        default="gt",
        help="face boxes from the labels (gt) or from the face detector",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_model_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dms.evaluation import evaluate, read_aflw2000

    faces = read_aflw2000(args.directory)
    detector, estimator = build_models(args)
    res = evaluate(faces, estimator, detector if args.boxes == "detector" else None)
    if args.json:
        out = res.as_dict() | {"pose_model": estimator.name, "boxes": args.boxes}
        if args.boxes == "detector":
            out["detector"] = detector.name
        print(json.dumps(out))
        return 0
    print(f"pose model {estimator.name}, boxes: "
          f"{detector.name if args.boxes == 'detector' else 'ground truth'}")
    print(f"images evaluated: {res.n} (skipped {res.skipped} with an angle over 99 deg), "
          f"faces not found: {res.not_found}")
    print(f"MAE pitch {res.pitch_mae:.2f}  yaw {res.yaw_mae:.2f}  roll {res.roll_mae:.2f}  "
          f"mean {res.mean_mae:.2f} deg")
    print(f"yaw MAE with |yaw| > 45 deg: {res.yaw_mae_large:.2f} deg over {res.n_large} faces")
    print(f"low-confidence poses: {res.low_confidence}; mean MAE without them: "
          f"{res.mean_mae_confident:.2f} deg")
    print("per |yaw| bin (deg)   n     pitch   yaw     roll    mean")
    for b in res.bins:
        print(f"  {b.label:<18} {b.n:>5}   {b.pitch_mae:6.2f}  {b.yaw_mae:6.2f}  "
              f"{b.roll_mae:6.2f}  {b.mean_mae:6.2f}")
    return 0
