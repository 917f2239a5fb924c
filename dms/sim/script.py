"""The scenario language: one grammar for the engine's stories and the synthetic renderer.

A script is a list of steps separated by ``;`` or new lines; ``#`` starts a comment::

    road 6s
    glance infotainment 4s
    expect distraction/long_glance L1 9.1..9.8
    road 5s; nod x3 over 12s; slump 4s; sunglasses on; hand 1.5s; occlude 3s; away 4s

Durations are ``5s``, ``1.2s``, ``500ms`` or a bare number of seconds. Glance targets are
the engine's glance zones (``ZoneSettings.glance``) written with ``-`` or ``_``
(``left-mirror`` = ``left_mirror``), ``road``, or ``YAW,PITCH[,ROLL]`` in degrees relative to
the neutral pose (yaw inboard = toward the car's centre).

Steps that take time:

==============================  ===========================================================
``road D``                      look at the road
``glance TARGET D``             turn to TARGET, hold, come back; D includes the turns
``nod [xN] [over D]``           N fast nods of ``NOD_DEPTH_DEG``, ``NOD_S`` each; ``over D``
                                spreads them evenly with the road before and after each
``slump D``                     the head drops ``SLUMP_DEPTH_DEG`` fast, stays down, comes back
                                at the end
``away D``                      a turn far toward the side window (``AWAY_TARGET``): the face
                                leaves the camera's view (``FACE_VISIBLE_MAX_DEG``)
``occlude D`` / ``block D``     the face is covered / the camera blocked, head frontal: no face
``lost D``                      no face while frontal (the engine's name for the same thing)
``hand D``                      a hand passes in front of the face (renderer only; the pose is
                                the road's)
``glance_lost TARGET D``        a glance during which the detector loses the face beyond
                                ``GLANCE_LOST_BEYOND_DEG`` of yaw (engine stories only)
``blink [xN] [over D]``         N blinks of ``BLINK_S`` each (lids down ``BLINK_DOWN_S``,
                                shut ``BLINK_SHUT_S``, up ``BLINK_UP_S``), head at the road;
                                ``over D`` spreads them like ``nod xN over D``
``close D``                     eyes shut for D: lids down in ``LID_CLOSE_S``, up in
                                ``LID_OPEN_S`` at the end; the head droops
                                ``CLOSE_DROOP_DEG`` (well inside the road zone)
``yawn D [eyes-closed]``        the mouth opens wide (``mouth_open`` 1) and the head tilts
                                back ``YAWN_PITCH_DEG`` over ``YAWN_OPEN_S``, holds, returns
                                over ``YAWN_CLOSE_S``; ``eyes-closed``: the eyes are shut
                                through the hold
``look TARGET D``               an eyes-only glance: the head stays at the road, the eyes
                                turn to TARGET (clamped to ``EYE_MAX_YAW_DEG`` /
                                ``EYE_MAX_PITCH_DEG`` in the head), hold and come back; D
                                includes the ``SACCADE_S`` saccades. Looking down lowers the
                                upper lid (``LID_DROP_PER_DOWN_DEG`` of openness per degree)
==============================  ===========================================================

Steps that take no time (they apply from that point on):

* ``sunglasses on|off``: dark glasses from now on (drawn by the renderer; in the engine's
  stories the eyes cannot be measured: openness None, confidence 0);
* ``light GAIN [over D]``: renderer only (the pose builder ignores it);
* ``speed KMH|none``, ``steering DEG|none``: the vehicle signals of the engine's stories
  (the renderer's poses carry none; ``none`` = unknown);
* ``expect TYPE[/REASON] [LN[..M]] T0..T1``: the alert the engine must raise, with its
  raise time within ``T0..T1`` seconds from the start of the script (see
  :class:`Expectation`). A script without ``expect`` lines expects no alert at all.

What a step *means* (targets, depths, durations) is defined here; how a head moves through
it (ramps, sway) belongs to each consumer: :class:`dms.sim.scenarios.ScenarioBuilder`
(pose only) and :mod:`dms.synth.script` (the rendered head). The eyes and the mouth are the
same for both: :func:`face_at` gives the ground truth of a step at a time (eye openness 0
shut .. 1 open, the eye-in-head gaze and the mouth's opening). Pure: standard library only.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from dms.errors import InputError

NOD_S = 1.1  # one nod, down and back up (both consumers' profiles sum to this)
NOD_DEPTH_DEG = 22.0  # pitch drop of a nod below neutral
SLUMP_DEPTH_DEG = 38.0
AWAY_TARGET = (-85.0, -5.0)  # (yaw inboard, pitch): over the shoulder, out of the side window
GLANCE_LOST_BEYOND_DEG = 45.0
FACE_VISIBLE_MAX_DEG = 72.0  # head turned further than this from the camera's axis: no face
# eyes and mouth (see face_at); a real blink: ~0.1 s down, ~0.05 s shut, ~0.15 s up
BLINK_DOWN_S, BLINK_SHUT_S, BLINK_UP_S = 0.1, 0.05, 0.15
BLINK_S = BLINK_DOWN_S + BLINK_SHUT_S + BLINK_UP_S
LID_CLOSE_S, LID_OPEN_S = 0.1, 0.15  # lids down / up around a closure (close, yawn)
CLOSE_DROOP_DEG = 4.0  # the head sinks this much while the eyes are closed (road zone: 18)
CLOSE_DROOP_S = 0.5  # ... over this long (and back up over as long at the end)
YAWN_PITCH_DEG = 30.0  # head tilted back in a yawn: beyond the road zone's 25 deg up
YAWN_OPEN_S, YAWN_CLOSE_S = 1.0, 1.0  # mouth opening (and head tilting back) / closing
EYE_MAX_YAW_DEG, EYE_MAX_PITCH_DEG = 35.0, 25.0  # the eyes' reach in the head
SACCADE_S = 0.05  # an eye movement to a target, each way
LID_DROP_PER_DOWN_DEG = 0.012  # openness lost per degree of gaze below straight ahead

REASONS: dict[str, tuple[str, ...]] = {  # alert type -> its reasons, the default first
    "distraction": ("long_glance", "time_sharing"),
    "drowsiness": ("nodding", "microsleep", "sleep", "yawning", "perclos"),
    "slump": ("head_down",),
    "driver_not_visible": ("face_lost",),
    "system_degraded": ("no_face", "camera_lost"),
    "unresponsive": ("eyes_closed",),
    "eyes_not_visible": ("eyes_occluded",),
}
TIMED = ("road", "glance", "nod", "slump", "away", "occlude", "block", "lost", "hand",
         "glance_lost", "blink", "close", "yawn", "look")
INSTANT = ("sunglasses", "light", "speed", "steering", "expect")
VERBS = TIMED + INSTANT


class ScriptError(InputError, ValueError):
    """A script that cannot be parsed; the message names the source, line and step."""


@dataclass(frozen=True, slots=True)
class Step:
    """One step as written, placed in time. Angles are the held target relative to neutral
    (inboard yaw); ``roll_deg`` None = not given. ``value``: sunglasses 1/0, light gain,
    speed in km/h, steering in degrees (None = unknown), ``yawn`` 1 with ``eyes-closed``
    else 0. ``look``: ``yaw_deg``/``pitch_deg`` are the eyes' target in the head (clamped).
    ``nod xN over D`` (``blink xN over D``) becomes N ``nod`` (``blink``) steps with ``road``
    around each, all carrying the text and line written."""

    verb: str
    start_s: float
    duration_s: float
    line: int
    text: str
    where: str = field(repr=False, compare=False)
    target: str | None = None
    yaw_deg: float = 0.0
    pitch_deg: float = 0.0
    roll_deg: float | None = None
    value: float | None = None
    ramp_s: float = 0.0

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s


@dataclass(frozen=True, slots=True)
class Expectation:
    """``expect TYPE[/REASON] [LN[..M]] T0..T1``: an alert of ``type``/``reason`` raised at
    level ``level`` within ``[lo_s, hi_s]`` seconds from the script's start, escalating to
    ``max_level`` at most (``LN`` alone: it stays at N; no level given: both None, not
    checked). ``step`` is the time-taking step written before the line (what causes the
    alert), as written: a whole ``nod x3 over 30s``."""

    type: str
    reason: str
    level: int | None
    max_level: int | None
    lo_s: float
    hi_s: float
    line: int
    text: str
    step: Step

    @property
    def t_s(self) -> float:
        """The window's centre (the ``t_s`` of ``expected_events.json``)."""
        return (self.lo_s + self.hi_s) / 2

    @property
    def tolerance_s(self) -> float:
        return (self.hi_s - self.lo_s) / 2

    def contains(self, t_s: float) -> bool:
        return self.lo_s - 1e-6 <= t_s <= self.hi_s + 1e-6

    def to_dict(self) -> dict[str, Any]:
        """The ``expected_events.json`` record: ``|t - t_s| <= tolerance_s`` is the window."""
        return {"type": self.type, "reason": self.reason, "level": self.level,
                "max_level": self.max_level, "t_s": round(self.t_s, 3),
                "tolerance_s": round(self.tolerance_s, 3), "window_s": [self.lo_s, self.hi_s],
                "start_s": round(self.step.start_s, 3), "step": self.step.text,
                "line": self.line}


