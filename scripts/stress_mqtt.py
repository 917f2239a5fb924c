#!/usr/bin/env python3
"""Stress the durable MQTT path: N alerts through a mosquitto broker that is restarted several
times (and a publisher process that is replaced once mid-outage), then count what arrived.

A persistent-session subscriber (QoS 1, as a fleet back end would run) collects alerts; the
broker runs with persistence, so its queue for that subscriber survives the restarts.
Prints one JSON summary: sent, delivered_unique, lost, duplicates, in_order, restarts, latency.

    python scripts/stress_mqtt.py --alerts 1000 --broker-restarts 4
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the test broker helper

import paho.mqtt.client as mqtt  # noqa: E402

from dms.outputs.mqtt import MqttCommunicator, MqttSettings  # noqa: E402

from broker import Broker, find_mosquitto  # noqa: E402


class Subscriber:
    def __init__(self, port: int, topic: str) -> None:
        self.arrivals: list[tuple[int, float, float]] = []  # seq, queued_wall_s, arrival wall
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="stress-sub",
                                  protocol=mqtt.MQTTv311, clean_session=False)
        self.client.reconnect_delay_set(1, 1)
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        now = time.time()
        body = json.loads(msg.payload)
        with self.lock:
            self.arrivals.append((int(body["seq"]), float(body["queued_wall_s"]), now))

    def unique(self) -> int:
        with self.lock:
            return len({a[0] for a in self.arrivals})

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--alerts", type=int, default=1000)
    ap.add_argument("--broker-restarts", type=int, default=4)
    ap.add_argument("--outage-s", type=float, default=1.5, help="broker down time per restart")
    ap.add_argument("--interval-s", type=float, default=0.01, help="time between alerts")
    ap.add_argument("--drain-timeout-s", type=float, default=60.0)
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if find_mosquitto() is None:
        print("stress_mqtt: needs the mosquitto binary", file=sys.stderr)
        return 2

    work = Path(tempfile.mkdtemp(prefix="dms-stress-"))
    settings = MqttSettings(host="127.0.0.1", device_id="stress", reconnect_min_s=1,
                            reconnect_max_s=1, keepalive_s=5)
    brk = Broker(work / "broker").start()
    settings = dataclasses.replace(settings, port=brk.port)
    sub = Subscriber(brk.port, "dms/stress/alert")
    comm = MqttCommunicator(settings, work / "state").start()
    comm.wait_connected(10)
    t0 = time.monotonic()
    restart_at = {int(args.alerts * (k + 1) / (args.broker_restarts + 1))
                  for k in range(args.broker_restarts)}
    publisher_restart_at = min(restart_at) if restart_at else -1
    sent: list[int] = []
    outage_total_s = 0.0
    publisher_restarts = 0
    # alerts go out at a steady pace; at each restart point the broker goes down for
    # outage_s while alerts keep coming (they queue in the outbox); during the first outage
    # the publisher itself is replaced by a new one on the same state directory
    down_until: float | None = None
    for i in range(args.alerts):
        now = time.monotonic()
        if i in restart_at and down_until is None:
            brk.stop()
            down_until = now + args.outage_s
            t_down = now
        if (down_until is not None and i == publisher_restart_at + 5
                and publisher_restarts == 0):
            comm.stop()  # the process goes away with undelivered alerts...
            comm = MqttCommunicator(settings, work / "state").start()  # ...a new one replays
            publisher_restarts += 1
        if down_until is not None and now >= down_until:
            brk.start()
            outage_total_s += time.monotonic() - t_down
            down_until = None
        sent.append(comm.publish_alert({"i": i, "kind": "stress"}))
        time.sleep(args.interval_s)
    if down_until is not None:
        brk.start()
        outage_total_s += time.monotonic() - t_down
    drained = comm.wait_drained(args.drain_timeout_s)
    deadline = time.monotonic() + args.drain_timeout_s
    while sub.unique() < len(set(sent)) and time.monotonic() < deadline:
        time.sleep(0.1)
    elapsed_s = time.monotonic() - t0
    comm.stop()
    sub.close()
    brk.stop()

    seqs = [a[0] for a in sub.arrivals]
    unique = set(seqs)
    first_seen = list(dict.fromkeys(seqs))
    latencies = sorted({s: arr - q for s, q, arr in reversed(sub.arrivals)}.values())
    summary = {
        "sent": len(sent),
        "delivered_unique": len(unique & set(sent)),
        "lost": len(set(sent) - unique),
        "duplicates": len(seqs) - len(unique),
        "in_order": first_seen == sorted(first_seen),
        "outbox_drained": drained,
        "broker_restarts": brk.restarts,
        "publisher_restarts": publisher_restarts,
        "outage_total_s": round(outage_total_s, 2),
        "max_latency_s": round(latencies[-1], 3) if latencies else None,
        "median_latency_s": round(statistics.median(latencies), 4) if latencies else None,
        "elapsed_s": round(elapsed_s, 1),
    }
    print(json.dumps(summary))
    return 0 if summary["lost"] == 0 and summary["in_order"] else 1


if __name__ == "__main__":
    sys.exit(main())
