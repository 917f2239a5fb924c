"""Synthetic driving stories: pure sequence builders for tests, demos and the benchmark.

A story is a list of segments in seconds::

    ScenarioBuilder(settings, rate_hz=20).road(5).glance("left_mirror", 1.2).road(3).build()

or the same in the scenario language (:mod:`dms.sim.script`, shared with the renderer):
``ScenarioBuilder(settings).script("road 5s; glance left-mirror 1.2s; road 3s").build()``.
Glance targets are the named zones of the settings (``zones.glance``) or
``(yaw_inboard_deg, pitch_deg)`` pairs, relative to the simulated driver's neutral pose, which
defaults to the mount prior. Each segment starts and ends with the head on the road: a glance
ramps out over ``turn_s``, holds, and ramps back over ``turn_s`` so that it is back at the road
pose exactly at its end.

Everything is deterministic for a given ``seed``: Gaussian pose noise (``noise_deg`` per
axis), dropped frames (``drop_prob``: no observation at all) and single-frame outliers
(``outlier_prob``: a pose ``outlier_deg`` off in a random direction).

Every observation with a face carries ``eyes`` (:class:`dms.types.EyeObservation`) measured
from the script's truth (:func:`dms.sim.script.face_at`: blinks, closures, yawns,
eyes-only ``look`` glances): openness = the story's open-eye baseline (seeded, within
``EYE_BASELINE_RANGE``) x the truth's ``eye_open`` + ``eye_noise``; confidence
``EYE_CONFIDENCE``, falling beyond ``EYE_CONFIDENCE_YAW_DEG`` of head yaw; gaze with
``gaze_noise_deg``; the mouth with ``mouth_noise``. Behind sunglasses the eyes are not
measurable (openness None, confidence 0). The eye noise comes from its own generator, so
the poses are exactly those of a story without eyes.
"""

from __future__ import annotations

import dataclasses
import io
import math
import random
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from dms.engine.engine import Engine
from dms.engine.events import Event, EventType, Phase
from dms.engine.filter import settle_delay_bound_s, smoothing_alpha
from dms.engine.settings import EngineSettings, GlanceZone
from dms.geometry import euler_from_rotation, rotation_from_euler
from dms.sim.script import (
    AWAY_TARGET,
    CLOSE_DROOP_DEG,
    FACE_VISIBLE_MAX_DEG,
    GLANCE_LOST_BEYOND_DEG,
    NOD_DEPTH_DEG,
    Expectation,
    FaceTruth,
    Step,
    face_at,
    head_pitch_k,
    parse,
    zone_targets,
)
from dms.types import EyeObservation, HeadPose, Observation

EYE_BASELINE_RANGE = (0.24, 0.34)  # a driver's open-eye openness, drawn per story
EYE_CONFIDENCE = 0.9  # eye measurement confidence on a face turned less than ...
EYE_CONFIDENCE_YAW_DEG = 40.0  # ... this (camera-frame |yaw|); falls linearly beyond ...
EYE_CONFIDENCE_MIN = 0.2  # ... to this at FACE_VISIBLE_MAX_DEG
EYE_SEED = 0xE7E5  # mixed with the story's seed: the eyes' own noise generator


@dataclass(frozen=True, slots=True)
class Segment:
    """One piece of a story. Angles are the target, relative to neutral (inboard yaw); for
    ``look`` they are the eyes' target in the head (the head stays at the road). ``eyes``:
    the step whose eyes and mouth the segment shows (:func:`dms.sim.script.face_at`;
    None = open eyes, straight ahead)."""

    kind: str  # road | glance | nod | slump | lost | glance_lost | away | blink | close |
    # yawn | look
    start_s: float
    end_s: float
    target: str | None = None
    yaw_inboard_deg: float = 0.0
    pitch_deg: float = 0.0
    turn_s: float = 0.0  # ramp out (glance) or drop time (nod, slump)
    rise_s: float = 0.0  # ramp back up (nod, slump)
    lost_beyond_deg: float = 90.0  # glance_lost: face lost beyond this inboard yaw
    # away: face lost while the head's forward axis is further than this from the camera's
    lost_facing_deg: float = 180.0
    speed_kmh: float | None = None
    steering_deg: float | None = None
    sunglasses: bool = False  # the eyes cannot be measured
    eyes: Step | None = field(default=None, repr=False, compare=False)

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@dataclass(frozen=True, slots=True)
class Scenario:
    observations: tuple[Observation, ...]
    segments: tuple[Segment, ...]
    rate_hz: float
    settings: EngineSettings = field(compare=False)
    expectations: tuple[Expectation, ...] = ()  # the script's ``expect`` lines

    @property
    def duration_s(self) -> float:
        return self.segments[-1].end_s if self.segments else 0.0

    def segments_of(self, kind: str) -> list[Segment]:
        return [s for s in self.segments if s.kind == kind]


