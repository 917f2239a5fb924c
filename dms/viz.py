"""Pictures for humans: the per-frame overlay of the annotated video (and the preview), and
the timeline plot of a replay.

Both say only what the engine says: the alerts and their levels from its events and state,
why an alert is still active from the state's timers and the settings that the clear rules
read, whether there is a usable face from the policy. A frame never contradicts itself: a
face box the engine did not use is drawn as such, the eye line names the rule that holds
(head turned, head down, ...), and no angle reads "-0".

matplotlib (Agg, headless) and OpenCV are imported inside the functions.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dms.engine.events import Event, EventType, Phase
from dms.engine.settings import EngineSettings, ZoneSettings
from dms.errors import InputError
from dms.types import FaceBox, HeadPose

log = logging.getLogger(__name__)

Sample = tuple[float, float | None, float | None, float | None]  # t, yaw, pitch, roll
EyeSample = tuple[float, float | None, bool]  # t, openness / driver's baseline, closed

# one lane per alert family in the plot, most urgent first; colours shared with the video
FAMILIES = (EventType.UNRESPONSIVE, EventType.SLUMP, EventType.DROWSINESS,
            EventType.DISTRACTION, EventType.DRIVER_NOT_VISIBLE, EventType.EYES_NOT_VISIBLE,
            EventType.SYSTEM_DEGRADED)
_COLOURS = {
    EventType.DISTRACTION: "tab:orange",
    EventType.DROWSINESS: "tab:purple",
    EventType.SLUMP: "tab:red",
    EventType.DRIVER_NOT_VISIBLE: "tab:gray",
    EventType.SYSTEM_DEGRADED: "black",
    EventType.UNRESPONSIVE: "darkred",
    EventType.EYES_NOT_VISIBLE: "tab:brown",
}
LEVEL_BGR = {1: (0, 200, 255), 2: (0, 128, 255), 3: (0, 0, 255)}  # amber, orange, red
CLEARED_BGR = (0, 170, 0)

# what the engine had of the face on a frame (FrameTrace.face)
FACE_USED = "face"  # a usable face: the pose went into the rules
FACE_UNUSABLE = "face_unusable"  # the detector found a face, its pose was not usable
NO_FACE = "no_face"  # no face found


def signed(value: float) -> str:
    """Whole degrees with a sign, never "-0": +3, -12, 0."""
    r = int(round(value))
    return f"{r:+d}" if r else "0"


def face_seen(face_box: FaceBox | None, result: Any) -> str:
    """FACE_USED when the engine used this frame's face, FACE_UNUSABLE when a face was found
    but its pose was not usable (low confidence, implausible), else NO_FACE."""
    if result.relative is not None and result.state.policy.face_visible:
        return FACE_USED
    return FACE_UNUSABLE if face_box is not None else NO_FACE


def unusable_why(raw_pose: HeadPose | None, settings: EngineSettings) -> str:
    """Why a found face's pose was not used, as far as the frame tells."""
    if raw_pose is None:
        return "no head pose fitted"
    if raw_pose.confidence < settings.policy.min_confidence:
        return (f"pose confidence {raw_pose.confidence:.2f} < "
                f"{settings.policy.min_confidence:.2f}")
    return "pose rejected as implausible"


@dataclass(frozen=True, slots=True)
class FrameTrace:
    """What the plot needs of one frame beyond the head angles: whether the engine had a face
    (``face``: FACE_USED / FACE_UNUSABLE / NO_FACE), why the eyes were not judged (``eyes``:
    :attr:`EyeStatus.why`, None = judged) and where the driver looked, head plus the eyes'
    gaze offset, when the eyes were judged open (the angles the road zone test reads)."""

    t_s: float
    face: str
    eyes: str | None
    look_yaw_deg: float | None = None
    look_pitch_deg: float | None = None

    @classmethod
    def of(cls, face_box: FaceBox | None, result: Any) -> FrameTrace:
        rel, eyes = result.relative, result.state.policy.eyes
        why = "not_measured" if eyes is None else eyes.why
        look_yaw = look_pitch = None
        if (rel is not None and eyes is not None and why is None and not eyes.closed
                and eyes.gaze_yaw_deg is not None and eyes.gaze_pitch_deg is not None):
            look_yaw = rel.yaw_deg + eyes.gaze_yaw_deg
            look_pitch = rel.pitch_deg + eyes.gaze_pitch_deg
        return cls(float(result.t_s), face_seen(face_box, result), why, look_yaw, look_pitch)


# ----------------------------------------------------------------- words for the overlay


