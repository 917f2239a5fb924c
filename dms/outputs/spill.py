"""The spill file: undelivered alerts written to another file system (systemd's
RuntimeDirectory in RAM) when the state directory cannot keep them, taken back by the next
start.

One JSON object per line: an alert row (``topic``, ``payload``, ``qos``, ``seq``,
``created_wall_s``) or an alert that never had a row (``{"event": {...}}``: it was still
waiting for a stalled disk).

Nothing in it is trusted blindly: its folder must be ours alone (not another user's, not
writable by others: :func:`dms.private.distrust`), the file is opened without following a
symbolic link and must be a regular file of ours, and every line is checked: our own alert
topic, QoS 1, a payload naming a well-formed ``stream`` and the row's ``seq``. A bad line is
logged and skipped; it never blocks the others. The file is written to a new temporary file
(``O_EXCL|O_NOFOLLOW``: a link planted in its place is removed, never followed), fsynced and
renamed over the old one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from dms.private import create_exclusive, distrust, private_dir, read_private

log = logging.getLogger(__name__)

MAX_BYTES = 64 << 20  # a spill file larger than this is not read (10000 alerts are ~5 MB)
MAX_EVENT_BYTES = 16 << 10  # one spilled event's JSON
_STREAM = re.compile(r"[0-9a-f]{32}")
_WILDCARD = re.compile(r"[+#\x00]")


@dataclass(frozen=True, slots=True)
class SpilledAlert:
    """An alert row as spilled: it keeps its ``(stream, seq)`` (in its payload)."""

    topic: str
    payload: bytes
    qos: int
    seq: int
    created_wall_s: float


def _check_topic(topic: object, alert_topic: str | None) -> str:
    if not isinstance(topic, str) or _WILDCARD.search(topic) or not topic:
        raise ValueError(f"topic {str(topic)[:60]!r} is not a topic name")
    if alert_topic is not None and topic != alert_topic:
        raise ValueError(f"topic {topic[:60]!r} is not this device's alert topic")
    return topic


def _check_payload(payload: object, seq: int) -> bytes:
    """The payload, once it names a well-formed stream and ``seq``."""
    if not isinstance(payload, str):
        raise ValueError("payload is not text")
    body = json.loads(payload)
    if not isinstance(body, dict):
        raise ValueError("payload is not a JSON object")
    stream = body.get("stream")
    if not isinstance(stream, str) or not _STREAM.fullmatch(stream):
        raise ValueError(f"payload stream {str(stream)[:40]!r} is not a stream id")
    if body.get("seq") != seq:
        raise ValueError(f"payload seq {body.get('seq')!r} is not the row's seq {seq}")
    return payload.encode("utf-8")


def check_row(d: object, alert_topic: str | None) -> SpilledAlert:
    """A spilled alert row, or ValueError saying what is wrong with it."""
    if not isinstance(d, dict):
        raise ValueError("not a JSON object")
    topic = _check_topic(d.get("topic"), alert_topic)
    qos, seq, created = d.get("qos"), d.get("seq"), d.get("created_wall_s")
    if qos != 1 or isinstance(qos, bool):
        raise ValueError(f"qos {qos!r} is not 1")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
        raise ValueError(f"seq {seq!r} is not a positive integer")
    if isinstance(created, bool) or not isinstance(created, (int, float)) or \
            not math.isfinite(created):
        raise ValueError("created_wall_s is not a number")
    return SpilledAlert(topic, _check_payload(d.get("payload"), seq), 1, seq, float(created))


def check_event(event: object) -> dict[str, object]:
    """A spilled event that had no row yet, or ValueError."""
    if not isinstance(event, dict):
        raise ValueError("event is not a JSON object")
    eid = event.get("event_id")
    if not isinstance(eid, str) or not 0 < len(eid) <= 128:
        raise ValueError("event has no event_id")
    if len(json.dumps(event)) > MAX_EVENT_BYTES:
        raise ValueError(f"event is larger than {MAX_EVENT_BYTES} bytes")
    return event


class SpillFile:
    """The spill file ``path`` of one outbox; ``alert_topic``: the only topic its rows may
    name (None: any topic without wildcards)."""

    def __init__(self, path: Path, alert_topic: str | None = None) -> None:
        self.path = path
        self.alert_topic = alert_topic

    def exists(self) -> bool:
        return os.path.lexists(self.path)

    def _refused(self) -> str | None:
        why = distrust(self.path.parent)
        if why is not None:
            log.error("spill folder %s %s: refused (alerts are neither spilled to it nor "
                      "taken from it; give the service a folder of its own, e.g. systemd's "
                      "RuntimeDirectory)", self.path.parent, why)
        return why

    def write(self, rows: Iterable[SpilledAlert], events: Sequence[Mapping[str, object]] = ()
              ) -> int:
        """Replace the file with ``rows`` and ``events``; how many were written (0 when the
        folder is not ours alone or the write failed, logged)."""
        rows = list(rows)
        if not (rows or events) or self._refused() is not None:
            return 0
        tmp = self.path.with_name(self.path.name + ".tmp")
        try:
            private_dir(self.path.parent)
            if self._refused() is not None:  # made by someone else meanwhile
                return 0
            fd = create_exclusive(tmp)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                for r in rows:
                    f.write(json.dumps({"topic": r.topic, "payload": r.payload.decode("utf-8"),
                                        "qos": r.qos, "seq": r.seq,
                                        "created_wall_s": r.created_wall_s}) + "\n")
                for e in events:
                    f.write(json.dumps({"event": e}) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)  # a rename: never follows a link at the name
        except (OSError, UnicodeDecodeError, TypeError, ValueError) as exc:
            log.error("cannot spill %d alert(s) to %s: %s", len(rows) + len(events), self.path,
                      exc)
            return 0
        return len(rows) + len(events)

    def read(self) -> tuple[list[SpilledAlert], list[dict[str, object]]]:
        """The alert rows and the row-less events the file holds, each line checked (a bad
        one is logged and skipped); nothing when the folder or file is not trusted."""
        if not self.exists() or self._refused() is not None:
            return [], []
        try:
            text = read_private(self.path, MAX_BYTES).decode("utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            log.error("spill file %s not read: %s", self.path, exc)
            return [], []
        rows: list[SpilledAlert] = []
        events: list[dict[str, object]] = []
        for n, line in enumerate(text.splitlines(), start=1):
            try:
                d = json.loads(line)
                if isinstance(d, dict) and "event" in d:
                    events.append(check_event(d["event"]))
                else:
                    rows.append(check_row(d, self.alert_topic))
            except (ValueError, RecursionError) as exc:
                log.error("spill file %s line %d refused (%s); skipped", self.path, n, exc)
        return rows, events

    def remove(self) -> None:
        """Remove the file (its folder must be ours alone: never unlink in another's)."""
        if distrust(self.path.parent) is None:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("cannot remove the spill file %s: %s", self.path, exc)