class ScenarioBuilder:
    """Fluent builder of a :class:`Scenario`; every method takes seconds."""

    def __init__(self, settings: EngineSettings | None = None, *, rate_hz: float = 20.0,
                 noise_deg: float = 0.0, drop_prob: float = 0.0, outlier_prob: float = 0.0,
                 outlier_deg: float = 40.0, seed: int = 0, speed_kmh: float | None = 80.0,
                 steering_deg: float | None = None, turn_s: float = 0.25,
                 neutral_deg: tuple[float, float, float] | None = None,
                 right_hand_drive: bool | None = None, confidence: float = 0.95,
                 eye_noise: float = 0.01, gaze_noise_deg: float = 2.5,
                 mouth_noise: float = 0.02) -> None:
        self.settings = settings or EngineSettings()
        m = self.settings.mount
        self.rate_hz = rate_hz
        self.noise_deg, self.drop_prob = noise_deg, drop_prob
        self.outlier_prob, self.outlier_deg = outlier_prob, outlier_deg
        self.seed = seed
        self.turn_s = turn_s
        self.confidence = confidence
        self.eye_noise, self.gaze_noise_deg = eye_noise, gaze_noise_deg
        self.mouth_noise = mouth_noise
        self._glasses = False
        self.rhd = (self.settings.policy.right_hand_drive if right_hand_drive is None
                    else right_hand_drive)
        p, y, r = neutral_deg or (m.neutral_pitch_deg, m.neutral_yaw_deg, m.neutral_roll_deg)
        self.R_neutral = rotation_from_euler(p, y, r)
        self._speed, self._steer = speed_kmh, steering_deg
        self._segments: list[Segment] = []
        self._expectations: list[Expectation] = []
        self._t = 0.0

    # ----------------------------------------------------------------- segments

    def _add(self, kind: str, duration_s: float, **kw: object) -> ScenarioBuilder:
        if duration_s <= 0:
            raise ValueError(f"{kind}: duration must be > 0, got {duration_s}")
        self._segments.append(Segment(kind, self._t, self._t + duration_s,
                                      speed_kmh=self._speed, steering_deg=self._steer,
                                      sunglasses=self._glasses,
                                      **kw))  # type: ignore[arg-type]
        self._t += duration_s
        return self

    def target_deg(self, target: str | tuple[float, float]) -> tuple[float, float]:
        """(yaw_inboard_deg, pitch_deg) of a named zone or an explicit pair."""
        if isinstance(target, str):
            for z in self.settings.zones.glance:
                if z.name == target:
                    return z.yaw_inboard_deg, z.pitch_deg
            names = ", ".join(z.name for z in self.settings.zones.glance)
            raise ValueError(f"unknown glance target {target!r} (known: {names})")
        return float(target[0]), float(target[1])

    def road(self, duration_s: float) -> ScenarioBuilder:
        return self._add("road", duration_s)

    @property
    def t_s(self) -> float:
        """End of the story so far."""
        return self._t

    def road_until(self, t_s: float) -> ScenarioBuilder:
        """Road up to ``t_s`` (at least one frame's worth)."""
        return self.road(max(t_s - self._t, 0.1))

    def glance(self, target: str | tuple[float, float], duration_s: float,
               turn_s: float | None = None) -> ScenarioBuilder:
        yaw, pitch = self.target_deg(target)
        turn = self.turn_s if turn_s is None else turn_s
        return self._add("glance", duration_s, target=str(target), yaw_inboard_deg=yaw,
                         pitch_deg=pitch, turn_s=min(turn, duration_s / 2))

    def glance_lost(self, target: str | tuple[float, float], duration_s: float,
                    lost_beyond_deg: float = 45.0) -> ScenarioBuilder:
        """A glance during which the detector loses the face beyond ``lost_beyond_deg``."""
        yaw, pitch = self.target_deg(target)
        return self._add("glance_lost", duration_s, target=str(target),
                         lost_beyond_deg=lost_beyond_deg, yaw_inboard_deg=yaw, pitch_deg=pitch,
                         turn_s=min(self.turn_s, duration_s / 2))

    def nod(self, depth_deg: float = NOD_DEPTH_DEG, drop_s: float = 0.3, hold_s: float = 0.4,
            rise_s: float = 0.4) -> ScenarioBuilder:
        """Fast pitch drop to ``-depth_deg``, short hold, return."""
        return self._add("nod", drop_s + hold_s + rise_s, pitch_deg=-depth_deg, turn_s=drop_s,
                         rise_s=rise_s)

    def slump(self, duration_s: float, depth_deg: float = 35.0,
              drop_s: float = 0.4, rise_s: float = 0.8) -> ScenarioBuilder:
        """Head drops fast and stays down; it comes back up over ``rise_s`` at the end."""
        return self._add("slump", duration_s, pitch_deg=-depth_deg, turn_s=drop_s,
                         rise_s=rise_s)

    def lost(self, duration_s: float) -> ScenarioBuilder:
        """No face at all (camera blocked, driver out of view) while frontal."""
        return self._add("lost", duration_s)

    def close(self, duration_s: float, droop_deg: float = CLOSE_DROOP_DEG) -> ScenarioBuilder:
        """Eyes shut for ``duration_s``; the head droops ``droop_deg``."""
        return self._add("close", duration_s, pitch_deg=-droop_deg,
                         eyes=_eye_step("close", duration_s))

    def sunglasses(self, on: bool) -> ScenarioBuilder:
        """From now on the eyes are (not) hidden behind dark glasses."""
        self._glasses = on
        return self

    def speed(self, kmh: float | None) -> ScenarioBuilder:
        self._speed = kmh
        return self

    def steering(self, deg: float | None) -> ScenarioBuilder:
        self._steer = deg
        return self

    def away(self, duration_s: float, target: tuple[float, float] = AWAY_TARGET,
             facing_max_deg: float = FACE_VISIBLE_MAX_DEG) -> ScenarioBuilder:
        """A turn far toward the side window; the face is lost while the head's forward axis
        is more than ``facing_max_deg`` from the camera's (as the renderer decides it)."""
        yaw, pitch = self.target_deg(target)
        return self._add("away", duration_s, target="away", yaw_inboard_deg=yaw,
                         pitch_deg=pitch, turn_s=min(self.turn_s, duration_s / 2),
                         lost_facing_deg=facing_max_deg)

    def script(self, text: str, *, source: str = "script") -> ScenarioBuilder:
        """Append a script in the scenario language (:mod:`dms.sim.script`), e.g.
        ``"road 5s; glance left-mirror 1.2s; nod x3 over 30s; slump 5s; lost 3s; speed 0"``.
        Steps that only matter to the renderer (``hand``, ``light``) keep their time on the
        road or take none; ``occlude``/``block`` are ``lost``; ``sunglasses`` hide the
        eyes. The
        script's ``expect`` lines, shifted to where the script starts, go into the
        scenario's ``expectations``. Errors: :class:`dms.sim.script.ScriptError`."""
        t0 = self._t
        parsed = parse(text, source=source, targets=zone_targets(self.settings.zones.glance))
        for step in parsed.steps:
            self._apply(step)
        self._expectations.extend(
            dataclasses.replace(e, lo_s=e.lo_s + t0, hi_s=e.hi_s + t0)
            for e in parsed.expectations)
        return self

    def _apply(self, step: Step) -> None:
        v, d = step.verb, step.duration_s
        target = step.target if step.target in self._zone_names() else (
            step.yaw_deg, step.pitch_deg)
        moves: dict[str, Callable[[], object]] = {
            "road": lambda: self.road(d), "hand": lambda: self.road(d),
            "lost": lambda: self.lost(d), "occlude": lambda: self.lost(d),
            "block": lambda: self.lost(d),
            "glance": lambda: self.glance(target, d),
            "glance_lost": lambda: self.glance_lost(target, d, GLANCE_LOST_BEYOND_DEG),
            "away": lambda: self.away(d, (step.yaw_deg, step.pitch_deg)),
            "nod": lambda: self.nod(-step.pitch_deg),
            "slump": lambda: self.slump(d, -step.pitch_deg),
            "sunglasses": lambda: self.sunglasses(bool(step.value)),
            "speed": lambda: self.speed(step.value),
            "steering": lambda: self.steering(step.value),
        }
        if v in ("blink", "close", "yawn", "look"):
            self._add(v, d, target=step.target, yaw_inboard_deg=step.yaw_deg,
                      pitch_deg=step.pitch_deg, eyes=step)
        elif v in moves:
            moves[v]()
        # light, expect: nothing for a story

    def _zone_names(self) -> set[str]:
        return {z.name for z in self.settings.zones.glance}

    # ----------------------------------------------------------------- frames

    def _relative(self, seg: Segment, u: float) -> tuple[float, float] | None:
        """(yaw_inboard, pitch) at local time ``u`` in a segment; None = face lost."""
        d, turn = seg.duration_s, seg.turn_s
        if seg.kind in ("road", "blink", "look"):  # blink, look: only the eyes move
            return 0.0, 0.0
        if seg.kind == "lost":
            return None
        if seg.kind in ("glance", "glance_lost", "away"):
            return self._turned(seg, u)
        if seg.kind in ("nod", "slump"):
            k = max(0.0, min(u / turn, 1.0, (d - u) / seg.rise_s))
            return 0.0, k * seg.pitch_deg
        if seg.kind in ("close", "yawn"):  # the droop / the tilt back
            assert seg.eyes is not None
            return 0.0, head_pitch_k(seg.eyes, u) * seg.pitch_deg
        raise ValueError(f"unknown segment kind {seg.kind}")

    @staticmethod
    def _turned(seg: Segment, u: float) -> tuple[float, float] | None:
        """A glance's ramp out, hold and ramp back; None where a glance_lost loses the face."""
        d, turn = seg.duration_s, seg.turn_s
        k = max(min(u / turn, 1.0, (d - u) / turn), 0.0) if turn > 0 else 1.0
        pose = (k * seg.yaw_inboard_deg, k * seg.pitch_deg)
        if seg.kind == "glance_lost" and abs(pose[0]) > seg.lost_beyond_deg:
            return None
        return pose

    def build(self) -> Scenario:
        rng = random.Random(self.seed)
        nrng = np.random.default_rng(self.seed)
        erng = np.random.default_rng([self.seed, EYE_SEED])  # apart: the poses stay as they were
        baseline = float(erng.uniform(*EYE_BASELINE_RANGE))
        obs: list[Observation] = []
        total = self._t
        n_frames = int(math.floor(total * self.rate_hz + 1e-9))
        seg_i = 0
        for k in range(n_frames):
            t = k / self.rate_hz
            while seg_i < len(self._segments) - 1 and t >= self._segments[seg_i].end_s:
                seg_i += 1
            seg = self._segments[seg_i]
            if self.drop_prob and rng.random() < self.drop_prob:
                continue
            pose = self._pose(seg, t, rng, nrng)
            eyes = None if pose is None else self._eyes(seg, t, pose, baseline, erng)
            obs.append(Observation(t, pose, speed_kmh=seg.speed_kmh,
                                   steering_deg=seg.steering_deg, eyes=eyes))
        return Scenario(tuple(obs), tuple(self._segments), self.rate_hz, self.settings,
                        tuple(self._expectations))

    def _pose(self, seg: Segment, t: float, rng: random.Random,
              nrng: np.random.Generator) -> HeadPose | None:
        """The observed pose at ``t`` (noise, outliers), or None when the face is lost."""
        rel = self._relative(seg, t - seg.start_s)
        noise = nrng.normal(0.0, self.noise_deg, 3) if self.noise_deg else np.zeros(3)
        if rel is None:
            return None
        yaw_in, pitch = rel
        yaw = -yaw_in if self.rhd else yaw_in
        R = self.R_neutral @ rotation_from_euler(pitch, yaw, 0.0)
        if _facing_deg(R) > seg.lost_facing_deg:  # away: out of the camera's view
            return None
        if self.outlier_prob and rng.random() < self.outlier_prob:
            direction = nrng.normal(size=3)
            noise = noise + self.outlier_deg * direction / np.linalg.norm(direction)
        if noise.any():
            R = R @ rotation_from_euler(*noise)
        p, y, r = euler_from_rotation(R)
        return HeadPose(R, p, y, r, self.confidence)


    def _eyes(self, seg: Segment, t: float, pose: HeadPose, baseline: float,
              erng: np.random.Generator) -> EyeObservation:
        """The eyes measured on a visible face (see the module doc)."""
        truth = FaceTruth() if seg.eyes is None else face_at(seg.eyes, t - seg.start_s)
        n = erng.normal(0.0, 1.0, 5)  # right, left, gaze yaw, gaze pitch, mouth
        mouth = max(0.0, truth.mouth_open + self.mouth_noise * float(n[4]))
        if seg.sunglasses:
            return EyeObservation(None, None, 0.0, mouth_open=mouth)
        r, lft = (max(0.0, baseline * truth.eye_open + self.eye_noise * float(v))
                  for v in n[:2])
        beyond = max(0.0, abs(pose.yaw_deg) - EYE_CONFIDENCE_YAW_DEG) / (
            FACE_VISIBLE_MAX_DEG - EYE_CONFIDENCE_YAW_DEG)
        conf = max(EYE_CONFIDENCE_MIN, EYE_CONFIDENCE - beyond * (
            EYE_CONFIDENCE - EYE_CONFIDENCE_MIN))
        yaw = -truth.gaze_yaw_deg if self.rhd else truth.gaze_yaw_deg
        return EyeObservation(r, lft, conf, yaw + self.gaze_noise_deg * float(n[2]),
                              truth.gaze_pitch_deg + self.gaze_noise_deg * float(n[3]), mouth)