@dataclass(frozen=True, slots=True)
class Script:
    steps: tuple[Step, ...]
    expectations: tuple[Expectation, ...] = ()
    text: str = ""

    @property
    def duration_s(self) -> float:
        return max((s.end_s for s in self.steps), default=0.0)


def default_targets() -> dict[str, tuple[float, float]]:
    """``name -> (yaw_inboard_deg, pitch_deg)``: the default glance zones, plus ``road``."""
    from dms.engine.settings import ZoneSettings

    return zone_targets(ZoneSettings().glance)


def zone_targets(zones: Any) -> dict[str, tuple[float, float]]:
    out = {"road": (0.0, 0.0)}
    for z in zones:
        out[z.name] = (float(z.yaw_inboard_deg), float(z.pitch_deg))
    return out


@dataclass(frozen=True, slots=True)
class FaceTruth:
    """The eyes and mouth a step shows at one instant (the same for both eyes).

    ``eye_open``: 0 shut .. 1 fully open; ``gaze_yaw_deg``/``gaze_pitch_deg``: the eyes'
    direction in the head, yaw inboard (toward the car's centre), pitch up; ``mouth_open``:
    0 closed .. 1 a full yawn."""

    eye_open: float = 1.0
    gaze_yaw_deg: float = 0.0
    gaze_pitch_deg: float = 0.0
    mouth_open: float = 0.0


