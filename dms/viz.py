"""Pictures for humans: the timeline plot of a replay and the per-frame video annotation.

matplotlib (Agg, headless) and OpenCV are imported inside the functions.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from dms.engine.events import Event, EventType, Phase
from dms.engine.settings import ZoneSettings
from dms.errors import InputError
from dms.types import FaceBox, HeadPose

log = logging.getLogger(__name__)

Sample = tuple[float, float | None, float | None, float | None]  # t, yaw, pitch, roll

_COLOURS = {
    EventType.DISTRACTION: "tab:orange",
    EventType.DROWSINESS: "tab:purple",
    EventType.SLUMP: "tab:red",
    EventType.DRIVER_NOT_VISIBLE: "tab:gray",
    EventType.SYSTEM_DEGRADED: "black",
    EventType.UNRESPONSIVE: "darkred",
    EventType.EYES_NOT_VISIBLE: "tab:brown",
}

EyeSample = tuple[float, float | None, bool]  # t, openness / driver's baseline, closed


def _colour_copy(frame: np.ndarray) -> np.ndarray:
    """A 3-channel BGR copy to draw on (GRAY8 / single-channel IR frames included)."""
    if frame.ndim == 3 and frame.shape[2] == 3:
        return frame.copy()
    from dms.capture import as_bgr

    img, error = as_bgr(frame)
    if img is None:
        raise InputError(f"frame cannot be drawn on: {error}")
    return np.ascontiguousarray(img).copy()


def eye_line(eyes: Any) -> str:
    """One line on the eyes for overlays: closed for how long, openness and gaze, or why
    the eye rules are head-only now."""
    if eyes is None:
        return ""
    if eyes.rules != "eyes":
        why = {"not_visible": "eyes not visible (occluded?)", "head_turned": "head turned",
               "learning_baseline": f"learning open eyes {100 * eyes.baseline_progress:.0f}%",
               "not_measured": "not measured", "no_face": "no face",
               "disabled": "eye rules off"}.get(eyes.why or "", eyes.why or "")
        return f"eyes: head-only ({why})"
    if eyes.closed:
        return f"eyes: CLOSED {eyes.closed_s:.1f} s"
    text = f"eyes: open {100 * (eyes.ratio or 0):.0f}%"
    if eyes.gaze_yaw_deg is not None and eyes.gaze_pitch_deg is not None:
        text += f", gaze {eyes.gaze_yaw_deg:+.0f}/{eyes.gaze_pitch_deg:+.0f} deg"
    if eyes.blinks_per_min is not None:
        text += f", {eyes.blinks_per_min:.0f} blinks/min"
    if eyes.perclos is not None:
        text += f", PERCLOS {100 * eyes.perclos:.0f}%"
    if eyes.yawning:
        text += ", yawning"
    return text


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


def plot_timeline(samples: Sequence[Sample], events: Sequence[Event], zones: ZoneSettings,
                  path: str | Path, calibrated_at_s: float | None = None,
                  eye_samples: Sequence[EyeSample] = ()) -> Path:
    """PNG of yaw/pitch/roll (relative to neutral) over time, with the road zone limits and
    every alert shaded from raise to clear; the time before the neutral pose was known
    (``calibrated_at_s``; None = never known) is hatched "calibrating". With ``eye_samples``
    (any judged), a fourth panel shows the eye openness relative to the driver's open
    aperture, closed spans shaded. Returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    t = np.array([s[0] for s in samples], dtype=float)
    series = {name: np.array([np.nan if s[i] is None else s[i] for s in samples], dtype=float)
              for i, name in ((1, "yaw"), (2, "pitch"), (3, "roll"))}
    end = float(t[-1]) if len(t) else max((e.t_s for e in events), default=1.0)
    with_eyes = any(r is not None for _, r, _ in eye_samples)
    fig, axes = plt.subplots(4 if with_eyes else 3, 1, sharex=True,
                             figsize=(12, 9 if with_eyes else 7), constrained_layout=True)
    if with_eyes:
        _plot_eyes(axes[3], eye_samples)
    limits = {"yaw": (-zones.yaw_outboard_deg, zones.yaw_inboard_deg),
              "pitch": (-zones.pitch_down_deg, zones.pitch_up_deg), "roll": None}
    spans = alert_spans(events, end)
    for ax, name in zip(axes[:3], ("yaw", "pitch", "roll"), strict=True):
        ax.plot(t, series[name], lw=0.8, color="tab:blue")
        lim = limits[name]
        if lim is not None:
            ax.axhspan(lim[0], lim[1], color="tab:green", alpha=0.08, lw=0)
            for y in lim:
                ax.axhline(y, color="tab:green", lw=0.6, ls="--")
        no_face = np.isnan(series[name])
        if no_face.any() and len(t):
            ax.fill_between(t, 0, 1, where=no_face, transform=ax.get_xaxis_transform(),
                            color="gray", alpha=0.15, lw=0, step="mid")
        for e, a, b in spans:
            ax.axvspan(a, b, color=_COLOURS.get(e.type, "tab:red"), alpha=0.15 + 0.1 * e.level,
                       lw=0)
        if len(t):
            cal_end = end if calibrated_at_s is None else calibrated_at_s
            ax.axvspan(float(t[0]), cal_end, facecolor="none", edgecolor="tab:olive",
                       hatch="//", lw=0, alpha=0.5)
        ax.set_ylabel(f"{name} (deg)")
        ax.grid(alpha=0.3)
    for e, a, _ in spans:
        label = (f"{e.type.value}:{e.reason.value} L{e.level}" if e.phase is Phase.RAISED
                 else f"L{e.level}")
        axes[0].annotate(label, (a, 1.0),
                         xycoords=("data", "axes fraction"), fontsize=7, rotation=30,
                         va="bottom")
    if len(t):
        cal_end = end if calibrated_at_s is None else calibrated_at_s
        axes[0].annotate("calibrating" if calibrated_at_s is not None
                         else "calibrating (never settled)", (float(t[0]), 0.02),
                         xycoords=("data", "axes fraction"), fontsize=7, color="tab:olive")
        axes[0].axvline(cal_end, color="tab:olive", lw=0.8)
    axes[1].text(0.01, 0.02, "angles relative to the neutral pose; yaw: + = driver's right; "
                 "pitch: - = head down; green = road zone, grey = no face, hatched = "
                 "calibrating (neutral not yet known: no alert armed)",
                 transform=axes[1].transAxes, fontsize=7)
    from matplotlib.patches import Patch

    handles = [Patch(color=_COLOURS[t], alpha=0.35, label=t.value) for t in _COLOURS
               if any(e.type is t for e, _, _ in spans)]
    handles += [Patch(facecolor="none", edgecolor="tab:olive", hatch="//", label="calibrating"),
                Patch(color="tab:green", alpha=0.15, label="road zone"),
                Patch(color="gray", alpha=0.2, label="no face")]
    axes[0].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=7,
                   title="shading (darker = higher level L1-L3)", title_fontsize=7)
    axes[-1].set_xlabel("t (s)")
    _save(fig, path)
    return path