def _eye_step(verb: str, duration_s: float, yaw_deg: float = 0.0, pitch_deg: float = 0.0,
              value: float | None = None) -> Step:
    """A grammar step for the builder's own eye methods (what :func:`face_at` reads)."""
    return Step(verb, 0.0, duration_s, 0, verb, "builder", yaw_deg=yaw_deg,
                pitch_deg=pitch_deg, value=value)


def _facing_deg(R: np.ndarray) -> float:
    """Angle between the head's forward axis and the camera's, degrees."""
    return math.degrees(math.acos(max(-1.0, min(1.0, float(R[2, 2])))))


def build_script(text: str, settings: EngineSettings | None = None, *, source: str = "script",
                 **builder_kw: object) -> Scenario:
    """A scenario from a script (:mod:`dms.sim.script`); ``builder_kw`` go to
    :class:`ScenarioBuilder`."""
    builder = ScenarioBuilder(settings, **builder_kw)  # type: ignore[arg-type]
    return builder.script(text, source=source).build()


# ----------------------------------------------------------------- running and timing


def run(scenario: Scenario, engine: Engine | None = None) -> list[Event]:
    """All events of a scenario through a fresh Engine (or the one given)."""
    eng = engine or Engine(scenario.settings)
    events: list[Event] = []
    for o in scenario.observations:
        events.extend(eng.step(o).events)
    return events