def _ease(x: float) -> float:
    """Smooth 0 -> 1 ramp on x in [0, 1] (clipped outside)."""
    x = min(max(x, 0.0), 1.0)
    return x * x * (3.0 - 2.0 * x)


def _lids(u: float, down_at: float, up_at: float) -> float:
    """Closure 0..1: lids down over ``LID_CLOSE_S`` ending at ``down_at``, up over
    ``LID_OPEN_S`` ending at ``up_at``."""
    return min(_ease((u - down_at + LID_CLOSE_S) / LID_CLOSE_S),
               _ease((up_at - u) / LID_OPEN_S))


def face_at(step: Step, u: float) -> FaceTruth:
    """The eyes and mouth ``u`` seconds into ``step`` (every verb; those that do not move
    the eyes or the mouth give open eyes looking straight ahead and a closed mouth)."""
    d = step.duration_s
    if step.verb == "blink":
        shut = BLINK_DOWN_S + BLINK_SHUT_S
        closure = _ease(u / BLINK_DOWN_S) if u < shut else 1.0 - _ease((u - shut) / BLINK_UP_S)
        return FaceTruth(eye_open=1.0 - closure)
    if step.verb == "close":
        return FaceTruth(eye_open=1.0 - _lids(u, LID_CLOSE_S, d))
    if step.verb == "yawn":
        mouth = min(_ease(u / YAWN_OPEN_S), _ease((d - u) / YAWN_CLOSE_S))
        closure = 0.0
        if step.value:  # eyes shut through the hold
            closure = _lids(u, YAWN_OPEN_S, d - YAWN_CLOSE_S + LID_OPEN_S)
        return FaceTruth(eye_open=1.0 - closure, mouth_open=mouth)
    if step.verb == "look":
        k = min(_ease(u / SACCADE_S), _ease((d - u) / SACCADE_S))
        yaw, pitch = k * step.yaw_deg, k * step.pitch_deg
        return FaceTruth(eye_open=1.0 - LID_DROP_PER_DOWN_DEG * max(0.0, -pitch),
                         gaze_yaw_deg=yaw, gaze_pitch_deg=pitch)
    return FaceTruth()


def head_pitch_k(step: Step, u: float) -> float:
    """How far (0..1) the head has moved toward the step's ``pitch_deg`` for the eye and
    mouth steps (``close``: the droop; ``yawn``: the tilt back); 0 for the others, whose
    motion belongs to each consumer."""
    d = step.duration_s
    if step.verb == "close":
        ramp = min(CLOSE_DROOP_S, d / 2)
        return min(_ease(u / ramp), _ease((d - u) / ramp))
    if step.verb == "yawn":
        return min(_ease(u / YAWN_OPEN_S), _ease((d - u) / YAWN_CLOSE_S))
    return 0.0


