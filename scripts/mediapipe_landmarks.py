"""Outside reference for `dms eval`: MediaPipe's own FaceMesh pipeline on still images.

Runs MediaPipe's legacy FaceMesh solution (its own BlazeFace short-range detector, its own ROI,
and with ``--refine`` the attention mesh) on every ``*.jpg`` of a folder and writes the 468
landmarks of the face it finds, in image pixels (x * width, y * height, z * width: MediaPipe's
z has the scale of x), to an ``.npz``. ``scripts/compare_mediapipe.py`` then fits head poses
to them with dms's own Procrustes and compares them with dms's pipeline, face for face.

Not a dms dependency: run it in the throwaway venv of ``scripts/bench_mediapipe.py``::

    /tmp/mp/bin/python scripts/mediapipe_landmarks.py ../shared/data/aflw2000-dev \
        --out /tmp/mp_aflw2000_dev.npz [--refine]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import mediapipe as mp
import numpy as np


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folder", help="a folder of *.jpg images")
    p.add_argument("--out", required=True, help="output .npz")
    p.add_argument("--refine", action="store_true",
                   help="the attention mesh (refine_landmarks=True): MediaPipe's default graph")
    args = p.parse_args()
    files = sorted(Path(args.folder).glob("*.jpg"))
    if not files:
        print(f"{args.folder}: no *.jpg images", file=sys.stderr)
        return 2
    mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1,
                                           refine_landmarks=args.refine)
    names, found, points = [], [], []
    for path in files:
        bgr = cv2.imread(str(path))
        if bgr is None:
            print(f"{path}: not a readable image", file=sys.stderr)
            return 2
        h, w = bgr.shape[:2]
        res = mesh.process(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        pts = np.zeros((468, 3), np.float32)
        ok = res.multi_face_landmarks is not None
        if ok:
            lm = res.multi_face_landmarks[0].landmark
            pts = np.array([[q.x * w, q.y * h, q.z * w] for q in lm[:468]], np.float32)
        names.append(path.name)
        found.append(ok)
        points.append(pts)
    np.savez_compressed(args.out, names=np.array(names), found=np.array(found),
                        points_px=np.stack(points), refine=np.array(args.refine),
                        version=np.array(mp.__version__))
    print(json.dumps({"images": len(files), "found": int(sum(found)), "out": args.out,
                      "mediapipe": mp.__version__, "refine": args.refine}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