def raised(events: Iterable[Event], type_: EventType | None = None) -> list[Event]:
    return [e for e in events if e.phase is Phase.RAISED and (type_ is None or e.type is type_)]


def crossing_delay_bound_s(settings: EngineSettings, amplitude_deg: float, threshold_deg: float,
                           turn_s: float, rate_hz: float) -> float:
    """Upper bound on how long after a glance starts the filtered pose crosses
    ``threshold_deg`` for a linear ramp of ``turn_s`` to ``amplitude_deg``.

    A first-order low-pass with time constant tau lags a ramp by at most tau (the discrete
    filter too: its steady ramp lag is (1 - alpha) / alpha * dt = tau). So the crossing comes
    by ``turn_s * fraction + tau`` if that is within the ramp; otherwise, at the ramp's end at
    most ``min(1, tau / turn_s)`` of the motion is left, which then shrinks by ``1 - alpha``
    per frame. Plus one frame of sampling, and one held frame when a step is so fast that it
    looks like an outlier. tau and alpha are taken at ``min_cutoff_hz``; the adaptive cutoff
    only makes the filter faster."""
    f = settings.filter
    dt = 1.0 / rate_hz
    frac = min(threshold_deg / amplitude_deg, 0.999)
    tau = 1.0 / (2.0 * math.pi * f.min_cutoff_hz)
    held = turn_s <= 0 or amplitude_deg * dt / turn_s >= f.outlier_min_jump_deg
    if held:
        return settle_delay_bound_s(f, frac, dt) + 2 * dt
    if turn_s * frac + tau <= turn_s:
        return turn_s * frac + tau + dt
    left = min(1.0, tau / turn_s)  # share of the motion not yet covered at the ramp's end
    keep = 1.0 - smoothing_alpha(dt, f.min_cutoff_hz)
    steps = max(0, math.ceil(math.log((1.0 - frac) / left) / math.log(keep)))
    return turn_s + steps * dt + dt


