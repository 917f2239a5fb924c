"""``dms replay``: run the driver-state engine over recorded poses (or a video) and print the
events as JSON lines on stdout, nothing else.

    dms replay --poses FILE.csv [--settings FILE.toml ...] [--plot timeline.png]
    dms replay VIDEO [--detector D] [--pose-model M] [--out-video OUT.mp4] [--plot P.png]

``--config FILE`` takes the configuration's ``[engine]`` and ``[vision]`` settings, so a video
replays exactly as ``dms run --source VIDEO --config FILE`` runs (the same per-frame step). It
publishes nothing unless asked: with ``--mqtt HOST:PORT``, or ``--publish`` (the config's
``[mqtt]`` and state directory), the events go through exactly the path ``dms run`` uses
(durable outbox, QoS 1), so recorded drives can be re-published; before exiting it waits up
to ``--drain-timeout-s`` for the outbox, and whatever is left is delivered by the next process
using the same state directory. Without them the service's outbox is never touched.

Both end with a one-line summary on stderr (frames, face found, alerts raised and delivered,
what the outbox still holds, the buzzer's raise-to-sound delay); a video also shows a
progress bar there; stdout carries only the JSON lines. The events go through exactly the
outputs ``dms run`` uses (:meth:`dms.outputs.routing.AlertOutputs.handle`): the log, the
buzzer of the config's ``[buzzer]`` (none by default), the telemetry and, when publishing,
the durable outbox. dms's own annotated videos are refused (their overlays cover the face):
replay the clean clip.

The poses CSV has a header row with columns ``t,yaw,pitch,roll`` (seconds, degrees, AFLW2000
convention: pitch < 0 is head down) and optionally ``face`` (0/1; when 0 the pose fields are
empty), ``confidence``, ``speed_kmh``, ``steering_deg``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from dms.errors import InputError
from dms.json_safe import json_line
from dms.replay import iter_poses_csv, load_settings_files, replay_poses

__all__ = ["load_settings_files", "iter_poses_csv", "register", "run"]


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "replay", help="run the driver-state engine over a poses CSV or a video",
        description="Print the engine's events as JSON lines on stdout.")
    p.add_argument("video", nargs="?", metavar="VIDEO",
                   help="video file or camera source (full pipeline)")
    p.add_argument("--poses", type=Path, metavar="FILE.csv",
                   help="CSV with t,yaw,pitch,roll[,face,confidence,speed_kmh,steering_deg]")
    p.add_argument("--settings", type=Path, action="append", default=[], metavar="FILE.toml",
                   help="TOML file with an [engine] table (repeat to layer, e.g. a mount "
                   "profile from calibration/ and then your config)")
    p.add_argument("--detector", default=None, help="face detector (video only)")
    p.add_argument("--pose-model", default=None, help="head-pose model (video only)")
    p.add_argument("--out-video", type=Path, default=None, metavar="PATH",
                   help="write an annotated video (video only)")
    p.add_argument("--plot", type=Path, default=None, metavar="PATH",
                   help="write a timeline plot (PNG) of the relative pose, zones and events")
    p.add_argument("--config", type=Path, default=None, metavar="FILE.toml",
                   help="dms configuration: its [engine] and [vision] settings (and, with "
                   "--publish, its [mqtt] and state directory)")
    p.add_argument("--publish", action="store_true",
                   help="publish the events like `dms run` through the config's [mqtt] and "
                   "state directory (never done without this or --mqtt)")
    p.add_argument("--quiet", action="store_true", help="video: no progress bar or summary")
    p.add_argument("--mqtt", default=None, metavar="HOST:PORT",
                   help="publish the events to this broker (durable outbox, as `dms run`)")
    p.add_argument("--drain-timeout-s", type=float, default=None, metavar="S",
                   help="wait this long for the outbox before exiting (default: the config's "
                   "service.stop_drain_timeout_s)")
    p.set_defaults(func=run)


def _print_event(record: dict[str, Any]) -> None:
    sys.stdout.write(json_line(record) + "\n")
    sys.stdout.flush()


def run(args: argparse.Namespace) -> int:
    from dms.config import load_config, state_dir
    from dms.outputs.buzzer import BuzzerThread, open_buzzer
    from dms.outputs.routing import AlertOutputs, open_mqtt, summary_line

    if (args.poses is None) == (args.video is None):
        raise InputError("give either --poses FILE.csv or a VIDEO, not both or neither")
    if args.publish and args.config is None and not args.mqtt:
        raise InputError("--publish needs --config FILE (its [mqtt]) or --mqtt HOST:PORT")
    if args.poses is not None and args.out_video is not None:
        raise InputError("--out-video needs a VIDEO, not --poses")
    cfg = load_config(args.config)
    settings = (cfg.engine if args.config is not None and not args.settings
                else load_settings_files(args.settings))
    comm = open_mqtt(cfg, state_dir(cfg), args.mqtt) if args.mqtt or args.publish else None
    buzzer = open_buzzer(cfg.buzzer)
    buzzer_thread = BuzzerThread(buzzer).start()
    outputs = AlertOutputs(comm, buzzer, on_event=_print_event)
    drain_s = (args.drain_timeout_s if args.drain_timeout_s is not None
               else cfg.service.stop_drain_timeout_s)
    res = None
    try:
        if args.poses is not None:
            res = replay_poses(iter_poses_csv(args.poses), settings, outputs,
                               keep_samples=bool(args.plot))
        else:
            res = _replay_video(args, cfg, settings, outputs)
    finally:
        buzzer_thread.stop()
        drained = outputs.close(drain_s)
        buzzer.close()
        if comm is not None and not drained:
            print(f"dms replay: outbox not drained within {drain_s:g} s; the next dms process "
                  "with the same state directory delivers the rest", file=sys.stderr)
    if not args.quiet:
        print(f"dms replay: {_calibration(res.calibrated_at_s)}; "
              f"{summary_line(res.frames, res.faces, outputs, buzzer.sound_delays_s())}",
              file=sys.stderr)
    if args.plot is not None:
        from dms.viz import plot_timeline

        plot_timeline(res.samples, res.events, settings.zones, args.plot, res.calibrated_at_s,
                      res.eye_samples, traces=res.traces)
    return 0


def _calibration(at_s: float | None) -> str:
    return ("neutral never learned (the face was not steady long enough)" if at_s is None
            else f"neutral learned at {at_s:.1f} s")


def _replay_video(args: argparse.Namespace, cfg: Any, settings: Any, outputs: Any) -> Any:
    """A video replay, with a progress bar on stderr."""
    from tqdm import tqdm

    from dms.capture import video_frame_count
    from dms.replay import replay_video

    total = video_frame_count(args.video)
    bar = tqdm(total=total or None, desc="replay", unit="frame", file=sys.stderr,
               leave=False, disable=args.quiet)
    try:
        return replay_video(args.video, settings, outputs, vision=cfg.vision,
                            detector=args.detector, pose_model=args.pose_model,
                            out_video=args.out_video, on_frame=lambda n: bar.update(1))
    finally:
        bar.close()
