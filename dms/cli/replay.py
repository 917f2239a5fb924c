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

A video shows a progress bar on stderr and ends with a one-line summary there; stdout carries
only the JSON lines. dms's own annotated videos are refused (their overlays cover the face):
replay the clean clip.

The poses CSV has a header row with columns ``t,yaw,pitch,roll`` (seconds, degrees, AFLW2000
convention: pitch < 0 is head down) and optionally ``face`` (0/1; when 0 the pose fields are
empty), ``confidence``, ``speed_kmh``, ``steering_deg``.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections.abc import Generator, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from dms.errors import InputError
from dms.json_safe import json_line

REQUIRED_COLUMNS = ("t", "yaw", "pitch", "roll")
OPTIONAL_COLUMNS = ("face", "confidence", "speed_kmh", "steering_deg", "eye_open",
                    "gaze_yaw_deg", "gaze_pitch_deg", "mouth_open", "sunglasses")
# eye_open 0 (shut) .. 1 (fully open) reads as openness OPEN_EYE_RATIO x eye_open, as a
# perfect measurement of the synthetic renders would (dms.synth.script.truth_eyes); a file
# with an eye_open column measured the eyes: an empty cell, or sunglasses 1, is a frame whose
# eyes could not be measured. A file without it runs the head-only rules.
OPEN_EYE_RATIO = 0.3


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


def load_settings_files(paths: Sequence[Path]) -> Any:
    """EngineSettings from the ``[engine]`` tables of ``paths``, later files winning."""
    from dms.engine.settings import load_engine_settings, merge_tables
    from dms.settings import read_toml

    table: dict[str, Any] = {}
    for path in paths:
        doc = read_toml(path, "settings file", InputError)
        if "engine" not in doc:
            raise InputError(f"{path}: no [engine] table")
        table = merge_tables(table, doc["engine"])
    where = "engine" if not paths else f"{paths[-1]}: engine"
    return load_engine_settings(table, where)


def _number(value: str, column: str, where: str) -> float:
    from dms.settings import parse_number

    return parse_number(value, column, where, InputError)


def read_poses_csv(path: Path) -> list[Any]:
    """All observations of a poses CSV (see :func:`iter_poses_csv`)."""
    return list(iter_poses_csv(path))


def iter_poses_csv(path: Path) -> Generator[Any, None, None]:
    """Observations from a poses CSV, streamed row by row (a 2-million-row file starts
    replaying at once, in constant memory); errors name the file and the line. A UTF-8 byte
    order mark (spreadsheet exports) is accepted."""
    try:
        f = open(path, encoding="utf-8-sig", newline="")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        raise InputError(f"{path}: poses file not found") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read poses file ({exc})") from None
    with f:
        try:
            yield from _parse_poses(path, f)
        except UnicodeDecodeError as exc:
            raise InputError(f"{path}: not UTF-8 text ({exc.reason})") from None


def _content_lines(lines: Iterable[str]) -> Iterator[tuple[int, str]]:
    for n, line in enumerate(lines, start=1):
        if line.strip() and not line.lstrip().startswith("#"):
            yield n, line.rstrip("\r\n")


def _parse_header(path: Path, rows: Iterator[tuple[int, str]]) -> list[str]:
    first = next(rows, None)
    if first is None:
        raise InputError(f"{path}: empty file (expected a header row t,yaw,pitch,roll)")
    header_line, header_text = first
    header = [h.strip() for h in next(csv.reader([header_text]))]
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    unknown = [c for c in header if c not in REQUIRED_COLUMNS + OPTIONAL_COLUMNS]
    if missing or unknown:
        what = (f"missing column(s) {', '.join(missing)}" if missing
                else f"unknown column(s) {', '.join(unknown)}")
        raise InputError(f"{path}:{header_line}: header: {what} (expected "
                         f"{','.join(REQUIRED_COLUMNS)}[,{','.join(OPTIONAL_COLUMNS)}])")
    return header


