"""``dms command``: sign a command for one device, send it, print the device's reply.

    DMS_COMMAND_KEY=... dms command --mqtt broker:1883 --device cab-7 mute 60
    dms command --mqtt broker:1883 --device cab-7 calibrate
    dms command --mqtt broker:1883 --device cab-7 state

The key is read from the environment variable named by --key-env (default DMS_COMMAND_KEY,
the device's [mqtt] command_key_env). Exit status: 0 when the device accepted the command,
1 when it refused it (the reply's error is printed) or did not answer within --timeout-s.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import threading
from typing import Any

from dms.cli.listen import add_broker_args, connect_client, host_port
from dms.errors import DmsError, InputError


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("command", help="send a signed command to a device and print "
                              "its reply", description=__doc__,
                              formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--mqtt", type=host_port, default=("localhost", 1883), metavar="HOST:PORT",
                   help="broker (default localhost:1883)")
    p.add_argument("--prefix", default="dms", help="topic prefix (default dms)")
    p.add_argument("--device", required=True, help="the device id")
    p.add_argument("--key-env", default="DMS_COMMAND_KEY",
                   help="environment variable holding the command key (default DMS_COMMAND_KEY)")
    p.add_argument("--timeout-s", type=float, default=10.0,
                   help="how long to wait for the reply (default 10)")
    add_broker_args(p)
    p.add_argument("name", choices=["calibrate", "mute", "state"], help="the command")
    p.add_argument("duration_s", nargs="?", type=float, default=None,
                   help="mute: seconds to mute (levels below 3)")
    p.set_defaults(func=run)


def _args_of(args: argparse.Namespace) -> dict[str, Any]:
    if args.name == "mute":
        if args.duration_s is None:
            raise InputError("mute needs a duration in seconds, e.g. dms command ... mute 60")
        return {"duration_s": args.duration_s}
    if args.duration_s is not None:
        raise InputError(f"{args.name} takes no argument")
    return {}


def run(args: argparse.Namespace) -> int:

    from dms.outputs.command_auth import command_key, sign_command
    from dms.outputs.topics import Topics

    try:
        key = command_key(os.environ, args.key_env)
        topics = Topics(args.prefix, args.device)
    except DmsError as exc:
        raise InputError(str(exc)) from None
    if key is None:
        raise InputError(f"no command key: set the environment variable {args.key_env}")
    request_id = secrets.token_hex(8)
    payload = sign_command(key, topics.device_id, args.name, _args_of(args),
                           request_id=request_id)
    reply: dict[str, Any] = {}
    subscribed, done = threading.Event(), threading.Event()

    def on_connect(client: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            print(f"dms command: broker refused the connection: {reason}", file=sys.stderr)
            done.set()
            return
        client.subscribe(topics.reply, qos=1)

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        try:
            data = json.loads(msg.payload)
        except ValueError:
            return
        if isinstance(data, dict) and data.get("request_id") == request_id:
            reply.update(data)
            done.set()

    host, port = args.mqtt
    client = connect_client(args, host, port, on_connect, on_message,
                            on_subscribe=lambda *_a: subscribed.set())
    try:
        # the reply subscription must be live before the command goes out
        if subscribed.wait(args.timeout_s) and not done.is_set():
            client.publish(topics.command(args.name), payload, qos=1, retain=False)
            done.wait(args.timeout_s)
    finally:
        client.disconnect()
        client.loop_stop()
    if not reply:
        print(f"dms command: no reply from {topics.device_id} within {args.timeout_s:g} s",
              file=sys.stderr)
        return 1
    print(json.dumps(reply, separators=(",", ":")), flush=True)
    if not reply.get("ok"):
        print(f"dms command: {args.name} refused: {reply.get('error')}", file=sys.stderr)
        return 1
    return 0