def eye_line(eyes: Any, relative: Any = None, settings: EngineSettings | None = None) -> str:
    """One line on the eyes: closed for how long, or open with the lids relative to this
    driver's usual aperture, gaze, blinks, PERCLOS; or which rule keeps them unjudged."""
    if eyes is None:
        return ""
    if eyes.rules != "eyes":
        return "eyes: " + _unjudged(eyes, relative, settings or EngineSettings())
    if eyes.closed:
        return f"eyes: CLOSED {eyes.closed_s:.1f} s" + _next_closure(eyes.closed_s, settings)
    text = f"eyes: open (lids {eyes.ratio or 0:.2f}x usual)"
    if eyes.gaze_yaw_deg is not None and eyes.gaze_pitch_deg is not None:
        text += f", gaze yaw {signed(eyes.gaze_yaw_deg)} pitch {signed(eyes.gaze_pitch_deg)}"
    if eyes.blinks_per_min is not None:
        text += f", {eyes.blinks_per_min:.0f} blinks/min"
    if eyes.perclos is not None:
        text += f", PERCLOS {100 * eyes.perclos:.0f}%"
    if eyes.yawning:
        text += ", yawning"
    return text


def _next_closure(closed_s: float, settings: EngineSettings | None) -> str:
    """The next eye-closure threshold ahead: " (microsleep at 1 s)"."""
    e = (settings or EngineSettings()).eyes
    for name, at_s in (("microsleep", e.microsleep_s), ("sleep", e.sleep_s),
                       ("unresponsive", e.unresponsive_s)):
        if closed_s < at_s:
            return f" ({name} at {at_s:g} s)"
    return ""


def _unjudged(eyes: Any, relative: Any, settings: EngineSettings) -> str:
    why = eyes.why or ""
    if why == "head_turned" and relative is not None:
        return _head_away(relative, settings)
    return {"not_visible": "not visible (sunglasses? covered?): head rules only",
            "head_turned": "not judged while the head is away from the road",
            "learning_baseline": "learning this driver's open eyes "
                                 f"{100 * eyes.baseline_progress:.0f}%",
            "not_measured": "not measured", "no_face": "not judged (no usable face)",
            "disabled": "eye rules off"}.get(why, why)


def _head_away(relative: Any, settings: EngineSettings) -> str:
    """Which of the eye rules' head limits holds (they judge the eyes only near the road)."""
    e, yaw, pitch = settings.eyes, float(relative.yaw_deg), float(relative.pitch_deg)
    if pitch < -e.judge_pitch_down_deg:
        return (f"not judged while the head is down (pitch {signed(pitch)} < "
                f"{signed(-e.judge_pitch_down_deg)})")
    if pitch > e.judge_pitch_up_deg:
        return (f"not judged while the head is up (pitch {signed(pitch)} > "
                f"{signed(e.judge_pitch_up_deg)})")
    return (f"not judged while the head is turned (yaw {signed(yaw)}, beyond "
            f"+-{e.judge_yaw_deg:g})")


def _left(need_s: float, done_s: float) -> str:
    left = max(0.0, need_s - done_s)
    return f"{left:.0f} s left" if left >= 10 else f"{left:.1f} s left"


def _timer(rule: str, need_s: float, done_s: float, running: bool, waiting: str) -> str:
    """"<rule>: 2.1 s left" while the clearing condition holds, else "<rule> (<waiting>)"."""
    return f"{rule}: {_left(need_s, done_s)}" if running else f"{rule} ({waiting})"


def _eyes_open_rule(p: Any, s: EngineSettings) -> str:
    eyes = p.eyes
    need = s.eyes.eyes_clear_s
    rule = f"{need:g} s eyes open"
    if eyes is None or eyes.rules != "eyes":
        return f"{rule} (eyes not judged now)"
    return _timer(rule, need, eyes.open_s, not eyes.closed and eyes.open_s > 0,
                  "eyes closed now")


def _drowsy_why(p: Any, s: EngineSettings) -> list[str]:
    parts = []
    if p.nods_in_window and p.last_nod_t_s is not None and p.t_s is not None:
        window = s.policy.nod_window_s
        parts.append(f"{window:g} s without a nod: {_left(window, p.t_s - p.last_nod_t_s)} "
                     f"({p.nods_in_window} nods in the window)")
    eyes = p.eyes
    if eyes is not None and eyes.microsleep:
        parts.append(_eyes_open_rule(p, s))
    if eyes is not None and eyes.perclos_high:
        parts.append(f"PERCLOS under {100 * s.eyes.perclos_clear:.0f}% "
                     f"(now {100 * (eyes.perclos or 0):.0f}%)")
    if eyes is not None and 0 < s.eyes.yawns_for_alert <= eyes.yawns_in_window:
        parts.append(f"under {s.eyes.yawns_for_alert} yawns in {s.eyes.yawn_window_s:g} s")
    return parts


