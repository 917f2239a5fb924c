"""``dms fleet ingest`` as a real process against a real mosquitto broker and real databases:
bad input is counted and never stops ingest; a database that is full or down makes the
ingester stop acknowledging, the broker keeps the alerts, and ingest resumes with nothing
lost; bad command lines get one line and exit 2."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from broker import Broker, start_broker
from fleet_db import (
    BROKER_CONFIG,
    ROOT,
    IngestProcess,
    fleet_report,
    new_cluster,
    stored_count,
)

pytestmark = pytest.mark.broker


def alert_payload(device: str, seq: int, stream: str = "stream-1", **over: object) -> bytes:
    doc: dict[str, object] = {"schema": 1, "device": device, "stream": stream, "seq": seq,
                              "queued_wall_s": time.time(),
                              "event": {"type": "drowsiness", "reason": "nodding", "level": 1,
                                        "phase": "raised"}}
    doc.update(over)
    return json.dumps(doc).encode()


class Publisher:
    """A device-like MQTT 5 publisher; every publish waits for the broker's PUBACK."""

    def __init__(self, port: int) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-publisher",
                                  protocol=mqtt.MQTTv5)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def send(self, topic: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def alerts(self, device: str, seqs: range) -> None:
        for n in seqs:
            self.send(f"dms/{device}/alert", alert_payload(device, n))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def wait_stored(db: str, n: int, timeout_s: float = 60.0) -> int:
    deadline = time.monotonic() + timeout_s
    got = stored_count(db)
    while got < n and time.monotonic() < deadline:
        time.sleep(0.1)
        got = stored_count(db)
    return got


@pytest.fixture
def fleet_broker(tmp_path: Path) -> Broker:
    with start_broker(tmp_path / "broker", extra_config=BROKER_CONFIG) as b:
        yield b


@pytest.mark.slow
def test_bad_input_is_counted_and_never_stops_ingest(tmp_path: Path,
                                                      fleet_broker: Broker) -> None:
    db = f"sqlite:///{tmp_path / 'fleet.sqlite3'}"
    # a run with another prefix leaves its subscriptions in the persistent session: what
    # arrives through them is on a foreign topic for the next run
    old = IngestProcess(fleet_broker.port, db, "--prefix", "old").start()
    assert old.stop() == 0
    # one aggregate line for the whole run: the one written when the worker stops
    ingest = IngestProcess(fleet_broker.port, db, "--report-interval-s", "600").start()
    pub = Publisher(fleet_broker.port)
    try:
        pub.send("old/cab-1/alert", alert_payload("cab-1", 1))  # foreign: the old prefix
        pub.send("dms//alert", alert_payload("cab-1", 1))  # foreign: an empty device level
        pub.send("dms/cab-1/alert", b"{oops")  # malformed
        pub.send("dms/cab-1/alert", alert_payload("cab-1", 1, schema=2))  # wrong schema
        pub.send("dms/cab-1/alert", b"{" + b" " * (1 << 20) + b"}")  # huge: 1 MiB
        pub.send("dms/cab-1/alert", alert_payload("cab-2", 1))  # another device's alert
        pub.send("dms/cab-1/status", b"\xff")  # malformed status
        pub.alerts("cab-1", range(1, 4))  # and ingest goes on
        assert wait_stored(db, 3) == 3, ingest.text()
        assert ingest.proc is not None and ingest.proc.poll() is None
    finally:
        pub.close()
        assert ingest.stop() == 0, ingest.text()
    assert ingest.count("rejected 7 message(s)") == 1, ingest.text()
    report = fleet_report(db)
    assert report["alerts"]["total"] == 3 and report["seq_gaps"] == 0
    assert report["rejected"] == {"malformed": 2, "wrong_schema": 1, "too_large": 1,
                                  "foreign_topic": 2, "device_mismatch": 1, "unstorable": 0}
    assert report["malformed"] == 7
    line = next(x for x in ingest.lines if "rejected 7 message(s)" in x)
    for name in ("malformed 2", "wrong_schema 1", "too_large 1", "foreign_topic 2",
                 "device_mismatch 1"):
        assert name in line, line
    assert "Traceback" not in ingest.text()
    (stats,) = ingest.final_stats()
    assert stats["stored"] == 3 and sum(stats["rejected"].values()) == 7


@pytest.mark.slow
def test_a_full_disk_stops_acknowledging_and_nothing_is_lost(tmp_path: Path,
                                                             fleet_broker: Broker) -> None:
    """A real full filesystem (a 4 MiB tmpfs, filled up while ingest runs): SQLite refuses
    the commit, nothing is acknowledged, the broker keeps the alerts; space freed, all of them
    are stored once."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs (CI runs as root)")
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        db = f"sqlite:///{disk / 'fleet.sqlite3'}"
        ingest = IngestProcess(fleet_broker.port, db).start()
        pub = Publisher(fleet_broker.port)
        try:
            pub.alerts("cab-1", range(1, 11))
            assert wait_stored(db, 10) == 10, ingest.text()
            ballast = disk / "ballast"
            with open(ballast, "wb") as f:  # fill the filesystem
                try:
                    while True:
                        f.write(b"\0" * 65536)
                        f.flush()
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
            pub.alerts("cab-1", range(11, 511))
            assert ingest.wait_log("the database refuses writes", 30), ingest.text()
            assert "database or disk is full" in ingest.text()
            time.sleep(2.0)
            assert stored_count(db) == 10  # nothing new committed, nothing acknowledged
            ballast.unlink()
            assert wait_stored(db, 510) == 510, ingest.text()
            assert ingest.wait_log("takes writes again", 10)
        finally:
            pub.close()
            assert ingest.stop() == 0, ingest.text()
        report = fleet_report(db)
        assert report["alerts"]["total"] == 510 and report["seq_gaps"] == 0
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


@pytest.mark.slow
def test_a_database_that_is_down_holds_the_alerts_at_the_broker(tmp_path: Path,
                                                                 fleet_broker: Broker) -> None:
    """PostgreSQL stopped mid-run (and the ingester killed while it is down): nothing is
    acknowledged meanwhile; the server back, every alert is stored once."""
    cluster = new_cluster()
    try:
        db = cluster.url
        ingest = IngestProcess(fleet_broker.port, db).start()
        pub = Publisher(fleet_broker.port)
        try:
            pub.alerts("cab-9", range(1, 101))
            assert wait_stored(db, 100) == 100, ingest.text()
            cluster.stop()
            pub.alerts("cab-9", range(101, 301))
            assert ingest.wait_log("the database refuses writes", 30), ingest.text()
            ingest.kill()  # and the ingester dies while the database is down
            ingest = IngestProcess(fleet_broker.port, db).start(wait_subscribed=0)
            assert ingest.wait_log("cannot reach the database", 30), ingest.text()
            pub.alerts("cab-9", range(301, 401))
            cluster.restart()
            assert wait_stored(db, 400) == 400, ingest.text()
        finally:
            pub.close()
            assert ingest.stop() == 0, ingest.text()
        report = fleet_report(db)
        assert report["alerts"]["total"] == 400 and report["seq_gaps"] == 0
    finally:
        cluster.stop()
        shutil.rmtree(cluster.directory, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.parametrize("share_group", ["", "dms-fleet"])
def test_a_broker_restart_and_what_it_drops_shows_as_gaps(tmp_path: Path, fleet_broker: Broker,
                                                          share_group: str) -> None:
    """The broker stops (saving its sessions) and comes back mid-run. With a plain subscription
    nothing is lost. mosquitto 2.0.11 does not restore a *shared* subscription from its
    persistence file (the session comes back without it), so what devices publish between its
    restart and the worker's re-subscription has no subscriber and is dropped by the broker
    (docs/fleet.md): whatever is dropped shows up in ``seq_gaps`` once a later alert arrives."""
    db = f"sqlite:///{tmp_path / 'fleet.sqlite3'}"
    ingest = IngestProcess(fleet_broker.port, db, "--share-group", share_group).start()
    try:
        pub = Publisher(fleet_broker.port)
        pub.alerts("cab-5", range(1, 201))
        pub.close()
        assert wait_stored(db, 200) == 200, ingest.text()
        fleet_broker.restart()
        pub = Publisher(fleet_broker.port)
        pub.alerts("cab-5", range(201, 401))  # before the worker is back
        assert ingest.wait_log("(session resumed)", 30), ingest.text()
        assert ingest.wait_log("subscribed to", 30, count=2), ingest.text()
        pub.alerts("cab-5", range(401, 402))  # after
        pub.close()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and 401 not in stored_seqs(db):
            time.sleep(0.1)
    finally:
        assert ingest.stop() == 0, ingest.text()
    report = fleet_report(db)
    assert 401 in stored_seqs(db)
    assert report["alerts"]["total"] + report["seq_gaps"] == 401
    if not share_group:
        assert report["alerts"]["total"] == 401 and report["seq_gaps"] == 0


def stored_seqs(db: str) -> set[int]:
    import sqlalchemy as sa

    from dms.fleet.store import Store

    store = Store(db, readonly=True)
    try:
        with store.connect() as conn:
            return {int(n) for n in conn.execute(sa.text("SELECT seq FROM alerts")).scalars()}
    finally:
        store.close()


def run_dms(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dms", *args], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, env=env)


@pytest.mark.parametrize(("args", "message"), [
    (["fleet", "ingest", "--db", "mysql://h/db"], "unsupported"),
    (["fleet", "ingest", "--db", "/nonexistent-dms/fleet.db"], "does not exist"),
    (["fleet", "ingest", "--workers", "0"], "--workers must be >= 1"),
    (["fleet", "ingest", "--prefix", "dms/#"], "--prefix 'dms/#'"),
    (["fleet", "report", "--db", "/tmp/dms-no-such-fleet.db"], "no such file"),
    (["fleet", "report", "--db", "/tmp/x.db", "--since", "yesterday"], "--since 'yesterday'"),
    (["fleet", "report", "--db", "/tmp/x.db", "--export", "out.xlsx"], ".csv or .jsonl"),
    (["fleet", "serve", "--db", "/tmp/x.db"], "DMS_FLEET_TOKEN is not set"),
])
def test_bad_command_lines_get_one_line_and_exit_2(args: list[str], message: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DMS_FLEET_TOKEN"}
    p = run_dms(*args, env=env)
    assert p.returncode == 2, (p.stdout, p.stderr)
    assert message in p.stderr, p.stderr
    assert "Traceback" not in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