def long_glance_window_s(settings: EngineSettings, seg: Segment,
                         rate_hz: float) -> tuple[float, float]:
    """[earliest, latest] time a long-glance alert may be raised for glance ``seg``.

    The alert is due ``long_glance_s`` after the filtered pose leaves the road zone; that
    happens no earlier than the glance start and no later than the crossing bound of the
    first limit the glance crosses."""
    z = settings.zones
    yaw_lim = z.yaw_inboard_deg if seg.yaw_inboard_deg >= 0 else z.yaw_outboard_deg
    pitch_lim = z.pitch_up_deg if seg.pitch_deg >= 0 else z.pitch_down_deg
    # the limit crossed first, as a fraction of the motion (the ramp is linear in both axes)
    frac = min(yaw_lim / abs(seg.yaw_inboard_deg) if seg.yaw_inboard_deg else math.inf,
               pitch_lim / abs(seg.pitch_deg) if seg.pitch_deg else math.inf)
    amp = math.hypot(seg.yaw_inboard_deg, seg.pitch_deg)
    late = crossing_delay_bound_s(settings, amp, min(frac, 0.999) * amp, seg.turn_s, rate_hz)
    ls = settings.policy.long_glance_s
    return seg.start_s + ls, seg.start_s + ls + late


# ----------------------------------------------------------------- the library of stories