# ----------------------------------------------------------------- words

_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_DURATION = re.compile(rf"^{_NUMBER}(s|ms)?$")
_LEVEL = re.compile(r"^L([123])(?:\.\.L?([123]))?$")
_WINDOW = re.compile(rf"^{_NUMBER}s?\.\.{_NUMBER}s?$")


def duration(word: str, where: str) -> float:
    """``5s``, ``1.2s``, ``500ms`` or a bare number of seconds; > 0."""
    m = _DURATION.match(word)
    if not m:
        raise ScriptError(f"{where}: {word!r} is not a duration (e.g. 5s, 1.2s, 500ms)")
    value = float(m.group(1)) * (0.001 if m.group(2) == "ms" else 1.0)
    if value <= 0:
        raise ScriptError(f"{where}: duration {word!r} must be > 0")
    return value


def number(word: str, what: str, where: str) -> float:
    from dms.settings import parse_number

    return parse_number(word, what, where, ScriptError)


def _suggest(word: str, known: list[str]) -> str:
    close = difflib.get_close_matches(word, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def target(word: str, targets: Mapping[str, tuple[float, float]],
           where: str) -> tuple[str, float, float, float | None]:
    """A named target (``-`` or ``_``) or ``YAW,PITCH[,ROLL]`` -> (name, yaw, pitch, roll)."""
    if "," in word:
        parts = word.split(",")
        if len(parts) not in (2, 3):
            raise ScriptError(f"{where}: target {word!r}: expected YAW,PITCH or YAW,PITCH,ROLL")
        vals = [number(p, "angle", where) for p in parts]
        return word, vals[0], vals[1], (vals[2] if len(vals) == 3 else None)
    name = word.replace("-", "_").lower()
    if name not in targets:
        hint = _suggest(name, list(targets)).replace("_", "-")
        known = ", ".join(n.replace("_", "-") for n in targets)
        raise ScriptError(f"{where}: unknown glance target {word!r}{hint}; known: {known}, "
                          "or YAW,PITCH in degrees")
    yaw, pitch = targets[name]
    return name, yaw, pitch, None


# ----------------------------------------------------------------- steps


@dataclass(slots=True)
class _Parser:
    source: str
    targets: Mapping[str, tuple[float, float]]
    t_s: float = 0.0
    steps: list[Step] = field(default_factory=list)
    expect: list[tuple[Step | None, str, int, str, list[str]]] = field(default_factory=list)
    cause: Step | None = None  # the last time-taking step as written (a whole 'nod x3 ...')

    def add(self, proto: Step, duration_s: float, **kw: Any) -> None:
        self.steps.append(replace(proto, start_s=self.t_s, duration_s=duration_s, **kw))
        self.t_s += duration_s

    def step(self, part: str, line: int) -> None:
        where = f"{self.source}: line {line}, step {part!r}"
        words = part.split()
        verb, args = words[0].lower(), words[1:]
        handler = _HANDLERS.get(verb)
        if handler is None:
            raise ScriptError(f"{where}: unknown step {verb!r}{_suggest(verb, list(VERBS))}; "
                              f"known: {', '.join(VERBS)}")
        t0 = self.t_s
        proto = Step(verb, t0, 0.0, line, part, where)
        handler(self, proto, args)
        if self.t_s > t0:
            self.cause = replace(proto, duration_s=self.t_s - t0)


def _one_duration(p: _Parser, s: Step, args: list[str]) -> None:
    if len(args) != 1:
        raise ScriptError(f"{s.where}: expected '{s.verb} DURATION'")
    d = duration(args[0], s.where)
    if s.verb == "slump":
        p.add(s, d, pitch_deg=-SLUMP_DEPTH_DEG)
    elif s.verb == "away":
        p.add(s, d, target="away", yaw_deg=AWAY_TARGET[0], pitch_deg=AWAY_TARGET[1])
    else:
        p.add(s, d)


def _glance(p: _Parser, s: Step, args: list[str]) -> None:
    if len(args) != 2:
        raise ScriptError(f"{s.where}: expected '{s.verb} TARGET DURATION'")
    name, yaw, pitch, roll = target(args[0], p.targets, s.where)
    p.add(s, duration(args[1], s.where), target=name, yaw_deg=yaw, pitch_deg=pitch,
          roll_deg=roll)


def _nod(p: _Parser, s: Step, args: list[str]) -> None:
    """``nod`` and ``blink`` ``[xN] [over D]``: N of them, road spread evenly around each."""
    one_s, pitch = (NOD_S, -NOD_DEPTH_DEG) if s.verb == "nod" else (BLINK_S, 0.0)
    count, over = _nod_args(s, args)
    total = count * one_s if over is None else over
    if total < count * one_s - 1e-9:
        raise ScriptError(f"{s.where}: {count} {s.verb}s need at least {count * one_s:g}s")
    gap = (total - count * one_s) / count
    for _ in range(count):
        if gap > 1e-9:
            p.add(replace(s, verb="road"), gap / 2)
        p.add(s, one_s, pitch_deg=pitch)
        if gap > 1e-9:
            p.add(replace(s, verb="road"), gap / 2)


def _nod_args(s: Step, args: list[str]) -> tuple[int, float | None]:
    """``[xN] [over D]`` -> (N, D or None)."""
    count, over, rest = 1, None, list(args)
    if rest and re.fullmatch(r"x\d+", rest[0]):
        count = int(rest.pop(0)[1:])
        if count < 1:
            raise ScriptError(f"{s.where}: {s.verb} count must be >= 1")
    if rest and rest[0] == "over":
        if len(rest) != 2:
            raise ScriptError(f"{s.where}: expected '{s.verb} xN over DURATION'")
        over, rest = duration(rest[1], s.where), []
    if rest:
        raise ScriptError(f"{s.where}: unexpected {rest[0]!r} (expected '{s.verb} [xN] [over "
                          "DURATION]')")
    return count, over


def _at_least(s: Step, d: float, least_s: float, why: str) -> float:
    if d < least_s - 1e-9:
        raise ScriptError(f"{s.where}: {s.verb} needs at least {least_s:g}s ({why})")
    return d


def _close(p: _Parser, s: Step, args: list[str]) -> None:
    if len(args) != 1:
        raise ScriptError(f"{s.where}: expected 'close DURATION'")
    d = _at_least(s, duration(args[0], s.where), LID_CLOSE_S + LID_OPEN_S,
                  "lids down and up")
    p.add(s, d, pitch_deg=-CLOSE_DROOP_DEG)


def _yawn(p: _Parser, s: Step, args: list[str]) -> None:
    if len(args) not in (1, 2) or (len(args) == 2 and args[1] != "eyes-closed"):
        raise ScriptError(f"{s.where}: expected 'yawn DURATION' or 'yawn DURATION eyes-closed'")
    least = YAWN_OPEN_S + YAWN_CLOSE_S + 0.2
    d = _at_least(s, duration(args[0], s.where), least, "open, hold, close")
    p.add(s, d, pitch_deg=YAWN_PITCH_DEG, value=1.0 if len(args) == 2 else 0.0)


def _look(p: _Parser, s: Step, args: list[str]) -> None:
    if len(args) != 2:
        raise ScriptError(f"{s.where}: expected 'look TARGET DURATION'")
    name, yaw, pitch, roll = target(args[0], p.targets, s.where)
    if roll is not None:
        raise ScriptError(f"{s.where}: the eyes do not roll: give 'look YAW,PITCH DURATION'")
    d = _at_least(s, duration(args[1], s.where), 2 * SACCADE_S + 0.1, "saccades out and back")
    p.add(s, d, target=name,
          yaw_deg=max(-EYE_MAX_YAW_DEG, min(EYE_MAX_YAW_DEG, yaw)),
          pitch_deg=max(-EYE_MAX_PITCH_DEG, min(EYE_MAX_PITCH_DEG, pitch)))


def _sunglasses(p: _Parser, s: Step, args: list[str]) -> None:
    if len(args) != 1 or args[0] not in ("on", "off"):
        raise ScriptError(f"{s.where}: expected 'sunglasses on' or 'sunglasses off'")
    p.steps.append(replace(s, value=1.0 if args[0] == "on" else 0.0))


def _light(p: _Parser, s: Step, args: list[str]) -> None:
    if len(args) not in (1, 3) or (len(args) == 3 and args[1] != "over"):
        raise ScriptError(f"{s.where}: expected 'light GAIN [over DURATION]'")
    gain = number(args[0], "gain", s.where)
    if not 0.05 <= gain <= 4.0:
        raise ScriptError(f"{s.where}: gain {gain:g} outside [0.05, 4]")
    ramp = duration(args[2], s.where) if len(args) == 3 else 0.0
    p.steps.append(replace(s, value=gain, ramp_s=ramp))


def _signal(p: _Parser, s: Step, args: list[str]) -> None:
    if len(args) != 1:
        raise ScriptError(f"{s.where}: expected '{s.verb} VALUE' or '{s.verb} none'")
    value = None if args[0] == "none" else number(args[0], s.verb, s.where)
    p.steps.append(replace(s, value=value))


def _expect(p: _Parser, s: Step, args: list[str]) -> None:
    # checked once the whole script is known (the window must lie within it)
    p.expect.append((p.cause, s.where, s.line, s.text, args))


_HANDLERS: dict[str, Callable[[_Parser, Step, list[str]], None]] = {
    "road": _one_duration, "slump": _one_duration, "away": _one_duration,
    "occlude": _one_duration, "block": _one_duration, "lost": _one_duration,
    "hand": _one_duration, "glance": _glance, "glance_lost": _glance, "nod": _nod,
    "blink": _nod, "close": _close, "yawn": _yawn, "look": _look,
    "sunglasses": _sunglasses, "light": _light, "speed": _signal, "steering": _signal,
    "expect": _expect,
}


# ----------------------------------------------------------------- expectations


def _alert(word: str, where: str) -> tuple[str, str]:
    type_, _, reason = word.lower().partition("/")
    if type_ not in REASONS:
        raise ScriptError(f"{where}: unknown alert type {type_!r}{_suggest(type_, list(REASONS))}"
                          f"; known: {', '.join(REASONS)}")
    reasons = REASONS[type_]
    if not reason:
        if type_ == "distraction":
            raise ScriptError(f"{where}: say which distraction: distraction/long_glance or "
                              "distraction/time_sharing")
        return type_, reasons[0]
    if reason not in reasons:
        raise ScriptError(f"{where}: {type_} has no reason {reason!r}; known: "
                          f"{', '.join(reasons)}")
    return type_, reason


_USAGE = "expected 'expect TYPE[/REASON] [LN[..M]] T0..T1'"


def _expectation(step: Step | None, where: str, line: int, text: str, args: list[str],
                 duration_s: float) -> Expectation:
    if not args:
        raise ScriptError(f"{where}: {_USAGE}")
    if step is None:
        raise ScriptError(f"{where}: an expect line follows the step that causes the alert")
    type_, reason = _alert(args[0], where)
    level, max_level, (lo, hi) = _level_and_window(args[1:], where)
    if level is not None and max_level is not None and max_level < level:
        raise ScriptError(f"{where}: the highest level L{max_level} is below L{level}")
    if not lo <= hi <= duration_s:
        raise ScriptError(f"{where}: window {lo:g}..{hi:g} must be ordered and end by the "
                          f"script's end ({duration_s:g} s)")
    return Expectation(type_, reason, level, max_level, lo, hi, line, text, step)


def _level_and_window(words: list[str], where: str
                      ) -> tuple[int | None, int | None, tuple[float, float]]:
    """``[LN[..M]] T0..T1`` in any order -> (N, M, (T0, T1))."""
    level = max_level = None
    window: tuple[float, float] | None = None
    for word in words:
        lv, win = _LEVEL.match(word), _WINDOW.match(word)
        if lv and level is None:
            level = int(lv.group(1))
            max_level = int(lv.group(2)) if lv.group(2) else level
        elif win and window is None:
            window = (float(win.group(1)), float(win.group(2)))
        else:
            raise ScriptError(f"{where}: unexpected {word!r}; {_USAGE}")
    if window is None:
        raise ScriptError(f"{where}: no time window T0..T1 (seconds from the start); {_USAGE}")
    return level, max_level, window


# ----------------------------------------------------------------- the parser


def parse(text: str, *, source: str = "script",
          targets: Mapping[str, tuple[float, float]] | None = None) -> Script:
    """Parse a script (the module doc). Errors name ``source``, the line and the step.
    ``targets``: named glance targets (default: :func:`default_targets`)."""
    p = _Parser(source, default_targets() if targets is None else targets)
    for n, raw_line in enumerate(text.splitlines(), start=1):
        for part in (x.strip() for x in raw_line.split("#", 1)[0].split(";")):
            if part:
                p.step(part, n)
    if p.t_s <= 0:
        raise ScriptError(f"{source}: the script has no step that takes time (e.g. 'road 5s')")
    expectations = [_expectation(*e, duration_s=p.t_s) for e in p.expect]
    return Script(tuple(p.steps), tuple(expectations), text)
