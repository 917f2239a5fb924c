"""``dms run``: the in-vehicle service (camera -> perception -> engine -> MQTT + buzzer)."""

from __future__ import annotations

import argparse
import json
import logging


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("run", help="run the driver monitor (the systemd service's command)")
    p.add_argument("--config", help="configuration file (TOML); default: built-in defaults")
    p.add_argument("--source", help="override camera.source (index, file, URL or pipeline)")
    p.add_argument("--mqtt", metavar="HOST:PORT", help="override the broker (enables MQTT)")
    p.add_argument("--max-frames", type=int, help="stop after N frames (bench and tests)")
    p.add_argument("--print-events", action="store_true", help="print alert records (JSON)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from dms.config import load_config
    from dms.service import build_service

    cfg = load_config(args.config)
    if args.source:
        cfg = replace(cfg, camera=replace(cfg.camera, source=args.source))
    if not args.verbose:
        logging.getLogger().setLevel(cfg.service.log_level.upper())
    on_event = (lambda rec: print(json.dumps(rec), flush=True)) if args.print_events else None
    # A video file that cannot be read is a configuration error: one clear line, exit 2. A
    # live camera that is missing is not: the service starts, reports it lost (MQTT state and
    # a camera_lost alert) and begins monitoring when it appears.
    from dms.capture import open_capture, source_kind

    if source_kind(cfg.camera.source) == "file":
        open_capture(cfg.camera.source).release()
    return build_service(cfg, mqtt=args.mqtt, on_event=on_event).run(
        max_frames=args.max_frames, stop_deadline=True)
