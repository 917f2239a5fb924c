"""Options shared by the perception commands (pose, eval, bench, replay)."""

from __future__ import annotations

import argparse


def add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--detector",
        default=None,
        metavar="NAME|PATH",
        help="face detector: manifest name or ONNX path (default: the embedded BlazeFace)",
    )
    p.add_argument(
        "--pose-model",
        default=None,
        metavar="NAME|PATH",
        help="head-pose model: manifest name or ONNX path (default: embedded FaceMesh)",
    )
    p.add_argument(
        "--pose-output",
        default="",
        metavar="FORMAT",
        help="output format of a CNN head-pose ONNX when it cannot be read from the graph, "
        "e.g. euler:yaw,pitch,roll",
    )
    p.add_argument(
        "--provider",
        action="append",
        choices=["tensorrt", "cuda", "cpu"],
        help="onnxruntime provider, in order of preference (repeat; default: cpu)",
    )
    p.add_argument("--threads", type=int, default=0, help="intra-op threads (0: onnxruntime's)")


def build_models(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """(detector, pose estimator) from the shared options."""
    from dms.vision.detect import DetectorSettings, create_detector
    from dms.vision.headpose import PoseModelSettings, create_pose_estimator
    from dms.vision.runtime import RuntimeSettings

    runtime = RuntimeSettings(
        providers=tuple(args.provider or ["cpu"]), intra_op_threads=args.threads
    )
    det_settings = DetectorSettings(**({"model": args.detector} if args.detector else {}))
    pose_settings = PoseModelSettings(
        **({"model": args.pose_model} if args.pose_model else {}), output=args.pose_output
    )
    return create_detector(det_settings, runtime), create_pose_estimator(pose_settings, runtime)
