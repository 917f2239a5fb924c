"""Driver scripts: a small text format -> a head trajectory, ground truth and expected events.

A script is a list of steps separated by ``;`` or new lines (``#`` starts a comment)::

    road 5s; glance left-mirror 1.2s; road 3s; glance infotainment 4s
    nod x3 over 40s; slump 4s; sunglasses on; hand 1.5s; occlude 3s; away 4s

Steps that take time (durations: ``5s``, ``1.2s``, ``500ms`` or a bare number of seconds):

==============================  ===========================================================
``road D``                      look at the road (neutral pose, small natural sway)
``glance TARGET D``             turn to a named target (table below, ``-`` or ``_``) or to
                                ``YAW,PITCH[,ROLL]`` degrees relative to neutral (yaw inboard
                                = toward the car's centre), hold, and come back; ``D``
                                includes the turns (``GLANCE_TURN_S`` each way)
``nod [xN] [over D]``           N nods (default 1): a fast pitch drop of ``NOD_DEPTH_DEG`` and
                                return in ``NOD_S``; with ``over D`` the nods are spread evenly
                                over D seconds with the road in between
``slump D``                     head drops ``SLUMP_DEPTH_DEG`` fast and stays down; it comes
                                back up over the last ``SLUMP_RISE_S`` of D
``away D``                      turn far toward the side window (``AWAY_TARGET``): the face
                                leaves the camera's view
``occlude D``                   a hand covers the whole face (face not visible, pose frontal)
``block D``                     the camera is blocked (dark frame, no face)
``hand D``                      a hand crosses in front of the face (partial occlusion)
==============================  ===========================================================

Steps that take no time (they apply from that point on):

* ``sunglasses on|off``  dark glasses following the eyes;
* ``light GAIN [over D]``  scene brightness factor (1 = normal), reached over D seconds.

The head pose seen by the camera is ``R = R_neutral @ rotation_from_euler(pitch, yaw, roll)``
with (pitch, yaw, roll) relative to the driver's neutral pose and ``R_neutral`` the camera
mount's prior (:class:`dms.engine.settings.MountSettings`); for a left-hand-drive car the
relative yaw is the inboard yaw. This is exactly how the engine's own stories
(:mod:`dms.engine.scenarios`) and its zones read poses, so a glance scripted to a named target
lands in the engine's zone of that name. Transitions are minimum-jerk ramps; a small,
seeded sway (a few slow sinusoids, about 1 deg) keeps the head alive. The sway and the
script are deterministic for a given seed.

Expected events (:func:`expected_events`) are derived from the script with the rules of
REFERENCE.md section 2 and the engine's thresholds (``PolicySettings``/``ZoneSettings``);
they live in that one function and are documented there.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from dms.errors import InputError
from dms.geometry import euler_from_rotation, rotation_from_euler

GLANCE_TURN_S = 0.4  # ramp out / back of a glance
NOD_DEPTH_DEG = 22.0  # pitch drop of a nod below neutral
NOD_DROP_S, NOD_HOLD_S, NOD_RISE_S = 0.3, 0.3, 0.5
NOD_S = NOD_DROP_S + NOD_HOLD_S + NOD_RISE_S
SLUMP_DEPTH_DEG = 38.0
SLUMP_DROP_S, SLUMP_RISE_S = 0.5, 0.8
AWAY_TARGET = (-85.0, -5.0)  # (yaw inboard, pitch): over the shoulder, out of the side window
HAND_IN_S = 0.35  # time a covering hand takes to move in / out
FACE_VISIBLE_MAX_DEG = 72.0  # head turned further from the camera than this: face out of view
ROLL_PER_YAW = 0.12  # people tilt the head a little when they turn it
SWAY_DEG = (1.0, 0.8, 0.6)  # natural sway amplitude (yaw, pitch, roll)


@dataclass(frozen=True, slots=True)
class Segment:
    """One time-taking step. Angles are the held target relative to neutral (inboard yaw)."""

    kind: str  # road | glance | nod | slump | away | occlude | block | hand
    start_s: float
    end_s: float
    line: int
    text: str
    target: str | None = None
    yaw_deg: float = 0.0
    pitch_deg: float = 0.0
    roll_deg: float = 0.0

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

    @property
    def duration_s(self) -> float:
        return self.segments[-1].end_s if self.segments else 0.0


class ScriptError(InputError):
    """A script that cannot be parsed; the message names the line and the step."""


def glance_targets() -> dict[str, tuple[float, float]]:
    """Named glance targets: ``name -> (yaw_inboard_deg, pitch_deg)`` relative to neutral.

    The engine's glance zones (``ZoneSettings.glance``, Euro NCAP targets) so that scripted
    glances land in the zone of the same name, plus ``road``."""
    from dms.engine.settings import ZoneSettings

    out = {"road": (0.0, 0.0)}
    for z in ZoneSettings().glance:
        out[z.name] = (float(z.yaw_inboard_deg), float(z.pitch_deg))
    return out


_DURATION = re.compile(r"^(\d+(?:\.\d*)?|\.\d+)(s|ms)?$")


def _duration(word: str, where: str) -> float:
    m = _DURATION.match(word)
    if not m:
        raise ScriptError(f"{where}: {word!r} is not a duration (e.g. 5s, 1.2s, 500ms)")
    value = float(m.group(1)) * (0.001 if m.group(2) == "ms" else 1.0)
    if value <= 0:
        raise ScriptError(f"{where}: duration {word!r} must be > 0")
    return value


def _number(word: str, what: str, where: str) -> float:
    from dms.settings import parse_number

    return parse_number(word, what, where, ScriptError)


def _target(word: str, targets: Mapping[str, tuple[float, float]],
            where: str) -> tuple[str, float, float, float | None]:
    if "," in word:
        parts = word.split(",")
        if len(parts) not in (2, 3):
            raise ScriptError(f"{where}: target {word!r}: expected YAW,PITCH or YAW,PITCH,ROLL")
        vals = [_number(p, "angle", where) for p in parts]
        return word, vals[0], vals[1], (vals[2] if len(vals) == 3 else None)
    name = word.replace("-", "_").lower()
    if name not in targets:
        close = difflib.get_close_matches(name, list(targets), n=1)
        hint = f" (did you mean {close[0].replace('_', '-')!r}?)" if close else ""
        known = ", ".join(n.replace("_", "-") for n in targets)
        raise ScriptError(f"{where}: unknown glance target {word!r}{hint}; known: {known}, "
                          "or YAW,PITCH in degrees")
    yaw, pitch = targets[name]
    return name, yaw, pitch, None


VERBS = ("road", "glance", "nod", "slump", "away", "occlude", "block", "hand", "sunglasses",
         "light")


def parse_script(text: str, *, source: str = "script") -> Script:
    """Parse a script (see the module doc). Errors name ``source``, the line and the step."""
    targets = glance_targets()
    segments: list[Segment] = []
    switches: list[Switch] = []
    t = 0.0
    for n, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.split("#", 1)[0]
        for part in (p.strip() for p in line.split(";")):
            if not part:
                continue
            where = f"{source}: line {n}, step {part!r}"
            words = part.split()
            verb, args = words[0].lower(), words[1:]

            def add(kind: str, duration: float, **kw: Any) -> None:
                nonlocal t
                segments.append(Segment(kind, t, t + duration, n, part, **kw))  # noqa: B023
                t += duration

            if verb in ("road", "slump", "away", "occlude", "block", "hand"):
                if len(args) != 1:
                    raise ScriptError(f"{where}: expected '{verb} DURATION'")
                d = _duration(args[0], where)
                if verb == "slump" and d < SLUMP_DROP_S + SLUMP_RISE_S + 0.2:
                    raise ScriptError(f"{where}: a slump needs at least "
                                      f"{SLUMP_DROP_S + SLUMP_RISE_S + 0.2:g}s")
                if verb == "slump":
                    add("slump", d, pitch_deg=-SLUMP_DEPTH_DEG)
                elif verb == "away":
                    add("away", d, target="away", yaw_deg=AWAY_TARGET[0],
                        pitch_deg=AWAY_TARGET[1], roll_deg=ROLL_PER_YAW * AWAY_TARGET[0])
                else:
                    add(verb, d)
            elif verb == "glance":
                if len(args) != 2:
                    raise ScriptError(f"{where}: expected 'glance TARGET DURATION'")
                name, yaw, pitch, roll = _target(args[0], targets, where)
                d = _duration(args[1], where)
                if d < 2 * GLANCE_TURN_S:
                    raise ScriptError(f"{where}: a glance needs at least {2 * GLANCE_TURN_S:g}s "
                                      "(turn out and back)")
                add("glance", d, target=name, yaw_deg=yaw, pitch_deg=pitch,
                    roll_deg=ROLL_PER_YAW * yaw if roll is None else roll)
            elif verb == "nod":
                count, over = 1, None
                rest = list(args)
                if rest and re.fullmatch(r"x\d+", rest[0]):
                    count = int(rest.pop(0)[1:])
                    if count < 1:
                        raise ScriptError(f"{where}: nod count must be >= 1")
                if rest and rest[0] == "over":
                    if len(rest) != 2:
                        raise ScriptError(f"{where}: expected 'nod xN over DURATION'")
                    over = _duration(rest[1], where)
                    rest = []
                if rest:
                    raise ScriptError(f"{where}: unexpected {rest[0]!r} "
                                      "(expected 'nod [xN] [over DURATION]')")
                total = over if over is not None else count * NOD_S
                if total < count * NOD_S - 1e-9:
                    raise ScriptError(f"{where}: {count} nods need at least "
                                      f"{count * NOD_S:g}s")
                gap = (total - count * NOD_S) / count
                for _ in range(count):
                    if gap > 0:
                        add("road", gap / 2)
                    add("nod", NOD_S, pitch_deg=-NOD_DEPTH_DEG)
                    if gap > 0:
                        add("road", gap / 2)
            elif verb == "sunglasses":
                if len(args) != 1 or args[0] not in ("on", "off"):
                    raise ScriptError(f"{where}: expected 'sunglasses on' or 'sunglasses off'")
                switches.append(Switch("sunglasses", t, 1.0 if args[0] == "on" else 0.0))
            elif verb == "light":
                if len(args) not in (1, 3) or (len(args) == 3 and args[1] != "over"):
                    raise ScriptError(f"{where}: expected 'light GAIN [over DURATION]'")
                gain = _number(args[0], "gain", where)
                if not 0.05 <= gain <= 4.0:
                    raise ScriptError(f"{where}: gain {gain:g} outside [0.05, 4]")
                ramp = _duration(args[2], where) if len(args) == 3 else 0.0
                switches.append(Switch("light", t, gain, ramp))
            else:
                close = difflib.get_close_matches(verb, VERBS, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ScriptError(f"{where}: unknown step {verb!r}{hint}; known: "
                                  f"{', '.join(VERBS)}")
    if not segments:
        raise ScriptError(f"{source}: the script has no step that takes time (e.g. 'road 5s')")
    return Script(tuple(segments), tuple(switches), text)


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
    in [0, 1] (None: no hand); ``cover`` in [0, 1] how far a covering hand has moved in."""

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
        return FrameTruth(t_s, R, yaw, pitch, roll, float(y), float(p), float(r), face, seg.kind,
                          hand, cover, blocked, glasses, gain)

    def frames(self, fps: float) -> list[FrameTruth]:
        n = int(math.floor(self.duration_s * fps + 1e-9))
        return [self.at(k / fps) for k in range(n)]