def _plot_eyes(ax: Any, eye_samples: Sequence[EyeSample]) -> None:
    te = np.array([s[0] for s in eye_samples], dtype=float)
    ratio = np.array([np.nan if s[1] is None else s[1] for s in eye_samples], dtype=float)
    closed = np.array([s[2] for s in eye_samples], dtype=bool)
    ax.plot(te, ratio, lw=0.8, color="tab:cyan")
    ax.fill_between(te, 0, 1, where=closed, transform=ax.get_xaxis_transform(),
                    color="tab:purple", alpha=0.25, lw=0, step="mid")
    ax.set_ylim(0, 1.5)
    ax.set_ylabel("eyes open\n(x own baseline)")
    ax.text(0.01, 0.02, "purple = eyes closed; gaps = eyes not judged (head turned, "
            "occluded, learning)", transform=ax.transAxes, fontsize=7)
    ax.grid(alpha=0.3)


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    except OSError as exc:
        raise InputError(f"{path}: cannot write plot: {exc}") from None
    finally:
        plt.close(fig)


def _draw_head(img: np.ndarray, face_box: FaceBox | None, pose: HeadPose | None) -> None:
    """Face box and head axes (x red, y green, z blue), in place."""
    import cv2

    h, w = img.shape[:2]
    if face_box is not None:
        cv2.rectangle(img, (int(face_box.x1), int(face_box.y1)),
                      (int(face_box.x2), int(face_box.y2)), (255, 255, 0), 2)
    if pose is None:
        return
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