def _parse_poses(path: Path, lines: Iterable[str]) -> Iterator[Any]:
    rows = _content_lines(lines)
    header = _parse_header(path, rows)
    col = {name: i for i, name in enumerate(header)}
    last_t: float | None = None
    for n, line in rows:
        where = f"{path}:{n}"
        row = [c.strip() for c in next(csv.reader([line]))]
        if len(row) != len(header):
            raise InputError(f"{where}: {len(row)} fields, header has {len(header)}")
        obs = _observation({name: row[i] for name, i in col.items()}, where)
        if last_t is not None and obs.t_s <= last_t:
            raise InputError(f"{where}: t {obs.t_s:g} does not increase (previous {last_t:g})")
        last_t = obs.t_s
        yield obs


def _observation(cells: dict[str, str], where: str) -> Any:
    from dms.geometry import rotation_from_euler
    from dms.types import HeadPose, Observation

    def get(name: str) -> str:
        return cells.get(name, "")

    t = _number(get("t"), "t", where)
    face_text = get("face")
    if face_text not in ("", "0", "1"):
        raise InputError(f"{where}: face {face_text!r} is not 0 or 1")
    angles = [get(c) for c in ("yaw", "pitch", "roll")]
    face = face_text == "1" if face_text else any(angles)
    pose = None
    if face:
        if not all(angles):
            raise InputError(f"{where}: face present but yaw, pitch or roll is empty")
        yaw, pitch, roll = (_number(a, c, where) for a, c in
                            zip(angles, ("yaw", "pitch", "roll"), strict=True))
        conf = _number(get("confidence"), "confidence", where) if get("confidence") else 1.0
        if not 0.0 <= conf <= 1.0:
            raise InputError(f"{where}: confidence {conf:g} is outside [0, 1]")
        pose = HeadPose(rotation_from_euler(pitch, yaw, roll), pitch, yaw, roll, conf)
    speed = _number(get("speed_kmh"), "speed_kmh", where) if get("speed_kmh") else None
    steer = _number(get("steering_deg"), "steering_deg", where) if get("steering_deg") else None
    eyes = _eyes(cells, where) if pose is not None and "eye_open" in cells else None
    return Observation(t_s=t, pose=pose, speed_kmh=speed, steering_deg=steer, eyes=eyes)


def _eyes(cells: dict[str, str], where: str) -> Any:
    """The eye columns of a row (see OPTIONAL_COLUMNS) as an EyeObservation."""
    from dms.types import EyeObservation

    def opt(name: str) -> float | None:
        text = cells.get(name, "")
        return _number(text, name, where) if text else None

    sunglasses = cells.get("sunglasses", "")
    if sunglasses not in ("", "0", "1"):
        raise InputError(f"{where}: sunglasses {sunglasses!r} is not 0 or 1")
    mouth, eye_open = opt("mouth_open"), opt("eye_open")
    if eye_open is None or sunglasses == "1":
        return EyeObservation(None, None, 0.0, mouth_open=mouth)
    if not 0.0 <= eye_open <= 1.0:
        raise InputError(f"{where}: eye_open {eye_open:g} is outside [0, 1]")
    o = OPEN_EYE_RATIO * eye_open
    return EyeObservation(o, o, 1.0, opt("gaze_yaw_deg"), opt("gaze_pitch_deg"), mouth)


def replay(observations: Iterable[Any], settings: Any, out: Any,
           keep_samples: bool = False, outputs: Any = None,
           calibration: dict[str, float] | None = None) -> tuple[list[Any], list[Any]]:
    """Feed observations to a fresh Engine; write events as JSON lines to ``out``.

    Returns (samples, events) for plotting: samples are (t, yaw, pitch, roll) relative to
    neutral, None angles when no face. ``calibration`` (a dict) receives ``at_s``, the time
    the neutral pose became known, when it did."""
    from dms.engine.engine import Engine

    engine = Engine(settings)
    samples: list[tuple[float, float | None, float | None, float | None]] = []
    events: list[Any] = []
    for obs in observations:
        result = engine.step(obs)
        for event in result.events:
            out.write(json_line(event.to_dict()) + "\n")
            if outputs is not None:
                outputs.publish_event(event.to_dict())
        events.extend(result.events)
        if calibration is not None and "at_s" not in calibration and result.state.calibrated:
            calibration["at_s"] = obs.t_s
        if keep_samples:
            r = result.relative
            samples.append((obs.t_s, None, None, None) if r is None
                           else (obs.t_s, r.yaw_deg, r.pitch_deg, r.roll_deg))
    out.flush()
    return samples, events


