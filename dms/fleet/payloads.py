"""What one MQTT message on a fleet topic is: an alert, a device's status or state, or a
rejection with its reason. Pure: no I/O, no clock (the caller passes the receive time).

Topics are ``<prefix>/<device>/<leaf>`` (docs/mqtt.md); payload schema 1 is
:data:`dms.outputs.mqtt.PAYLOAD_SCHEMA`. The device an alert is stored under is the one in the
topic (the level the broker's ACL ties to the device's login); a payload naming another device
is rejected.
"""

from __future__ import annotations

import enum
import json
import math
from dataclasses import dataclass

PAYLOAD_SCHEMA = 1  # the alert/state payload schema this store understands (docs/mqtt.md)
MAX_ID_CHARS = 128  # device ids and streams longer than this are rejected
MAX_TEXT_CHARS = 64  # event type, reason, phase, driver state


class Fault(str, enum.Enum):
    """Why a message was rejected (counted under this name, logged in aggregate)."""

    MALFORMED = "malformed"  # not UTF-8 JSON of the expected shape, or a bad field
    WRONG_SCHEMA = "wrong_schema"  # a schema version this store does not know
    TOO_LARGE = "too_large"  # larger than the ingester's max_payload_bytes
    FOREIGN_TOPIC = "foreign_topic"  # not <prefix>/<device>/alert|state|status
    DEVICE_MISMATCH = "device_mismatch"  # the payload names another device than its topic
    UNSTORABLE = "unstorable"  # well-formed, yet the database refused it alone (logged)


@dataclass(frozen=True, slots=True)
class Alert:
    device: str
    stream: str
    seq: int
    type: str
    reason: str
    level: int | None
    phase: str
    queued_wall_s: float  # the device's clock: when the alert entered its outbox
    payload: str  # the whole payload, as received (the export's source)


@dataclass(frozen=True, slots=True)
class Status:
    device: str
    status: str  # "online" / "offline" / "cleared" (an empty retained message)


@dataclass(frozen=True, slots=True)
class State:
    device: str
    wall_s: float | None  # the device's clock when it published the state
    driver_state: str | None
    payload: str  # the whole payload


@dataclass(frozen=True, slots=True)
class Rejected:
    fault: Fault
    topic: str
    detail: str


Message = Alert | Status | State | Rejected

LEAVES = ("alert", "state", "status")


def split_topic(topic: str, prefix: str) -> tuple[str, str] | None:
    """(device, leaf) of ``<prefix>/<device>/<leaf>`` with a non-empty device of at most
    MAX_ID_CHARS and a leaf in LEAVES; None for any other topic."""
    head = prefix + "/"
    if not topic.startswith(head):
        return None
    device, sep, leaf = topic[len(head):].partition("/")
    if not sep or leaf not in LEAVES or not device or len(device) > MAX_ID_CHARS:
        return None
    return device, leaf


def classify(topic: str, payload: bytes, prefix: str, max_payload_bytes: int) -> Message:
    """The message on ``topic`` with ``payload``; never raises."""
    parts = split_topic(topic, prefix)
    if parts is None:
        return Rejected(Fault.FOREIGN_TOPIC, topic, f"not {prefix}/<device>/alert|state|status")
    if len(payload) > max_payload_bytes:
        return Rejected(Fault.TOO_LARGE, topic,
                        f"{len(payload)} bytes > max_payload_bytes {max_payload_bytes}")
    device, leaf = parts
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejected(Fault.MALFORMED, topic, f"not UTF-8: {exc.reason}")
    if leaf == "status":
        return _status(topic, device, text)
    if leaf == "state" and not text:
        return State(device, None, None, "")  # an empty retained message clears the state
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as exc:
        return Rejected(Fault.MALFORMED, topic, f"not JSON: {str(exc)[:80]}")
    if not isinstance(doc, dict):
        return Rejected(Fault.MALFORMED, topic, f"a JSON {type(doc).__name__}, not an object")
    head = _check_head(topic, device, doc)
    if head is not None:
        return head
    if leaf == "state":
        return _state(topic, device, doc, text)
    return _alert(topic, device, doc, text)


def _status(topic: str, device: str, text: str) -> Status | Rejected:
    value = text.strip()
    if value in ("online", "offline"):
        return Status(device, value)
    if not value:
        return Status(device, "cleared")
    return Rejected(Fault.MALFORMED, topic, f"status {value[:20]!r} is not online/offline")


def _check_head(topic: str, device: str, doc: dict[str, object]) -> Rejected | None:
    schema = doc.get("schema")
    if schema is None:
        return Rejected(Fault.MALFORMED, topic, "no 'schema' field")
    if schema != PAYLOAD_SCHEMA or isinstance(schema, bool):
        return Rejected(Fault.WRONG_SCHEMA, topic,
                        f"schema {str(schema)[:20]!r}; this store reads {PAYLOAD_SCHEMA}")
    named = doc.get("device")
    if named is not None and named != device:
        return Rejected(Fault.DEVICE_MISMATCH, topic,
                        f"payload names device {str(named)[:40]!r}, topic {device!r}")
    return None


def _finite(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    v = float(value)
    return v if math.isfinite(v) else None


def _text(value: object, limit: int = MAX_TEXT_CHARS) -> str | None:
    """``value`` if it is a string of 1-``limit`` characters that a database can store (no
    NUL, which PostgreSQL refuses in text; no lone surrogate from a JSON escape such as
    ``"\\ud800"``, which no driver can encode), else None."""
    if not (isinstance(value, str) and 0 < len(value) <= limit and "\x00" not in value):
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return value


def _state(topic: str, device: str, doc: dict[str, object], text: str) -> State | Rejected:
    state = doc.get("state")
    if not isinstance(state, dict):
        return Rejected(Fault.MALFORMED, topic, "state payload without a 'state' object")
    return State(device, _finite(doc.get("wall_s")), _text(state.get("driver_state")), text)


def _alert(topic: str, device: str, doc: dict[str, object], text: str) -> Alert | Rejected:
    stream = _text(doc.get("stream"), MAX_ID_CHARS)
    if stream is None:
        return Rejected(Fault.MALFORMED, topic, "'stream' must be a string of 1-128 characters")
    seq = doc.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq < 2**63:
        return Rejected(Fault.MALFORMED, topic, f"'seq' must be an integer >= 1, got "
                                                f"{str(seq)[:20]!r}")
    queued = _finite(doc.get("queued_wall_s"))
    if queued is None:
        return Rejected(Fault.MALFORMED, topic, "'queued_wall_s' must be a finite number")
    event = doc.get("event")
    if not isinstance(event, dict):
        return Rejected(Fault.MALFORMED, topic, "'event' must be an object")
    kind = _text(event.get("type"))
    if kind is None:
        return Rejected(Fault.MALFORMED, topic, "'event.type' must be a string of 1-64 "
                                                "characters")
    level = event.get("level")
    return Alert(device, stream, seq, kind, _text(event.get("reason")) or "",
                 level if isinstance(level, int) and not isinstance(level, bool)
                 and -2**15 <= level < 2**15 else None,
                 _text(event.get("phase")) or "", queued, text)
