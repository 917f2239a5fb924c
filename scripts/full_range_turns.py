#!/usr/bin/env python3
"""Issue 10's full-range check: rendered turns to +-90 deg of yaw, no confident wild pitch/roll.

Renders the two public-domain photos lifted to 3-D (``dms.train.rendered.RenderedHeads``,
random cabin scenes of seed 3, the exact rotation as the label) at yaw -90..90 in 5-deg steps,
pitch -15 / 0 / 10, roll 0 (222 frames), runs a head-pose estimator on each from the render's
face box, and counts the frames whose pitch or roll error exceeds 25 deg while the estimator
reports itself confident (confidence >= 0.5): such a frame would reach the engine as motion.
The target is none. ::

    .venv/bin/python scripts/full_range_turns.py [--pose-model NAME|PATH] [--one-pass]
                                                 [--own-landmarks] [--json]

``--one-pass``: a CNN reads only the crop, not its mirror image too (``[vision.pose.cnn]
flip_average = false``), so its confidence comes from the yaw range alone.
``--own-landmarks``: a CNN with a 68-landmark output as the pipeline reads it without eyes
(``dms.perception.CnnTrackedPose``: one pass on the render's box, one on the box its
landmarks give; confidence also from the agreement of its rotation with its landmarks).
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

CONFIDENT = 0.5
WILD_DEG = 25.0


def main() -> int:
    from dms.geometry import euler_from_aflw_matrix
    from dms.train.rendered import RenderedHeads
    from dms.types import FaceBox
    from dms.vision.headpose import PoseModelSettings, create_pose_estimator
    from dms.vision.settings import CnnPoseSettings

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pose-model", default=PoseModelSettings().model)
    p.add_argument("--one-pass", action="store_true",
                   help="a CNN without its mirrored crop (flip_average = false)")
    p.add_argument("--own-landmarks", action="store_true",
                   help="a CNN with a 68-landmark output read as the pipeline tracks it without "
                   "eyes (one pass, confidence also from its landmarks' agreement)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    cnn = CnnPoseSettings(flip_average=False if args.one_pass else "auto")
    est = create_pose_estimator(PoseModelSettings(model=args.pose_model, cnn=cnn))
    if args.own_landmarks:
        from dms.perception import CnnTrackedPose
        from dms.vision.headpose import CnnHeadPose

        assert isinstance(est, CnnHeadPose), f"{args.pose_model} is not a CNN"
        est = CnnTrackedPose(est)
    heads = RenderedHeads(("astronaut", "grace_hopper"), mirror=False, seed=3)
    rows = []
    index = 0
    for face in range(len(heads.faces)):
        for pitch in (-15.0, 0.0, 10.0):
            for yaw in np.arange(-90.0, 90.1, 5.0):
                r = heads.render(index, pose_deg=(pitch, float(yaw), 0.0), face_index=face)
                index += 1
                truth = np.array(euler_from_aflw_matrix(r.gt))
                pose = est.estimate(r.image, FaceBox(*r.box, score=1.0))
                got = np.array([pose.pitch_deg, pose.yaw_deg, pose.roll_deg])
                err = np.abs(got - truth)
                rows.append((float(yaw), err, pose.confidence))
    confident = [r for r in rows if r[2] >= CONFIDENT]
    wild = [r for r in confident if max(r[1][0], r[1][2]) > WILD_DEG]
    wild_unsure = [r for r in rows if r[2] < CONFIDENT and max(r[1][0], r[1][2]) > WILD_DEG]
    out = {
        "pose_model": args.pose_model, "one_pass": args.one_pass,
        "own_landmarks": args.own_landmarks, "frames": len(rows),
        "confident": len(confident),
        "wild_confident": len(wild),
        "wild_confident_yaw_deg": sorted({abs(r[0]) for r in wild}),
        "wild_reported_unsure": len(wild_unsure),
        "confident_mae_deg": float(np.mean([r[1] for r in confident])) if confident else None,
    }
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
