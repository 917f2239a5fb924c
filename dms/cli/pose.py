"""``dms pose IMAGE...``: faces and head pose in still images."""

from __future__ import annotations

import argparse
import json
import sys

from dms.cli._common import add_model_args, build_models


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("pose", help="detect faces and estimate head pose in images")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--json", action="store_true", help="one JSON object per face")
    add_model_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dms.errors import InputError
    from dms.evaluation import read_image
    from dms.vision.detect import select_driver

    detector, estimator = build_models(args)
    failed = 0
    for path in args.images:
        try:
            img = read_image(path)
        except InputError as exc:
            print(f"dms pose: error: {exc}", file=sys.stderr)
            failed += 1
            continue
        faces = detector.detect(img)
        driver = select_driver(faces, img.shape)
        if not faces:
            if args.json:
                print(json.dumps({"image": path, "faces": 0, "detector": detector.name,
                                  "pose_model": estimator.name}))
            else:
                print(f"{path}: no face found")
        for i, face in enumerate(faces):
            pose = estimator.estimate(img, face)
            rec = {
                "image": path,
                "face": i,
                "driver": face is driver,
                "box": [round(v, 1) for v in face.as_list()],
                "score": round(face.score, 4),
                "yaw": None if pose is None else round(pose.yaw_deg, 2),
                "pitch": None if pose is None else round(pose.pitch_deg, 2),
                "roll": None if pose is None else round(pose.roll_deg, 2),
                "confidence": None if pose is None else round(pose.confidence, 3),
                "detector": detector.name,
                "pose_model": estimator.name,
            }
            if args.json:
                print(json.dumps(rec))
            elif pose is None:
                print(f"{path} face {i}: box {rec['box']} score {rec['score']}: no pose")
            else:
                print(
                    f"{path} face {i}{' (driver)' if rec['driver'] else ''}: "
                    f"yaw {pose.yaw_deg:+6.1f}  pitch {pose.pitch_deg:+6.1f}  "
                    f"roll {pose.roll_deg:+6.1f} deg  box {rec['box']} score {rec['score']}"
                )
    return 2 if failed else 0
