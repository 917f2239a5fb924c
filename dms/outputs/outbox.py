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
can tell a reset counter (new database) from a replay. A ``(stream_id, seq)`` pair never names
two alerts: a seq is handed out only after it is on disk, or in a new stream.

When the disk refuses writes (state directory read-only, disk full, I/O errors), nothing is
dropped and nothing raises: alerts continue in a **new stream** that exists only in memory
(the counter on disk cannot move, so the old stream must not be continued: a restart would
reuse its numbers), each is kept in memory (logged at ERROR once per outage), :meth:`pending`
still hands it out so it is published, and a delete that cannot be written is remembered.
Every write (and :meth:`sync`, called by the MQTT worker about once a second) retries; once the
disk takes writes again the kept alerts are committed in order, with the new stream and its
counter. Only a process that stops while the disk still refuses writes loses what it kept in
memory, unless it can spill them (``spill_dir``, another filesystem such as systemd's
RuntimeDirectory in RAM: the next process takes them back and sends them); the next process
continues the old stream where the disk left it, and those numbers were never used. Every
close writes all undelivered alerts to the spill file, so a database destroyed or deleted
while the service is stopped is rebuilt from it at the next start (alerts the database
still has are not taken twice).

A damaged file is detected (:meth:`check`, run by every write and by the worker's ticks): the
database deleted or replaced under the running process, it or its ``-wal`` truncated, SQLite
reporting it malformed, or at start a file that is not a database. The file is renamed aside
(``<name>.damaged-<UTC time>``), a new database with a new stream is made, and every
undelivered alert this process holds (all of them up to ``max_messages``: the outbox keeps a
copy in memory) is written to it with its original stream and seq, so nothing is lost and
re-sends still de-duplicate. :meth:`take_damage` reports each such event once (the
communicator publishes a ``system_degraded`` / ``outbox_damaged`` record).

Files are created 0640 and the directory holding them is made 0750 (no access for others),
whatever the umask.

Thread safety: one connection guarded by a lock; every method is safe to call from any thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import stat
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from dms.errors import DmsError
from dms.outputs.spill import SpilledAlert, SpillFile
from dms.private import FILE_MODE, private_dir

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
    streams_started: int = 0  # new streams since the database was opened (disk refused, damage)
    damaged: int = 0  # damaged files set aside since start
    alerts_lost: int = 0  # undelivered alerts a damaged file took with it (beyond the copy)

    def as_dict(self) -> dict[str, int]:
        return {f: getattr(self, f) for f in self.__slots__}


def _is_corrupt(exc: BaseException) -> bool:
    """SQLITE_CORRUPT or SQLITE_NOTADB (Python < 3.11 has no error code: by message)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int) and (code & 0xFF) in (11, 26):
        return True
    text = str(exc)
    return "malformed" in text or "not a database" in text


def _event_id(payload: bytes) -> str | None:
    """The ``event.event_id`` an alert row's payload carries, if any."""
    import json

    try:
        doc = json.loads(payload)
        eid = doc["event"]["event_id"]
    except (ValueError, KeyError, TypeError):
        return None
    return eid if isinstance(eid, str) else None


def secure_dir(directory: Path) -> None:
    """:func:`dms.private.private_dir`, but a failure to restrict the mode is logged, not
    raised (the files are what matters; SQLite reports a folder it cannot use)."""
    try:
        private_dir(directory)
    except PermissionError as exc:
        log.warning("%s: cannot restrict the directory's permissions: %s", directory, exc)


def _private_file(path: Path) -> None:
    """``path`` exists with mode 0640 (at most), made so before SQLite opens it: SQLite gives
    the -wal file the database's mode. A file this process may hold SQLite locks on is never
    opened here (closing any descriptor drops them): an existing one is only chmod-ed."""
    try:
        if path.exists():
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode & ~FILE_MODE:
                os.chmod(path, mode & FILE_MODE)
            return
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, FILE_MODE)
        try:
            os.fchmod(fd, FILE_MODE)  # whatever the umask
        finally:
            os.close(fd)
    except OSError as exc:  # SQLite reports what matters when it opens the file
        log.debug("%s: cannot set mode %o: %s", path, FILE_MODE, exc)


