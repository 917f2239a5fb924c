"""Options shared by the perception commands (pose, eval, bench, replay)."""

from __future__ import annotations

import argparse
from dataclasses import replace


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
        help="head-pose model: manifest name or ONNX path (default: student_tddfa; "
        "facemesh = the Apache-2.0 landmark path)",
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
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads (0: onnxruntime's)")
    p.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="take the [vision.detector], [vision.pose] and [vision.runtime] settings from "
        "this dms TOML (the options above override it)",
    )


def build_eyes(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The eye measurer on the runtime the shared options choose (None with --no-eyes or
    ``[vision.eyes] enabled = false``)."""
    from dms.vision.eyes import EyeMeasurer
    from dms.vision.settings import EyeSettings

    if getattr(args, "no_eyes", False):
        return None
    runtime, _, _ = runtime_and_settings(args)
    eye_settings = EyeSettings()
    if getattr(args, "config", None):
        from dms.config import load_config

        eye_settings = load_config(args.config).vision.eyes
    return EyeMeasurer.from_settings(eye_settings, runtime) if eye_settings.enabled else None


def tracking_settings(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """The ``[vision.tracking]`` table of --config (the defaults without one)."""
    from dms.vision.settings import TrackingSettings

    if getattr(args, "config", None):
        from dms.config import load_config

        return load_config(args.config).vision.tracking
    return TrackingSettings()


def runtime_and_settings(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """(runtime, detector settings, pose settings) from --config, --provider and --threads."""
    from dms.vision.detect import DetectorSettings
    from dms.vision.headpose import PoseModelSettings
    from dms.vision.runtime import RuntimeSettings

    if getattr(args, "config", None):
        from dms.config import load_config

        vision = load_config(args.config).vision
        runtime, det_settings, pose_settings = vision.runtime, vision.detector, vision.pose
    else:
        runtime = RuntimeSettings(providers=("cpu",))
        det_settings, pose_settings = DetectorSettings(), PoseModelSettings()
    if args.provider:
        runtime = replace(runtime, providers=tuple(args.provider))
    if args.threads is not None:
        runtime = replace(runtime, intra_op_threads=args.threads)
    return runtime, det_settings, pose_settings


def build_models(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """(detector, pose estimator) from the shared options."""
    from dms.vision.detect import create_detector
    from dms.vision.headpose import create_pose_estimator

    runtime, det_settings, pose_settings = runtime_and_settings(args)
    if args.detector:
        det_settings = replace(det_settings, model=args.detector)
    if args.pose_model:
        pose_settings = replace(pose_settings, model=args.pose_model)
    if args.pose_output:
        pose_settings = replace(pose_settings, output=args.pose_output)
    return create_detector(det_settings, runtime), create_pose_estimator(pose_settings, runtime)
