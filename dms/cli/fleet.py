"""``dms fleet``: the fleet side (docs/fleet.md).

    dms fleet ingest   --mqtt HOST:PORT [--db URL] [--workers N]
    dms fleet report   --db URL [--json] [--since 24h] [--export FILE.csv|FILE.jsonl]
    dms fleet serve    --db URL [--host 127.0.0.1] [--port 8089]    (token in $DMS_FLEET_TOKEN)
    dms fleet simulate --mqtt HOST:PORT --state-dir DIR [--devices 50] [--alerts 200]

--db is sqlite:///FILE (or a plain file path; default fleet.sqlite3) or
postgresql://USER@HOST:PORT/DB (password from the URL or $PGPASSWORD).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from dms.cli.listen import add_broker_args, host_port
from dms.errors import InputError

log = logging.getLogger(__name__)
DEFAULT_DB = "sqlite:///fleet.sqlite3"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("fleet", help="store every vehicle's alerts exactly once, report, "
                                            "serve a page (docs/fleet.md)",
                              description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="fleet_command", metavar="SUBCOMMAND")
    p.set_defaults(func=lambda _a: p.print_help() or 2)

    ing = sub.add_parser("ingest", help="subscribe to every device and store its alerts")
    ing.add_argument("--mqtt", type=host_port, default=("localhost", 1883), metavar="HOST:PORT")
    ing.add_argument("--db", default=DEFAULT_DB, metavar="URL",
                     help=f"sqlite:///FILE, a file path or postgresql://... (default {DEFAULT_DB})")
    ing.add_argument("--workers", type=int, default=1, metavar="N",
                     help="worker processes on the shared subscription (default 1)")
    ing.add_argument("--prefix", default="dms", help="the devices' topic prefix (default dms)")
    ing.add_argument("--share-group", default="dms-fleet",
                     help="shared-subscription group ('' for a plain subscription)")
    ing.add_argument("--client-id", default="", metavar="ID",
                     help="base MQTT client id; worker i is ID-i and keeps that session "
                          "(default dms-fleet-<host name>)")
    ing.add_argument("--receive-maximum", type=int, default=1000, metavar="N",
                     help="unacknowledged messages the broker may send ahead (default 1000)")
    ing.add_argument("--batch-max", type=int, default=500, metavar="N",
                     help="messages per transaction (default 500)")
    ing.add_argument("--max-payload-bytes", type=int, default=65_536, metavar="N",
                     help="larger payloads are rejected as too_large (default 65536)")
    ing.add_argument("--session-expiry-s", type=int, default=None, metavar="S",
                     help="how long the broker keeps the session while the worker is down "
                          "(default: never expires)")
    ing.add_argument("--report-interval-s", type=float, default=60.0, metavar="S",
                     help="log counts and rejections this often (default 60)")
    ing.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    add_broker_args(ing)
    ing.set_defaults(func=run_ingest)

    rep = sub.add_parser("report", help="alerts per device and type, devices online, seq gaps, "
                                        "duplicates, rejected messages; export")
    rep.add_argument("--db", default=DEFAULT_DB, metavar="URL")
    rep.add_argument("--json", action="store_true", help="print one JSON object")
    rep.add_argument("--since", default=None, metavar="WHEN",
                     help="alerts queued since: 24h, 7d, 90m, an ISO date/time (UTC) or Unix s")
    rep.add_argument("--export", default=None, metavar="FILE",
                     help="also write the alerts to FILE (.csv or .jsonl; '-' for stdout)")
    rep.add_argument("--format", choices=["csv", "jsonl"], default=None,
                     help="export format (default: from the file name; jsonl for '-')")
    rep.set_defaults(func=run_report)

    srv = sub.add_parser("serve", help="the fleet page: devices, alert timelines, hourly counts")
    srv.add_argument("--db", default=DEFAULT_DB, metavar="URL")
    srv.add_argument("--host", default="127.0.0.1", help="listen address (default 127.0.0.1)")
    srv.add_argument("--port", type=int, default=8089, help="listen port (default 8089)")
    srv.add_argument("--token-env", default="DMS_FLEET_TOKEN",
                     help="environment variable holding the access token (>= 16 bytes)")
    srv.set_defaults(func=run_serve)

    sim = sub.add_parser("simulate", help="simulated vehicles publishing alerts through the "
                                          "project's outbox and MQTT code")
    sim.add_argument("--mqtt", type=host_port, default=("localhost", 1883), metavar="HOST:PORT")
    sim.add_argument("--state-dir", required=True, metavar="DIR",
                     help="where each device's outbox lives (one folder per device)")
    sim.add_argument("--devices", type=int, default=50)
    sim.add_argument("--alerts", type=int, default=200, help="alerts per device")
    sim.add_argument("--resend-devices", type=int, default=5,
                     help="devices whose first alerts are sent twice (default 5)")
    sim.add_argument("--resend-alerts", type=int, default=20,
                     help="how many first alerts they send twice (default 20)")
    sim.add_argument("--prefix", default="dms")
    sim.add_argument("--spread-h", type=float, default=0.0,
                     help="spread the alerts' times over the last N hours (default: now)")
    sim.add_argument("--json", action="store_true", help="print the outcome as one JSON object")
    sim.set_defaults(func=run_simulate)


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handler(_signum: int, _frame: Any) -> None:
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, handler)
    return stop


def run_ingest(args: argparse.Namespace) -> int:
    from dms.fleet.ingest import (
        NEVER_EXPIRES,
        IngestSettings,
        default_client_id,
        run_worker,
        supervise,
    )
    from dms.fleet.store import parse_url

    if args.verbose < 2:  # alembic's set-up lines say nothing about the migration itself
        logging.getLogger("alembic").setLevel(logging.WARNING)
    if args.workers < 1:
        raise InputError("--workers must be >= 1")
    parse_url(args.db)  # a bad URL fails here, once, not in every worker
    base = args.client_id or default_client_id()
    stop = _stop_on_signals()
    if args.workers > 1 and args.worker_index == 0:
        return supervise([_worker_command(args, base, i) for i in range(1, args.workers + 1)],
                         stop)
    index = args.worker_index or 1
    host, port = args.mqtt
    settings = IngestSettings(
        host=host, port=port, prefix=args.prefix, share_group=args.share_group,
        client_id=f"{base}-{index}", username=args.username, password_env=args.password_env,
        tls_ca=args.tls_ca or "", receive_maximum=args.receive_maximum,
        batch_max=args.batch_max, max_payload_bytes=args.max_payload_bytes,
        session_expiry_s=NEVER_EXPIRES if args.session_expiry_s is None
        else args.session_expiry_s, report_interval_s=args.report_interval_s)
    settings.validate()
    return run_worker(settings, args.db, stop, supervised=args.worker_index > 0)


def _worker_command(args: argparse.Namespace, base: str, index: int) -> list[str]:
    """The command line of worker ``index`` of ``dms fleet ingest --workers N``."""
    host, port = args.mqtt
    cmd = [sys.executable, "-m", "dms"] + (["-" + "v" * args.verbose] if args.verbose else [])
    cmd += ["fleet", "ingest", "--mqtt", f"{host}:{port}", "--db", args.db,
            "--prefix", args.prefix, "--share-group", args.share_group, "--client-id", base,
            "--receive-maximum", str(args.receive_maximum), "--batch-max", str(args.batch_max),
            "--max-payload-bytes", str(args.max_payload_bytes),
            "--report-interval-s", str(args.report_interval_s),
            "--username", args.username, "--password-env", args.password_env,
            "--worker-index", str(index)]
    if args.session_expiry_s is not None:
        cmd += ["--session-expiry-s", str(args.session_expiry_s)]
    if args.tls_ca:
        cmd += ["--tls-ca", args.tls_ca]
    return cmd


def run_report(args: argparse.Namespace) -> int:
    from dms.fleet.report import build_report, export_rows, parse_since, render_text, write_export
    from dms.fleet.store import Store, StoreUnavailable

    now = time.time()
    since = parse_since(args.since, now) if args.since else None
    fmt = args.format
    if args.export and fmt is None:
        suffix = Path(args.export).suffix.lower()
        fmt = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}.get(suffix)
        if fmt is None:
            fmt = "jsonl" if args.export == "-" else None
        if fmt is None:
            raise InputError(f"--export {args.export}: name a .csv or .jsonl file, or give "
                             "--format csv|jsonl")
    store = Store(args.db, readonly=True)
    try:
        store.open()
        report = build_report(store, since, now)
        if args.export:
            if args.export == "-":
                n = write_export(export_rows(store, since), sys.stdout, fmt or "jsonl")
            else:
                try:
                    with open(args.export, "w", encoding="utf-8", newline="") as f:
                        n = write_export(export_rows(store, since), f, fmt or "jsonl")
                except OSError as exc:
                    raise InputError(f"--export {args.export}: cannot write: "
                                     f"{exc.strerror or exc}") from None
            report["exported"] = {"file": args.export, "format": fmt, "alerts": n}
    except StoreUnavailable as exc:
        raise InputError(f"--db {args.db}: cannot read the database: {exc}") from None
    finally:
        store.close()
    out = sys.stderr if args.export == "-" else sys.stdout
    if args.json:
        print(json.dumps(report, separators=(",", ":")), file=out)
    else:
        print(render_text(report), file=out)
        if args.export and args.export != "-":
            print(f"exported {report['exported']['alerts']} alert(s) to {args.export}", file=out)
    return 0


def run_serve(args: argparse.Namespace) -> int:
    import os

    from dms.fleet.serve import FleetServer, fleet_token
    from dms.fleet.store import Store, StoreUnavailable

    token = fleet_token(os.environ, args.token_env)
    store = Store(args.db, readonly=True)
    try:
        store.open()
    except StoreUnavailable as exc:
        raise InputError(f"--db {args.db}: cannot read the database: {exc}") from None
    stop = _stop_on_signals()
    server = FleetServer(store, token, args.host, args.port).start()
    print(f"dms fleet serve: {server.url} (open {server.url}?token=... with the token in "
          f"${args.token_env})", file=sys.stderr, flush=True)
    try:
        stop.wait()
    finally:
        server.close()
        store.close()
    return 0


def run_simulate(args: argparse.Namespace) -> int:
    from dms.fleet.simulate import SimulationSettings, simulate

    host, port = args.mqtt
    sim = SimulationSettings(devices=args.devices, alerts_per_device=args.alerts,
                             resend_devices=args.resend_devices,
                             resend_alerts=args.resend_alerts, prefix=args.prefix,
                             spread_h=args.spread_h)
    sim.validate()
    t0 = time.monotonic()
    result = simulate(host, port, Path(args.state_dir), sim,
                      progress=lambda text: print(text, file=sys.stderr))
    out = {**result.as_dict(), "seconds": round(time.monotonic() - t0, 2)}
    if args.json:
        print(json.dumps(out, separators=(",", ":")))
    else:
        print(f"{out['published']} alerts from {out['devices']} devices in {out['seconds']} s; "
              f"{out['resent']} sent twice; {out['undelivered']} undelivered")
    return 1 if result.undelivered else 0