class Outbox:
    """A bounded, durable FIFO of MQTT messages in ``path`` (SQLite, WAL journal, exclusive
    lock: one process at a time).

    ``synchronous=FULL``: a committed alert survives power loss, not only a process crash
    (ignition-off is the common way a vehicle computer stops).
    """

    def __init__(self, path: Path | str, *, max_messages: int = 10_000,
                 max_telemetry: int = 600,
                 clock_wall: Callable[[], float] = time.time,
                 spill_dir: Path | str | None = None, alert_topic: str | None = None) -> None:
        if max_messages < 1 or max_telemetry < 0:
            raise DmsError(f"outbox {path}: max_messages must be >= 1 and max_telemetry >= 0")
        self.path = Path(path)
        self.spill_dir = Path(spill_dir) if spill_dir else None
        self._spill = None if self.spill_path is None else SpillFile(self.spill_path,
                                                                     alert_topic)
        self.max_messages = max_messages
        self.max_telemetry = max_telemetry
        self._clock_wall = clock_wall
        self._lock = threading.Lock()
        self._telemetry_refused = 0
        self._telemetry_evicted = 0
        self._alerts_over_bound = 0
        self._memory: list[OutboxRow] = []  # alerts not on disk, oldest first
        self._unsynced_deletes: set[int] = set()  # acknowledged rows the disk kept
        self._disk_error: str | None = None  # set while the disk refuses writes
        self._retry_at = 0.0  # time.monotonic() of the next write attempt while refused
        self._alerts_not_persisted = 0
        # every undelivered alert (on disk or not), newest max_messages: what a damaged file
        # would otherwise take with it
        self._copy: OrderedDict[int, OutboxRow] = OrderedDict()
        self._stream_on_disk = True  # False: self.stream_id exists only in memory so far
        self._file_lost: str | None = None  # damaged and set aside; a new file is due
        self._damage: list[str] = []  # not yet taken by take_damage()
        self._streams_started = 0
        self._damaged = 0
        self._alerts_lost = 0
        self._main_size = 0  # largest sizes seen: SQLite never shrinks either file while open
        self._wal_size = 0
        self._file_id: tuple[int, int] | None = None
        self._wal_id: tuple[int, int] | None = None
        self.stream_id = ""
        self._next_seq = 1
        self._last_id = 0
        self._spilled_events: list[dict[str, object]] = []
        try:
            try:
                self._open_db(keep_stream=False)
            except sqlite3.DatabaseError as exc:
                if not _is_corrupt(exc):
                    raise
                why = f"{self.path.name} cannot be read at start: {exc}"
                self._set_aside(why)
                self._open_db(keep_stream=False)
                self._record_damage(why, lost_on_disk=None)
        except (sqlite3.Error, OSError) as exc:
            hint = (" (is another dms process using this state directory?)"
                    if "locked" in str(exc) else "")
            raise DmsError(f"outbox {self.path}: cannot open the SQLite database: {exc}{hint}"
                           ) from exc
        self._load_spill()

    # -- the spill file: alerts the disk refused, kept across a restart -------------------------

    @property
    def spill_path(self) -> Path | None:
        """Where alerts held in memory go when the process stops while the disk refuses writes
        (``spill_dir``: another filesystem, e.g. systemd's RuntimeDirectory in RAM)."""
        if self.spill_dir is None:
            return None
        import hashlib

        # one spill file per outbox: named after the outbox's absolute path
        tag = hashlib.sha256(str(self.path.resolve()).encode()).hexdigest()[:12]
        return self.spill_dir / f"{self.path.name}-{tag}.spill"

    def _spill_locked(self, rows: list[OutboxRow],
                      events: list[dict[str, object]] | None = None) -> int:
        """Write ``rows`` (and ``events``: alerts never given a seq, e.g. still waiting for a
        stalled disk) to the spill file; how many were written."""
        if self._spill is None:
            return 0
        return self._spill.write([SpilledAlert(r.topic, r.payload, r.qos, r.seq or 0,
                                               r.created_wall_s) for r in rows], events or [])

    def spill_now(self, events: list[dict[str, object]], lock_timeout_s: float = 0.5) -> int:
        """Write every undelivered alert, and ``events`` (alerts not yet given a seq), to the
        spill file now, for the next start: what a stop that cannot wait for a stalled disk
        does before the process ends. Does not wait longer than ``lock_timeout_s`` for a
        write under way (the rows are then copied without the lock). Returns how many."""
        got = self._lock.acquire(timeout=lock_timeout_s)
        try:
            for _attempt in range(3):
                try:
                    rows = {r.id: r for r in list(self._copy.values())}
                    rows |= {r.id: r for r in list(self._memory)}
                    break
                except RuntimeError:  # changed size while copied without the lock
                    continue
            else:
                rows = {}
            return self._spill_locked([rows[k] for k in sorted(rows)], events)
        finally:
            if got:
                self._lock.release()

    def take_spilled_events(self) -> list[dict[str, object]]:
        """Alerts a previous process spilled before they had a seq (each is queued again by
        the caller, with a new seq); each is returned once."""
        out, self._spilled_events = self._spilled_events, []
        return out

    def _load_spill(self) -> None:
        """Take back the alerts a previous process spilled: into the database, or (while the
        disk refuses writes) into memory to be published and stored later. Their payloads keep
        their own ``(stream, seq)``: a stream that only ever existed in memory, never
        continued by anyone, so no pair is reused. Every line is checked
        (:mod:`dms.outputs.spill`); one that is not a well-formed alert of ours is skipped."""
        if self._spill is None or not self._spill.exists():
            return
        spilled, events = self._spill.read()
        stored = {r.payload for r in self._copy.values()}  # already in the database
        # alerts spilled before they had a row may have reached the database after all (the
        # stalled write completed as the process ended): their event ids are there
        stored_events = {_event_id(r.payload) for r in self._copy.values()} - {None}
        self._spilled_events = [e for e in events if e.get("event_id") not in stored_events]
        if self._spilled_events:
            log.warning("outbox %s: %d alert(s) the previous process could not store are "
                        "queued again from %s", self.path, len(self._spilled_events),
                        self._spill.path)
        rows: list[OutboxRow] = []
        for r in spilled:
            if r.payload in stored:
                continue
            self._last_id += 1
            rows.append(OutboxRow(self._last_id, Kind.ALERT, r.topic, r.payload, r.qos, r.seq,
                                  r.created_wall_s))
        if not rows:  # all of them are in the database (a clean stop's mirror)
            self._spill.remove()
            return
        with self._lock:
            self._memory.extend(rows)
            for row in rows:
                self._remember(row)
            self._disk_error = self._disk_error or "alerts spilled by a previous process"
            self._retry_at = 0.0
            self._sync_locked(force=True)  # removes the spill file once they are on disk
        log.warning("outbox %s: %d alert(s) spilled by the previous process taken back from "
                    "%s", self.path, len(rows), self._spill.path)

    # -- the database file ---------------------------------------------------------------------

    @property
    def _wal(self) -> Path:
        return self.path.with_name(self.path.name + "-wal")

    def _open_db(self, keep_stream: bool) -> None:
        """Open (or create) the database file; on success it replaces ``self._db``.
        ``keep_stream``: the file is new and takes this process's stream and counter (they
        are written by the next sync) instead of the file's own."""
        secure_dir(self.path.parent)
        _private_file(self.path)
        if self._wal.exists():
            _private_file(self._wal)
        db = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False,
                             timeout=10.0)
        try:
            # exclusive: one process owns the outbox (the sequence counter lives in it), and
            # WAL keeps its index in heap memory instead of a mmapped -shm file, so a state
            # directory that turns read-only cannot kill the process with SIGBUS
            db.execute("PRAGMA locking_mode=EXCLUSIVE")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
            check = db.execute("PRAGMA quick_check").fetchone()
            if check is None or check[0] != "ok":
                raise sqlite3.DatabaseError(f"database disk image is malformed "
                                            f"(quick_check: {check and check[0]})")
            meta = self._init_meta(db)
            rows = db.execute(
                "SELECT id, kind, topic, payload, qos, seq, created_wall_s FROM outbox "
                "WHERE kind = 'alert' ORDER BY id DESC LIMIT ?", (self.max_messages,)
            ).fetchall()
            last = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.close()
            raise
        old = getattr(self, "_db", None)
        self._db = db
        if old is not None:
            with contextlib.suppress(sqlite3.Error):
                old.close()
        if not keep_stream:
            self.stream_id, self._next_seq = meta["stream_id"], int(meta["next_seq"])
            self._last_id = int(last[0]) if last else 0
            for r in reversed(rows):
                self._copy[r[0]] = OutboxRow(r[0], Kind(r[1]), r[2], bytes(r[3]), r[4], r[5],
                                             r[6])
        self._note_file()

    def _init_meta(self, db: sqlite3.Connection) -> dict[str, str]:
        with Outbox._Tx(db):
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            version = int(meta.get("schema_version", SCHEMA_VERSION))
            if version != SCHEMA_VERSION:
                raise DmsError(f"outbox {self.path}: schema version {version}, this dms "
                               f"understands {SCHEMA_VERSION}")
            defaults = {"schema_version": str(SCHEMA_VERSION), "stream_id": uuid.uuid4().hex,
                        "next_seq": "1"}
            for key, value in defaults.items():
                if key not in meta:
                    db.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (key, value))
                    meta[key] = value
        return meta

    def _note_file(self) -> None:
        """Remember the file's identity and sizes (what :meth:`check` compares with)."""
        try:
            st = os.stat(self.path)
            self._file_id, self._main_size = (st.st_dev, st.st_ino), st.st_size
        except OSError:
            self._file_id, self._main_size = None, 0  # taken at the next check
        try:
            wal = os.stat(self._wal)
            self._wal_id, self._wal_size = (wal.st_dev, wal.st_ino), wal.st_size
        except OSError:
            self._wal_id, self._wal_size = None, 0

    def _file_problem(self) -> str | None:
        """What is wrong with the file under the running process, or None."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return f"{self.path.name} was deleted while in use"
        except OSError:
            return None  # cannot tell; SQLite reports real trouble
        if self._file_id is None:
            self._file_id = (st.st_dev, st.st_ino)
        if (st.st_dev, st.st_ino) != self._file_id:
            return f"{self.path.name} was replaced by another file while in use"
        if st.st_size < self._main_size:
            return (f"{self.path.name} was truncated while in use ({st.st_size} bytes, "
                    f"was {self._main_size})")
        self._main_size = st.st_size
        try:
            wal = os.stat(self._wal)
        except FileNotFoundError:
            return f"{self._wal.name} was deleted while in use" if self._wal_id else None
        except OSError:
            return None
        if self._wal_id is not None and (wal.st_dev, wal.st_ino) != self._wal_id:
            return f"{self._wal.name} was replaced while in use"
        if wal.st_size < self._wal_size:
            return (f"{self._wal.name} was truncated while in use ({wal.st_size} bytes, "
                    f"was {self._wal_size})")
        self._wal_id, self._wal_size = (wal.st_dev, wal.st_ino), wal.st_size
        return None

    def _check_locked(self) -> bool:
        """Detect a damaged file and recover (see the module doc); True when the file is
        usable now."""
        if self._file_lost is None:
            why = self._file_problem()
            if why is not None:
                self._on_damage(why)
        return self._file_lost is None

    def check(self) -> bool:
        """Look for a deleted, replaced or truncated file and recover from it; True when the
        file is usable."""
        with self._lock:
            return self._check_locked()

    def take_damage(self) -> list[str]:
        """Damage found since the last call (each a sentence naming the cause)."""
        with self._lock:
            out, self._damage = self._damage, []
            return out

    @property
    def healthy(self) -> bool:
        """The file is in place and takes writes (nothing waits in memory)."""
        return self._file_lost is None and self._disk_error is None

    def _set_aside(self, why: str) -> list[Path]:
        """Rename the database and its -wal aside (``<name>.damaged-<UTC time>``)."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(self._clock_wall()))
        moved = []
        for src in (self.path, self._wal):
            dst = src.with_name(f"{src.name}.damaged-{stamp}")
            n = 1
            while dst.exists():
                n += 1
                dst = src.with_name(f"{src.name}.damaged-{stamp}-{n}")
            try:
                os.rename(src, dst)
                moved.append(dst)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.error("outbox %s: cannot set %s aside (%s): %s", self.path, src, why, exc)
        return moved

    def _record_damage(self, why: str, lost_on_disk: int | None) -> None:
        self._damaged += 1
        self._damage.append(why)
        lost = ("; alerts it held are lost (it could not be read)" if lost_on_disk is None
                else f"; {lost_on_disk} alert(s) beyond the in-memory copy are lost"
                if lost_on_disk else "")
        log.error("outbox %s: %s; set aside, alerts continue in new stream %s%s", self.path,
                  why, self.stream_id, lost)

    def _on_damage(self, why: str) -> None:
        """The file is damaged: set it aside, keep every undelivered alert held in memory,
        start a new stream and write a new file right away (or as soon as the disk allows)."""
        try:
            on_disk, _ = self._pending_counts()
        except sqlite3.Error:
            on_disk = len(self._copy)
        held = {r.id: r for r in self._copy.values()} | {r.id: r for r in self._memory}
        lost = max(0, on_disk - len(held))
        self._alerts_lost += lost
        self._set_aside(why)
        placeholder = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        placeholder.executescript(_SCHEMA)
        with contextlib.suppress(sqlite3.Error):
            self._db.close()  # its last checkpoint goes to the renamed (or deleted) inode
        self._db = placeholder
        self._memory = [held[k] for k in sorted(held)]
        self._unsynced_deletes.clear()
        self._file_lost = why
        self._new_stream(why)
        self._record_damage(why, lost)
        self._disk_error = why
        self._sync_locked(force=True)

    def _new_stream(self, why: str) -> None:
        old, end = self.stream_id, self._next_seq - 1
        self.stream_id, self._next_seq = uuid.uuid4().hex, 1
        self._stream_on_disk = False
        self._streams_started += 1
        log.error("outbox %s: new alert stream %s from seq 1 (%s); stream %s ended at seq %d",
                  self.path, self.stream_id, why, old, end)

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

    def _write_failed(self, exc: sqlite3.Error) -> None:
        if _is_corrupt(exc) and self._file_lost is None:
            self._on_damage(f"{self.path.name} is damaged: {exc}")
        else:
            self._refused(str(exc))

    def _keep_in_memory(self, topic: str, build_payload: Callable[[str, int], bytes],
                        qos: int) -> PutResult:
        if self._stream_on_disk:  # its counter cannot move on disk: do not continue it
            self._new_stream(f"the disk refuses writes: {self._disk_error}")
        seq = self._next_seq
        payload = build_payload(self.stream_id, seq)  # may raise: nothing kept
        self._last_id += 1
        row = OutboxRow(self._last_id, Kind.ALERT, topic, payload, qos, seq, self._clock_wall())
        self._memory.append(row)
        self._remember(row)
        self._next_seq = seq + 1
        self._alerts_not_persisted += 1
        log.warning("outbox %s: alert seq %d of stream %s kept in memory (%d there now): %s",
                    self.path, seq, self.stream_id, len(self._memory), self._disk_error)
        return PutResult(row, 0, False, persisted=False)

    def _remember(self, row: OutboxRow) -> None:
        self._copy[row.id] = row
        while len(self._copy) > self.max_messages:
            self._copy.popitem(last=False)

    def _write_kept(self) -> None:
        """One transaction: the rows kept in memory, the stream and its counter, the deletes."""
        with self._tx():
            for r in self._memory:  # OR IGNORE: a COMMIT reported failed may have landed
                self._db.execute(
                    "INSERT OR IGNORE INTO outbox (id, kind, topic, payload, qos, seq, "
                    "created_wall_s) VALUES (?, 'alert', ?, ?, ?, ?, ?)",
                    (r.id, r.topic, r.payload, r.qos, r.seq, r.created_wall_s))
            # always a real write: a transaction that changes nothing would "succeed" on
            # a disk that still refuses writes
            for key, value in (("stream_id", self.stream_id), ("next_seq", str(self._next_seq)),
                               ("synced_wall_s", repr(self._clock_wall()))):
                self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                                 (key, value))
            # ids handed out from memory are used even when those rows were delivered
            # before they reached the disk: new rows must come after them (the sender's
            # cursor is past them), so the id counter moves on too
            if self._db.execute("UPDATE sqlite_sequence SET seq = MAX(seq, ?) WHERE name "
                                "= 'outbox'", (self._last_id,)).rowcount == 0:
                self._db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES "
                                 "('outbox', ?)", (self._last_id,))
            for row_id in self._unsynced_deletes:
                self._db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))

    def _sync_locked(self, force: bool = False) -> bool:
        """Write what the disk refused before (making a new file after damage); True once
        nothing is left to write."""
        if self._disk_error is None:
            return True
        if not force and time.monotonic() < self._retry_at:
            return False
        try:
            if self._file_lost is not None:
                self._open_db(keep_stream=True)
            self._write_kept()
        except sqlite3.Error as exc:
            if self._file_lost is None and _is_corrupt(exc):
                self._on_damage(f"{self.path.name} is damaged: {exc}")
                return self._disk_error is None
            self._refused(str(exc))
            return False
        except OSError as exc:
            self._refused(str(exc))
            return False
        if self._file_lost is not None:
            log.warning("outbox %s: new file made after damage (%s); %d undelivered alert(s) "
                        "written to it", self.path, self._file_lost, len(self._memory))
        else:
            log.warning("outbox %s: the disk takes writes again; %d alert(s) kept in memory "
                        "are now stored, %d delivered row(s) removed", self.path,
                        len(self._memory), len(self._unsynced_deletes))
        self._memory.clear()
        self._unsynced_deletes.clear()
        self._disk_error = None
        self._file_lost = None
        self._stream_on_disk = True
        self._note_file()
        if self._spill is not None:  # whatever was spilled is on disk now
            self._spill.remove()
        return True

    def sync(self, force: bool = False) -> bool:
        """Look for damage, then retry the writes the disk refused (at most every ``RETRY_S``
        unless ``force``); True when nothing is left to write."""
        with self._lock:
            self._check_locked()
            return self._sync_locked(force)

    # -- writing -----------------------------------------------------------------------------

    def _insert_alert(self, topic: str, payload: bytes, qos: int, seq: int) -> PutResult:
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
            self._db.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (str(seq + 1),))
        self._next_seq = seq + 1
        self._last_id = int(cur.lastrowid or 0)
        self._telemetry_evicted += evicted
        if over:
            self._alerts_over_bound += 1
        row = OutboxRow(self._last_id, Kind.ALERT, topic, payload, qos, seq, now)
        self._remember(row)
        return PutResult(row, evicted, over)

    def put_alert(self, topic: str, build_payload: Callable[[str, int], bytes],
                  qos: int = 1) -> PutResult:
        """Allocate the next sequence number, build the payload with ``build_payload(stream_id,
        seq)`` and commit both.

        Returns once the row is on disk, or, while the disk refuses writes, kept in memory
        in a new stream (``PutResult.persisted`` False). Never refuses an alert (see the
        module policy).
        """
        if qos < 1:
            raise ValueError("alerts need QoS >= 1 to be acknowledged")
        with self._lock:
            for _attempt in range(2):  # a second time after a damaged file was replaced
                if not (self._check_locked() and self._sync_locked()):
                    break
                seq = self._next_seq
                payload = build_payload(self.stream_id, seq)  # may raise: nothing stored
                try:
                    return self._insert_alert(topic, payload, qos, seq)
                except sqlite3.Error as exc:
                    self._write_failed(exc)
            return self._keep_in_memory(topic, build_payload, qos)

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
                self._write_failed(exc)
                self._telemetry_refused += 1
                return None
            self._last_id = int(cur.lastrowid or 0)
            return OutboxRow(self._last_id, Kind.TELEMETRY, topic, payload, qos, None, now)

    def delete(self, row_id: int) -> None:
        """Remove an acknowledged row (no-op if it is already gone). Never raises: a delete
        the disk refuses is remembered and written later."""
        with self._lock:
            self._copy.pop(row_id, None)
            for i, row in enumerate(self._memory):
                if row.id == row_id:
                    del self._memory[i]
                    return
            if self._sync_locked():
                try:
                    self._db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
                    return
                except sqlite3.Error as exc:
                    self._write_failed(exc)
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
                if _is_corrupt(exc) and self._file_lost is None:
                    self._on_damage(f"{self.path.name} is damaged: {exc}")
                rows = []
            out = [OutboxRow(r[0], Kind(r[1]), r[2], bytes(r[3]), r[4], r[5], r[6])
                   for r in rows if r[0] not in self._unsynced_deletes]
            seen = {r.id for r in out}
            out += [r for r in self._memory if r.id > after_id and r.id not in seen]
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
            return self._stats_locked()

    def _stats_locked(self) -> OutboxStats:
        alerts, telemetry = self._pending_counts()
        return OutboxStats(alerts, telemetry, self._telemetry_refused, self._telemetry_evicted,
                           self._alerts_over_bound, self._next_seq, len(self._memory),
                           self._alerts_not_persisted, self._streams_started, self._damaged,
                           self._alerts_lost)

    def try_stats(self, timeout_s: float) -> OutboxStats | None:
        """:meth:`stats`, or None when a write under way (a stalled disk) holds the outbox
        longer than ``timeout_s``."""
        if not self._lock.acquire(timeout=timeout_s):
            return None
        try:
            return self._stats_locked()
        finally:
            self._lock.release()

    def pending_count(self, timeout_s: float) -> int | None:
        """``len(self)``, or None when a write under way holds the outbox longer than
        ``timeout_s``."""
        if not self._lock.acquire(timeout=timeout_s):
            return None
        try:
            return sum(self._pending_counts())
        except sqlite3.Error as exc:  # unreadable: not known to be drained
            log.warning("outbox %s: cannot count rows: %s", self.path, exc)
            return len(self._memory) + 1
        finally:
            self._lock.release()

    def close(self) -> int:
        """Write what is still held (after a last check for damage) and close. Returns how
        many undelivered alerts could not be written and are lost (logged at ERROR)."""
        with self._lock:
            self._check_locked()
            lost = 0
            synced = self._sync_locked(force=True)
            # every undelivered alert goes to the spill file too (another filesystem): the
            # next start takes back those the database no longer has (the disk refused
            # them, or the file was damaged or deleted while stopped)
            undelivered = sorted(self._copy.values(), key=lambda r: r.id)
            spilled = self._spill_locked(undelivered)
            if spilled and not synced:
                log.warning("outbox %s: the disk still refuses writes; %d undelivered "
                            "alert(s) spilled to %s for the next start", self.path,
                            len(self._memory), self.spill_path)
            if not undelivered and self._spill is not None:
                self._spill.remove()
            if not synced and self._memory and not spilled:
                lost = len(self._memory)
                log.error("outbox %s: closing while the disk refuses writes: %d undelivered "
                          "alert(s) kept in memory are lost (stream %s, seq %s)", self.path,
                          lost, self.stream_id, ", ".join(str(r.seq) for r in self._memory))
            try:
                self._db.close()
            except sqlite3.Error as exc:  # pragma: no cover - closing a broken db
                log.warning("outbox %s: close failed: %s", self.path, exc)
            return lost
