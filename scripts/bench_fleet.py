#!/usr/bin/env python3
"""Sustained ingest rate of ``dms fleet ingest`` (issue 24), alerts per second, into SQLite and
PostgreSQL with 1 and 2 workers, on a real mosquitto broker on 127.0.0.1.

Method, for each (database, workers): a fresh broker and database; the ingest workers start
once (making their persistent sessions and shared subscription) and stop; N alerts from D
devices (the devices' payload format, schema 1, each (stream, seq) once) are published while
they are down, so the broker holds them for the sessions; then the workers start and drain
them. The rate is N over the time between the first and the last commit (the stored rows'
``received_wall_s``); the wall time from the start of the workers is printed beside it. Every
alert must be stored exactly once (checked with ``dms fleet report``), or the run fails.

    scripts/bench_fleet.py                       # 20,000 alerts; sqlite and postgresql; 1, 2
    scripts/bench_fleet.py --alerts 50000 --db sqlite --workers 1 --json

PostgreSQL is a throwaway cluster from Debian's binaries (scripts/pg_throwaway), with its
durable defaults (fsync and synchronous_commit on); SQLite runs with synchronous=FULL.
Record the figures in docs/benchmarks.md with the machine, its load and the date.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the test broker helper

import paho.mqtt.client as mqtt  # noqa: E402
import sqlalchemy as sa  # noqa: E402

from dms.fleet.store import Store  # noqa: E402

from broker import Broker  # noqa: E402


def publish(port: int, alerts: int, devices: int) -> float:
    """Publish ``alerts`` alerts round-robin over ``devices`` devices (QoS 1, acknowledged by
    the broker); returns the seconds it took."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-publisher",
                         protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    t0 = time.monotonic()
    infos = []
    now = time.time()
    for k in range(alerts):
        device = f"bench-{k % devices:03d}"
        seq = k // devices + 1
        payload = {"schema": 1, "device": device, "stream": f"{device}-stream", "seq": seq,
                   "queued_wall_s": round(now - (alerts - k) * 0.5, 3),
                   "event": {"schema_version": 1, "event_id": f"{device}-{seq}",
                             "alert_id": seq, "type": "distraction", "reason": "long_glance",
                             "level": 1, "phase": "raised", "t_s": 10.0 * seq,
                             "started_t_s": 10.0 * seq - 2.0,
                             "pose": {"yaw_deg": 31.5, "pitch_deg": -4.0, "roll_deg": 1.0,
                                      "yaw_inboard_deg": 31.5, "on_road": False,
                                      "zone": "infotainment"}, "settings_version": "bench"}}
        infos.append(client.publish(f"dms/{device}/alert",
                                    json.dumps(payload, separators=(",", ":")), qos=1))
    for info in infos:
        info.wait_for_publish(60)
    seconds = time.monotonic() - t0
    client.disconnect()
    client.loop_stop()
    return seconds


def ingest_cmd(port: int, db: str, workers: int) -> list[str]:
    return [sys.executable, "-m", "dms", "-v", "fleet", "ingest", "--mqtt", f"127.0.0.1:{port}",
            "--db", db, "--client-id", "bench", "--workers", str(workers),
            "--report-interval-s", "600"]


def start_ingest(port: int, db: str, workers: int, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as f:
        proc = subprocess.Popen(ingest_cmd(port, db, workers), stdout=subprocess.DEVNULL,
                                stderr=f, cwd=ROOT)
    deadline = time.monotonic() + 60
    while log.read_text().count("subscribed to") < workers:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"ingest did not subscribe: {log.read_text()[-2000:]}")
        time.sleep(0.05)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)


def count(db: str) -> tuple[int, float | None, float | None]:
    store = Store(db, readonly=True)
    try:
        with store.connect() as conn:
            n, first, last = conn.execute(sa.text(
                "SELECT COUNT(*), MIN(received_wall_s), MAX(received_wall_s) FROM alerts")).one()
            return int(n), first, last
    finally:
        store.close()


