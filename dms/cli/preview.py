"""``dms preview --source SRC``: the installer's page without the service (bench, laptop)."""

from __future__ import annotations

import argparse
import logging


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "preview", help="live camera view with overlays, status and calibrate/mute buttons in "
                        "a browser, without the service (no MQTT, no buzzer)")
    p.add_argument("--source", required=True,
                   help="camera index, /dev/videoN, video file, URL or GStreamer pipeline")
    p.add_argument("--config", help="configuration file (TOML) for [vision], [engine] and "
                                    "[preview]; default: built-in defaults")
    p.add_argument("--host", help="override preview.host (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, help="override preview.port (default 8088)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import os
    import secrets
    from dataclasses import replace

    from dms.config import ConfigError, load_config
    from dms.settings import load_settings, settings_to_dict

    cfg = load_config(args.config)
    overrides = {"enabled": True}
    if args.host:
        overrides["host"] = args.host
    if args.port is not None:
        overrides["port"] = args.port
    try:  # the same checks as the file's [preview] table
        preview = load_settings(type(cfg.preview), settings_to_dict(cfg.preview) | overrides,
                                "preview")
    except Exception as exc:  # noqa: BLE001 - SettingsError is a DmsError; keep one line
        raise ConfigError(f"--host/--port: {exc}") from None
    # a bench look: no broker, no buzzer line, calibrations are not stored, a file loops
    cfg = replace(cfg, camera=replace(cfg.camera, source=args.source, loop=True), preview=preview,
                  mqtt=replace(cfg.mqtt, enabled=False), buzzer=replace(cfg.buzzer,
                                                                        backend="none"))
    if not args.verbose:
        logging.getLogger().setLevel(logging.INFO)
    environ = dict(os.environ)
    host = preview.host if ":" not in preview.host else f"[{preview.host}]"
    if environ.get(preview.token_env):
        print(f"dms preview: open http://{host}:{preview.port}/?token=<${preview.token_env}>",
              flush=True)
    else:
        token = secrets.token_urlsafe(24)
        environ[preview.token_env] = token
        print(f"dms preview: ${preview.token_env} is not set; this run's token is made up: "
              f"open http://{host}:{preview.port}/?token={token}", flush=True)
    from dms.capture import open_capture, source_kind
    from dms.service import build_service

    if source_kind(cfg.camera.source) == "file":
        open_capture(cfg.camera.source).release()
    return build_service(cfg, environ=environ, preview_required=True,
                         store_calibration=False).run(stop_deadline=True)
