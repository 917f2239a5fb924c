"""``dms eval --format aflw2000 DIR``: head-pose MAE under the standard protocol.

``dms eval --eyes --format aflw2000 DIR``: the rate of "eyes closed" reads on still faces
(open-eyed in the photo); ``dms eval --eyes --format synth RENDER_DIR``: eye openness error,
closed/open accuracy and gaze error on a ``dms synth render`` clip against its truth."""

from __future__ import annotations

import argparse
import json

from dms.cli._common import add_model_args, build_models, runtime_and_settings, tracking_settings


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="head-pose accuracy on a labelled face set")
    p.add_argument("directory", metavar="DIR")
    p.add_argument("--format", choices=["aflw2000", "synth"], default="aflw2000",
                   help="aflw2000: a labelled face folder; synth: a `dms synth render` folder "
                   "(video.mp4 + poses.csv; --eyes only)")
    p.add_argument("--eyes", action="store_true",
                   help="evaluate the eye measurement instead of the head pose")
    p.add_argument("--closed-ratio", type=float, default=None, metavar="R",
                   help="--eyes on stills: openness below this reads as closed (default 0.1)")
    p.add_argument("--list-closed", action="store_true",
                   help="--eyes on stills: print the files read as closed")
    p.add_argument(
        "--boxes",
        choices=["gt", "detector"],
        default="gt",
        help="face boxes from the labels (gt) or from the face detector",
    )
    p.add_argument("--own-landmarks", action="store_true",
                   help="a CNN with a 68-landmark output, read as the pipeline tracks it "
                   "without eyes ([vision.tracking] cnn_landmarks): once on the box, then on "
                   "the box its own landmarks give")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    add_model_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dms.errors import InputError
    from dms.evaluation import evaluate, read_aflw2000

    if args.eyes:
        return _run_eyes(args)
    if args.format != "aflw2000":
        raise InputError(f"--format {args.format}: head-pose evaluation reads aflw2000 only "
                         "(use `dms synth eval` for renders, or --eyes)")

    faces = read_aflw2000(args.directory)
    detector, estimator = build_models(args)
    if args.own_landmarks:
        estimator = _own_landmarks(args, estimator)
    res = evaluate(faces, estimator, detector if args.boxes == "detector" else None)
    if args.json:
        out = res.as_dict() | {"pose_model": estimator.name, "boxes": args.boxes,
                               "own_landmarks": args.own_landmarks}
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


def _own_landmarks(args: argparse.Namespace, estimator):  # type: ignore[no-untyped-def]
    """``estimator`` tracking on its own landmarks, with the config's agreement settings."""
    from dms.errors import InputError
    from dms.perception import CnnTrackedPose
    from dms.vision.headpose import CnnHeadPose

    if not isinstance(estimator, CnnHeadPose) or estimator.landmark_output is None:
        raise InputError(f"--own-landmarks: the pose model {estimator.name} has no 68-landmark "
                         "output (the tddfa students have one)")
    return CnnTrackedPose.from_settings(estimator, tracking_settings(args))


def _eye_measurer(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    from dms.vision.eyes import EyeMeasurer
    from dms.vision.settings import EyeSettings

    settings = EyeSettings()
    if getattr(args, "config", None):
        from dms.config import load_config

        settings = load_config(args.config).vision.eyes
    return EyeMeasurer.from_settings(settings)


def _run_eyes(args: argparse.Namespace) -> int:
    from dms.errors import InputError
    from dms.evaluation import (
        CLOSED_RATIO,
        evaluate_eyes_render,
        evaluate_eyes_stills,
        read_aflw2000,
    )

    closed = CLOSED_RATIO if args.closed_ratio is None else args.closed_ratio
    if not 0.0 < closed < 1.0:
        raise InputError(f"--closed-ratio must be in (0, 1), got {closed}")
    detector, estimator = build_models(args)
    measurer = _eye_measurer(args)
    runtime, _, _ = runtime_and_settings(args)  # the landmark pass in front of a CNN
    if args.format == "synth":
        from dms.perception import Perception

        res = evaluate_eyes_render(args.directory, Perception(detector, estimator, eyes=measurer,
                                                              runtime=runtime))
        if args.json:
            print(json.dumps(res.as_dict() | {"pose_model": estimator.name}))
            return 0
        print(f"frames with a face: {res.frames}, eyes measured: {res.measured}, "
              f"median confidence {res.confidence_median:.2f}")
        print(f"open baseline (median openness of open-eyed frames): {res.open_baseline:.3f}")
        print(f"openness error |read/baseline - truth|: {res.openness_mae:.3f} of an open eye")
        print(f"closed/open accuracy: {res.accuracy:.3f} over {res.n_open} open + "
              f"{res.n_closed} closed frames (open read closed {res.open_read_closed}, "
              f"closed read open {res.closed_read_open})")
        print(f"gaze over {res.gaze_n} open-eyed frames: MAE yaw {res.gaze_yaw_mae_deg:.2f} "
              f"pitch {res.gaze_pitch_mae_deg:.2f} deg (bias yaw {res.gaze_yaw_bias_deg:+.2f} "
              f"pitch {res.gaze_pitch_bias_deg:+.2f})")
        print(f"mouth: correlation with the truth {res.mouth_corr:.3f}")
        return 0
    stills = evaluate_eyes_stills(read_aflw2000(args.directory), estimator, measurer, closed,
                                  detector=detector if args.boxes == "detector" else None,
                                  runtime=runtime)
    if args.json:
        print(json.dumps(stills.as_dict() | {"pose_model": estimator.name, "boxes": args.boxes}))
        return 0
    found = "" if args.boxes == "gt" else f" ({stills.not_found} not found by {detector.name})"
    print(f"faces: {stills.n}{found}, eyes measured: {stills.measured}, confident (>= 0.5): "
          f"{stills.confident}")
    print(f"openness median {stills.openness_median:.3f}, 5th percentile "
          f"{stills.openness_p05:.3f}")
    print(f"read closed (openness < {closed:g}): {stills.closed} = {stills.closed_rate:.2%}; "
          f"among confident reads {stills.closed_confident} = "
          f"{stills.closed_rate_confident:.2%}")
    if args.list_closed:
        for name in stills.closed_files:
            print(f"  {name}")
    return 0
