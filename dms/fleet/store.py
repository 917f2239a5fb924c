"""The fleet store: one database, SQLite (a file, the default) or PostgreSQL (psycopg 3), both
through SQLAlchemy Core with the same tables (:mod:`.schema`) and migrations.

:meth:`Store.write` stores one batch of classified messages in **one transaction**: alerts are
inserted with ``ON CONFLICT DO NOTHING`` on their key (device, stream, seq) and ``RETURNING``
tells which were new, so a duplicate is counted (``duplicates_dropped``) and dropped, never
stored twice, whichever worker sees it; statuses, states and the worker's counters go into the
same transaction. When it returns, the batch is committed (and on SQLite, with
``synchronous=FULL``, on disk): only then may the ingester acknowledge it.

Errors: :class:`StoreUnavailable` when the database refuses the transaction for now (down,
locked, full: nothing was stored; try again later), :class:`StoreRejected` when it refuses this
data (a message it cannot store); :class:`StoreError` (a DmsError) for a bad URL or a database
that cannot be used at all.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from dms.errors import DmsError
from dms.fleet import migrations, schema
from dms.fleet.payloads import Alert, Message, Rejected, State, Status

log = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 10_000  # another worker holding the write lock: wait this long
PG_CONNECT_TIMEOUT_S = 5

# the two dialects' INSERT constructs, which carry ON CONFLICT (the same clause on both)
_INSERT: dict[str, Any] = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}


def _sqlite_wal(cur: Any) -> None:
    """Put the database in WAL mode (kept in the file, so later connections find it set).
    Switching needs the file to itself, and SQLite answers a concurrent switch with "database
    is locked" at once, without its busy handler: two workers starting on a new file met
    that. So the switch is retried for up to the busy timeout."""
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000.0
    while True:
        try:
            if str(cur.execute("PRAGMA journal_mode").fetchone()[0]).lower() == "wal":
                return
            cur.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.02)


class StoreError(DmsError):
    """The database URL or the database itself cannot be used."""


class StoreUnavailable(Exception):
    """The database refused the transaction for now (down, locked, full): nothing was stored."""


class StoreRejected(Exception):
    """The database refused this data (not for want of space or connection)."""


@dataclass(frozen=True, slots=True)
class WriteResult:
    stored: int  # new alerts
    duplicates: int  # alerts already stored (or twice in this batch): dropped
    faults: dict[str, int]  # rejected messages by Fault value


def parse_url(text: str) -> sa.URL:
    """The SQLAlchemy URL for ``--db``: ``sqlite:///FILE`` or a bare file path (SQLite),
    ``postgresql://user@host:port/db`` (psycopg 3). StoreError names what is wrong."""
    if "://" not in text:
        if not text.strip():
            raise StoreError("--db: empty (give sqlite:///FILE, a file path or postgresql://...)")
        return sa.URL.create("sqlite", database=str(Path(text).expanduser().absolute()))
    try:
        url = sa.make_url(text)
    except sa.exc.ArgumentError as exc:
        raise StoreError(f"--db {text!r}: not a database URL ({exc})") from None
    backend, _, driver = url.drivername.partition("+")
    if backend == "postgres":
        backend = "postgresql"
    if backend == "postgresql" and driver in ("", "psycopg"):
        return url.set(drivername="postgresql+psycopg")
    if backend == "sqlite" and driver in ("", "pysqlite"):
        if not url.database or url.database == ":memory:":
            raise StoreError(f"--db {text!r}: SQLite needs a file (sqlite:///path/fleet.db)")
        return url.set(drivername="sqlite")
    raise StoreError(f"--db {url.render_as_string(hide_password=True)!r}: unsupported "
                     "(sqlite:///FILE, a file path, or postgresql://USER@HOST:PORT/DB)")


def shown(url: sa.URL) -> str:
    """The URL with its password hidden (for logs and reports)."""
    return url.render_as_string(hide_password=True)


def _transient(exc: sa.exc.DBAPIError) -> bool:
    """Down, locked, full, connection lost: worth retrying the same transaction later."""
    return isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError)) or bool(
        exc.connection_invalidated)


