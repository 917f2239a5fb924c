"""Issue 24's acceptance, with real parts: mosquitto, a SQLite file and a PostgreSQL database,
50 simulated vehicles publishing 200 alerts each through the project's own outbox and MQTT
code (``dms fleet simulate``, with re-sends from copies of 5 devices' outboxes).

* one ingest worker, killed with SIGKILL twice mid-way and restarted: ``dms fleet report
  --json`` shows 10,000 alerts, none lost, none stored twice, no gap in any stream;
* two workers on one shared subscription (one of them SIGKILLed mid-way and restarted by the
  supervisor): the same 10,000, once each, split between them.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from dms.fleet.store import Store

from broker import Broker, start_broker
from fleet_db import (
    BROKER_CONFIG,
    ROOT,
    IngestProcess,
    db_url,  # noqa: F401 - fixture
    fleet_report,
    pg_server,  # noqa: F401 - fixture
    stored_count,
)

pytestmark = [pytest.mark.broker, pytest.mark.slow]

DEVICES, ALERTS, RESEND_DEVICES, RESEND_ALERTS = 50, 200, 5, 20
TOTAL = DEVICES * ALERTS


@pytest.fixture
def fleet_broker(tmp_path: Path) -> Broker:
    with start_broker(tmp_path / "broker", extra_config=BROKER_CONFIG) as b:
        yield b


def start_simulation(port: int, state_dir: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "dms", "fleet", "simulate", "--mqtt", f"127.0.0.1:{port}",
         "--state-dir", str(state_dir), "--devices", str(DEVICES), "--alerts", str(ALERTS),
         "--resend-devices", str(RESEND_DEVICES), "--resend-alerts", str(RESEND_ALERTS),
         "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)


def wait_for(db: str, n: int, sim: subprocess.Popen[str], timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    got = stored_count(db)
    while got < n and time.monotonic() < deadline:
        time.sleep(0.05)
        got = stored_count(db)
    return got


def stored_keys(db: str) -> list[tuple[str, str, int]]:
    store = Store(db, readonly=True)
    try:
        with store.connect() as conn:
            return [(d, s, int(n)) for d, s, n in conn.execute(
                sa.text("SELECT device, stream, seq FROM alerts"))]
    finally:
        store.close()


def check_store(db: str, sim_out: str) -> dict:
    sim = json.loads(sim_out)
    assert sim["published"] == TOTAL and sim["undelivered"] == 0, sim
    assert sim["resent"] == RESEND_DEVICES * RESEND_ALERTS
    expected = {(d, s, n) for d, s in sim["streams"].items() for n in range(1, ALERTS + 1)}
    keys = stored_keys(db)
    assert len(keys) == len(set(keys)), "an alert stored twice"
    assert set(keys) == expected  # none lost, none foreign
    report = fleet_report(db)
    assert report["alerts"]["total"] == TOTAL
    assert report["seq_gaps"] == 0 and report["gaps"] == []
    assert report["malformed"] == 0
    assert report["duplicates_dropped"] >= sim["resent"]
    assert report["devices"]["total"] == DEVICES
    assert report["devices"]["offline"] == DEVICES  # each simulated device said goodbye
    assert sum(report["alerts"]["by_type"].values()) == TOTAL
    return report


def test_ten_thousand_alerts_once_across_two_sigkills(tmp_path: Path, fleet_broker: Broker,
                                                      db_url: str) -> None:  # noqa: F811
    ingest = IngestProcess(fleet_broker.port, db_url).start()
    sim = start_simulation(fleet_broker.port, tmp_path / "vehicles")
    killed_at = []
    try:
        for threshold in (TOTAL * 3 // 10, TOTAL * 6 // 10):
            got = wait_for(db_url, threshold, sim, 300)
            assert got >= threshold, ingest.text()
            ingest.kill()
            killed_at.append(stored_count(db_url))
            ingest = IngestProcess(fleet_broker.port, db_url).start()  # the same session
        out, err = sim.communicate(timeout=600)
        assert sim.returncode == 0, err
        assert wait_for(db_url, TOTAL, sim, 300) == TOTAL, ingest.text()
    finally:
        if sim.poll() is None:
            sim.kill()
        assert ingest.stop() == 0, ingest.text()
    assert all(0 < k < TOTAL for k in killed_at), killed_at  # mid-way, both times
    report = check_store(db_url, out)
    assert "Traceback" not in ingest.text()
    assert list(report["workers"]) == ["fleet-test-1"]


def test_two_workers_on_one_shared_subscription(tmp_path: Path, fleet_broker: Broker,
                                                db_url: str) -> None:  # noqa: F811
    """... and one of them SIGKILLed mid-way: the supervisor restarts it with its client id,
    and its share, held in its session meanwhile, arrives."""
    ingest = IngestProcess(fleet_broker.port, db_url, "--workers", "2").start(wait_subscribed=2)
    sim = start_simulation(fleet_broker.port, tmp_path / "vehicles")
    try:
        assert wait_for(db_url, TOTAL * 4 // 10, sim, 300) >= TOTAL * 4 // 10, ingest.text()
        (pid,) = re.findall(r"ingest fleet-test-2 \(pid (\d+)\): subscribed", ingest.text())
        os.kill(int(pid), signal.SIGKILL)
        assert ingest.wait_log("worker 2 exited with -9; restarting", 30), ingest.text()
        assert ingest.wait_log("subscribed to", 60, count=3), ingest.text()
        out, err = sim.communicate(timeout=600)
        assert sim.returncode == 0, err
        assert wait_for(db_url, TOTAL, sim, 300) == TOTAL, ingest.text()
    finally:
        if sim.poll() is None:
            sim.kill()
        assert ingest.stop() == 0, ingest.text()
    report = check_store(db_url, out)
    workers = report["workers"]
    assert sorted(workers) == ["fleet-test-1", "fleet-test-2"]
    assert sum(w.get("stored", 0) for w in workers.values()) == TOTAL
    assert all(w.get("stored", 0) > TOTAL // 10 for w in workers.values()), workers  # shared