def library(settings: EngineSettings | None = None, seed: int = 0,
            rate_hz: float = 20.0) -> dict[str, Scenario]:
    """Named 120 s stories used by the tests, the docs and ``dms scenarios write``."""
    s = settings or EngineSettings()
    p = s.policy

    def b(**kw: object) -> ScenarioBuilder:
        return ScenarioBuilder(s, rate_hz=rate_hz, seed=seed, **kw)  # type: ignore[arg-type]

    vats_glance = 1.8
    vats_gap = 0.5 * p.vats_reset_on_road_s  # back on the road, but not long enough to reset
    vats = b().road(10)
    while vats.t_s < 100:
        vats.glance("infotainment", vats_glance).road(vats_gap)
    mirrors = b().road(5)
    for _ in range(12):
        mirrors.glance("left_mirror", 0.8).road(4).glance("rearview_mirror", 0.7).road(3)
    info = b().road(5)
    for _ in range(19):
        info.glance("infotainment", 1.5).road(p.vats_reset_on_road_s + 2.0)
    nods = b().road(10)
    for _ in range(p.nods_for_alert):
        nods.nod().road(8)
    return {
        "attentive": b(noise_deg=1.0).road(120).build(),
        "mirror_checks": mirrors.road_until(120).build(),
        "infotainment_short": info.road_until(120).build(),
        "long_glance": b().road(20).glance("infotainment", 4.0).road(96).build(),
        "vats": vats.road_until(120).build(),
        "nodding": nods.road_until(120).build(),
        "slump": b().road(20).slump(8.0).road(92).build(),
        "face_lost_turning": b().road(20).glance_lost("passenger", 5.0).road(95).build(),
        "face_lost_frontal": b().road(20).lost(15.0).road(85).build(),
        "noisy_drops": b(noise_deg=1.5, drop_prob=0.1, outlier_prob=0.01).road(20)
        .glance("left_mirror", 1.0).road(10).glance("infotainment", 4.0).road(85).build(),
    }


def csv_text(observations: Sequence[Observation]) -> str:
    """Observations as a poses CSV (the ``dms replay --poses`` format)."""
    out = io.StringIO()
    out.write("t,yaw,pitch,roll,face,confidence,speed_kmh,steering_deg\n")

    def f(v: float | None, nd: int = 3) -> str:
        return "" if v is None else f"{v:.{nd}f}"

    for o in observations:
        if o.pose is None:
            out.write(f"{o.t_s:.4f},,,,0,,{f(o.speed_kmh, 1)},{f(o.steering_deg, 1)}\n")
        else:
            p = o.pose
            out.write(f"{o.t_s:.4f},{p.yaw_deg:.3f},{p.pitch_deg:.3f},{p.roll_deg:.3f},1,"
                      f"{p.confidence:.3f},{f(o.speed_kmh, 1)},{f(o.steering_deg, 1)}\n")
    return out.getvalue()