def alert_why(alert: Any, p: Any, settings: EngineSettings | None = None) -> str:
    """Why an active alert (:class:`ActiveAlert`) is still on, from the policy state ``p`` and
    the clear rules' settings: "clears after 5 s eyes open: 2.1 s left"."""
    s = settings or EngineSettings()
    t = alert.type
    if t is EventType.DISTRACTION:
        need = s.policy.clear_on_road_s
        if alert.reason.value == "time_sharing":
            need = max(need, s.policy.vats_reset_on_road_s)
        away = (f"looking away {p.glance_s:.1f} s" if p.glance_s > 0
                else "face not visible" if not p.face_visible else "not on the road yet")
        why = _timer(f"{need:g} s back on the road", need, p.on_road_s, p.on_road_s > 0, away)
    elif t is EventType.SLUMP:
        need = s.policy.clear_on_road_s
        why = _timer(f"{need:g} s with the head up", need, p.head_up_s, p.head_up_s > 0,
                     "head still down")
    elif t is EventType.DROWSINESS:
        parts = _drowsy_why(p, s)
        why = " and ".join(parts) if parts else "its cause has ended"
    elif t is EventType.UNRESPONSIVE:
        why = _eyes_open_rule(p, s)
    elif t in (EventType.DRIVER_NOT_VISIBLE, EventType.SYSTEM_DEGRADED):
        need = s.policy.visible_clear_s
        why = _timer(f"{need:g} s with a usable face", need, p.face_visible_s,
                     p.face_visible_s > 0, "no usable face")
    elif t is EventType.EYES_NOT_VISIBLE:
        need = s.eyes.visible_clear_s
        seen = p.eyes is not None and p.eyes.visible_s > 0
        why = _timer(f"{need:g} s with the eyes visible", need,
                     0.0 if p.eyes is None else p.eyes.visible_s, seen, "eyes not visible")
    else:
        return ""
    return "clears after " + why


# ----------------------------------------------------------------- drawing


_FONT = 0  # cv2.FONT_HERSHEY_SIMPLEX


class _Column:
    """Lines of text drawn downward from ``y`` in a column [x, x + width), wrapped."""

    def __init__(self, img: np.ndarray, x: int, y: int, width: int) -> None:
        self.img, self.x, self.y, self.width = img, x, y, width

    def wrap(self, text: str, scale: float, indent: str = "") -> list[str]:
        import cv2

        lines: list[str] = []
        line = ""
        for word in text.split(" "):
            trial = f"{line} {word}" if line else (indent if lines else "") + word
            if line and cv2.getTextSize(trial, _FONT, scale, 1)[0][0] > self.width:
                lines.append(line)
                line = indent + word
            else:
                line = trial
        return [*lines, line] if line else lines

    def text(self, text: str, scale: float = 0.45, colour: tuple[int, int, int] = (255,) * 3,
             thick: int = 1, indent: str = "  ") -> None:
        import cv2

        step = int(34 * scale) + 4
        for line in self.wrap(text, scale, indent):
            self.y += step
            cv2.putText(self.img, line, (self.x, self.y - 4), _FONT, scale, colour, thick,
                        cv2.LINE_AA)

    def lines(self, texts: Iterable[str], scale: float) -> None:
        for text in texts:
            self.text(text, scale)

    def height_of(self, text: str, scale: float) -> int:
        return len(self.wrap(text, scale, "  ")) * (int(34 * scale) + 4)


def _darken(img: np.ndarray, y0: int, y1: int, x1: int) -> None:
    """A backdrop for text drawn on the camera image, in place."""
    roi = img[max(0, y0):min(y1, img.shape[0]), :x1]
    roi[:] = (roi * 0.45).astype(np.uint8)


def _colour_copy(frame: np.ndarray) -> np.ndarray:
    """A 3-channel BGR copy to draw on (GRAY8 / single-channel IR frames included)."""
    if frame.ndim == 3 and frame.shape[2] == 3:
        return frame.copy()
    from dms.capture import as_bgr

    img, error = as_bgr(frame)
    if img is None:
        raise InputError(f"frame cannot be drawn on: {error}")
    return np.ascontiguousarray(img).copy()