def run_one(kind: str, workers: int, alerts: int, devices: int, pg_url: str | None,
            work: Path) -> dict[str, Any]:
    run_dir = work / f"{kind}-{workers}"
    run_dir.mkdir()
    if kind == "sqlite":
        db = f"sqlite:///{run_dir / 'fleet.sqlite3'}"
    else:
        import psycopg

        assert pg_url is not None
        name = f"bench_{workers}_{int(time.time())}"
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        db = pg_url.rpartition("/")[0] + "/" + name
    broker = Broker(run_dir / "broker", extra_config="max_queued_messages 0\n").start()
    log = run_dir / "ingest.log"
    try:
        stop(start_ingest(broker.port, db, workers, log))  # sessions + subscriptions
        publish_s = publish(broker.port, alerts, devices)
        t0 = time.time()
        proc = start_ingest(broker.port, db, workers, log)
        deadline = time.monotonic() + 600
        n = 0
        while n < alerts and time.monotonic() < deadline:
            time.sleep(0.2)
            n, first, last = count(db)
        done = time.time()
        stop(proc)
        n, first, last = count(db)
        report = json.loads(subprocess.run(
            [sys.executable, "-m", "dms", "fleet", "report", "--db", db, "--json"],
            capture_output=True, text=True, check=True, cwd=ROOT).stdout)
    finally:
        broker.stop()
    if n != alerts or report["alerts"]["total"] != alerts or report["seq_gaps"] != 0:
        raise RuntimeError(f"{kind} x{workers}: stored {n} of {alerts}, report "
                           f"{report['alerts']['total']}, gaps {report['seq_gaps']}")
    span = (last or 0) - (first or 0)
    return {"db": kind, "workers": workers, "alerts": alerts, "devices": devices,
            "publish_s": round(publish_s, 2), "commit_span_s": round(span, 2),
            "alerts_per_s": round(alerts / span, 0) if span > 0 else None,
            "wall_s_from_start": round(done - t0, 2),
            "duplicates_dropped": report["duplicates_dropped"],
            "per_worker": {w: v.get("stored", 0) for w, v in report["workers"].items()}}


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"date": time.strftime("%Y-%m-%d %H:%M %Z"), "cpus": os.cpu_count(), "cpu": cpu,
            "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()],
            "python": platform.python_version(), "sqlite": __import__("sqlite3").sqlite_version}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--alerts", type=int, default=20_000)
    p.add_argument("--devices", type=int, default=50)
    p.add_argument("--db", nargs="+", choices=["sqlite", "postgresql"],
                   default=["sqlite", "postgresql"])
    p.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="dms-bench-fleet-"))
    pg_dir: Path | None = None
    pg_url = None
    results = []
    info = machine()
    try:
        if "postgresql" in args.db:
            pg_dir = Path(tempfile.mkdtemp(prefix="dms-bench-pg-", dir="/tmp"))
            pg_url = subprocess.run([str(ROOT / "scripts" / "pg_throwaway"), "start",
                                     str(pg_dir)], capture_output=True, text=True,
                                    check=True).stdout.strip()
        for kind in args.db:
            for workers in args.workers:
                r = run_one(kind, workers, args.alerts, args.devices, pg_url, work)
                results.append(r)
                if not args.json:
                    print(f"{kind:<10} workers {workers}: {r['alerts']} alerts in "
                          f"{r['commit_span_s']} s = {r['alerts_per_s']} alerts/s "
                          f"(wall {r['wall_s_from_start']} s from start; per worker "
                          f"{r['per_worker']}; duplicates {r['duplicates_dropped']})",
                          flush=True)
    finally:
        if pg_dir is not None:
            subprocess.run([str(ROOT / "scripts" / "pg_throwaway"), "stop", str(pg_dir)],
                           check=False)
            shutil.rmtree(pg_dir, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    info["load_avg_after"] = [round(x, 2) for x in os.getloadavg()]
    if args.json:
        print(json.dumps({"machine": info, "runs": results}))
    else:
        print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
