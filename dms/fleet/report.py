"""What the fleet store holds: ``dms fleet report`` (one JSON object or text), its export
(CSV or JSON lines) and the numbers the page plots.

* alerts per device and type (``--since``: alerts queued at or after that time);
* devices online / offline, from the retained ``status`` and its Last Will;
* gaps in each stream's ``seq`` (every stream starts at 1: a missing number is an alert that
  has not arrived yet, or was lost before the broker);
* duplicates dropped and rejected messages, from the ingest workers' counters.

Gaps, devices and counters are always over the whole store; ``--since`` narrows the alert
counts, the export and the plots.
"""

from __future__ import annotations

import csv
import json
import re
from collections import defaultdict
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import IO, Any

import sqlalchemy as sa

from dms.errors import InputError
from dms.fleet import schema
from dms.fleet.payloads import Fault
from dms.fleet.store import Store, shown

MAX_GAP_RANGES = 200  # ranges listed in the JSON (all are counted)
_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhd])$")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
EXPORT_COLUMNS = ("device", "stream", "seq", "type", "reason", "level", "phase",
                  "queued_wall_s", "queued_utc", "received_wall_s")


def parse_since(text: str, now_wall_s: float) -> float:
    """``--since``: a duration back from now (``90m``, ``24h``, ``7d``), an ISO date or time
    (``2026-12-01``, ``2026-12-01T08:00``, UTC unless it has an offset) or Unix seconds."""
    value = text.strip()
    m = _RELATIVE.match(value)
    if m:
        return now_wall_s - float(m.group(1)) * _UNIT_S[m.group(2)]
    try:
        return float(value)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise InputError(f"--since {text!r}: not a duration (24h, 7d, 90m), an ISO date/time "
                         "or Unix seconds") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def utc(wall_s: float | None) -> str | None:
    if wall_s is None:
        return None
    return datetime.fromtimestamp(wall_s, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _since(col: sa.ColumnElement[Any], since: float | None) -> sa.ColumnElement[bool]:
    return sa.true() if since is None else col >= since


def seq_gaps(conn: sa.Connection) -> tuple[int, list[dict[str, Any]]]:
    """(missing alerts in all, per stream with a gap: device, stream, missing, ranges)."""
    a = schema.alerts.c
    summary = conn.execute(
        sa.select(a.device, a.stream, sa.func.count(), sa.func.max(a.seq))
        .group_by(a.device, a.stream)).all()
    total = 0
    holes: list[dict[str, Any]] = []
    listed = 0
    for device, stream, count, top in summary:
        missing = int(top) - int(count)
        if missing <= 0:
            continue
        total += missing
        ranges: list[list[int]] = []
        if listed < MAX_GAP_RANGES:
            prev = sa.func.lag(a.seq, 1, 0).over(partition_by=(a.device, a.stream),
                                                 order_by=a.seq)
            inner = (sa.select(a.seq.label("seq"), prev.label("prev"))
                     .where(a.device == device, a.stream == stream).subquery())
            for seq, before in conn.execute(sa.select(inner.c.seq, inner.c.prev)
                                            .where(inner.c.seq - inner.c.prev > 1)
                                            .order_by(inner.c.seq)):
                if listed >= MAX_GAP_RANGES:
                    break
                ranges.append([int(before) + 1, int(seq) - 1])
                listed += 1
        holes.append({"device": device, "stream": stream, "missing": missing,
                      "ranges": ranges})
    holes.sort(key=lambda h: (h["device"], h["stream"]))
    return total, holes


def counters(conn: sa.Connection) -> dict[str, dict[str, int]]:
    """worker -> name -> value."""
    c = schema.counters.c
    out: dict[str, dict[str, int]] = defaultdict(dict)
    for worker, name, value in conn.execute(sa.select(c.worker, c.name, c.value)):
        out[worker][name] = int(value)
    return dict(out)


def devices(conn: sa.Connection, since: float | None = None) -> list[dict[str, Any]]:
    """Every device heard of, with its status, last state and alert counts."""
    a, d = schema.alerts.c, schema.devices.c
    counts = {dev: (int(n), last) for dev, n, last in conn.execute(
        sa.select(a.device, sa.func.count(), sa.func.max(a.queued_wall_s))
        .where(_since(a.queued_wall_s, since)).group_by(a.device))}
    out = []
    for row in conn.execute(sa.select(d.device, d.status, d.status_wall_s, d.driver_state,
                                      d.state_wall_s, d.first_seen_wall_s).order_by(d.device)):
        n, last = counts.get(row.device, (0, None))
        status = row.status if row.status in ("online", "offline") else "unknown"
        out.append({"device": row.device, "status": status, "status_wall_s": row.status_wall_s,
                    "driver_state": row.driver_state, "state_wall_s": row.state_wall_s,
                    "first_seen_wall_s": row.first_seen_wall_s, "alerts": n,
                    "last_alert_wall_s": last})
    return out


def build_report(store: Store, since: float | None, now_wall_s: float) -> dict[str, Any]:
    """The report as one JSON-able object (see the module doc)."""
    a = schema.alerts.c
    with store.connect() as conn:
        by_device: dict[str, dict[str, int]] = defaultdict(dict)
        by_type: dict[str, int] = defaultdict(int)
        for device, kind, n in conn.execute(
                sa.select(a.device, a.type, sa.func.count())
                .where(_since(a.queued_wall_s, since)).group_by(a.device, a.type)):
            by_device[device][kind] = int(n)
            by_type[kind] += int(n)
        listed = devices(conn, since)
        missing, holes = seq_gaps(conn)
        per_worker = counters(conn)
    totals: dict[str, int] = defaultdict(int)
    for values in per_worker.values():
        for name, v in values.items():
            totals[name] += v
    rejected = {f.value: totals.get(f.value, 0) for f in Fault}
    status_counts = {s: sum(1 for d in listed if d["status"] == s)
                     for s in ("online", "offline", "unknown")}
    return {
        "db": shown(store.url),
        "generated_wall_s": round(now_wall_s, 3),
        "since_wall_s": since,
        "alerts": {"total": sum(by_type.values()), "by_type": dict(sorted(by_type.items())),
                   "by_device": {k: dict(sorted(v.items()))
                                 for k, v in sorted(by_device.items())}},
        "devices": {"total": len(listed), **status_counts, "list": listed},
        "duplicates_dropped": totals.get("duplicates_dropped", 0),
        "malformed": sum(rejected.values()),
        "rejected": rejected,
        "seq_gaps": missing,
        "gaps": holes,
        "workers": per_worker,
    }


def render_text(report: dict[str, Any]) -> str:
    """The report for a terminal."""
    lines = [f"fleet store {report['db']}"
             + (f", alerts since {utc(report['since_wall_s'])}" if report["since_wall_s"]
                else "")]
    alerts, devs = report["alerts"], report["devices"]
    lines.append(f"alerts: {alerts['total']}  "
                 + "  ".join(f"{k} {v}" for k, v in alerts["by_type"].items()))
    lines.append(f"devices: {devs['total']} ({devs['online']} online, {devs['offline']} "
                 f"offline, {devs['unknown']} unknown)")
    for d in devs["list"]:
        kinds = alerts["by_device"].get(d["device"], {})
        lines.append(f"  {d['device']:<24} {d['status']:<8} {d['driver_state'] or '-':<12} "
                     f"{d['alerts']:>6} alerts, last {utc(d['last_alert_wall_s']) or '-'}  "
                     + " ".join(f"{k}={v}" for k, v in kinds.items()))
    lines.append(f"duplicates dropped: {report['duplicates_dropped']}")
    bad = {k: v for k, v in report["rejected"].items() if v}
    lines.append(f"rejected messages: {report['malformed']}"
                 + (" (" + ", ".join(f"{k} {v}" for k, v in bad.items()) + ")" if bad else ""))
    lines.append(f"seq gaps (alerts not arrived): {report['seq_gaps']}")
    for h in report["gaps"]:
        shown_ranges = ", ".join(f"{lo}-{hi}" if lo != hi else str(lo) for lo, hi in h["ranges"])
        lines.append(f"  {h['device']} stream {h['stream'][:12]}: {h['missing']} missing "
                     f"({shown_ranges or 'ranges not listed'})")
    return "\n".join(lines)


def export_rows(store: Store, since: float | None) -> Iterator[dict[str, Any]]:
    """Every alert (queued at or after ``since``) in time order, read in chunks."""
    a = schema.alerts.c
    query = (sa.select(a.device, a.stream, a.seq, a.type, a.reason, a.level, a.phase,
                       a.queued_wall_s, a.received_wall_s, a.payload)
             .where(_since(a.queued_wall_s, since))
             .order_by(a.queued_wall_s, a.device, a.stream, a.seq))
    with store.connect() as conn:
        for row in conn.execution_options(yield_per=2000).execute(query):
            yield {"device": row.device, "stream": row.stream, "seq": int(row.seq),
                   "type": row.type, "reason": row.reason, "level": row.level,
                   "phase": row.phase, "queued_wall_s": row.queued_wall_s,
                   "queued_utc": utc(row.queued_wall_s),
                   "received_wall_s": row.received_wall_s, "payload": row.payload}


def write_export(rows: Iterator[dict[str, Any]], out: IO[str], fmt: str) -> int:
    """Write ``rows`` as ``csv`` (one column per field, the event as JSON) or ``jsonl`` (the
    fields and the whole payload as an object); how many were written."""
    n = 0
    if fmt == "csv":
        writer = csv.writer(out)
        writer.writerow((*EXPORT_COLUMNS, "event"))
        for r in rows:
            event = json.loads(r["payload"]).get("event")
            writer.writerow((*(r[c] for c in EXPORT_COLUMNS),
                             json.dumps(event, separators=(",", ":"))))
            n += 1
    else:
        for r in rows:
            record = {c: r[c] for c in EXPORT_COLUMNS}
            record["payload"] = json.loads(r["payload"])
            out.write(json.dumps(record, separators=(",", ":")) + "\n")
            n += 1
    return n


def hourly(conn: sa.Connection, since: float, until: float) -> dict[str, Any]:
    """Alerts per hour and type between ``since`` and ``until`` (UTC hours)."""
    a = schema.alerts.c
    first, last = int(since // 3600), int(until // 3600)
    rows = conn.execute(sa.select(a.queued_hour, a.type, sa.func.count())
                        .where(a.queued_hour >= first, a.queued_hour <= last)
                        .group_by(a.queued_hour, a.type)).all()
    hours = list(range(first, last + 1))
    types: dict[str, list[int]] = {}
    for hour, kind, n in rows:
        types.setdefault(kind, [0] * len(hours))[int(hour) - first] = int(n)
    return {"hours_wall_s": [h * 3600 for h in hours], "types": dict(sorted(types.items()))}


def timeline(conn: sa.Connection, since: float, limit: int) -> dict[str, list[list[Any]]]:
    """device -> [[queued_wall_s, type, level], ...] since ``since`` (newest ``limit``)."""
    a = schema.alerts.c
    out: dict[str, list[list[Any]]] = defaultdict(list)
    for device, t, kind, level in conn.execute(
            sa.select(a.device, a.queued_wall_s, a.type, a.level)
            .where(a.queued_wall_s >= since).order_by(a.queued_wall_s.desc()).limit(limit)):
        out[device].append([round(t, 3), kind, level])
    return dict(out)
