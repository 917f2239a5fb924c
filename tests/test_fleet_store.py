"""The fleet store on a real SQLite file and a real PostgreSQL database (each test on both):
migrations make exactly the declared schema, a batch is stored exactly once, the report counts
and finds gaps, the export writes what is stored."""

from __future__ import annotations

import csv
import io
import json
import threading
from dataclasses import replace
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from dms.errors import DmsError, InputError
from dms.fleet import migrations, schema
from dms.fleet.payloads import Alert, Fault, Message, classify
from dms.fleet.report import build_report, export_rows, parse_since, write_export
from dms.fleet.store import Store, StoreError, StoreRejected, parse_url

from fleet_db import db_url, pg_server, pg_url  # noqa: F401 - fixtures

T0 = 1_796_000_000.0


def alert(device: str, seq: int, stream: str = "st1", t: float = T0, kind: str = "drowsiness",
          level: int = 1) -> Message:
    payload = json.dumps({"schema": 1, "device": device, "stream": stream, "seq": seq,
                          "queued_wall_s": t, "event": {"type": kind, "reason": "nodding",
                                                        "level": level, "phase": "raised"}})
    return classify(f"dms/{device}/alert", payload.encode(), "dms", 65_536)


def test_migrations_make_the_declared_schema(db_url: str) -> None:  # noqa: F811
    store = Store(db_url).open()
    try:
        with store.engine.connect() as conn:
            assert migrations.current_version(conn) == migrations.LATEST
            diff = compare_metadata(MigrationContext.configure(conn), schema.metadata)
            assert diff == [], diff
        assert migrations.migrate(store.engine) == migrations.LATEST  # again: nothing to do
    finally:
        store.close()


