"""Replays: the engine over recorded poses, or the whole product over a recorded video, with
the outputs of ``dms run``.

:func:`replay_poses` feeds a poses file (:func:`iter_poses_csv`, streamed row by row) to the
engine; :func:`replay_video` feeds a video to :class:`dms.monitor.DriverMonitor` (the same
per-frame step as ``dms run``). Both hand every step's result to
:meth:`dms.outputs.routing.AlertOutputs.handle`, the one ``dms run`` uses: the alerts (the
durable outbox when publishing, the log, the printing callback), the buzzer and the telemetry
paths all run in a replay too. Used by ``dms replay``, ``dms demo`` and ``dms calibrate
--poses``. A video replay can write an annotated copy (H.264 MP4 through imageio-ffmpeg's ffmpeg:
:mod:`dms.videofile`), marked by a sidecar ``<video>.dms.json`` so that replaying
the annotated copy (whose overlays would disturb the face detector) is refused with a
pointer to the clean clip.
"""

from __future__ import annotations

import csv
import json
import logging
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dms.errors import InputError

if TYPE_CHECKING:
    from dms.engine.engine import StepResult
    from dms.engine.settings import EngineSettings
    from dms.outputs.routing import AlertOutputs

log = logging.getLogger(__name__)

Sample = tuple[float, float | None, float | None, float | None]
EyeSample = tuple[float, float | None, bool]  # t, openness / driver's baseline, closed
ANNOTATED_MARK = ".dms.json"  # sidecar suffix of an annotated video

REQUIRED_COLUMNS = ("t", "yaw", "pitch", "roll")
OPTIONAL_COLUMNS = ("face", "confidence", "speed_kmh", "steering_deg", "eye_open",
                    "gaze_yaw_deg", "gaze_pitch_deg", "mouth_open", "sunglasses")
# eye_open 0 (shut) .. 1 (fully open) reads as openness OPEN_EYE_RATIO x eye_open, as a
# perfect measurement of the synthetic renders would (dms.synth.script.truth_eyes); a file
# with an eye_open column measured the eyes: an empty cell, or sunglasses 1, is a frame whose
# eyes could not be measured. A file without it runs the head-only rules.
OPEN_EYE_RATIO = 0.3




@dataclass
class Replay:
    """What a replay produced: the events, and (``keep_samples``) the relative pose and the
    eyes over time for the timeline plot."""

    samples: list[Sample] = field(default_factory=list)  # (t, rel yaw, pitch, roll)
    eye_samples: list[EyeSample] = field(default_factory=list)  # (t, open ratio, closed)
    traces: list[Any] = field(default_factory=list)  # dms.viz.FrameTrace per frame
    events: list[Any] = field(default_factory=list)
    frames: int = 0
    faces: int = 0
    calibrated_at_s: float | None = None  # when the neutral became known (None: never)
    video_codec: str | None = None  # of the annotated video written: h264 (or mp4v)

    def add(self, t_s: float, face: bool, result: StepResult, keep_samples: bool) -> None:
        """One step's result."""
        self.events.extend(result.events)
        if self.calibrated_at_s is None and result.state.calibrated:
            self.calibrated_at_s = t_s
        self.frames += 1
        self.faces += face
        if keep_samples:
            r = result.relative
            self.samples.append((t_s, None, None, None) if r is None
                                else (t_s, r.yaw_deg, r.pitch_deg, r.roll_deg))
            eyes = result.state.policy.eyes
            if eyes is not None:
                self.eye_samples.append((t_s, eyes.ratio, eyes.closed))


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


def replay_poses(observations: Iterable[Any], settings: EngineSettings,
                 outputs: AlertOutputs, *, keep_samples: bool = False) -> Replay:
    """Feed observations to a fresh Engine; every step's result goes to ``outputs.handle``
    (alerts, buzzer, telemetry, as in ``dms run``)."""
    from dms.engine.engine import Engine

    engine = Engine(settings)
    res = Replay()
    for obs in observations:
        result = engine.step(obs)
        outputs.handle(result)
        res.add(obs.t_s, obs.pose is not None, result, keep_samples)
    return res


def annotated_source(video: str | Path) -> str | None:
    """The clean clip an annotated video was made from, when ``video`` is one of ours."""
    mark = Path(str(video) + ANNOTATED_MARK)
    if not mark.is_file():
        return None
    try:
        return str(json.loads(mark.read_text(encoding="utf-8")).get("source", ""))
    except (OSError, ValueError):
        return ""


def refuse_annotated(video: str | Path) -> None:
    source = annotated_source(video)
    if source is not None:
        raise InputError(
            f"{video}: this is dms's annotated output (its overlays cover the face and would "
            f"change the result); replay the clean clip instead: {source or 'the original'}")


def replay_video(
    video: str | Path,
    settings: EngineSettings,
    outputs: AlertOutputs,
    *,
    vision: Any = None,
    detector: str | None = None,
    pose_model: str | None = None,
    out_video: Path | None = None,
    on_frame: Callable[[int], None] | None = None,
    on_calibrated: Callable[[float, Any], None] | None = None,
) -> Replay:
    """Replay ``video`` through the per-frame step with engine ``settings`` and the
    ``vision`` settings (``VisionSettings``; None: the defaults), ``detector`` / ``pose_model``
    overriding their models; every step's result goes to ``outputs.handle``."""
    from dms.capture import video_fps, video_frames
    from dms.config import VisionSettings
    from dms.monitor import DriverMonitor
    from dms.videofile import VideoFileWriter
    from dms.viz import FrameTrace, VideoAnnotator

    refuse_annotated(video)
    vision = vision or VisionSettings()
    if detector:
        vision = replace(vision, detector=replace(vision.detector, model=detector))
    if pose_model:
        vision = replace(vision, pose=replace(vision.pose, model=pose_model))
    monitor = DriverMonitor.from_settings(vision, settings)
    res = Replay()
    writer = None
    annotator = VideoAnnotator(settings, panel=True)
    try:
        for frame in video_frames(str(video)):
            step = monitor.step(frame.image, frame.t_s)
            fr, result = step.frame, step.result
            outputs.handle(result)
            calibrated_before = res.calibrated_at_s is not None
            res.add(frame.t_s, fr.pose is not None, result, keep_samples=True)
            if not calibrated_before and res.calibrated_at_s is not None and \
                    on_calibrated is not None:
                on_calibrated(frame.t_s, result.state)
            res.traces.append(FrameTrace.of(fr.face, result))
            if out_video is not None:
                img = annotator.frame(frame.image, fr.face, result, raw_pose=fr.pose)
                if writer is None:
                    writer = VideoFileWriter(out_video, video_fps(str(video)),
                                             img.shape[1::-1])
                    res.video_codec = writer.codec
                writer.write(img)
            if on_frame is not None:
                on_frame(res.frames)
    finally:
        if writer is not None:
            writer.close()
    if out_video is not None and writer is not None:
        Path(str(out_video) + ANNOTATED_MARK).write_text(
            json.dumps({"annotated_by": "dms", "source": str(video)}) + "\n", encoding="utf-8")
    return res
