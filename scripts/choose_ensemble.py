#!/usr/bin/env python3
"""How the ensemble teacher's weights were chosen: on exact labels, never on AFLW2000.

Renders of held-out (``val`` split) faces-aflw photos, lifted to 3-D and turned
(``dms.train.rendered``; built when missing), carry the exact rotation. Both teachers read each
render from its box: 3DDFA_V2 (``tddfa_mb05``, flip-averaged) and the landmark path (the
embedded default, flip-averaged); the script prints the mean MAE (pitch / yaw / roll averaged,
per |yaw| bin of the label) of each teacher and of their chordal mean for a grid of landmark
shares, and the share with the lowest overall figure (``dms.train.ensemble.LANDMARK_WEIGHT``)::

    python scripts/choose_ensemble.py [--renders runs/renders/tddfa_val_800.npz] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BINS = ((0.0, 30.0), (30.0, 60.0), (60.0, 99.0))


def errors(pred: list[np.ndarray], gt: np.ndarray) -> np.ndarray:
    from dms.geometry import euler_from_aflw_matrix

    e = np.array([euler_from_aflw_matrix(m) for m in pred]) - gt
    return np.abs((e + 180.0) % 360.0 - 180.0)


def summary(err: np.ndarray, gt: np.ndarray) -> dict[str, float]:
    yaw = np.abs(gt[:, 1])
    out = {"all": round(float(err.mean()), 2)}
    for lo, hi in BINS:
        m = (yaw >= lo) & (yaw < hi)
        out[f"{lo:.0f}-{hi:.0f}"] = round(float(err[m].mean()), 2) if m.any() else float("nan")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--renders", type=Path, default=ROOT / "runs/renders/tddfa_val_800.npz")
    ap.add_argument("--images", default="../shared/data/faces-aflw")
    ap.add_argument("--labels", default="runs/data/faces_aflw_labels.jsonl")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from dms.geometry import euler_from_aflw_matrix, mean_rotation
    from dms.paths import models_dir
    from dms.train.student import StudentConfig, render_faces
    from dms.train.teachers import EstimatorTeacher, FlipAveragedTeacher, OnnxRotationTeacher
    from dms.vision.landmark_pose import LandmarkHeadPose
    from dms.vision.runtime import RuntimeSettings

    cfg = StudentConfig(images=args.images, landmark_labels=args.labels)
    count = 0 if args.renders.is_file() else 800
    faces = render_faces(args.renders, count=count, photos=150, cfg=cfg, seed=1, split="val")
    a = FlipAveragedTeacher(OnnxRotationTeacher(models_dir() / "head_pose_tddfa_mb05.onnx"))
    b = EstimatorTeacher(LandmarkHeadPose.from_files(
        models_dir() / "face_landmark.onnx",
        runtime=RuntimeSettings(providers=("cpu",), intra_op_threads=1, inter_op_threads=1)))
    A, B = [], []
    for img, box in zip(faces.images, faces.boxes, strict=True):
        A.append(a.predict([img], [tuple(box)]).rotations[0])
        B.append(b.predict([img], [tuple(box)]).rotations[0])
    gt = np.array([euler_from_aflw_matrix(m) for m in faces.M])
    ok = (np.abs(gt) <= 99.0).all(axis=1)
    gt = gt[ok]
    A = [m for m, k in zip(A, ok, strict=True) if k]
    B = [m for m, k in zip(B, ok, strict=True) if k]
    rows = {"tddfa_mb05 (flip)": summary(errors(A, gt), gt),
            "landmark path": summary(errors(B, gt), gt)}
    best = (float("inf"), 0.0)
    for w in (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5):
        share = np.array([1.0 - w, w])
        ens = [mean_rotation(np.stack([x, y]), share) for x, y in zip(A, B, strict=True)]
        s = summary(errors(ens, gt), gt)
        rows[f"mean, landmark share {w:.2f}"] = s
        best = min(best, (s["all"], w))
    if args.json:
        print(json.dumps({"renders": int(ok.sum()), "rows": rows, "chosen": best[1]}, indent=1))
        return 0
    print(f"{int(ok.sum())} renders of val photos, mean MAE (deg) overall and per |yaw| bin")
    print(f"{'teacher':32s} {'all':>6s} " + " ".join(f"{lo:.0f}-{hi:.0f}".rjust(6)
                                                   for lo, hi in BINS))
    for name, s in rows.items():
        print(f"{name:32s} " + " ".join(f"{v:6.2f}" for v in s.values()))
    print(f"lowest overall: landmark share {best[1]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