def poses_csv_text(frames: list[FrameTruth]) -> str:
    """Ground truth in the ``dms replay --poses`` format: ``t,yaw,pitch,roll,face``.

    Angles are written for every frame (the true head pose); ``face`` says whether a perfect
    detector would see the face (``dms replay`` treats face 0 as no observation)."""
    lines = ["t,yaw,pitch,roll,face"]
    for f in frames:
        lines.append(f"{f.t_s:.4f},{f.yaw_deg:.3f},{f.pitch_deg:.3f},{f.roll_deg:.3f},"
                     f"{int(f.face)}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------- expected events


@dataclass(frozen=True, slots=True)
class ExpectedEvent:
    """An alert the engine should raise: ``type``/``reason`` as in :mod:`dms.engine.events`,
    the level when raised and the highest level it should reach, the raise time ``t_s``
    (+- ``tolerance_s``) and the time the episode began (``start_s``)."""

    type: str
    reason: str
    level: int
    max_level: int
    t_s: float
    tolerance_s: float
    start_s: float
    step: str

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, "reason": self.reason, "level": self.level,
                "max_level": self.max_level, "t_s": round(self.t_s, 2),
                "tolerance_s": self.tolerance_s, "start_s": round(self.start_s, 2),
                "step": self.step}


EVENT_TOLERANCE_S = 1.0  # filter lag (~0.2 s) + turn ramps + perception jitter