class Store:
    """The database at ``url`` (see :func:`parse_url`). Writers (``readonly=False``) migrate
    the schema when they open; readers only check that it is there and not too new."""

    def __init__(self, url: str | sa.URL, *, readonly: bool = False) -> None:
        self.url = url if isinstance(url, sa.URL) else parse_url(url)
        self.readonly = readonly
        self.dialect = self.url.get_backend_name()
        if self.dialect == "sqlite":
            db = Path(str(self.url.database))
            if readonly and not db.is_file():
                raise StoreError(f"--db {shown(self.url)}: no such file (run dms fleet ingest "
                                 "with it first)")
            if not db.parent.is_dir():
                raise StoreError(f"--db {shown(self.url)}: directory {db.parent} does not exist")
            self.engine = sa.create_engine(self.url, poolclass=sa.pool.QueuePool, pool_size=2)
            sa.event.listen(self.engine, "connect", self._sqlite_connect)
            sa.event.listen(self.engine, "begin", self._sqlite_begin)
        else:
            try:
                import psycopg  # noqa: F401 - the driver SQLAlchemy loads
            except ImportError:
                raise StoreError(f"--db {shown(self.url)}: PostgreSQL needs psycopg 3 "
                                 "(pip install 'psycopg[binary]')") from None
            self.engine = sa.create_engine(
                self.url, pool_pre_ping=True, pool_size=2,
                connect_args={"connect_timeout": PG_CONNECT_TIMEOUT_S,
                              "application_name": "dms-fleet"})
        self._insert = _INSERT[self.dialect]
        self._alert_stmt = (self._insert(schema.alerts)
                            .on_conflict_do_nothing(index_elements=["device", "stream", "seq"])
                            .returning(schema.alerts.c.device, schema.alerts.c.stream,
                                       schema.alerts.c.seq))
        self._device_stmt = self._insert(schema.devices).on_conflict_do_nothing(
            index_elements=["device"])
        ins = self._insert(schema.counters)
        self._counter_stmt = ins.on_conflict_do_update(
            index_elements=["worker", "name"],
            set_={"value": schema.counters.c.value + ins.excluded.value})

    # -- connections -----------------------------------------------------------------------------

    def _sqlite_connect(self, dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # transactions begin where _sqlite_begin says
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        if not self.readonly:
            _sqlite_wal(cur)  # readers never block the ingester
            cur.execute("PRAGMA synchronous = FULL")  # a commit is on disk before the ack
        cur.close()

    def _sqlite_begin(self, conn: sa.Connection) -> None:
        # writers take the write lock at BEGIN: two workers wait for each other (busy_timeout)
        # instead of failing when a read lock cannot be upgraded
        conn.exec_driver_sql("BEGIN" if self.readonly else "BEGIN IMMEDIATE")

    def open(self) -> Store:
        """Connect, and migrate (writers) or check the schema (readers). StoreUnavailable
        while the database cannot be reached; StoreError when it cannot be used."""
        try:
            if self.readonly:
                with self.engine.connect() as conn:
                    found = migrations.current_version(conn)
                if found == 0:
                    raise StoreError(f"--db {shown(self.url)}: no fleet store there (run dms "
                                     "fleet ingest with it first)")
                if found > migrations.LATEST:
                    raise StoreError(f"--db {shown(self.url)}: schema version {found} is "
                                     f"newer than this dms knows ({migrations.LATEST})")
            else:
                migrations.migrate(self.engine)
        except migrations.SchemaError as exc:
            raise StoreError(f"--db {shown(self.url)}: {exc}") from None
        except sa.exc.DBAPIError as exc:
            if _transient(exc):
                raise StoreUnavailable(_first_line(exc)) from exc
            raise StoreError(f"--db {shown(self.url)}: {_first_line(exc)}") from None
        return self

    @contextmanager
    def connect(self) -> Iterator[sa.Connection]:
        """A connection for reading (report, page)."""
        with self.engine.connect() as conn:
            yield conn

    def close(self) -> None:
        self.engine.dispose()

    # -- writing ---------------------------------------------------------------------------------

    def write(self, messages: Sequence[Message], worker: str,
              received_wall_s: float) -> WriteResult:
        """Store ``messages`` (in arrival order) in one transaction; see the module doc."""
        alerts: dict[tuple[str, str, int], Alert] = {}
        in_batch_dups = 0
        statuses: dict[str, Status] = {}
        states: dict[str, State] = {}
        faults: Counter[str] = Counter()
        for m in messages:
            if isinstance(m, Alert):
                key = (m.device, m.stream, m.seq)
                if key in alerts:
                    in_batch_dups += 1
                else:
                    alerts[key] = m
            elif isinstance(m, Status):
                statuses[m.device] = m  # the last one wins
            elif isinstance(m, State):
                states[m.device] = m
            elif isinstance(m, Rejected):
                faults[m.fault.value] += 1
        devices = {k[0] for k in alerts} | set(statuses) | set(states)
        try:
            with self.engine.begin() as conn:
                if devices:
                    conn.execute(self._device_stmt, [
                        {"device": d, "first_seen_wall_s": received_wall_s}
                        for d in sorted(devices)])
                stored = 0
                if alerts:
                    rows = [{"device": a.device, "stream": a.stream, "seq": a.seq,
                             "type": a.type, "reason": a.reason, "level": a.level,
                             "phase": a.phase, "queued_wall_s": a.queued_wall_s,
                             "queued_hour": math.floor(a.queued_wall_s / 3600.0),
                             "received_wall_s": received_wall_s, "payload": a.payload}
                            for a in alerts.values()]
                    stored = len(conn.execute(self._alert_stmt, rows).all())
                for s in statuses.values():
                    conn.execute(sa.update(schema.devices)
                                 .where(schema.devices.c.device == s.device)
                                 .values(status=s.status, status_wall_s=received_wall_s))
                for st in states.values():
                    self._write_state(conn, st)
                duplicates = len(alerts) - stored + in_batch_dups
                counts = {"stored": stored, "duplicates_dropped": duplicates, **faults}
                counts = {k: v for k, v in counts.items() if v}
                if counts:
                    conn.execute(self._counter_stmt, [
                        {"worker": worker, "name": k, "value": v}
                        for k, v in sorted(counts.items())])
        except sa.exc.DBAPIError as exc:
            if _transient(exc):
                raise StoreUnavailable(_first_line(exc)) from exc
            raise StoreRejected(_first_line(exc)) from exc
        except (ValueError, TypeError, sa.exc.StatementError) as exc:
            # a value the driver could not bind (nothing was committed): this data's fault
            raise StoreRejected(f"{type(exc).__name__}: {_first_line(exc)}") from exc
        return WriteResult(stored, duplicates, dict(faults))

    @staticmethod
    def _write_state(conn: sa.Connection, st: State) -> None:
        d = schema.devices.c
        stmt = sa.update(schema.devices).where(d.device == st.device)
        if st.wall_s is not None:  # an older state (a late re-delivery) never replaces a newer
            stmt = stmt.where(sa.or_(d.state_wall_s.is_(None), d.state_wall_s <= st.wall_s))
        conn.execute(stmt.values(state=st.payload or None, state_wall_s=st.wall_s,
                                 driver_state=st.driver_state))


def _first_line(exc: BaseException) -> str:
    orig = getattr(exc, "orig", None)
    text = str(orig if orig is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
