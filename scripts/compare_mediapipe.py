#!/usr/bin/env python3
"""dms's landmark path against MediaPipe's own pipeline on AFLW2000-format faces, face for face.

Reads the landmarks ``scripts/mediapipe_landmarks.py`` wrote (MediaPipe's detector, ROI and
landmark model), fits a head pose to each with dms's own weighted Procrustes against the
canonical mesh (the fit MediaPipe's face-geometry module makes; one pass, no flip averaging),
runs dms's pipeline on the same images (``--boxes detector``: its own detector, as
``dms eval --boxes detector``; ``gt``: the label boxes), and prints the MAE per |yaw| bin:

* on every usable face each one finds, and
* on the faces **both** find (the side-by-side that matters: MediaPipe misses most of the
  hardest faces, which flatters its own figures).

Evaluation only: nothing is fitted or chosen here. ::

    /tmp/mp/bin/python scripts/mediapipe_landmarks.py ../shared/data/aflw2000-dev \
        --out /tmp/mp.npz --refine
    .venv/bin/python scripts/compare_mediapipe.py /tmp/mp.npz ../shared/data/aflw2000-dev \
        [--boxes detector|gt] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np


def main() -> int:
    from dms import geometry
    from dms.evaluation import read_aflw2000, yaw_bins
    from dms.images import read_image
    from dms.paths import models_dir
    from dms.types import FaceBox
    from dms.vision.detect import create_detector, select_driver
    from dms.vision.headpose import create_pose_estimator
    from dms.vision.landmark_pose import LandmarkHeadPose

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("landmarks", help=".npz from scripts/mediapipe_landmarks.py")
    p.add_argument("folder", help="AFLW2000-format folder (*.jpg + *.mat)")
    p.add_argument("--boxes", choices=("detector", "gt"), default="detector")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    with np.load(args.landmarks) as z:
        mp_found = dict(zip(z["names"].tolist(), z["found"].tolist(), strict=True))
        mp_points = dict(zip(z["names"].tolist(), z["points_px"], strict=True))
        mp_info = f"mediapipe {z['version']}, refine={bool(z['refine'])}"
    fitter = LandmarkHeadPose.from_files(models_dir() / "face_landmark.onnx")
    estimator = create_pose_estimator()
    detector = create_detector() if args.boxes == "detector" else None

    rows = []  # (gt yaw, dms errors or None, mediapipe errors or None)
    for face in (f for f in read_aflw2000(args.folder) if f.usable):
        truth = np.array([face.pitch_deg, face.yaw_deg, face.roll_deg])
        name = face.image_path.name
        if name not in mp_found:
            print(f"{name}: not in {args.landmarks}", file=sys.stderr)
            return 2
        mp_err = None
        if mp_found[name]:
            R = fitter.rotation_from_landmarks(mp_points[name])
            mp_err = np.abs(np.array(geometry.euler_from_rotation(R)) - truth)
        img = read_image(face.image_path)
        box = (FaceBox(*face.box, score=1.0) if detector is None
               else select_driver(detector.detect(img), img.shape))
        pose = estimator.estimate(img, box) if box is not None else None
        dms_err = (None if pose is None else
                   np.abs(np.array([pose.pitch_deg, pose.yaw_deg, pose.roll_deg]) - truth))
        rows.append((face.yaw_deg, dms_err, mp_err))

    def summary(which: int, keep) -> dict:  # type: ignore[no-untyped-def]
        sel = [r for r in rows if keep(r)]
        err = np.array([r[which] for r in sel]).reshape(-1, 3)
        yaw = np.array([r[0] for r in sel])
        return {"n": len(sel), "mean_mae": float(err.mean()) if len(sel) else float("nan"),
                "bins": [b.as_dict() for b in yaw_bins(err, yaw)]}

    out = {
        "faces": len(rows), "boxes": args.boxes, "reference": mp_info,
        "dms_found": sum(r[1] is not None for r in rows),
        "mediapipe_found": sum(r[2] is not None for r in rows),
        "dms_all": summary(1, lambda r: r[1] is not None),
        "mediapipe_all": summary(2, lambda r: r[2] is not None),
        "dms_common": summary(1, lambda r: r[1] is not None and r[2] is not None),
        "mediapipe_common": summary(2, lambda r: r[1] is not None and r[2] is not None),
    }
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    print(f"{out['faces']} usable faces; dms finds {out['dms_found']} ({args.boxes} boxes), "
          f"MediaPipe finds {out['mediapipe_found']} ({mp_info})")
    for key in ("dms_all", "mediapipe_all", "dms_common", "mediapipe_common"):
        s = out[key]
        bins = "  ".join(f"{b['bin']}: {b['mean_mae']:.2f} ({b['n']})" for b in s["bins"])
        print(f"{key:17s} n={s['n']:4d} mean {s['mean_mae']:.2f}  {bins}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