def expected_events(script: Script, settings: Any | None = None, *,
                    rate_hz: float = 50.0) -> list[ExpectedEvent]:
    """The alerts a driver-state engine following REFERENCE.md section 2 should raise.

    Thresholds come from ``settings`` (:class:`dms.engine.settings.EngineSettings`, default
    values if None). The rules, on the scripted pose relative to neutral (no sway):

    * off the road: outside the road zone (``zones`` yaw/pitch limits) while the face is
      visible, or an ``away`` turn whose face left the view; a nod or slump is head-down, not
      a glance;
    * long glance: one off-road stretch of ``long_glance_s`` -> distraction/long_glance
      (level 1) at its start + ``long_glance_s``; max level 2 after ``level2_after_s`` more
      away, 3 after ``level3_after_s``;
    * time sharing (VATS): off-road time within the last ``vats_window_s`` reaches
      ``vats_total_s`` during a glance -> distraction/time_sharing (level 1); the window
      resets after ``vats_reset_on_road_s`` on the road, and after the alert clears;
    * nodding: each scripted nod deeper than ``nod_depth_deg`` counts when the head is back
      (pitch above ``-nod_return_deg``); the ``nods_for_alert``-th within ``nod_window_s`` ->
      drowsiness/nodding at ``drowsy_level`` (3 from ``nods_for_level3`` nods);
    * slump: head below ``-nod_depth_deg`` for more than ``slump_s`` -> slump/head_down,
      level 3;
    * face covered or camera blocked while frontal for ``not_visible_s`` ->
      driver_not_visible/face_lost (level 1); for ``degraded_s`` -> system_degraded/no_face
      (level 2).

    Times have a tolerance of ``EVENT_TOLERANCE_S``.
    """
    if settings is None:
        from dms.engine.settings import EngineSettings

        settings = EngineSettings()
    p, z = settings.policy, settings.zones
    traj = Trajectory(script, sway=False)
    dt = 1.0 / rate_hz
    n = int(math.floor(script.duration_s * rate_hz)) + 1
    events: list[ExpectedEvent] = []

    def emit(type_: str, reason: str, level: int, max_level: int, t: float, start: float,
             seg: Segment) -> None:
        events.append(ExpectedEvent(type_, reason, level, max_level, round(t, 3),
                                    EVENT_TOLERANCE_S, round(start, 3), seg.text))

    away_start: float | None = None
    distraction_open: str | None = None  # reason of the open alert
    on_road_since: float | None = 0.0
    spans: list[list[float]] = []
    nods: list[float] = []
    drowsy_open = False
    drowsy_level = 0
    down_since: float | None = None
    slump_open = False
    lost_since: float | None = None
    lost_flags = [False, False]
    long_idx: int | None = None  # the open long-glance alert, to raise its max level
    for k in range(n):
        t = k * dt
        seg = traj.segment_at(t)
        fr = traj.at(t)
        yaw, pitch = fr.rel_yaw_deg, fr.rel_pitch_deg
        frontal_lost = seg.kind in ("occlude", "block") and not fr.face
        head_down = seg.kind in ("nod", "slump") and pitch < -p.nod_depth_deg
        off_road = (not (-z.yaw_outboard_deg <= yaw <= z.yaw_inboard_deg
                         and -z.pitch_down_deg <= pitch <= z.pitch_up_deg))
        away = ((off_road or (seg.kind == "away" and not fr.face))
                and seg.kind not in ("nod", "slump") and not frontal_lost)
        # glances and time sharing
        if away:
            if away_start is None:
                away_start = t
                spans.append([t, t])
            spans[-1][1] = t
            on_road_since = None
            if distraction_open is None:
                window = sum(max(0.0, b - max(a, t - p.vats_window_s)) for a, b in spans)
                if t - away_start >= p.long_glance_s:
                    distraction_open, long_idx = "long_glance", len(events)
                    emit("distraction", "long_glance", 1, 1, t, away_start, seg)
                elif window >= p.vats_total_s:
                    distraction_open = "time_sharing"
                    emit("distraction", "time_sharing", 1, 1, t, spans[0][0], seg)
            if long_idx is not None:
                extra = t - (away_start + p.long_glance_s)
                lvl = 1 + (extra >= p.level2_after_s) + (extra >= p.level3_after_s)
                if lvl > events[long_idx].max_level:
                    events[long_idx] = replace(events[long_idx], max_level=lvl)
        else:
            away_start = None
            if not frontal_lost and not head_down:
                on_road_since = t if on_road_since is None else on_road_since
            else:
                on_road_since = None
            on_s = 0.0 if on_road_since is None else t - on_road_since
            if on_s >= p.vats_reset_on_road_s:
                spans.clear()
            clear_s = p.clear_on_road_s if distraction_open != "time_sharing" else max(
                p.clear_on_road_s, p.vats_reset_on_road_s)
            if distraction_open and on_s >= clear_s:
                distraction_open, long_idx = None, None
                spans.clear()
        spans[:] = [s for s in spans if s[1] >= t - p.vats_window_s]
        # nods and slump
        if seg.kind in ("nod", "slump") and pitch < -p.nod_depth_deg:
            down_since = t if down_since is None else down_since
            if not slump_open and t - down_since > p.slump_s:
                slump_open = True
                emit("slump", "head_down", 3, 3, t, down_since, seg)
        elif pitch >= -p.nod_return_deg and down_since is not None:
            if t - down_since <= p.nod_max_return_s + 1e-9:
                nods.append(t)
            down_since = None
            slump_open = False
        nods[:] = [x for x in nods if x >= t - p.nod_window_s]
        if nods and not drowsy_open and len(nods) >= p.nods_for_alert:
            drowsy_open, drowsy_level = True, p.drowsy_level
            emit("drowsiness", "nodding", p.drowsy_level, p.drowsy_level, t, nods[0], seg)
        elif drowsy_open and len(nods) >= p.nods_for_level3 and drowsy_level < 3:
            drowsy_level = 3
            i = max(i for i, e in enumerate(events) if e.type == "drowsiness")
            events[i] = replace(events[i], max_level=3)
        elif drowsy_open and not nods:
            drowsy_open = False
        # face covered / camera blocked while frontal
        if frontal_lost:
            lost_since = t if lost_since is None else lost_since
            if not lost_flags[0] and t - lost_since >= p.not_visible_s:
                lost_flags[0] = True
                emit("driver_not_visible", "face_lost", 1, 1, t, lost_since, seg)
            if not lost_flags[1] and t - lost_since >= p.degraded_s:
                lost_flags[1] = True
                emit("system_degraded", "no_face", 2, 2, t, lost_since, seg)
        elif fr.face:
            lost_since, lost_flags = None, [False, False]
    return events


def events_json(script: Script, settings: Any | None = None) -> dict[str, Any]:
    from dms.engine.settings import EngineSettings
    from dms.settings import settings_version

    s = settings or EngineSettings()
    return {
        "schema_version": 1,
        "duration_s": round(script.duration_s, 3),
        "engine_settings_version": settings_version(s),
        "events": [e.to_dict() for e in expected_events(script, s)],
    }
