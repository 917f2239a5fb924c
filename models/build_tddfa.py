#!/usr/bin/env python3
"""Build ``head_pose_tddfa_mb05.onnx`` (manifest name ``tddfa_mb05``) from the 3DDFA_V2 files.

Source: ``../shared/models/3ddfa_v2/`` (3DDFA_V2 MobileNet-0.5, 120 x 120; MIT code, weights
trained on 300W-LP: research / non-commercial). The network is dms's own implementation
(:mod:`dms.train.tddfa_net`) loaded with the checkpoint's weights, exported with the dms
head-pose contract (input RGB ImageNet mean/std on the ``tddfa`` crop, first output
``rotation_matrix``; also ``params`` and ``landmarks``), and checked against PyTorch on real
crops. Needs the training extra (torch, onnx)::

    python models/build_tddfa.py                  # writes models/head_pose_tddfa_mb05.onnx
    python models/build_tddfa.py --check          # rebuilds into a temp dir, compares bytes

The weights are stored as float16 (half the file) and widened to float32 by ``Cast`` nodes that
onnxruntime folds when it loads the model (``dms.train.export.store_fp16``), so CPU speed is
that of float32.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_SRC = HERE.parent.parent / "shared" / "models" / "3ddfa_v2"
OUT_NAME = "head_pose_tddfa_mb05.onnx"


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build(src: Path, out: Path) -> None:
    from dms.train.export import check_onnx, export_onnx, store_fp16
    from dms.train.tddfa_net import TDDFA_SIZE_PX, build_pose_net

    net = build_pose_net(src / "mb05_120x120.pth", src / "param_mean_std_62d_120x120.pkl")
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        export_onnx(net, fp32, TDDFA_SIZE_PX)
        check = check_onnx(fp32, net)
        print(f"PyTorch vs onnxruntime (float32): matrix {check.max_abs_diff:.2e}, "
              f"angles {check.max_angle_diff_deg:.2e} deg on {check.faces} crops")
        store_fp16(fp32, out, keep_fp32=("param_", "fc_param"))
    check = check_onnx(out, net)
    print(f"PyTorch vs onnxruntime (float16 storage): matrix {check.max_abs_diff:.2e}, "
          f"angles {check.max_angle_diff_deg:.3f} deg on {check.faces} crops")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", type=Path, default=DEFAULT_SRC, help="the 3ddfa_v2 folder")
    ap.add_argument("--out", type=Path, default=HERE, help="output folder")
    ap.add_argument("--check", action="store_true",
                    help="rebuild into a temp folder and compare with the shipped file")
    args = ap.parse_args()
    from dms.errors import DmsError

    try:
        if args.check:
            with tempfile.TemporaryDirectory() as tmp:
                fresh = Path(tmp) / OUT_NAME
                build(args.src, fresh)
                shipped = args.out / OUT_NAME
                same = shipped.is_file() and fresh.read_bytes() == shipped.read_bytes()
                print(f"{shipped}: {'identical' if same else 'DIFFERS'} "
                      f"(rebuilt sha256 {sha256_of(fresh)})")
                return 0 if same else 1
        out = args.out / OUT_NAME
        build(args.src, out)
        print(f"{out}: sha256 {sha256_of(out)}, {out.stat().st_size} bytes")
    except DmsError as exc:
        print(f"build_tddfa: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