def _dashed_rect(img: np.ndarray, p1: tuple[int, int], p2: tuple[int, int],
                 colour: tuple[int, int, int], dash: int = 8) -> None:
    import cv2

    (x1, y1), (x2, y2) = p1, p2
    for a, b, horizontal in (((x1, y1), (x2, y1), True), ((x1, y2), (x2, y2), True),
                             ((x1, y1), (x1, y2), False), ((x2, y1), (x2, y2), False)):
        start, end = (a[0], b[0]) if horizontal else (a[1], b[1])
        for u in range(start, end, 2 * dash):
            v = min(u + dash, end)
            q1, q2 = ((u, a[1]), (v, a[1])) if horizontal else ((a[0], u), (a[0], v))
            cv2.line(img, q1, q2, colour, 1, cv2.LINE_AA)


def _draw_head(img: np.ndarray, face_box: FaceBox | None, pose: HeadPose | None,
               used: bool, unused_why: str) -> None:
    """The face box (solid when the engine used the face, dashed grey and labelled when it
    did not) and, for a used face, the head axes (x red, y green, z blue), in place."""
    import cv2

    if face_box is not None:
        p1 = (int(face_box.x1), int(face_box.y1))
        p2 = (int(face_box.x2), int(face_box.y2))
        if used:
            cv2.rectangle(img, p1, p2, (255, 255, 0), 2)
        else:
            _dashed_rect(img, p1, p2, (170, 170, 170))
            for i, line in enumerate(("face found, not used:", unused_why)):
                cv2.putText(img, line, (p1[0], max(12, p1[1] - 22 + 14 * i)), _FONT, 0.4,
                            (200, 200, 200), 1, cv2.LINE_AA)
    if pose is None or not used:
        return
    h, w = img.shape[:2]
    if face_box is not None:
        cx, cy = face_box.center
        size = 0.6 * max(face_box.width, face_box.height)
    else:
        cx, cy, size = w / 2, h / 2, min(w, h) / 4
    R = np.asarray(pose.rotation)
    # camera y is up, image y is down: flip y when drawing
    for axis, colour in ((0, (0, 0, 255)), (1, (0, 255, 0)), (2, (255, 0, 0))):
        v = R[:, axis]
        end = (int(cx + size * v[0]), int(cy - size * v[1]))
        cv2.arrowedLine(img, (int(cx), int(cy)), end, colour, 2, tipLength=0.15)


def _calibration_text(state: Any) -> tuple[str, tuple[int, int, int]]:
    cal = getattr(state, "calibration", None)
    if cal is None:
        return "", (255, 255, 255)
    if cal.state == "calibrating":
        text, colour = f"calibrating {100 * cal.progress:.0f}% (no alert armed)", (0, 220, 255)
    else:
        text, colour = f"calibrated ({cal.source})", (160, 255, 160)
    if cal.mount_mismatch_deg is not None:
        text += f", mount hint off by {cal.mount_mismatch_deg:.0f} deg"
    return text, colour


