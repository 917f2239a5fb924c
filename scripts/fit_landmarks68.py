#!/usr/bin/env python3
"""Fits the constants of :mod:`dms.vision.landmarks68` (a CNN tracking on its own 68 landmarks)
from the ensemble pseudo-labels of ``faces-aflw``, **train split only**:

* the face box from the 68 landmarks (``BOX_RULE``): the AFLW-convention box the students
  were trained on against the extent of the 3DDFA teacher's 68 landmarks, its size and centre
  as ``c0 + c2 sin(yaw)^2`` (the ear lobes of AFLW's box and the jaw line of the 68 points
  part with the turn), fitted robustly;
* ``MEAN_SHAPE``, the 68 points in 3-D: alternating least squares of
  ``x = s P R S + t`` over the photos (``x`` the teacher's landmarks, ``R`` the ensemble's
  rotation, ``P`` the camera's first two axes with y up, ``s`` and ``t`` per photo), unit RMS
  radius.

The val split is reported (its own box rule, the shape's residual and how far a fit of the
teacher's landmarks is from the ensemble's rotation). ::

    .venv/bin/python scripts/fit_landmarks68.py [runs/data/faces_aflw_ensemble.jsonl] [--write]

``--write`` puts the constants into ``dms/vision/landmarks68.py`` (between its markers);
without it they are printed. The labels file is built by ``dms train student`` (or
``dms.train.ensemble``).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np

MODULE = Path(__file__).resolve().parent.parent / "dms" / "vision" / "landmarks68.py"
P_YUP = np.array([[1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # camera x right, y up -> image x, y


def read(path: str, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(landmarks N x 68 x 2, head->camera rotations N x 3 x 3, boxes N x 4) of ``split``."""
    xs, rs, bs = [], [], []
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            if r["split"] != split:
                continue
            xs.append(r["landmarks68"])
            rs.append(np.asarray(r["M"], np.float64).reshape(3, 3).T)
            bs.append(r["box"])
    return np.asarray(xs, np.float64), np.asarray(rs), np.asarray(bs, np.float64)


def box_map(x: np.ndarray, rot: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """``BOX_RULE``: rows (scale, shift x, shift y), columns (c0, c2) of ``c0 + c2 *
    sin(yaw)^2`` - the box's mean side over the landmark extent's mean side, and the box centre
    minus the extent's centre over that side - fitted robustly (least squares, then again
    without the points more than 3 median absolute deviations off)."""
    from dms import geometry

    lo, hi = x.min(axis=1), x.max(axis=1)
    side = 0.5 * (hi - lo).sum(axis=1)
    m = 0.5 * ((boxes[:, 2] - boxes[:, 0]) + (boxes[:, 3] - boxes[:, 1]))
    shift = (0.5 * (boxes[:, :2] + boxes[:, 2:]) - 0.5 * (lo + hi)) / side[:, None]
    yaw = np.radians([geometry.euler_from_rotation(r)[1] for r in rot])
    design = np.stack([np.ones_like(yaw), np.sin(yaw) ** 2], axis=1)
    rule = []
    for v in (m / side, shift[:, 0], shift[:, 1]):
        keep = np.ones(len(v), bool)
        for _ in range(2):
            coef = np.linalg.lstsq(design[keep], v[keep], rcond=None)[0]
            res = v - design @ coef
            keep = np.abs(res) <= 3.0 * 1.4826 * np.median(np.abs(res - np.median(res)))
        rule.append(coef)
    return np.asarray(rule)


def fit_shape(x: np.ndarray, rot: np.ndarray, iterations: int = 30) -> tuple[np.ndarray, float]:
    """(68 x 3 mean shape, centred, unit RMS radius; its :func:`residual`)."""
    xc = x - x.mean(axis=1, keepdims=True)
    pr = np.einsum("ij,njk->nik", P_YUP, rot)  # N x 2 x 3
    shape = np.zeros((68, 3))
    shape[:, :2] = (xc / np.linalg.norm(xc, axis=(1, 2), keepdims=True)).mean(axis=0)
    shape[:, 1] *= -1.0  # image y down, the camera's up
    for _ in range(iterations):
        y = np.einsum("nij,kj->nki", pr, shape)
        s = (y * xc).sum(axis=(1, 2)) / (y * y).sum(axis=(1, 2))
        a = np.einsum("n,nji,njk->ik", s ** 2, pr, pr)
        b = np.einsum("n,nji,nkj->ki", s, pr, xc)
        shape = np.linalg.solve(a, b.T).T
        shape -= shape.mean(axis=0)
    shape /= np.sqrt((shape ** 2).sum(axis=1).mean())
    return shape, residual(x, rot, shape)


def residual(x: np.ndarray, rot: np.ndarray, shape: np.ndarray) -> float:
    """Median over the photos of the mean point distance between the landmarks and the best
    scale and shift of the shape's projection, in units of the shape (its RMS radius is 1)."""
    xc = x - x.mean(axis=1, keepdims=True)
    y = np.einsum("nij,kj->nki", np.einsum("ij,njk->nik", P_YUP, rot), shape)
    s = (y * xc).sum(axis=(1, 2)) / (y * y).sum(axis=(1, 2))
    d = np.linalg.norm(xc - s[:, None, None] * y, axis=2).mean(axis=1)
    return float(np.median(d / np.abs(s)))


def constants(rule: np.ndarray, shape: np.ndarray) -> str:
    box = ",\n".join(f"    ({c0: .4f}, {c2: .4f})" for c0, c2 in rule)
    rows = ",\n".join(f"    ({p[0]: .4f}, {p[1]: .4f}, {p[2]: .4f})" for p in shape)
    return (f"BOX_RULE = np.array([\n{box},\n])\n"
            f"MEAN_SHAPE = np.array([\n{rows},\n])\n")


def main(argv: list[str]) -> int:
    args = [a for a in argv if not a.startswith("--")]
    path = args[0] if args else "runs/data/faces_aflw_ensemble.jsonl"
    if not Path(path).is_file():
        print(f"{path}: no ensemble labels (dms train student builds them)", file=sys.stderr)
        return 2
    x, rot, boxes = read(path, "train")
    rule = box_map(x, rot, boxes)
    shape, res = fit_shape(x, rot)
    vx, vrot, vboxes = read(path, "val")
    vrule = box_map(vx, vrot, vboxes)
    sys.path.insert(0, str(MODULE.parent.parent.parent))
    from dms import geometry
    from dms.vision import landmarks68

    spread = [geometry.geodesic_deg(landmarks68.rotation_from_landmarks68(p, shape), r)
              for p, r in zip(vx, vrot, strict=True)]
    print(f"train: {len(x)} photos; box rule {rule.round(4).tolist()}; "
          f"shape residual {res:.4f}", file=sys.stderr)
    print(f"val: {len(vx)} photos; box rule {vrule.round(4).tolist()}; "
          f"shape residual {residual(vx, vrot, shape):.4f}; teacher landmarks' fit vs the "
          f"ensemble, p50/p95 {np.percentile(spread, 50):.2f}/{np.percentile(spread, 95):.2f}"
          " deg", file=sys.stderr)
    block = constants(rule, shape)
    if "--write" not in argv:
        print(block, end="")
        return 0
    text = MODULE.read_text()
    new, n = re.subn(r"(# <fitted>\n).*?(# </fitted>\n)", lambda m: m[1] + block + m[2], text,
                     flags=re.S)
    if n != 1:
        print(f"{MODULE}: no '# <fitted>' ... '# </fitted>' block", file=sys.stderr)
        return 2
    MODULE.write_text(new)
    print(f"wrote {MODULE}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
