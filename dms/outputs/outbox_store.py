"""The outbox's database file: SQLite with a WAL journal, ``synchronous=FULL`` (a committed
alert survives power loss, not only a crash: ignition-off is how a vehicle computer stops)
and an exclusive lock (one process owns the outbox: its sequence counter lives in it).

Only mechanics live here: opening (and checking) the file, the rows, the counters, one
transaction per write. Every method raises ``sqlite3.Error`` (or ``OSError``) as it comes;
what an error means (the disk refuses writes, the file is damaged) is the policy's call
(:mod:`dms.outputs.outbox`).

Files are created 0640 and their folder 0750 (no access for others), whatever the umask.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import stat
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from dms.errors import DmsError
from dms.private import FILE_MODE, private_dir

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
_COLUMNS = "id, kind, topic, payload, qos, seq, created_wall_s"


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


def _row(r: tuple[int, str, str, bytes, int, int | None, float]) -> OutboxRow:
    return OutboxRow(r[0], Kind(r[1]), r[2], bytes(r[3]), r[4], r[5], r[6])


def is_corrupt(exc: BaseException) -> bool:
    """SQLITE_CORRUPT or SQLITE_NOTADB (Python < 3.11 has no error code: by message)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int) and (code & 0xFF) in (11, 26):
        return True
    text = str(exc)
    return "malformed" in text or "not a database" in text


def secure_dir(directory: Path) -> None:
    """:func:`dms.private.private_dir`, but a failure to restrict the mode is logged, not
    raised (the files are what matters; SQLite reports a folder it cannot use)."""
    try:
        private_dir(directory)
    except PermissionError as exc:
        log.warning("%s: cannot restrict the directory's permissions: %s", directory, exc)


def private_file(path: Path) -> None:
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


def wal_of(path: Path) -> Path:
    return path.with_name(path.name + "-wal")


@dataclass(frozen=True, slots=True)
class Opened:
    """What a database file holds when opened: its stream, its counters, and its newest
    undelivered alerts (oldest first)."""

    stream_id: str
    next_seq: int
    last_id: int
    alerts: list[OutboxRow]


class Tx:
    """One ``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on an exception; a COMMIT that
    fails is rolled back and raised)."""

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