class VideoAnnotator:
    """Per-frame overlay of the annotated video and the preview, with memory so a person can
    follow it.

    * a clock (the run's own ``t``, as in the printed alerts and the records) on every frame;
    * every active alert, most urgent first and, within a level, newest first, each with its
      level, type, reason, when it was raised and what clears it ("clears after 5 s eyes open:
      2.1 s left", from the state's timers and the clear rules' settings);
    * an alert that cleared in the last ``CLEARED_S`` stays listed as cleared (green), so a
      short one is seen too;
    * the face box solid only when the engine used the face; a found face it could not use is
      dashed and labelled, and the text then says "face found, not used";
    * the eyes, where the driver looks, the head relative to the neutral pose, calibration.

    ``panel=True`` (the annotated video) puts the text in a panel right of the camera image,
    so nothing covers the face; ``panel=False`` (the preview) draws it on the image.
    """

    CLEARED_S = 3.0
    PANEL_W = 400

    def __init__(self, settings: EngineSettings | None = None, panel: bool = False) -> None:
        self.settings = settings or EngineSettings()
        self.panel = panel
        self._raised_t: dict[int, float] = {}  # alert id -> time of its last raised/escalated
        self._cleared: list[tuple[Event, float]] = []  # cleared record, shown until

    def size_for(self, frame_size: tuple[int, int]) -> tuple[int, int]:
        """(width, height) of the annotated frame for a camera frame of ``frame_size``."""
        w, h = frame_size
        return (w + self.PANEL_W, max(h, 480)) if self.panel else (w, h)

    def frame(self, frame_bgr: np.ndarray, face_box: FaceBox | None, result: Any,
              raw_pose: HeadPose | None = None) -> np.ndarray:
        """Annotated copy of ``frame_bgr`` for an engine ``StepResult``; ``raw_pose`` is the
        pose measured on the frame (says why a found face was not used)."""
        t = float(result.t_s)
        self._remember(result.events, t)
        img = _colour_copy(frame_bgr)
        seen = face_seen(face_box, result)
        why_unused = unusable_why(raw_pose, self.settings) if seen == FACE_UNUSABLE else ""
        if self.panel:
            _draw_head(img, face_box, result.pose, seen == FACE_USED, why_unused)
            h, w = img.shape[:2]
            out_w, out_h = self.size_for((w, h))
            out = np.zeros((out_h, out_w, 3), np.uint8)
            out[:h, :w] = img
            out[:, w:] = (32, 32, 32)
            self._draw_text(out, w + 10, self.PANEL_W - 20, result, seen, why_unused)
            return out
        self._draw_text(img, 8, min(img.shape[1] - 16, 380), result, seen, why_unused,
                        overlay=True)
        _draw_head(img, face_box, result.pose, seen == FACE_USED, why_unused)  # over the text
        return img

    def _remember(self, events: Iterable[Event], t: float) -> None:
        for e in events:
            if e.phase is Phase.CLEARED:
                self._raised_t.pop(e.alert_id, None)
                self._cleared.append((e, t + self.CLEARED_S))
            else:
                self._raised_t[e.alert_id] = e.t_s
        self._cleared = [(e, until) for e, until in self._cleared if t < until]

    def rows(self, result: Any) -> list[tuple[str, str, tuple[int, int, int]]]:
        """The alert rows of this frame, as drawn: (title, explanation, BGR colour); active
        alerts first (level, then newest, first), then the ones cleared lately."""
        p = result.state.policy
        active = sorted(p.active_alerts, key=lambda a: (
            -a.level, -self._raised_t.get(a.alert_id, a.started_t_s)))
        rows = []
        for a in active:
            raised = self._raised_t.get(a.alert_id)
            since = f", raised {raised:.2f} s" if raised is not None else ""
            rows.append((f"L{a.level} {a.type.value.upper()}: {a.reason.value}{since}",
                         alert_why(a, p, self.settings), LEVEL_BGR.get(a.level, (0, 0, 255))))
        for e, _ in reversed(self._cleared):
            rows.append((f"cleared {e.t_s:.2f} s: {e.type.value} ({e.reason.value}, "
                         f"L{e.level})", "", CLEARED_BGR))
        return rows

    def text_lines(self, result: Any, face_box: FaceBox | None,
                   raw_pose: HeadPose | None = None) -> list[str]:
        """Every line of text of the frame besides the alert rows, as drawn: the clock, the
        driver state, the calibration, then the face, where the driver looks, the eyes."""
        seen = face_seen(face_box, result)
        why_unused = unusable_why(raw_pose, self.settings) if seen == FACE_UNUSABLE else ""
        cal, _ = _calibration_text(result.state)
        return ([f"t {float(result.t_s):.2f} s", f"driver: {result.state.driver_state}"]
                + ([cal] if cal else []) + self._lower_lines(result, seen, why_unused))

    def _draw_text(self, img: np.ndarray, x: int, width: int, result: Any, seen: str,
                   why_unused: str, overlay: bool = False) -> None:
        """The text column at ``x``: clock, state, alert rows, then the lower lines (under
        the rows in the panel; at the bottom of the image, each part on a darkened backdrop,
        when ``overlay``)."""
        lines = self._lower_lines(result, seen, why_unused)
        if not overlay:
            col = self._draw_top(img, x, width, result)
            col.y += 4
            col.lines(lines, 0.42)
            return
        depth = self._draw_top(img.copy(), x, width, result).y  # measured, then drawn
        _darken(img, 0, depth + 6, x + width + 8)
        self._draw_top(img, x, width, result)
        low = sum(_Column(img, x, 0, width).height_of(line, 0.42) for line in lines) + 8
        _darken(img, img.shape[0] - low, img.shape[0], x + width + 8)
        _Column(img, x, img.shape[0] - low, width).lines(lines, 0.42)

    def _draw_top(self, img: np.ndarray, x: int, width: int, result: Any) -> _Column:
        """Clock, driver state, calibration and the alert rows; returns the column below."""
        import cv2

        state = result.state
        col = _Column(img, x, 2, width)
        col.text(f"t {float(result.t_s):.2f} s", 0.8, (255, 255, 255), 2)
        col.text(f"driver: {state.driver_state}", 0.5, (255, 255, 255), 1)
        cal, cal_colour = _calibration_text(state)
        if cal:
            col.text(cal, 0.42, cal_colour)
        col.y += 6
        rows = self.rows(result)
        if not rows:
            col.text("no active alert", 0.5, (160, 160, 160))
        for title, why, colour in rows:
            top = col.y
            inner = _Column(img, x + 10, top, width - 12)
            inner.text(title, 0.45, (255, 255, 255), 1)
            if why:
                inner.text(why, 0.42, (235, 235, 235))
            cv2.rectangle(img, (x, top + 3), (x + 5, inner.y + 2), colour, -1)
            cv2.line(img, (x, inner.y + 4), (x + width, inner.y + 4), (70, 70, 70), 1)
            col.y = inner.y + 8
        return col

    def _lower_lines(self, result: Any, seen: str, why_unused: str) -> list[str]:
        p, rel = result.state.policy, result.relative
        lines = []
        if seen == FACE_USED:
            learning = "" if result.state.calibrated else " (neutral still being learned)"
            lines.append(f"head vs neutral{learning}: yaw {signed(rel.yaw_deg)} pitch "
                         f"{signed(rel.pitch_deg)} roll {signed(rel.roll_deg)} deg")
            lines.append(self._looking(result))
        elif seen == FACE_UNUSABLE:
            lines.append(f"face found, not used ({why_unused})")
        else:
            lines.append("no face found")
        eyes = eye_line(p.eyes, rel, self.settings)
        if eyes:
            lines.append(eyes)
        return lines

    def _looking(self, result: Any) -> str:
        """Where the driver looks, as the glance rules read it."""
        from dms.engine.policy import is_on_road, road_limits

        p, rel, s = result.state.policy, result.relative, self.settings
        if not result.state.calibrated:
            return "looking: not judged until the neutral pose is learned"
        where = "road" if p.on_road else (p.zone or "off the road").replace("_", " ")
        if p.away:
            limits = road_limits(s.zones, None, s.policy.right_hand_drive)
            eyes_only = is_on_road(True, rel.yaw_deg, rel.pitch_deg, s.zones, limits)
            return (f"looking away{' (eyes only)' if eyes_only else ''}: {where}, "
                    f"{p.glance_s:.1f} s (long glance at {s.policy.long_glance_s:g} s)")
        if not p.on_road:
            eyes = p.eyes
            held = "eyes shut" if eyes is not None and eyes.closed else "head dropped"
            return f"looking: {where}, not a glance ({held}: drowsiness rules)"
        return "looking: road"


