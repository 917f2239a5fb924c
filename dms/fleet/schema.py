"""The fleet store's tables (SQLAlchemy Core), the same on SQLite and PostgreSQL.

Made and changed only by :mod:`dms.fleet.migrations`; this module is what the code reads and
writes. Wall-clock times are Unix seconds (``*_wall_s``): ``queued_wall_s`` is the device's
clock (the alert entered its outbox), ``received_wall_s`` and ``status_wall_s`` the ingester's.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData()

#: key/value facts about the store itself: ``schema_version``
meta = sa.Table(
    "fleet_meta", metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(256), nullable=False),
)

#: every alert, once: the key is (device, stream, seq)
alerts = sa.Table(
    "alerts", metadata,
    sa.Column("device", sa.String(128), primary_key=True),
    sa.Column("stream", sa.String(128), primary_key=True),
    sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("reason", sa.String(64), nullable=False),
    sa.Column("level", sa.SmallInteger, nullable=True),
    sa.Column("phase", sa.String(64), nullable=False),
    sa.Column("queued_wall_s", sa.Float(53), nullable=False),
    sa.Column("queued_hour", sa.BigInteger, nullable=False),  # floor(queued_wall_s / 3600)
    sa.Column("received_wall_s", sa.Float(53), nullable=False),
    sa.Column("payload", sa.Text, nullable=False),
    sa.Index("alerts_by_time", "queued_wall_s"),
    sa.Index("alerts_by_device_time", "device", "queued_wall_s"),
    sa.Index("alerts_by_hour", "queued_hour", "type"),
)

#: one row per device ever heard of: its retained status (and Last Will) and last state
devices = sa.Table(
    "devices", metadata,
    sa.Column("device", sa.String(128), primary_key=True),
    sa.Column("first_seen_wall_s", sa.Float(53), nullable=False),
    sa.Column("status", sa.String(16), nullable=True),  # online / offline / cleared / NULL
    sa.Column("status_wall_s", sa.Float(53), nullable=True),
    sa.Column("driver_state", sa.String(64), nullable=True),
    sa.Column("state_wall_s", sa.Float(53), nullable=True),  # the device's clock
    sa.Column("state", sa.Text, nullable=True),  # the last state payload
)

#: per ingest worker (its MQTT client id) and name: stored, duplicates_dropped, one per Fault
counters = sa.Table(
    "counters", metadata,
    sa.Column("worker", sa.String(128), primary_key=True),
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.BigInteger, nullable=False),
)
