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

When the disk refuses writes (state directory read-only, disk full, I/O errors), nothing is
dropped and nothing raises: a new alert gets its sequence number and is kept in memory (logged
at ERROR once per outage), :meth:`pending` still hands it out so it is published, and a
delete that cannot be written is remembered. Every write (and :meth:`sync`, called by the
MQTT worker about once a second) retries; once the disk takes writes again the kept alerts are
committed in order and the remembered deletes applied. Only a process that stops while the
disk still refuses writes loses what it kept in memory (logged at ERROR on close).

Thread safety: one connection guarded by a lock; every method is safe to call from any thread.
"""

from __future__ import annotations

import contextlib
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
RETRY_S = 1.0  # while the disk refuses writes, try it again at most this often

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
    persisted: bool = True  # False: the disk refused it; kept in memory, retried


@dataclass(frozen=True, slots=True)
class OutboxStats:
    pending_alerts: int
    pending_telemetry: int
    telemetry_refused: int
    telemetry_evicted: int
    alerts_over_bound: int
    next_seq: int
    alerts_in_memory: int = 0  # pending alerts the disk refused so far (see the module doc)
    alerts_not_persisted: int = 0  # alerts that ever had to wait in memory (total)

    def as_dict(self) -> dict[str, int]:
        return {f: getattr(self, f) for f in self.__slots__}


class Outbox:
    """A bounded, durable FIFO of MQTT messages in ``path`` (SQLite, WAL journal, exclusive
    lock: one process at a time).

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
        self._memory: list[OutboxRow] = []  # alerts the disk refused, oldest first
        self._unsynced_deletes: set[int] = set()  # acknowledged rows the disk kept
        self._disk_error: str | None = None  # set while the disk refuses writes
        self._retry_at = 0.0  # time.monotonic() of the next write attempt while refused
        self._alerts_not_persisted = 0
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(str(self.path), isolation_level=None,
                                       check_same_thread=False, timeout=10.0)
            # exclusive: one process owns the outbox (the sequence counter lives in it), and
            # WAL keeps its index in heap memory instead of a mmapped -shm file, so a state
            # directory that turns read-only cannot kill the process with SIGBUS
            self._db.execute("PRAGMA locking_mode=EXCLUSIVE")
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.executescript(_SCHEMA)
            self._init_meta()
            self._next_seq = int(self._meta("next_seq"))
            last = self._db.execute(
                "SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
            self._last_id = int(last[0]) if last else 0
        except (sqlite3.Error, OSError) as exc:
            hint = (" (is another dms process using this state directory?)"
                    if "locked" in str(exc) else "")
            raise DmsError(f"outbox {self.path}: cannot open the SQLite database: {exc}{hint}"
                           ) from exc

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
            try:
                self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")
            except sqlite3.Error:
                if self.db.in_transaction:  # a failed COMMIT may leave it open
                    with contextlib.suppress(sqlite3.Error):
                        self.db.execute("ROLLBACK")
                if exc_type is None:
                    raise

    def _tx(self) -> Outbox._Tx:
        return Outbox._Tx(self._db)

    def _counts(self) -> tuple[int, int]:
        rows = dict(self._db.execute("SELECT kind, COUNT(*) FROM outbox GROUP BY kind").fetchall())
        return int(rows.get("alert", 0)), int(rows.get("telemetry", 0))

    # -- when the disk refuses writes --------------------------------------------------------

    @property
    def degraded(self) -> str | None:
        """Why the disk refuses writes (None while it takes them)."""
        return self._disk_error

    def _refused(self, why: str) -> None:
        if self._disk_error is None:
            log.error("outbox %s: the disk refuses writes (%s); alerts are kept in memory and "
                      "still published, writes are retried every %.0f s; alerts kept in memory "
                      "are lost if the process stops before the disk takes writes again",
                      self.path, why, RETRY_S)
        self._disk_error = why
        self._retry_at = time.monotonic() + RETRY_S

    def _keep_in_memory(self, topic: str, payload: bytes, qos: int, seq: int) -> PutResult:
        self._last_id += 1
        row = OutboxRow(self._last_id, Kind.ALERT, topic, payload, qos, seq, self._clock_wall())
        self._memory.append(row)
        self._next_seq = seq + 1
        self._alerts_not_persisted += 1
        log.warning("outbox %s: alert seq %d kept in memory (%d there now): %s", self.path, seq,
                    len(self._memory), self._disk_error)
        return PutResult(row, 0, False, persisted=False)

    def _sync_locked(self, force: bool = False) -> bool:
        """Write what the disk refused before; True once nothing is left to write."""
        if self._disk_error is None:
            return True
        if not force and time.monotonic() < self._retry_at:
            return False
        try:
            with self._tx():
                for r in self._memory:  # OR IGNORE: a COMMIT reported failed may have landed
                    self._db.execute(
                        "INSERT OR IGNORE INTO outbox (id, kind, topic, payload, qos, seq, "
                        "created_wall_s) VALUES (?, 'alert', ?, ?, ?, ?, ?)",
                        (r.id, r.topic, r.payload, r.qos, r.seq, r.created_wall_s))
                # always a real write: a transaction that changes nothing would "succeed" on
                # a disk that still refuses writes
                self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES "
                                 "('next_seq', ?)", (str(self._next_seq),))
                self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES "
                                 "('synced_wall_s', ?)", (repr(self._clock_wall()),))
                # ids handed out from memory are used even when those rows were delivered
                # before they reached the disk: new rows must come after them (the sender's
                # cursor is past them), so the id counter moves on too
                if self._db.execute("UPDATE sqlite_sequence SET seq = MAX(seq, ?) WHERE name "
                                    "= 'outbox'", (self._last_id,)).rowcount == 0:
                    self._db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES "
                                     "('outbox', ?)", (self._last_id,))
                for row_id in self._unsynced_deletes:
                    self._db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
        except sqlite3.Error as exc:
            self._refused(str(exc))
            return False
        log.warning("outbox %s: the disk takes writes again; %d alert(s) kept in memory are now "
                    "stored, %d delivered row(s) removed", self.path, len(self._memory),
                    len(self._unsynced_deletes))
        self._memory.clear()
        self._unsynced_deletes.clear()
        self._disk_error = None
        return True

    def sync(self, force: bool = False) -> bool:
        """Retry the writes the disk refused (at most every ``RETRY_S`` unless ``force``);
        True when nothing is left to write."""
        with self._lock:
            return self._sync_locked(force)

    # -- writing -----------------------------------------------------------------------------

    def put_alert(self, topic: str, build_payload: Callable[[int], bytes],
                  qos: int = 1) -> PutResult:
        """Allocate the next sequence number, build the payload with it and commit both.

        Returns once the row is on disk, or, while the disk refuses writes, kept in memory
        (``PutResult.persisted`` False). Never refuses an alert (see the module policy).
        """
        if qos < 1:
            raise ValueError("alerts need QoS >= 1 to be acknowledged")
        with self._lock:
            seq = self._next_seq
            payload = build_payload(seq)  # may raise: nothing stored, the counter is kept
            if not self._sync_locked():
                return self._keep_in_memory(topic, payload, qos, seq)
            try:
                with self._tx():
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
                self._refused(str(exc))
                return self._keep_in_memory(topic, payload, qos, seq)
            self._next_seq = seq + 1
            self._last_id = int(cur.lastrowid or 0)
            self._telemetry_evicted += evicted
            if over:
                self._alerts_over_bound += 1
            row = OutboxRow(self._last_id, Kind.ALERT, topic, payload, qos, seq, now)
            return PutResult(row, evicted, over)

    def put_telemetry(self, topic: str, payload: bytes, qos: int = 0) -> OutboxRow | None:
        """Queue telemetry if there is room; None (and counted) when refused."""
        with self._lock:
            if not self._sync_locked():  # the disk refuses writes: telemetry is best effort
                self._telemetry_refused += 1
                return None
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
                self._refused(str(exc))
                self._telemetry_refused += 1
                return None
            self._last_id = int(cur.lastrowid or 0)
            return OutboxRow(self._last_id, Kind.TELEMETRY, topic, payload, qos, None, now)

    def delete(self, row_id: int) -> None:
        """Remove an acknowledged row (no-op if it is already gone). Never raises: a delete
        the disk refuses is remembered and written later."""
        with self._lock:
            for i, row in enumerate(self._memory):
                if row.id == row_id:
                    del self._memory[i]
                    return
            if self._sync_locked():
                try:
                    self._db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
                    return
                except sqlite3.Error as exc:
                    self._refused(str(exc))
            self._unsynced_deletes.add(row_id)

    # -- reading -----------------------------------------------------------------------------

    def pending(self, after_id: int = 0, limit: int = 100) -> list[OutboxRow]:
        """Rows with ``id > after_id`` in insertion order (the order they must be sent in)."""
        with self._lock:
            try:
                rows = self._db.execute(
                    "SELECT id, kind, topic, payload, qos, seq, created_wall_s FROM outbox "
                    "WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)).fetchall()
            except sqlite3.Error as exc:
                log.warning("outbox %s: cannot read pending rows: %s", self.path, exc)
                rows = []
            out = [OutboxRow(r[0], Kind(r[1]), r[2], bytes(r[3]), r[4], r[5], r[6])
                   for r in rows if r[0] not in self._unsynced_deletes]
            out += [r for r in self._memory if r.id > after_id]
        out.sort(key=lambda r: r.id)
        return out[:limit]

    def _pending_counts(self) -> tuple[int, int]:
        """(alerts, telemetry) still to deliver, counting memory and remembered deletes."""
        alerts, telemetry = self._counts()
        if self._unsynced_deletes:
            marks = ",".join("?" * len(self._unsynced_deletes))
            gone = dict(self._db.execute(
                f"SELECT kind, COUNT(*) FROM outbox WHERE id IN ({marks}) GROUP BY kind",
                tuple(self._unsynced_deletes)).fetchall())
            alerts -= int(gone.get("alert", 0))
            telemetry -= int(gone.get("telemetry", 0))
        return alerts + len(self._memory), telemetry

    def __len__(self) -> int:
        with self._lock:
            try:
                return sum(self._pending_counts())
            except sqlite3.Error as exc:  # unreadable: not known to be drained
                log.warning("outbox %s: cannot count rows: %s", self.path, exc)
                return len(self._memory) + 1

    def stats(self) -> OutboxStats:
        with self._lock:
            alerts, telemetry = self._pending_counts()
            return OutboxStats(alerts, telemetry, self._telemetry_refused,
                               self._telemetry_evicted, self._alerts_over_bound, self._next_seq,
                               len(self._memory), self._alerts_not_persisted)

    def close(self) -> None:
        with self._lock:
            if not self._sync_locked(force=True) and self._memory:
                log.error("outbox %s: closing while the disk refuses writes: %d undelivered "
                          "alert(s) kept in memory are lost (seq %s)", self.path,
                          len(self._memory), ", ".join(str(r.seq) for r in self._memory))
            try:
                self._db.close()
            except sqlite3.Error as exc:  # pragma: no cover - closing a broken db
                log.warning("outbox %s: close failed: %s", self.path, exc)