def _print_event(record: dict[str, Any]) -> None:
    sys.stdout.write(json_line(record) + "\n")
    sys.stdout.flush()


def run(args: argparse.Namespace) -> int:
    from dms.config import load_config, state_dir
    from dms.outputs.routing import AlertOutputs, open_mqtt

    if (args.poses is None) == (args.video is None):
        raise InputError("give either --poses FILE.csv or a VIDEO, not both or neither")
    if args.publish and args.config is None and not args.mqtt:
        raise InputError("--publish needs --config FILE (its [mqtt]) or --mqtt HOST:PORT")
    cfg = load_config(args.config) if args.config else None
    settings = (cfg.engine if cfg is not None and not args.settings
                else load_settings_files(args.settings))
    comm = None
    if args.mqtt or args.publish:
        cfg = cfg or load_config(None)
        comm = open_mqtt(cfg, state_dir(cfg), args.mqtt)
    outputs = AlertOutputs(comm)
    drain_s = args.drain_timeout_s
    if drain_s is None:
        drain_s = cfg.service.stop_drain_timeout_s if cfg is not None else 3.0
    calibration: dict[str, float] = {}
    eye_samples: list[Any] = []
    try:
        if args.poses is not None:
            if args.out_video is not None:
                raise InputError("--out-video needs a VIDEO, not --poses")
            observations = iter_poses_csv(args.poses)
            samples, events = replay(observations, settings, sys.stdout,
                                     keep_samples=bool(args.plot), outputs=outputs,
                                     calibration=calibration)
        else:
            samples, events, eye_samples = _replay_video(args, cfg, settings, outputs,
                                                         calibration)
    finally:
        drained = outputs.close(drain_s)
        if comm is not None and not drained:
            print(f"dms replay: outbox not drained within {drain_s:g} s; the next dms process "
                  "with the same state directory delivers the rest", file=sys.stderr)
    if args.plot is not None:
        from dms.viz import plot_timeline

        plot_timeline(samples, events, settings.zones, args.plot, calibration.get("at_s"),
                      eye_samples)
    return 0


def _replay_video(args: argparse.Namespace, cfg: Any, settings: Any, outputs: Any,
                  calibration: dict[str, float]) -> tuple[list[Any], list[Any], list[Any]]:
    """(pose samples, events, eye samples) of a video replay."""
    from tqdm import tqdm

    from dms.capture import video_frame_count
    from dms.outputs.routing import AlertOutputs
    from dms.replay import replay_video

    total = video_frame_count(args.video)
    bar = tqdm(total=total or None, desc="replay", unit="frame", file=sys.stderr,
               leave=False, disable=args.quiet)
    printing = AlertOutputs(outputs.comm, on_event=_print_event)
    try:
        rv = replay_video(args.video, settings, printing, vision=None if cfg is None
                          else cfg.vision, detector=args.detector,
                          pose_model=args.pose_model, out_video=args.out_video,
                          on_frame=lambda n: bar.update(1))
    finally:
        bar.close()
    outputs.published += printing.published
    if rv.calibrated_at_s is not None:
        calibration["at_s"] = rv.calibrated_at_s
    if not args.quiet:
        raised = [e for e in rv.events if e.phase.value == "raised"]
        kinds = ", ".join(sorted({f"{e.type.value}/{e.reason.value}" for e in raised}))
        cal = ("never (the face was not steady long enough)" if rv.calibrated_at_s is None
               else f"at {rv.calibrated_at_s:.1f} s")
        print(f"dms replay: {rv.frames} frames, face in {rv.faces / max(rv.frames, 1):.0%}; "
              f"neutral learned {cal}; {len(raised)} alerts raised"
              + (f" ({kinds})" if kinds else ""), file=sys.stderr)
    return rv.samples, rv.events, rv.eye_samples