def _draw_state(img: np.ndarray, state: Any) -> str:
    """Driver state (top left) and calibration state (top right), in place; returns the
    driver state text."""
    import cv2

    w = img.shape[1]
    driver = str(getattr(state, "driver_state", state))
    cv2.putText(img, driver, (10, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2,
                cv2.LINE_AA)
    cal = getattr(state, "calibration", None)
    if cal is not None:
        if cal.state == "calibrating":
            text, colour = f"calibrating {100 * cal.progress:.0f}%", (0, 220, 255)
        else:
            text, colour = f"calibrated ({cal.source})", (160, 255, 160)
        if cal.mount_mismatch_deg is not None:
            text += f", mount hint off by {cal.mount_mismatch_deg:.0f} deg"
        cv2.putText(img, text, (max(10, w - 10 - 9 * len(text)), 24), cv2.FONT_HERSHEY_SIMPLEX,
                    0.5, colour, 1, cv2.LINE_AA)
    return driver


def _draw_banner(img: np.ndarray, text: str, level: int, cleared: bool = False) -> None:
    """The alert banner under the state line, coloured by level (green once cleared)."""
    import cv2

    colour = (0, 170, 0) if cleared else {1: (0, 200, 255), 2: (0, 128, 255)}.get(
        level, (0, 0, 255))
    cv2.rectangle(img, (0, 34), (img.shape[1], 64), colour, -1)
    cv2.putText(img, text.upper(), (10, 56), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 2,
                cv2.LINE_AA)


def annotate_frame(frame_bgr: np.ndarray, face_box: FaceBox | None, pose: HeadPose | None,
                   state: Any, events: Sequence[Event]) -> np.ndarray:
    """A copy of the frame with the face box, head axes (x red, y green, z blue), a state
    line and a banner for the most severe event of this frame (or active alert).

    ``state`` is an :class:`dms.engine.engine.EngineState` (or anything with
    ``driver_state``; ``policy.max_level`` is used when present)."""
    import cv2

    img = _colour_copy(frame_bgr)
    _draw_head(img, face_box, pose)
    if pose is not None:
        cv2.putText(img, f"yaw {pose.yaw_deg:+.0f} pitch {pose.pitch_deg:+.0f} "
                    f"roll {pose.roll_deg:+.0f}", (10, img.shape[0] - 12),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    driver = _draw_state(img, state)
    level = getattr(getattr(state, "policy", None), "max_level", 0)
    live = [e for e in events if e.phase is not Phase.CLEARED]
    if live or level:
        top = max(live, key=lambda e: e.level) if live else None
        lvl = top.level if top else level
        _draw_banner(img, f"L{lvl} {top.type.value}: {top.reason.value}" if top
                     else f"L{lvl} {driver}", lvl)
    return img


class VideoAnnotator:
    """Per-frame overlay of the annotated video, with memory so a person can follow it.

    * an alert's banner stays at least ``BANNER_S`` after it is raised or escalated, even
      when the alert cleared sooner (then marked "cleared");
    * the active alerts and their levels are always listed (or "no active alert"), with why
      a drowsiness alert is still on (nods in the window);
    * a cleared alert is shown as cleared for ``BANNER_S``;
    * angles are relative to the driver's neutral pose, labelled so, as in the plot;
    * the calibration state (calibrating NN % / calibrated, and its source).
    """

    BANNER_S = 2.0

    def __init__(self) -> None:
        self._banner: tuple[Event, float] | None = None  # event, shown until
        self._cleared: list[tuple[Event, float]] = []

    def frame(self, frame_bgr: np.ndarray, face_box: FaceBox | None, result: Any) -> np.ndarray:
        """Annotated copy of ``frame_bgr`` for an engine ``StepResult``."""
        import cv2

        t = float(result.t_s)
        for e in result.events:
            if e.phase is Phase.CLEARED:
                self._cleared.append((e, t + self.BANNER_S))
            elif self._banner is None or e.level >= self._banner[0].level or \
                    t >= self._banner[1]:
                self._banner = (e, t + self.BANNER_S)
        self._cleared = [(e, until) for e, until in self._cleared if t < until]
        state = result.state
        img = _colour_copy(frame_bgr)
        _draw_head(img, face_box, result.pose)
        _draw_state(img, state)
        h, w = img.shape[:2]
        active = list(state.policy.active_alerts)
        cleared_ids = {e.alert_id for e, _ in self._cleared}
        top = max(active, key=lambda a: a.level) if active else None
        shown = None
        if self._banner is not None and t < self._banner[1]:
            shown = self._banner[0]
        if top is not None and (shown is None or top.level >= shown.level):
            text, lvl, done = f"L{top.level} {top.type.value}: {top.reason.value}", top.level, False
        elif shown is not None:
            done = shown.alert_id in cleared_ids or all(a.alert_id != shown.alert_id
                                                         for a in active)
            text, lvl = f"L{shown.level} {shown.type.value}: {shown.reason.value}", shown.level
        else:
            text, lvl, done = "", 0, False
        if text:
            _draw_banner(img, text + (" - cleared" if done else ""), lvl, cleared=done)
        lines = []
        for a in sorted(active, key=lambda a: -a.level):
            why = ""
            if a.type is EventType.DROWSINESS:
                why = f", {state.policy.nods_in_window} nods in window"
            lines.append(f"L{a.level} {a.type.value} ({a.reason.value}{why})")
        lines = ["active: " + ("; ".join(lines) if lines else "no active alert")]
        eyes = eye_line(getattr(state.policy, "eyes", None))
        lines += [eyes] if eyes else []
        lines += [f"cleared: {e.type.value}" for e, _ in self._cleared]
        for i, line in enumerate(lines):
            cv2.putText(img, line, (10, 84 + 18 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                        (160, 255, 160) if line.startswith("cleared") else (255, 255, 255), 1,
                        cv2.LINE_AA)
        rel = result.relative
        cv2.rectangle(img, (0, h - 28), (w, h), (0, 0, 0), -1)
        label = "no face"
        if rel is not None:
            label = (f"relative to neutral: yaw {rel.yaw_deg:+.0f} pitch {rel.pitch_deg:+.0f} "
                     f"roll {rel.roll_deg:+.0f} deg")
        cv2.putText(img, label, (10, h - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1,
                    cv2.LINE_AA)
        return img