# ----------------------------------------------------------------- benchmark


@dataclass(frozen=True, slots=True)
class BenchResult:
    scenarios: int
    long_glances: int
    latencies_s: tuple[float, ...]  # distraction alert time - glance start, per long glance
    long_as_slump: int  # long glances straight down, alerted as slump (head down) instead
    missed_long_glances: int  # neither
    short_glances: int
    false_alerts: dict[str, int]  # alerts raised outside long glances, per event type
    scenarios_with_false_alert: int

    @property
    def latency_median_s(self) -> float:
        return float(np.median(self.latencies_s)) if self.latencies_s else math.nan

    @property
    def latency_max_s(self) -> float:
        return max(self.latencies_s) if self.latencies_s else math.nan

    @property
    def false_alert_rate(self) -> float:
        """False alerts (any type) per short glance."""
        return sum(self.false_alerts.values()) / max(self.short_glances, 1)

    def to_dict(self) -> dict[str, object]:
        return {"scenarios": self.scenarios, "long_glances": self.long_glances,
                "long_as_slump": self.long_as_slump,
                "missed_long_glances": self.missed_long_glances,
                "latency_median_s": round(self.latency_median_s, 3),
                "latency_max_s": round(self.latency_max_s, 3),
                "latency_min_s": round(min(self.latencies_s), 3) if self.latencies_s else None,
                "short_glances": self.short_glances,
                "false_alerts": dict(self.false_alerts),
                "false_alert_rate": round(self.false_alert_rate, 5),
                "scenarios_with_false_alert": self.scenarios_with_false_alert}


def bench_scenario(i: int, seed: int, settings: EngineSettings) -> Scenario:
    """Scenario ``i`` of the benchmark suite: noisy (0.3-2 deg), 0-10 % dropped frames, 0-1 %
    outliers, 20/25/30 Hz. Short glances (0.4-1.95 s) to random zones, spaced so that time
    sharing cannot fire; odd ``i`` end with one long glance (3.5-8 s) to a zone outside the
    road zone."""
    rng = random.Random(seed * 100_003 + i)
    zones = [z.name for z in settings.zones.glance]
    p = settings.policy
    b = ScenarioBuilder(settings, rate_hz=rng.choice([20.0, 25.0, 30.0]),
                        noise_deg=rng.uniform(0.3, 2.0), drop_prob=rng.uniform(0.0, 0.1),
                        outlier_prob=rng.uniform(0.0, 0.01), seed=rng.randrange(1 << 30),
                        turn_s=rng.uniform(0.15, 0.4))
    b.road(rng.uniform(3.0, 8.0))
    horizon = 60.0 if i % 2 else 90.0
    while b.t_s < horizon:
        b.glance(rng.choice(zones), rng.uniform(0.4, 1.95))
        b.road(rng.uniform(p.vats_reset_on_road_s + 0.5, 8.0))
    if i % 2:  # a long glance to a target outside the road zone (not the cluster)
        away = [z.name for z in settings.zones.glance if not _on_road_zone(settings, z)]
        b.glance(rng.choice(away), rng.uniform(3.5, 8.0)).road(10.0)
    return b.build()


def _on_road_zone(settings: EngineSettings, zone: GlanceZone) -> bool:
    from dms.engine.policy import is_on_road, road_limits

    limits = road_limits(settings.zones, None, False)
    return is_on_road(True, zone.yaw_inboard_deg, zone.pitch_deg, settings.zones, limits)


def run_bench(n: int = 200, seed: int = 0, settings: EngineSettings | None = None,
              progress: Callable[[int, int], None] | None = None) -> BenchResult:
    """Long-distraction latency and false alerts over ``n`` generated scenarios.

    An alert raised from a long glance's start to 1 s after its end belongs to it; any other
    raised alert is false (the short glances are spaced so no rule should fire).
    ``progress(done, n)`` is called after each scenario."""
    s = settings or EngineSettings()
    tally = _BenchTally()
    for i in range(n):
        sc = bench_scenario(i, seed, s)
        tally.add(sc, raised(run(sc)), s.policy.long_glance_s)
        if progress is not None:
            progress(i + 1, n)
    return BenchResult(n, tally.longs, tuple(tally.latencies), tally.as_slump, tally.missed,
                       tally.shorts, tally.false_alerts, tally.bad_scenarios)


