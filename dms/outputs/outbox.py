"""Durable outbox: alerts are committed to SQLite before they are published and deleted only
when the broker acknowledges them, so they survive broker outages and process restarts.

Policy when the outbox is full (``max_messages`` rows in all):

* telemetry is best effort: a new telemetry row is refused (and counted) when the outbox is full
  or already holds ``max_telemetry`` telemetry rows; an alert that needs room evicts the oldest
  telemetry row (counted).
* alerts are never dropped: when alerts alone fill the outbox, a new alert is still stored
  (the bound is exceeded), counted in ``alerts_over_bound`` and reported by
  :class:`PutResult.over_bound` so the caller logs it loudly and raises a system event.

Alert sequence numbers come from the same database (table ``meta``), so they keep increasing
across restarts; ``stream_id`` is a random id made when the database is created, so subscribers
can tell a reset counter (new database) from a replay.

Thread safety: one connection guarded by a lock; every method is safe to call from any thread.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from dms.errors import DmsError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL CHECK (kind IN ('alert', 'telemetry')),
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    seq INTEGER,
    created_wall_s REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_kind ON outbox (kind, id);
"""


class Kind(str, Enum):
    ALERT = "alert"
    TELEMETRY = "telemetry"


@dataclass(frozen=True, slots=True)
class OutboxRow:
    id: int
    kind: Kind
    topic: str
    payload: bytes
    qos: int
    seq: int | None
    created_wall_s: float


@dataclass(frozen=True, slots=True)
class PutResult:
    """What happened to a new row: its id and seq, and whether the bound was exceeded."""

    row: OutboxRow
    evicted_telemetry: int = 0
    over_bound: bool = False


@dataclass(frozen=True, slots=True)
class OutboxStats:
    pending_alerts: int
    pending_telemetry: int
    telemetry_refused: int
    telemetry_evicted: int
    alerts_over_bound: int
    next_seq: int

    def as_dict(self) -> dict[str, int]:
        return {f: getattr(self, f) for f in self.__slots__}


