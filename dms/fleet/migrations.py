"""Versioned schema migrations, the same steps for SQLite and PostgreSQL.

Each step is written with alembic's operations (``op.create_table``, ``op.add_column``,
``op.batch_alter_table`` for SQLite's limited ALTER TABLE...), so no SQL dialect is written by
hand; the version reached is ``fleet_meta.schema_version``. :func:`migrate` runs the missing
steps in one transaction; several ingest workers starting at once are safe (SQLite: the
transaction takes the write lock first; PostgreSQL: the loser of a concurrent CREATE retries
and finds the work done). A database newer than this code is refused, never "downgraded".

A step, once released, is never edited: a change to the tables is a new step here plus the
same change in :mod:`dms.fleet.schema` (tests/test_fleet_store.py compares the two on both
databases).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import sqlalchemy as sa
from alembic.migration import MigrationContext
from alembic.operations import Operations

from dms.errors import DmsError

log = logging.getLogger(__name__)


class SchemaError(DmsError):
    """The database's schema cannot be used by this version of dms."""


@dataclass(frozen=True, slots=True)
class Step:
    version: int
    what: str
    apply: Callable[[Operations], None]


def _v1(op: Operations) -> None:
    op.create_table(
        "fleet_meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.String(256), nullable=False),
    )
    op.create_table(
        "alerts",
        sa.Column("device", sa.String(128), primary_key=True),
        sa.Column("stream", sa.String(128), primary_key=True),
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("type", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("level", sa.SmallInteger, nullable=True),
        sa.Column("phase", sa.String(64), nullable=False),
        sa.Column("queued_wall_s", sa.Float(53), nullable=False),
        sa.Column("queued_hour", sa.BigInteger, nullable=False),
        sa.Column("received_wall_s", sa.Float(53), nullable=False),
        sa.Column("payload", sa.Text, nullable=False),
    )
    op.create_index("alerts_by_time", "alerts", ["queued_wall_s"])
    op.create_index("alerts_by_device_time", "alerts", ["device", "queued_wall_s"])
    op.create_index("alerts_by_hour", "alerts", ["queued_hour", "type"])
    op.create_table(
        "devices",
        sa.Column("device", sa.String(128), primary_key=True),
        sa.Column("first_seen_wall_s", sa.Float(53), nullable=False),
        sa.Column("status", sa.String(16), nullable=True),
        sa.Column("status_wall_s", sa.Float(53), nullable=True),
        sa.Column("driver_state", sa.String(64), nullable=True),
        sa.Column("state_wall_s", sa.Float(53), nullable=True),
        sa.Column("state", sa.Text, nullable=True),
    )
    op.create_table(
        "counters",
        sa.Column("worker", sa.String(128), primary_key=True),
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("value", sa.BigInteger, nullable=False),
    )


STEPS: tuple[Step, ...] = (
    Step(1, "alerts keyed by (device, stream, seq); devices; per-worker counters", _v1),
)
LATEST = STEPS[-1].version
_ATTEMPTS = 5


def current_version(conn: sa.Connection) -> int:
    """The schema version of the database behind ``conn`` (0: empty, no fleet tables)."""
    if not sa.inspect(conn).has_table("fleet_meta"):
        return 0
    value = conn.execute(sa.text("SELECT value FROM fleet_meta WHERE key = 'schema_version'")
                         ).scalar()
    try:
        return int(value) if value is not None else 0
    except ValueError:
        raise SchemaError(f"fleet_meta.schema_version is {value!r}, not a number") from None


def _migrate_once(conn: sa.Connection) -> int:
    found = current_version(conn)
    if found > LATEST:
        raise SchemaError(f"the database is at schema version {found}, newer than this dms "
                          f"knows ({LATEST}): upgrade dms before pointing it at this database")
    if found == LATEST:
        return found
    op = Operations(MigrationContext.configure(conn))
    for step in STEPS[found:]:
        log.info("fleet store: migrating to schema version %d (%s)", step.version, step.what)
        step.apply(op)
    table = sa.table("fleet_meta", sa.column("key"), sa.column("value"))
    conn.execute(sa.delete(table).where(table.c.key == "schema_version"))
    conn.execute(sa.insert(table).values(key="schema_version", value=str(LATEST)))
    return LATEST


def migrate(engine: sa.Engine) -> int:
    """Bring the database to :data:`LATEST`; returns the version it is at."""
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            with engine.begin() as conn:
                return _migrate_once(conn)
        except (sa.exc.IntegrityError, sa.exc.ProgrammingError) as exc:
            # another worker created the same table first (PostgreSQL reports the loser's
            # CREATE as a unique violation in its catalogue): look again
            if attempt == _ATTEMPTS:
                raise
            log.info("fleet store: concurrent migration (%s); retrying",
                     str(exc.orig).splitlines()[0] if exc.orig else exc)
            time.sleep(0.2 * attempt)
    raise AssertionError("unreachable")
