"""Driver scripts -> a rendered head's trajectory, ground truth and the declared expected events.

The script language is :mod:`dms.sim.script` (one grammar for the engine's stories and
this renderer; its module doc lists every step)::

    road 5s; glance left-mirror 1.2s; road 3s; glance infotainment 4s
    expect distraction/long_glance L1 12.1..12.9
    nod x3 over 40s; slump 4s; sunglasses on; hand 1.5s; occlude 3s; away 4s

This module gives the steps their rendered motion: a glance turns in ``GLANCE_TURN_S`` each
way (minimum jerk) and is tilted by ``ROLL_PER_YAW`` unless a roll is given; a nod drops in
``NOD_DROP_S``, holds ``NOD_HOLD_S`` and returns in ``NOD_RISE_S``; a slump drops in
``SLUMP_DROP_S`` and comes back over the last ``SLUMP_RISE_S``; ``occlude`` moves a hand in
over ``HAND_IN_S``; ``lost`` renders as ``block``. The eyes and the mouth (``blink``,
``close``, ``yawn``, ``look``) follow :func:`dms.sim.script.face_at`, the same truth the
engine's stories measure; the droop of ``close`` and the tilt of ``yawn`` follow
:func:`dms.sim.script.head_pitch_k`. ``speed`` and ``steering`` are ignored
(the rendered clip carries no vehicle signals); ``glance_lost`` cannot be rendered (a
detector losing a visible face is not something a picture can script) and is refused.

The head pose seen by the camera is ``R = R_neutral @ rotation_from_euler(pitch, yaw, roll)``
with (pitch, yaw, roll) relative to the driver's neutral pose and ``R_neutral`` the camera
mount's prior (:class:`dms.engine.settings.MountSettings`); for a left-hand-drive car the
relative yaw is the inboard yaw. This is exactly how the engine's own stories
(:mod:`dms.sim.scenarios`) and its zones read poses, so a glance scripted to a named target
lands in the engine's zone of that name. Transitions are minimum-jerk ramps; a small,
seeded sway (a few slow sinusoids, about 1 deg) keeps the head alive. The sway and the
script are deterministic for a given seed.

Expected events are the script's ``expect`` lines (:func:`events_json`); nothing here
re-derives them from the engine's rules.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dms.errors import InputError
from dms.geometry import euler_from_rotation, rotation_from_euler
from dms.sim import script as grammar
from dms.sim.script import Expectation, ScriptError
from dms.types import EyeObservation

GLANCE_TURN_S = 0.4  # ramp out / back of a glance
NOD_DROP_S, NOD_HOLD_S, NOD_RISE_S = 0.3, 0.3, 0.5
NOD_S = NOD_DROP_S + NOD_HOLD_S + NOD_RISE_S
assert abs(NOD_S - grammar.NOD_S) < 1e-9, "a rendered nod takes the grammar's NOD_S"
SLUMP_DROP_S, SLUMP_RISE_S = 0.5, 0.8
NOD_DEPTH_DEG, SLUMP_DEPTH_DEG = grammar.NOD_DEPTH_DEG, grammar.SLUMP_DEPTH_DEG
HAND_IN_S = 0.35  # time a covering hand takes to move in / out
FACE_VISIBLE_MAX_DEG = grammar.FACE_VISIBLE_MAX_DEG  # beyond: the face is out of view
ROLL_PER_YAW = 0.12  # people tilt the head a little when they turn it
SWAY_DEG = (1.0, 0.8, 0.6)  # natural sway amplitude (yaw, pitch, roll)


@dataclass(frozen=True, slots=True)
class Segment:
    """One time-taking step. Angles are the held target relative to neutral (inboard yaw)."""

    kind: str  # road | glance | nod | slump | away | occlude | block | hand | blink | close
    # | yawn | look
    start_s: float
    end_s: float
    line: int
    text: str
    target: str | None = None
    yaw_deg: float = 0.0  # look: the eyes' target in the head (the head stays at the road)
    pitch_deg: float = 0.0
    roll_deg: float = 0.0
    step: grammar.Step | None = field(default=None, repr=False, compare=False)

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@dataclass(frozen=True, slots=True)
class Switch:
    """A step that takes no time: ``sunglasses`` (value 0/1) or ``light`` (gain, ramp)."""

    kind: str
    t_s: float
    value: float
    ramp_s: float = 0.0


@dataclass(frozen=True, slots=True)
class Script:
    segments: tuple[Segment, ...]
    switches: tuple[Switch, ...] = ()
    text: str = ""
    expectations: tuple[Expectation, ...] = ()

    @property
    def duration_s(self) -> float:
        return self.segments[-1].end_s if self.segments else 0.0


def glance_targets() -> dict[str, tuple[float, float]]:
    """Named glance targets: ``name -> (yaw_inboard_deg, pitch_deg)`` relative to neutral.

    The engine's glance zones (``ZoneSettings.glance``, Euro NCAP targets) so that scripted
    glances land in the zone of the same name, plus ``road``."""
    return grammar.default_targets()


def _segment(step: grammar.Step) -> Segment:
    """The rendered segment of a time-taking step (its checks are the renderer's own)."""
    kind = {"lost": "block"}.get(step.verb, step.verb)
    if kind == "glance_lost":
        raise ScriptError(f"{step.where}: glance_lost is for the engine's pose stories only "
                          "(a renderer cannot script a detector losing a visible face); use "
                          "'away D' for a face leaving the view")
    if kind == "glance" and step.duration_s < 2 * GLANCE_TURN_S:
        raise ScriptError(f"{step.where}: a glance needs at least {2 * GLANCE_TURN_S:g}s "
                          "(turn out and back)")
    if kind == "slump" and step.duration_s < SLUMP_DROP_S + SLUMP_RISE_S + 0.2:
        raise ScriptError(f"{step.where}: a slump needs at least "
                          f"{SLUMP_DROP_S + SLUMP_RISE_S + 0.2:g}s")
    roll = step.roll_deg
    if roll is None:
        roll = ROLL_PER_YAW * step.yaw_deg if kind in ("glance", "away") else 0.0
    return Segment(kind, step.start_s, step.end_s, step.line, step.text, step.target,
                   step.yaw_deg, step.pitch_deg, roll, step)


def parse_script(text: str, *, source: str = "script") -> Script:
    """Parse a script (:mod:`dms.sim.script`) into rendered segments and switches.
    Errors name ``source``, the line and the step."""
    parsed = grammar.parse(text, source=source)
    segments: list[Segment] = []
    switches: list[Switch] = []
    for step in parsed.steps:
        if step.duration_s > 0:
            segments.append(_segment(step))
        elif step.verb in ("sunglasses", "light"):
            assert step.value is not None
            switches.append(Switch(step.verb, step.start_s, step.value, step.ramp_s))
    return Script(tuple(segments), tuple(switches), text, parsed.expectations)


# ----------------------------------------------------------------- scenario files


@dataclass(frozen=True, slots=True)
class RenderOptions:
    """The ``[render]`` table of a scenario file (command-line options override it)."""

    photo: str = field(default="astronaut", metadata={
        "doc": "built-in photo name (astronaut, grace_hopper) or a file path"})
    fps: float = field(default=15.0, metadata={"doc": "frames per second"})
    size: str = field(default="640x480", metadata={"doc": "WIDTHxHEIGHT in pixels"})
    ir: bool = field(default=False, metadata={"doc": "near-infrared-style grayscale"})
    seed: int = field(default=0, metadata={"doc": "seed of the sway, noise and lighting drift"})
    hfov_deg: float = field(default=60.0, metadata={"doc": "camera horizontal field of view"})
    distance_m: float = field(default=0.65, metadata={"doc": "camera to head distance"})
    noise_sigma: float = field(default=3.0, metadata={"doc": "sensor noise, 8-bit levels"})

    def validate(self) -> None:
        parse_size(self.size)
        if not 1.0 <= self.fps <= 120.0:
            raise ValueError("fps must be within [1, 120]")
        if not 20.0 <= self.hfov_deg <= 150.0:
            raise ValueError("hfov_deg must be within [20, 150]")
        if not 0.3 <= self.distance_m <= 2.0:
            raise ValueError("distance_m must be within [0.3, 2]")

    @property
    def width_px(self) -> int:
        return parse_size(self.size)[0]

    @property
    def height_px(self) -> int:
        return parse_size(self.size)[1]


def parse_size(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)x(\d+)", text.strip())
    if not m:
        raise ValueError(f"size {text!r} is not WIDTHxHEIGHT (e.g. 640x480)")
    w, h = int(m.group(1)), int(m.group(2))
    if not (64 <= w <= 4096 and 64 <= h <= 4096):
        raise ValueError(f"size {text!r}: each side must be within [64, 4096]")
    return w, h


@dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    description: str
    script: Script
    options: RenderOptions
    path: Path | None = None


def scenarios_dir() -> Path:
    return Path(__file__).resolve().parent / "scenarios"


def list_scenarios() -> list[str]:
    return sorted(p.stem for p in scenarios_dir().glob("*.toml"))


def load_scenario(name_or_path: str | Path) -> Scenario:
    """A shipped scenario by name (``dms/synth/scenarios/NAME.toml``), a TOML file, or an
    inline script (anything containing a space or ``;``)."""
    from dms.settings import load_settings

    key = str(name_or_path)
    path = Path(key)
    if not path.is_file():
        shipped = scenarios_dir() / f"{key}.toml"
        if shipped.is_file():
            path = shipped
        elif " " in key or ";" in key:
            return Scenario("inline", "", parse_script(key, source="inline script"),
                            RenderOptions())
        else:
            raise InputError(f"{key}: no such scenario file or shipped scenario "
                             f"(shipped: {', '.join(list_scenarios())})")
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{path}: not valid TOML: {exc}") from None
    unknown = sorted(set(doc) - {"scenario", "render"})
    if unknown:
        raise InputError(f"{path}: unknown table [{unknown[0]}] (known: [scenario], [render])")
    sc = doc.get("scenario")
    if not isinstance(sc, dict) or not isinstance(sc.get("script"), str):
        raise InputError(f"{path}: needs a [scenario] table with script = \"...\"")
    extra = sorted(set(sc) - {"name", "description", "script"})
    if extra:
        raise InputError(f"{path}: scenario.{extra[0]}: unknown key "
                         "(known: name, description, script)")
    # the script's line numbers are those of the file when it is a multi-line string
    text = sc["script"]
    options = load_settings(RenderOptions, doc.get("render"), f"{path}: render")
    return Scenario(str(sc.get("name", path.stem)), str(sc.get("description", "")),
                    parse_script(text, source=f"{path}: script"), options, path)


# ----------------------------------------------------------------- trajectory


def min_jerk(u: np.ndarray | float) -> np.ndarray:
    """Minimum-jerk ramp from 0 to 1 on u in [0, 1] (clipped outside)."""
    u = np.clip(np.asarray(u, dtype=np.float64), 0.0, 1.0)
    return u * u * u * (10.0 + u * (-15.0 + 6.0 * u))


@dataclass(frozen=True, slots=True)
class FrameTruth:
    """Everything the renderer and the ground truth need at one instant.

    ``yaw_deg``/``pitch_deg``/``roll_deg`` are the camera-frame AFLW2000 angles of ``rotation``
    (head -> camera); ``rel_*`` are relative to neutral (yaw inboard). ``face`` is False when
    the face is out of view or fully covered. ``hand`` is the hand's progress across the face
    in [0, 1] (None: no hand); ``cover`` in [0, 1] how far a covering hand has moved in.
    ``eye_open`` (0 shut .. 1 fully open, both eyes), ``gaze_yaw_deg``/``gaze_pitch_deg``
    (eye-in-head, signs as the head pose's: yaw > 0 toward the image left = the driver's
    right = inboard here, pitch > 0 up) and ``mouth_open`` (0 closed .. 1 a full yawn) are
    the script's eyes and mouth (:func:`dms.sim.script.face_at`)."""

    t_s: float
    rotation: np.ndarray = field(repr=False)
    yaw_deg: float
    pitch_deg: float
    roll_deg: float
    rel_yaw_deg: float
    rel_pitch_deg: float
    rel_roll_deg: float
    face: bool
    kind: str
    hand: float | None = None
    cover: float = 0.0
    blocked: bool = False
    sunglasses: bool = False
    light_gain: float = 1.0
    eye_open: float = 1.0
    gaze_yaw_deg: float = 0.0
    gaze_pitch_deg: float = 0.0
    mouth_open: float = 0.0


class Trajectory:
    """Head pose and scene state over time for a script (deterministic for a seed)."""

    def __init__(self, script: Script, *, neutral_deg: tuple[float, float, float] | None = None,
                 seed: int = 0, sway: bool = True) -> None:
        if neutral_deg is None:
            from dms.engine.settings import MountSettings

            m = MountSettings()
            neutral_deg = (m.neutral_pitch_deg, m.neutral_yaw_deg, m.neutral_roll_deg)
        self.script = script
        self.neutral_deg = neutral_deg
        self.R_neutral = rotation_from_euler(*neutral_deg)
        rng = np.random.default_rng(seed)
        # three slow sinusoids per axis: frequencies 0.05-0.4 Hz, random phases
        self._sway_f = rng.uniform(0.05, 0.4, size=(3, 3))
        self._sway_p = rng.uniform(0, 2 * np.pi, size=(3, 3))
        self._sway_a = np.array(SWAY_DEG if sway else (0.0, 0.0, 0.0))[:, None] / np.sqrt(3)
        self._starts = np.array([s.start_s for s in script.segments])

    @property
    def duration_s(self) -> float:
        return self.script.duration_s

    def segment_at(self, t_s: float) -> Segment:
        i = int(np.searchsorted(self._starts, t_s, side="right")) - 1
        return self.script.segments[max(0, min(i, len(self._starts) - 1))]

    def relative(self, t_s: float) -> tuple[float, float, float]:
        """Scripted (yaw inboard, pitch, roll) relative to neutral, without sway."""
        seg = self.segment_at(t_s)
        u = t_s - seg.start_s
        d = seg.duration_s
        target = np.array([seg.yaw_deg, seg.pitch_deg, seg.roll_deg])
        if seg.kind in ("glance", "away"):
            turn = min(GLANCE_TURN_S, d / 2)
            k = float(min_jerk(u / turn)) if u < d / 2 else float(min_jerk((d - u) / turn))
        elif seg.kind == "nod":
            k = float(min_jerk(u / NOD_DROP_S)) if u < NOD_DROP_S + NOD_HOLD_S else float(
                min_jerk((d - u) / NOD_RISE_S))
        elif seg.kind == "slump":
            k = float(min_jerk(u / SLUMP_DROP_S)) if u < d - SLUMP_RISE_S else float(
                min_jerk((d - u) / SLUMP_RISE_S))
        elif seg.kind in ("close", "yawn") and seg.step is not None:
            k = grammar.head_pitch_k(seg.step, u)
        else:
            k = 0.0
        y, p, r = k * target
        return float(y), float(p), float(r)

    def sway(self, t_s: float) -> np.ndarray:
        return np.sum(self._sway_a * np.sin(2 * np.pi * self._sway_f * t_s + self._sway_p),
                      axis=1)

    def _switch_state(self, t_s: float) -> tuple[bool, float]:
        glasses, gain, prev_gain = False, 1.0, 1.0
        for sw in self.script.switches:
            if sw.t_s > t_s:
                break
            if sw.kind == "sunglasses":
                glasses = sw.value > 0.5
            else:
                prev_gain = gain
                if sw.ramp_s > 0 and t_s < sw.t_s + sw.ramp_s:
                    k = float(min_jerk((t_s - sw.t_s) / sw.ramp_s))
                    gain = prev_gain + k * (sw.value - prev_gain)
                else:
                    gain = sw.value
        return glasses, gain

    def at(self, t_s: float) -> FrameTruth:
        seg = self.segment_at(t_s)
        y, p, r = np.array(self.relative(t_s)) + self.sway(t_s)
        R = self.R_neutral @ rotation_from_euler(p, y, r)
        pitch, yaw, roll = euler_from_rotation(R)
        # face in view: the head's forward axis within FACE_VISIBLE_MAX_DEG of the camera's
        facing = math.degrees(math.acos(max(-1.0, min(1.0, float(R[2, 2])))))
        face = facing <= FACE_VISIBLE_MAX_DEG
        hand, cover, blocked = None, 0.0, False
        u, d = t_s - seg.start_s, seg.duration_s
        if seg.kind == "hand":
            hand = u / d
        elif seg.kind == "occlude":
            cover = float(min(min_jerk(u / HAND_IN_S), min_jerk((d - u) / HAND_IN_S)))
            face = face and cover < 0.999
        elif seg.kind == "block":
            blocked, face = True, False
        glasses, gain = self._switch_state(t_s)
        eyes = grammar.FaceTruth() if seg.step is None else grammar.face_at(seg.step, u)
        return FrameTruth(t_s, R, yaw, pitch, roll, float(y), float(p), float(r), face, seg.kind,
                          hand, cover, blocked, glasses, gain, eyes.eye_open, eyes.gaze_yaw_deg,
                          eyes.gaze_pitch_deg, eyes.mouth_open)

    def frames(self, fps: float) -> list[FrameTruth]:
        n = int(math.floor(self.duration_s * fps + 1e-9))
        return [self.at(k / fps) for k in range(n)]


TRUTH_COLUMNS = ("t", "yaw", "pitch", "roll", "face", "eye_open", "gaze_yaw_deg",
                 "gaze_pitch_deg", "mouth_open", "sunglasses")


def poses_csv_text(frames: list[FrameTruth]) -> str:
    """Ground truth in the ``dms replay --poses`` format: ``t,yaw,pitch,roll,face`` and then
    the eyes and mouth: ``eye_open,gaze_yaw_deg,gaze_pitch_deg,mouth_open`` (FrameTruth),
    and ``sunglasses`` (1: the eyes cannot be measured; ``dms replay --poses`` then gives the
    engine unmeasurable eyes).

    Angles are written for every frame (the true head pose); ``face`` says whether a perfect
    detector would see the face (``dms replay`` treats face 0 as no observation). The eyes
    are written for every frame too, behind sunglasses as well."""
    lines = [",".join(TRUTH_COLUMNS)]
    for f in frames:
        lines.append(f"{f.t_s:.4f},{f.yaw_deg:.3f},{f.pitch_deg:.3f},{f.roll_deg:.3f},"
                     f"{int(f.face)},{f.eye_open:.3f},{f.gaze_yaw_deg:.2f},"
                     f"{f.gaze_pitch_deg:.2f},{f.mouth_open:.3f},{int(f.sunglasses)}")
    return "\n".join(lines) + "\n"


OPEN_EYE_RATIO = 0.3  # the openness a perfect measurement reads on a fully open eye


def truth_eyes(f: FrameTruth) -> EyeObservation | None:
    """The :class:`dms.types.EyeObservation` a perfect measurement would give for a frame
    (openness ``OPEN_EYE_RATIO`` x ``eye_open``); None without a face; behind sunglasses the
    eyes are not measurable (openness None, confidence 0), the mouth still is."""
    if not f.face:
        return None
    if f.sunglasses:
        return EyeObservation(None, None, 0.0, mouth_open=f.mouth_open)
    o = OPEN_EYE_RATIO * f.eye_open
    return EyeObservation(o, o, 1.0, f.gaze_yaw_deg, f.gaze_pitch_deg, f.mouth_open)


# ----------------------------------------------------------------- expected events


def events_json(script: Script, settings: Any | None = None) -> dict[str, Any]:
    """``expected_events.json``: the script's ``expect`` lines, each with ``t_s`` the centre
    of its window and ``tolerance_s`` half its width (so ``|t - t_s| <= tolerance_s`` is the
    window), ``window_s`` the window itself, ``start_s``/``step`` the step it follows."""
    from dms.engine.settings import EngineSettings
    from dms.settings import settings_version

    s = settings or EngineSettings()
    return {
        "schema_version": 1,
        "duration_s": round(script.duration_s, 3),
        "engine_settings_version": settings_version(s),
        "events": [e.to_dict() for e in script.expectations],
    }