class Outbox:
    """A bounded, durable FIFO of MQTT messages in ``path`` (SQLite, WAL journal).

    ``synchronous=FULL``: a committed alert survives power loss, not only a process crash
    (ignition-off is the common way a vehicle computer stops).
    """

    def __init__(self, path: Path | str, *, max_messages: int = 10_000,
                 max_telemetry: int = 600,
                 clock_wall: Callable[[], float] = time.time) -> None:
        if max_messages < 1 or max_telemetry < 0:
            raise DmsError(f"outbox {path}: max_messages must be >= 1 and max_telemetry >= 0")
        self.path = Path(path)
        self.max_messages = max_messages
        self.max_telemetry = max_telemetry
        self._clock_wall = clock_wall
        self._lock = threading.Lock()
        self._telemetry_refused = 0
        self._telemetry_evicted = 0
        self._alerts_over_bound = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), isolation_level=None,
                                       check_same_thread=False, timeout=10.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._init_meta()
        except (sqlite3.Error, OSError) as exc:
            raise DmsError(f"outbox {self.path}: cannot open the SQLite database: {exc}") from exc

    def _init_meta(self) -> None:
        with self._tx():
            meta = dict(self._db.execute("SELECT key, value FROM meta").fetchall())
            version = int(meta.get("schema_version", SCHEMA_VERSION))
            if version != SCHEMA_VERSION:
                raise DmsError(f"outbox {self.path}: schema version {version}, this dms "
                               f"understands {SCHEMA_VERSION}")
            defaults = {"schema_version": str(SCHEMA_VERSION), "stream_id": uuid.uuid4().hex,
                        "next_seq": "1"}
            for key, value in defaults.items():
                if key not in meta:
                    self._db.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (key, value))
            self.stream_id = meta.get("stream_id") or self._meta("stream_id")

    def _meta(self, key: str) -> str:
        return str(self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()[0])

    class _Tx:
        def __init__(self, db: sqlite3.Connection) -> None:
            self.db = db

        def __enter__(self) -> None:
            self.db.execute("BEGIN IMMEDIATE")

        def __exit__(self, exc_type: object, *_: object) -> None:
            self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")

    def _tx(self) -> Outbox._Tx:
        return Outbox._Tx(self._db)

    def _counts(self) -> tuple[int, int]:
        rows = dict(self._db.execute("SELECT kind, COUNT(*) FROM outbox GROUP BY kind").fetchall())
        return int(rows.get("alert", 0)), int(rows.get("telemetry", 0))

    # -- writing -----------------------------------------------------------------------------

    def put_alert(self, topic: str, build_payload: Callable[[int], bytes],
                  qos: int = 1) -> PutResult:
        """Allocate the next sequence number, build the payload with it and commit both.

        Returns once the row is on disk. Never refuses an alert (see the module policy).
        """
        if qos < 1:
            raise ValueError("alerts need QoS >= 1 to be acknowledged")
        with self._lock:
            try:
                with self._tx():
                    seq = int(self._meta("next_seq"))
                    payload = build_payload(seq)
                    alerts, telemetry = self._counts()
                    evicted = 0
                    over = False
                    if alerts + telemetry >= self.max_messages:
                        if telemetry:
                            self._db.execute(
                                "DELETE FROM outbox WHERE id = (SELECT MIN(id) FROM outbox "
                                "WHERE kind = 'telemetry')")
                            evicted = 1
                        else:
                            over = True
                    now = self._clock_wall()
                    cur = self._db.execute(
                        "INSERT INTO outbox (kind, topic, payload, qos, seq, created_wall_s) "
                        "VALUES ('alert', ?, ?, ?, ?, ?)", (topic, payload, qos, seq, now))
                    self._db.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'",
                                     (str(seq + 1),))
            except sqlite3.Error as exc:
                raise DmsError(f"outbox {self.path}: cannot store an alert: {exc}") from exc
            self._telemetry_evicted += evicted
            if over:
                self._alerts_over_bound += 1
            row = OutboxRow(int(cur.lastrowid or 0), Kind.ALERT, topic, payload, qos, seq, now)
            return PutResult(row, evicted, over)

    def put_telemetry(self, topic: str, payload: bytes, qos: int = 0) -> OutboxRow | None:
        """Queue telemetry if there is room; None (and counted) when refused."""
        with self._lock:
            try:
                with self._tx():
                    alerts, telemetry = self._counts()
                    if alerts + telemetry >= self.max_messages or telemetry >= self.max_telemetry:
                        self._telemetry_refused += 1
                        return None
                    now = self._clock_wall()
                    cur = self._db.execute(
                        "INSERT INTO outbox (kind, topic, payload, qos, seq, created_wall_s) "
                        "VALUES ('telemetry', ?, ?, ?, NULL, ?)", (topic, payload, qos, now))
            except sqlite3.Error as exc:
                log.warning("outbox %s: telemetry not stored: %s", self.path, exc)
                self._telemetry_refused += 1
                return None
            return OutboxRow(int(cur.lastrowid or 0), Kind.TELEMETRY, topic, payload, qos, None,
                             now)

    def delete(self, row_id: int) -> None:
        """Remove an acknowledged row (no-op if it is already gone)."""
        with self._lock:
            self._db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))

    # -- reading -----------------------------------------------------------------------------

    def pending(self, after_id: int = 0, limit: int = 100) -> list[OutboxRow]:
        """Rows with ``id > after_id`` in insertion order (the order they must be sent in)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, kind, topic, payload, qos, seq, created_wall_s FROM outbox "
                "WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)).fetchall()
        return [OutboxRow(r[0], Kind(r[1]), r[2], bytes(r[3]), r[4], r[5], r[6]) for r in rows]

    def __len__(self) -> int:
        with self._lock:
            return sum(self._counts())

    def stats(self) -> OutboxStats:
        with self._lock:
            alerts, telemetry = self._counts()
            next_seq = int(self._meta("next_seq"))
        return OutboxStats(alerts, telemetry, self._telemetry_refused, self._telemetry_evicted,
                           self._alerts_over_bound, next_seq)

    def close(self) -> None:
        with self._lock:
            try:
                self._db.close()
            except sqlite3.Error as exc:  # pragma: no cover - closing a broken db
                log.warning("outbox %s: close failed: %s", self.path, exc)