# ----------------------------------------------------------------- the timeline plot


def alert_spans(events: Iterable[Event], end_t_s: float) -> list[tuple[Event, float, float]]:
    """(record, start, end) per level of each alert: from its raised or escalated record to the
    alert's next record (or ``end_t_s`` when it never cleared)."""
    last: dict[int, Event] = {}
    spans: list[tuple[Event, float, float]] = []
    for e in events:
        prev = last.pop(e.alert_id, None)
        if prev is not None:
            spans.append((prev, prev.t_s, e.t_s))
        if e.phase is not Phase.CLEARED:
            last[e.alert_id] = e
    spans.extend((e, e.t_s, end_t_s) for e in last.values())
    return sorted(spans, key=lambda s: s[1])


Expected = tuple[str, float, float]  # alert type, window start, window end (the script's)


def plot_timeline(samples: Sequence[Sample], events: Sequence[Event], zones: ZoneSettings,
                  path: str | Path, calibrated_at_s: float | None = None,
                  eye_samples: Sequence[EyeSample] = (), *,
                  traces: Sequence[FrameTrace] = (),
                  expected: Sequence[Expected] = ()) -> Path:
    """PNG of the head's yaw/pitch/roll relative to neutral over time with the road zone,
    where the driver looked (head + eyes' gaze, from ``traces``), the frames without a usable
    face in two distinct kinds (none found / found but not usable), the eye openness with
    closed and not-visible spans (``eye_samples``), and under them one lane per alert family
    (a Gantt strip: each level from raise to clear, the script's ``expected`` windows
    outlined). The time before the neutral pose was known (``calibrated_at_s``; None = never
    known) is hatched "calibrating". Returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    t = np.array([s[0] for s in samples], dtype=float)
    series = {name: np.array([np.nan if s[i] is None else s[i] for s in samples], dtype=float)
              for i, name in ((1, "yaw"), (2, "pitch"), (3, "roll"))}
    end = float(t[-1]) if len(t) else max((e.t_s for e in events), default=1.0)
    with_eyes = any(r is not None for _, r, _ in eye_samples)
    ratios = [3.0, 3.0, 1.6] + ([2.0] if with_eyes else []) + [0.32 * len(FAMILIES) + 0.4]
    fig, axes = plt.subplots(len(ratios), 1, sharex=True, figsize=(13, 3.0 * sum(ratios) / 2.6),
                             constrained_layout=True, gridspec_kw={"height_ratios": ratios})
    traces_t = np.array([f.t_s for f in traces], dtype=float)
    unusable = np.array([f.face == FACE_UNUSABLE for f in traces], dtype=bool)
    none_found = (np.array([f.face == NO_FACE for f in traces], dtype=bool) if traces
                  else np.isnan(series["yaw"]))
    none_t = traces_t if traces else t
    limits = {"yaw": (-zones.yaw_outboard_deg, zones.yaw_inboard_deg),
              "pitch": (-zones.pitch_down_deg, zones.pitch_up_deg), "roll": None}
    looks = {"yaw": np.array([np.nan if f.look_yaw_deg is None else f.look_yaw_deg
                              for f in traces], dtype=float),
             "pitch": np.array([np.nan if f.look_pitch_deg is None else f.look_pitch_deg
                                for f in traces], dtype=float)}
    for ax, name in zip(axes[:3], ("yaw", "pitch", "roll"), strict=True):
        lim = limits[name]
        if lim is not None:
            ax.axhspan(lim[0], lim[1], color="tab:green", alpha=0.08, lw=0)
            for y in lim:
                ax.axhline(y, color="tab:green", lw=0.6, ls="--")
        _shade(ax, none_t, none_found, color="0.55", alpha=0.35)
        _shade(ax, traces_t, unusable, facecolor="none", edgecolor="0.35", hatch="xx",
               alpha=0.6)
        if name in looks and traces and np.isfinite(looks[name]).any():
            ax.plot(traces_t, looks[name], lw=0.8, color="tab:orange", alpha=0.9)
        ax.plot(t, series[name], lw=0.9, color="tab:blue")
        _calibrating(ax, t, end, calibrated_at_s)
        ax.set_ylabel(f"{name} (deg)")
        ax.grid(alpha=0.3)
    if with_eyes:
        _plot_eyes(axes[3], eye_samples, traces)
    _plot_lanes(axes[-1], events, end, expected)
    axes[1].text(0.01, 0.02, "relative to the neutral pose; yaw: + = driver's right; pitch: "
                 "- = head down", transform=axes[1].transAxes, fontsize=7)
    if len(t):
        axes[0].annotate("calibrating" if calibrated_at_s is not None
                         else "calibrating (never settled)", (float(t[0]), 0.02),
                         xycoords=("data", "axes fraction"), fontsize=7, color="tab:olive")
    _legends(axes, bool(traces), with_eyes, bool(expected))
    axes[-1].set_xlabel("t (s)")
    _save(fig, path)
    return path


def _shade(ax: Any, t: np.ndarray, where: np.ndarray, **style: Any) -> None:
    if len(t) and where.any():
        ax.fill_between(t, 0, 1, where=where, transform=ax.get_xaxis_transform(), lw=0,
                        step="mid", **style)


def _calibrating(ax: Any, t: np.ndarray, end: float, calibrated_at_s: float | None) -> None:
    if not len(t):
        return
    cal_end = end if calibrated_at_s is None else calibrated_at_s
    ax.axvspan(float(t[0]), cal_end, facecolor="none", edgecolor="tab:olive", hatch="//",
               lw=0, alpha=0.5)
    ax.axvline(cal_end, color="tab:olive", lw=0.8)


def _plot_eyes(ax: Any, eye_samples: Sequence[EyeSample], traces: Sequence[FrameTrace]) -> None:
    te = np.array([s[0] for s in eye_samples], dtype=float)
    ratio = np.array([np.nan if s[1] is None else s[1] for s in eye_samples], dtype=float)
    closed = np.array([s[2] for s in eye_samples], dtype=bool)
    _shade(ax, te, closed, color="tab:purple", alpha=0.3)
    if traces:
        tt = np.array([f.t_s for f in traces], dtype=float)
        _shade(ax, tt, np.array([f.eyes == "not_visible" for f in traces], dtype=bool),
               facecolor="none", edgecolor="tab:brown", hatch="..", alpha=0.7)
    ax.plot(te, ratio, lw=0.8, color="tab:cyan")
    ax.set_ylim(0, 1.5)
    ax.set_ylabel("eyes open\n(x own usual)")
    ax.text(0.01, 0.02, "gaps: eyes not judged (head away from the road, no face, learning "
            "the driver's open eyes)", transform=ax.transAxes, fontsize=7)
    ax.grid(alpha=0.3)


def alert_lanes(events: Iterable[Event], end_t_s: float
                ) -> dict[EventType, list[tuple[Event, float, float]]]:
    """The Gantt strip's lanes: per alert family, its (record, start, end) spans in time
    order. One alert per type is active at a time, so no two spans of a lane overlap and no
    family's bar hides another's."""
    lanes: dict[EventType, list[tuple[Event, float, float]]] = {f: [] for f in FAMILIES}
    for span in alert_spans(events, end_t_s):
        lanes.setdefault(span[0].type, []).append(span)
    return lanes


def _plot_lanes(ax: Any, events: Sequence[Event], end: float,
                expected: Sequence[Expected]) -> None:
    """One lane per alert family: each level a bar from its record to the alert's next one
    (darker = higher level), the reason written where it was raised; the script's expected
    windows outlined."""
    families = list(alert_lanes(events, end))
    row = {f: len(families) - 1 - i for i, f in enumerate(families)}
    for family, spans in alert_lanes(events, end).items():
        for e, a, b in spans:
            ax.barh(row[family], max(b - a, end / 400), left=a, height=0.62,
                    color=_COLOURS.get(family, "tab:red"), alpha=0.35 + 0.2 * e.level, lw=0)
            if e.phase is Phase.RAISED:
                ax.text(a, row[family] + 0.36, f"{e.reason.value} L{e.level}", fontsize=6.5,
                        va="bottom")
    for type_, lo, hi in expected:
        ax.add_patch(_outline(lo, row[EventType(type_)], hi - lo))
    ax.set_yticks(range(len(families)), [f.value for f in reversed(families)], fontsize=7)
    ax.set_ylim(-0.6, len(families) - 0.1)
    ax.grid(axis="x", alpha=0.3)


def _outline(x: float, y: float, width: float) -> Any:
    from matplotlib.patches import Rectangle

    return Rectangle((x, y - 0.42), width, 0.84, facecolor="none", edgecolor="black", lw=0.9,
                     ls="--")


def _legends(axes: Any, traces: bool, with_eyes: bool, expected: bool) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles: list[Any] = [Line2D([], [], color="tab:blue", lw=1.2, label="head")]
    if traces:
        handles.append(Line2D([], [], color="tab:orange", lw=1.2,
                              label="looking: head + eyes' gaze\n(when the eyes are judged)"))
    handles += [Patch(color="tab:green", alpha=0.2, label="road zone"),
                Patch(color="0.55", alpha=0.35, label="no face found")]
    if traces:
        handles.append(Patch(facecolor="none", edgecolor="0.35", hatch="xx",
                             label="face found, pose not usable"))
    handles.append(Patch(facecolor="none", edgecolor="tab:olive", hatch="//",
                         label="calibrating (no alert armed)"))
    axes[0].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7)
    if with_eyes:
        eye_handles: list[Any] = [Line2D([], [], color="tab:cyan", lw=1.2, label="openness"),
                       Patch(color="tab:purple", alpha=0.3, label="eyes closed")]
        if traces:
            eye_handles.append(Patch(facecolor="none", edgecolor="tab:brown", hatch="..",
                                     label="eyes not visible\n(sunglasses, covered)"))
        axes[3].legend(handles=eye_handles, loc="upper left", bbox_to_anchor=(1.0, 1.0),
                       fontsize=7)
    lane_handles: list[Any] = [Patch(color="0.4", alpha=a, label=f"L{lv}")
                    for lv, a in ((1, 0.55), (2, 0.75), (3, 0.95))]
    if expected:
        lane_handles.append(Patch(facecolor="none", edgecolor="black", ls="--",
                                  label="scripted window"))
    axes[-1].legend(handles=lane_handles, loc="upper left", bbox_to_anchor=(1.0, 1.0),
                    fontsize=7, title="alerts (raise to clear)", title_fontsize=7)


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    except OSError as exc:
        raise InputError(f"{path}: cannot write plot: {exc}") from None
    finally:
        plt.close(fig)
