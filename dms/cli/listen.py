"""``dms listen``: print alerts from a broker as they arrive, one JSON line each (fleet/bench).

    dms listen --mqtt broker:1883 --prefix dms --device cab-7 --jsonl alerts.jsonl --count 10
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from typing import Any

from dms.errors import InputError


def host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep:
        return text, 1883
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r}: expected HOST:PORT")
    return host.strip("[]") or "localhost", int(port)


def connect_client(args: argparse.Namespace, host: str, port: int, on_connect: Any,
                   on_message: Any, on_subscribe: Any = None) -> Any:
    """A started paho client for ``dms listen`` / ``dms command``: user name and password
    (from the environment), TLS CA, callbacks; InputError when the broker cannot be reached."""
    import os

    import paho.mqtt.client as mqtt

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
    if args.username:
        client.username_pw_set(args.username, os.environ.get(args.password_env))
    if args.tls_ca:
        client.tls_set(ca_certs=args.tls_ca)
    client.on_connect = on_connect
    client.on_message = on_message
    if on_subscribe is not None:
        client.on_subscribe = on_subscribe
    try:
        client.connect(host, port, keepalive=30)
    except OSError as exc:
        raise InputError(f"--mqtt {host}:{port}: cannot connect: {exc}") from None
    client.loop_start()
    return client


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("listen", help="print alerts from an MQTT broker as JSON lines",
                              description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--mqtt", type=host_port, default=("localhost", 1883), metavar="HOST:PORT",
                   help="broker (default localhost:1883)")
    p.add_argument("--prefix", default="dms", help="topic prefix (default dms)")
    p.add_argument("--device", default=None, help="one device id (default: every device)")
    p.add_argument("--topic", choices=["alert", "state", "status", "telemetry", "reply"],
                   default="alert", help="which topic to follow (default alert)")
    p.add_argument("--jsonl", default=None, metavar="FILE", help="also append the lines to FILE")
    p.add_argument("--count", type=int, default=0, metavar="N", help="exit after N messages")
    p.add_argument("--timeout-s", type=float, default=0.0,
                   help="exit after this many seconds (status 1 if --count was not reached)")
    p.add_argument("--dedupe", action="store_true",
                   help="drop alerts already seen (same stream and seq: at-least-once re-sends)")
    add_broker_args(p)
    p.set_defaults(func=run)


def add_broker_args(p: argparse.ArgumentParser) -> None:
    """The broker's credentials and TLS (read by :func:`connect_client`)."""
    p.add_argument("--username", default="", help="broker user name")
    p.add_argument("--password-env", default="DMS_MQTT_PASSWORD",
                   help="environment variable holding the password")
    p.add_argument("--tls-ca", default=None, metavar="FILE",
                   help="connect with TLS using this CA file")


def _line(topic: str, payload: bytes) -> dict[str, Any] | str:
    try:
        return json.loads(payload)
    except ValueError:
        return {"topic": topic, "payload": payload.decode(errors="replace")}


def run(args: argparse.Namespace) -> int:


    from dms.outputs.topics import listen_filter

    try:
        topic_filter = listen_filter(args.prefix, args.device, args.topic)
    except Exception as exc:
        raise InputError(str(exc)) from None
    host, port = args.mqtt
    out_file = None
    if args.jsonl:
        try:
            out_file = open(args.jsonl, "a", encoding="utf-8")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise InputError(f"--jsonl {args.jsonl}: cannot open for appending: {exc}") from None

    received = 0
    seen: set[tuple[str, int]] = set()
    done = threading.Event()
    lock = threading.Lock()

    def on_connect(client: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            print(f"dms listen: broker refused the connection: {reason}", file=sys.stderr)
            done.set()
            return
        client.subscribe(topic_filter, qos=1)

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        nonlocal received
        data = _line(msg.topic, bytes(msg.payload))
        if args.topic in ("state", "status", "telemetry"):
            data = {"topic": msg.topic, "payload": data}
        if args.dedupe and isinstance(data, dict) and "seq" in data:
            key = (str(data.get("stream")), int(data["seq"]))
            if key in seen:
                return
            seen.add(key)
        text = json.dumps(data, separators=(",", ":"), sort_keys=False)
        with lock:
            print(text, flush=True)
            if out_file is not None:
                out_file.write(text + "\n")
                out_file.flush()
            received += 1
            if args.count and received >= args.count:
                done.set()

    client = connect_client(args, host, port, on_connect, on_message)
    try:
        deadline = time.monotonic() + args.timeout_s if args.timeout_s > 0 else None
        while not done.is_set():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            done.wait(0.5 if left is None else min(left, 0.5))
    finally:
        client.disconnect()
        client.loop_stop()
        if out_file is not None:
            out_file.close()
    if args.count and received < args.count:
        print(f"dms listen: {received} of {args.count} messages before the timeout",
              file=sys.stderr)
        return 1
    return 0