class SqliteStore:
    """One open database (or an empty one in memory, standing in while a damaged file is
    replaced)."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    @classmethod
    def open(cls, path: Path, max_alerts: int) -> tuple[SqliteStore, Opened]:
        """Open (or create) ``path``; what it holds (its newest ``max_alerts`` alerts).
        Raises sqlite3.DatabaseError for a file that is not a sound database."""
        secure_dir(path.parent)
        private_file(path)
        if wal_of(path).exists():
            private_file(wal_of(path))
        db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False,
                             timeout=10.0)
        try:
            # WAL with an exclusive lock keeps its index in heap memory instead of a mmapped
            # -shm file, so a state directory that turns read-only cannot SIGBUS the process
            db.execute("PRAGMA locking_mode=EXCLUSIVE")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(_SCHEMA)
            check = db.execute("PRAGMA quick_check").fetchone()
            if check is None or check[0] != "ok":
                raise sqlite3.DatabaseError(f"database disk image is malformed "
                                            f"(quick_check: {check and check[0]})")
            meta = _init_meta(db, path)
            rows = db.execute(f"SELECT {_COLUMNS} FROM outbox WHERE kind = 'alert' "
                              "ORDER BY id DESC LIMIT ?", (max_alerts,)).fetchall()
            last = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                db.close()
            raise
        return cls(db), Opened(meta["stream_id"], int(meta["next_seq"]),
                               int(last[0]) if last else 0, [_row(r) for r in reversed(rows)])

    @classmethod
    def in_memory(cls) -> SqliteStore:
        db = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        db.executescript(_SCHEMA)
        return cls(db)

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self.db.close()

    def counts(self, leaving: set[int] | frozenset[int] = frozenset()) -> tuple[int, int]:
        """(alerts, telemetry) rows, less those in ``leaving`` (acknowledged, not yet deleted
        on disk)."""
        rows = dict(self.db.execute("SELECT kind, COUNT(*) FROM outbox GROUP BY kind")
                    .fetchall())
        alerts, telemetry = int(rows.get("alert", 0)), int(rows.get("telemetry", 0))
        if leaving:
            marks = ",".join("?" * len(leaving))
            gone = dict(self.db.execute(
                f"SELECT kind, COUNT(*) FROM outbox WHERE id IN ({marks}) GROUP BY kind",
                tuple(leaving)).fetchall())
            alerts -= int(gone.get("alert", 0))
            telemetry -= int(gone.get("telemetry", 0))
        return alerts, telemetry

    def insert_alert(self, topic: str, payload: bytes, qos: int, seq: int, now: float,
                     max_messages: int) -> tuple[int, int, bool]:
        """One transaction: the alert, the counter moved on, and room made by evicting the
        oldest telemetry row when full. (row id, telemetry rows evicted, over the bound)."""
        with Tx(self.db):
            alerts, telemetry = self.counts()
            evicted, over = 0, False
            if alerts + telemetry >= max_messages:
                if telemetry:
                    self.db.execute("DELETE FROM outbox WHERE id = (SELECT MIN(id) FROM outbox "
                                    "WHERE kind = 'telemetry')")
                    evicted = 1
                else:
                    over = True
            cur = self.db.execute(
                "INSERT INTO outbox (kind, topic, payload, qos, seq, created_wall_s) "
                "VALUES ('alert', ?, ?, ?, ?, ?)", (topic, payload, qos, seq, now))
            self.db.execute("UPDATE meta SET value = ? WHERE key = 'next_seq'", (str(seq + 1),))
        return int(cur.lastrowid or 0), evicted, over

    def insert_telemetry(self, topic: str, payload: bytes, qos: int, now: float,
                         max_messages: int, max_telemetry: int) -> int | None:
        """The new row's id, or None when there is no room for telemetry."""
        with Tx(self.db):
            alerts, telemetry = self.counts()
            if alerts + telemetry >= max_messages or telemetry >= max_telemetry:
                return None
            cur = self.db.execute(
                "INSERT INTO outbox (kind, topic, payload, qos, seq, created_wall_s) "
                "VALUES ('telemetry', ?, ?, ?, NULL, ?)", (topic, payload, qos, now))
        return int(cur.lastrowid or 0)

    def delete(self, row_id: int) -> None:
        self.db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))

    def pending(self, after_id: int, limit: int) -> list[OutboxRow]:
        return [_row(r) for r in self.db.execute(
            f"SELECT {_COLUMNS} FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, limit)).fetchall()]

    def write_kept(self, rows: Iterable[OutboxRow], stream_id: str, next_seq: int,
                   last_id: int, deletes: Iterable[int], now: float) -> None:
        """One transaction: rows kept in memory, the stream and its counter, the deletes."""
        with Tx(self.db):
            for r in rows:  # OR IGNORE: a COMMIT reported failed may have landed
                self.db.execute(
                    "INSERT OR IGNORE INTO outbox (id, kind, topic, payload, qos, seq, "
                    "created_wall_s) VALUES (?, 'alert', ?, ?, ?, ?, ?)",
                    (r.id, r.topic, r.payload, r.qos, r.seq, r.created_wall_s))
            # always a real write: a transaction that changes nothing would "succeed" on
            # a disk that still refuses writes
            for key, value in (("stream_id", stream_id), ("next_seq", str(next_seq)),
                               ("synced_wall_s", repr(now))):
                self.db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)",
                                (key, value))
            # ids handed out from memory are used even when those rows were delivered
            # before they reached the disk: new rows must come after them (the sender's
            # cursor is past them), so the id counter moves on too
            if self.db.execute("UPDATE sqlite_sequence SET seq = MAX(seq, ?) WHERE name "
                               "= 'outbox'", (last_id,)).rowcount == 0:
                self.db.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('outbox', ?)",
                                (last_id,))
            for row_id in deletes:
                self.db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))


def _init_meta(db: sqlite3.Connection, path: Path) -> dict[str, str]:
    with Tx(db):
        meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
        version = int(meta.get("schema_version", SCHEMA_VERSION))
        if version != SCHEMA_VERSION:
            raise DmsError(f"outbox {path}: schema version {version}, this dms understands "
                           f"{SCHEMA_VERSION}")
        defaults = {"schema_version": str(SCHEMA_VERSION), "stream_id": uuid.uuid4().hex,
                    "next_seq": "1"}
        for key, value in defaults.items():
            if key not in meta:
                db.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (key, value))
                meta[key] = value
    return meta


def set_aside(path: Path, stamp: str, why: str) -> list[Path]:
    """Rename the database and its -wal aside (``<name>.damaged-<stamp>``)."""
    moved = []
    for src in (path, wal_of(path)):
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
            log.error("outbox %s: cannot set %s aside (%s): %s", path, src, why, exc)
    return moved