@dataclass(slots=True)
class _BenchTally:
    latencies: list[float] = field(default_factory=list)
    as_slump: int = 0
    missed: int = 0
    longs: int = 0
    shorts: int = 0
    bad_scenarios: int = 0
    false_alerts: dict[str, int] = field(default_factory=dict)

    def add(self, sc: Scenario, alerts: list[Event], long_glance_s: float) -> None:
        glances = sc.segments_of("glance")
        long_ = [g for g in glances if g.duration_s >= long_glance_s]
        self.shorts += sum(g.duration_s < 2.0 for g in glances)
        false_here = 0
        for e in alerts:
            if not any(g.start_s <= e.t_s <= g.end_s + 1.0 for g in long_):
                false_here += 1
                self.false_alerts[e.type.value] = self.false_alerts.get(e.type.value, 0) + 1
        self.bad_scenarios += false_here > 0
        self._long_glances(long_, alerts)

    def _long_glances(self, long_: list[Segment], alerts: list[Event]) -> None:
        for g in long_:
            self.longs += 1
            mine = [e for e in alerts if g.start_s <= e.t_s <= g.end_s + 1.0]
            hits = [e.t_s for e in mine if e.type is EventType.DISTRACTION]
            if hits:
                self.latencies.append(min(hits) - g.start_s)
            elif any(e.type is EventType.SLUMP for e in mine):
                self.as_slump += 1
            else:
                self.missed += 1


def jitter_reduction(settings: EngineSettings | None = None, seed: int = 0,
                     noise_deg: float = 1.5, duration_s: float = 60.0,
                     rates_hz: Sequence[float] = (20.0, 30.0)) -> dict[str, dict[str, float]]:
    """Jitter the rotation filter removes: a still head with Gaussian noise ``noise_deg`` per
    axis; std of yaw/pitch/roll (RMS over the three) before and after the filter, and the
    filter's 90 % settling time for a 30 deg yaw step at the same rate."""
    s = settings or EngineSettings()
    out: dict[str, dict[str, float]] = {}
    for rate in rates_hz:
        sc = ScenarioBuilder(s, rate_hz=rate, noise_deg=noise_deg, seed=seed).road(
            duration_s).build()
        raw, filt = [], []
        for t, pose, R in _filtered(s, sc.observations):
            if t >= 1.0:  # skip the start-up
                raw.append((pose.pitch_deg, pose.yaw_deg, pose.roll_deg))
                filt.append(euler_from_rotation(R))
        raw_std = float(np.sqrt(np.mean(np.var(np.array(raw), axis=0))))
        filt_std = float(np.sqrt(np.mean(np.var(np.array(filt), axis=0))))
        step = ScenarioBuilder(s, rate_hz=rate).road(1.0).glance((30.0, 0.0), 3.0, turn_s=0.0)
        settle = next((t - 1.0 for t, _, R in _filtered(s, step.build().observations)
                       if t >= 1.0 and abs(euler_from_rotation(step.R_neutral.T @ R)[1] - 30.0)
                       <= 3.0), math.nan)
        out[f"{rate:g}Hz"] = {"noise_deg": noise_deg, "raw_std_deg": round(raw_std, 4),
                              "filtered_std_deg": round(filt_std, 4),
                              "reduction": round(raw_std / max(filt_std, 1e-9), 2),
                              "step90_settle_s": round(settle, 4)}
    return out


def _filtered(settings: EngineSettings, observations: Iterable[Observation]
              ) -> Iterator[tuple[float, HeadPose, np.ndarray]]:
    """(t_s, observed pose, filtered rotation) through a fresh RotationFilter (faces only)."""
    from dms.engine.filter import RotationFilter

    f = RotationFilter(settings.filter)
    for o in observations:
        assert o.pose is not None
        R = f.update(o.t_s, o.pose.rotation).rotation
        assert R is not None  # a pose in, a rotation out
        yield o.t_s, o.pose, R