def open_together(stores: list[Store]) -> list[BaseException]:
    """Open every store at once, each on its own thread (workers starting together); the
    errors raised, then close them all."""
    errors: list[BaseException] = []

    def open_one(s: Store) -> None:
        try:
            s.open()
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            errors.append(exc)

    threads = [threading.Thread(target=open_one, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for s in stores:
        s.close()
    return errors


def test_concurrent_workers_migrate_once(db_url: str) -> None:  # noqa: F811
    assert open_together([Store(db_url) for _ in range(3)]) == []


def test_workers_starting_together_on_a_new_sqlite_file_all_open(tmp_path: Path) -> None:
    """Two or three ingest workers started at once on a file that does not exist yet: the
    switch to WAL mode meets "database is locked" without SQLite's busy handler (it failed
    about one start in four before the switch was retried); every round must open."""
    failed = []
    for n in range(20):
        url = f"sqlite:///{tmp_path}/fleet{n}.db"
        failed += [f"round {n}: {e!r}" for e in open_together([Store(url) for _ in range(3)])]
    assert not failed, failed


def test_a_newer_schema_or_no_store_is_refused(db_url: str) -> None:  # noqa: F811
    if db_url.startswith("postgresql"):  # an empty database is no store (SQLite: no file)
        reader = Store(db_url, readonly=True)
        with pytest.raises(StoreError, match="no fleet store there"):
            reader.open()
        reader.close()
    store = Store(db_url).open()
    with store.engine.begin() as conn:
        conn.execute(sa.update(schema.meta).values(value=str(migrations.LATEST + 1)))
    store.close()
    with pytest.raises(StoreError, match=f"schema version {migrations.LATEST + 1}.*newer"):
        Store(db_url).open()
    with pytest.raises(StoreError, match="newer than this dms"):
        Store(db_url, readonly=True).open()


def test_each_alert_is_stored_once_and_duplicates_are_counted(db_url: str) -> None:  # noqa: F811
    store = Store(db_url).open()
    try:
        first = [alert("cab-1", n) for n in range(1, 6)] + [alert("cab-1", 3)]  # one twice
        r = store.write(first, "w1", T0 + 1)
        assert (r.stored, r.duplicates) == (5, 1)
        r = store.write([alert("cab-1", n) for n in range(4, 9)], "w2", T0 + 2)
        assert (r.stored, r.duplicates) == (3, 2)  # 4 and 5 again (another worker)
        r = store.write([classify("dms//alert", b"x", "dms", 10),
                         classify("dms/cab-1/alert", b"{", "dms", 10),
                         classify("dms/cab-1/status", b"online", "dms", 10)], "w1", T0 + 3)
        assert r.stored == 0 and r.faults == {"foreign_topic": 1, "malformed": 1}
        with store.connect() as conn:
            keys = conn.execute(sa.select(schema.alerts.c.seq).order_by("seq")).scalars().all()
        assert keys == list(range(1, 9))
        report = build_report(store, None, T0 + 10)
    finally:
        store.close()
    assert report["alerts"]["total"] == 8
    assert report["duplicates_dropped"] == 3
    assert report["malformed"] == 2
    assert report["rejected"]["foreign_topic"] == 1 and report["rejected"]["malformed"] == 1
    assert report["workers"]["w1"]["stored"] == 5 and report["workers"]["w2"]["stored"] == 3
    assert report["devices"]["online"] == 1 and report["seq_gaps"] == 0


def test_data_the_database_refuses_rolls_the_batch_back(db_url: str) -> None:  # noqa: F811
    """What the ingester relies on to find a message the database refuses on its own: the
    whole batch is refused (StoreRejected, not StoreUnavailable) and nothing of it is kept."""
    good = alert("cab-1", 1)
    assert isinstance(good, Alert)
    bad = replace(good, seq=2, stream="\ud800")  # past classify(), which rejects it
    store = Store(db_url).open()
    try:
        with pytest.raises(StoreRejected):
            store.write([good, bad], "w1", T0)
        assert build_report(store, None, T0)["alerts"]["total"] == 0
        assert store.write([good], "w1", T0).stored == 1
    finally:
        store.close()


def test_status_and_the_newest_state(db_url: str) -> None:  # noqa: F811
    def state(wall_s: float, driver: str) -> Message:
        doc = {"schema": 1, "device": "cab-2", "wall_s": wall_s,
               "state": {"driver_state": driver}}
        return classify("dms/cab-2/state", json.dumps(doc).encode(), "dms", 65_536)

    store = Store(db_url).open()
    try:
        store.write([classify("dms/cab-2/status", b"online", "dms", 99), state(T0 + 5, "drowsy")],
                    "w1", T0)
        # a late re-delivery of an older state does not replace the newer one
        store.write([state(T0 + 1, "attentive"),
                     classify("dms/cab-2/status", b"offline", "dms", 99)], "w1", T0 + 6)
        report = build_report(store, None, T0 + 10)
    finally:
        store.close()
    (dev,) = report["devices"]["list"]
    assert (dev["status"], dev["driver_state"], dev["state_wall_s"]) == ("offline", "drowsy",
                                                                        T0 + 5)
    assert (report["devices"]["online"], report["devices"]["offline"]) == (0, 1)


def test_gaps_are_the_numbers_not_arrived(db_url: str) -> None:  # noqa: F811
    store = Store(db_url).open()
    try:
        store.write([alert("cab-3", n) for n in (1, 2, 5, 9)]
                    + [alert("cab-3", n, stream="st2") for n in (3, 4)]
                    + [alert("cab-4", n) for n in (1, 2, 3)], "w1", T0)
        report = build_report(store, None, T0 + 10)
    finally:
        store.close()
    assert report["seq_gaps"] == 5 + 2
    assert report["gaps"] == [
        {"device": "cab-3", "stream": "st1", "missing": 5, "ranges": [[3, 4], [6, 8]]},
        {"device": "cab-3", "stream": "st2", "missing": 2, "ranges": [[1, 2]]}]


def test_since_counts_and_export(db_url: str, tmp_path: Path) -> None:  # noqa: F811
    store = Store(db_url).open()
    try:
        store.write([alert("cab-5", 1, t=T0, kind="slump", level=3),
                     alert("cab-5", 2, t=T0 + 3600, kind="distraction"),
                     alert("cab-6", 1, t=T0 + 7200, kind="distraction")], "w1", T0 + 8000)
        report = build_report(store, T0 + 1800, T0 + 8000)
        rows = list(export_rows(store, T0 + 1800))
        everything = list(export_rows(store, None))
    finally:
        store.close()
    assert report["alerts"]["total"] == 2
    assert report["alerts"]["by_type"] == {"distraction": 2}
    assert report["alerts"]["by_device"] == {"cab-5": {"distraction": 1},
                                             "cab-6": {"distraction": 1}}
    assert report["seq_gaps"] == 0  # gaps are over the whole store
    assert [(r["device"], r["seq"]) for r in rows] == [("cab-5", 2), ("cab-6", 1)]
    assert len(everything) == 3
    out = io.StringIO()
    assert write_export(iter(everything), out, "csv") == 3
    table = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert [r["type"] for r in table] == ["slump", "distraction", "distraction"]
    assert table[0]["queued_utc"] == "2026-11-30T00:53:20Z"
    assert json.loads(table[0]["event"])["level"] == 3
    out = io.StringIO()
    assert write_export(iter(everything), out, "jsonl") == 3
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines[2]["payload"]["event"]["type"] == "distraction"
    assert lines[2]["payload"]["seq"] == 1 and lines[2]["device"] == "cab-6"


def test_urls() -> None:
    assert parse_url("/tmp/x/fleet.db").drivername == "sqlite"
    assert parse_url("postgres://u@h:5/db").drivername == "postgresql+psycopg"
    assert parse_url("postgresql://u:secret@h/db").drivername == "postgresql+psycopg"
    for bad, why in (("mysql://h/db", "unsupported"), ("sqlite://", "needs a file"),
                     ("sqlite:///:memory:", "needs a file"), ("", "empty"),
                     ("postgresql+asyncpg://h/db", "unsupported")):
        with pytest.raises(StoreError, match=why):
            parse_url(bad)
    with pytest.raises(StoreError, match="directory /nonexistent-dms does not exist"):
        Store("/nonexistent-dms/fleet.db")
    with pytest.raises(StoreError, match="no such file"):
        Store("/tmp/dms-no-such-fleet-file.db", readonly=True)
    with pytest.raises(StoreError) as info:
        parse_url("mysql://user:secret@h/db")
    assert "secret" not in str(info.value)


def test_since_parsing() -> None:
    now = 1_800_000_000.0
    assert parse_since("24h", now) == now - 86_400
    assert parse_since("90m", now) == now - 5400
    assert parse_since("7d", now) == now - 7 * 86_400
    assert parse_since("1700000000", now) == 1_700_000_000
    assert parse_since("2026-12-01", now) == 1_796_083_200
    assert parse_since("2026-12-01T01:00+01:00", now) == 1_796_083_200
    with pytest.raises(InputError, match="--since 'yesterday'"):
        parse_since("yesterday", now)
    assert issubclass(InputError, DmsError)


def test_rejections_by_name_cover_every_fault(pg_url: str) -> None:  # noqa: F811
    """The report names every Fault, zero or not (a dashboard can rely on the keys)."""
    store = Store(pg_url).open()
    try:
        report = build_report(store, None, T0)
    finally:
        store.close()
    assert set(report["rejected"]) == {f.value for f in Fault}
    for key in ("alerts", "devices", "duplicates_dropped", "malformed", "seq_gaps"):
        assert key in report
