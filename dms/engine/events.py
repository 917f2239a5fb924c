"""Events: the typed records the engine emits and the MQTT layer publishes.

This is a contract with fleet software: fields are only ever added, and ``schema_version``
changes when they are. One alert produces a ``raised`` record, zero or more ``escalated``
records (level going up) and one ``cleared`` record, all sharing ``alert_id``; each record has
its own ``event_id``. ``reason`` is the cause of the record's level: a drowsiness alert raised
for a ``microsleep`` is escalated with reason ``sleep`` when the eyes stay shut.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any

EVENT_SCHEMA_VERSION = 1


class EventType(str, enum.Enum):
    DISTRACTION = "distraction"
    DROWSINESS = "drowsiness"
    SLUMP = "slump"
    DRIVER_NOT_VISIBLE = "driver_not_visible"
    SYSTEM_DEGRADED = "system_degraded"
    UNRESPONSIVE = "unresponsive"  # eyes closed >= unresponsive_s (Euro NCAP 2026)
    EYES_NOT_VISIBLE = "eyes_not_visible"  # notice: face seen, eyes not measurable


class Reason(str, enum.Enum):
    LONG_GLANCE = "long_glance"  # one glance away >= long_glance_s (Euro NCAP)
    TIME_SHARING = "time_sharing"  # >= vats_total_s away within vats_window_s (Euro NCAP)
    NODDING = "nodding"  # >= nods_for_alert nods within nod_window_s
    HEAD_DOWN = "head_down"  # fast drop, no return within slump_s
    FACE_LOST = "face_lost"  # face lost while frontal
    NO_FACE = "no_face"  # no usable face for degraded_s
    CAMERA_LOST = "camera_lost"  # (system_degraded, from the service) no frames from the camera
    OUTBOX_DAMAGED = "outbox_damaged"  # (system_degraded, from MQTT) outbox file set aside
    MICROSLEEP = "microsleep"  # (drowsiness) eyes closed >= microsleep_s
    SLEEP = "sleep"  # (drowsiness, escalated) eyes closed >= sleep_s
    PERCLOS = "perclos"  # (drowsiness) share of time with the eyes closed >= perclos_alert
    YAWNING = "yawning"  # (drowsiness) >= yawns_for_alert yawns within yawn_window_s
    EYES_CLOSED = "eyes_closed"  # (unresponsive) eyes closed >= unresponsive_s
    EYES_OCCLUDED = "eyes_occluded"  # (eyes_not_visible) eyes not measurable >= occluded_s


class Phase(str, enum.Enum):
    RAISED = "raised"
    ESCALATED = "escalated"
    CLEARED = "cleared"


@dataclass(frozen=True, slots=True)
class PoseSnapshot:
    """Pose relative to neutral when the record was produced (degrees; inboard yaw is the
    yaw toward the centre of the car). None fields when no face was visible."""

    yaw_deg: float | None
    pitch_deg: float | None
    roll_deg: float | None
    yaw_inboard_deg: float | None
    on_road: bool
    zone: str | None = None

    def to_dict(self) -> dict[str, Any]:
        def r(v: float | None) -> float | None:
            return None if v is None else round(float(v), 2)

        return {"yaw_deg": r(self.yaw_deg), "pitch_deg": r(self.pitch_deg),
                "roll_deg": r(self.roll_deg), "yaw_inboard_deg": r(self.yaw_inboard_deg),
                "on_road": self.on_road, "zone": self.zone}


@dataclass(frozen=True, slots=True)
class Event:
    """One alert record. ``t_s`` is when this record was produced and ``started_t_s`` when the
    condition began, both in the input's time base (monotonic seconds)."""

    type: EventType
    reason: Reason
    level: int
    phase: Phase
    t_s: float
    started_t_s: float
    alert_id: int
    event_id: str
    pose: PoseSnapshot
    settings_version: str
    schema_version: int = EVENT_SCHEMA_VERSION

    @classmethod
    def system(cls, reason: Reason, phase: Phase, t_s: float, started_t_s: float, level: int,
               alert_id: int, event_id: str, settings_version: str = "") -> Event:
        """A ``system_degraded`` record from outside the engine (the service's lost camera,
        the communicator's damaged outbox), in the same schema: no pose. Its ``alert_id`` is
        negative, so it never names one of the engine's alerts."""
        return cls(EventType.SYSTEM_DEGRADED, reason, level, phase, t_s, started_t_s, alert_id,
                   event_id, PoseSnapshot(None, None, None, None, False), settings_version)

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "event_id": self.event_id,
            "alert_id": self.alert_id,
            "type": self.type.value,
            "reason": self.reason.value,
            "level": self.level,
            "phase": self.phase.value,
            "t_s": round(self.t_s, 4),
            "started_t_s": round(self.started_t_s, 4),
            "pose": self.pose.to_dict(),
            "settings_version": self.settings_version,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))


def event_from_dict(d: dict[str, Any]) -> Event:
    """Inverse of :meth:`Event.to_dict` (for consumers and tests)."""
    p = d["pose"]
    return Event(
        type=EventType(d["type"]), reason=Reason(d["reason"]), level=int(d["level"]),
        phase=Phase(d["phase"]), t_s=float(d["t_s"]), started_t_s=float(d["started_t_s"]),
        alert_id=int(d["alert_id"]), event_id=str(d["event_id"]),
        pose=PoseSnapshot(p["yaw_deg"], p["pitch_deg"], p["roll_deg"], p["yaw_inboard_deg"],
                          bool(p["on_road"]), p.get("zone")),
        settings_version=str(d["settings_version"]),
        schema_version=int(d.get("schema_version", EVENT_SCHEMA_VERSION)),
    )
