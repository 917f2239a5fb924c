"""``dms config check FILE`` and ``dms config show [FILE]``."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("config", help="check or show a configuration file")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION", required=True)
    ck = csub.add_parser("check", help="validate a configuration file")
    ck.add_argument("file")
    ck.set_defaults(func=run_check)
    sh = csub.add_parser("show", help="print the effective configuration as JSON")
    sh.add_argument("file", nargs="?")
    sh.set_defaults(func=run_show)


def run_check(args: argparse.Namespace) -> int:
    from dms.config import load_config, state_dir
    from dms.vision.registry import resolve_model

    cfg = load_config(args.file)
    # the models must exist too: a typo in a model name is a config error
    resolve_model(cfg.vision.detector.model, "face_detector")
    resolve_model(cfg.vision.pose.model, "head_pose")
    print(f"{args.file}: ok (camera {cfg.camera.source!r}, detector {cfg.vision.detector.model}, "
          f"pose {cfg.vision.pose.model}, mqtt {'on' if cfg.mqtt.enabled else 'off'}, "
          f"buzzer {cfg.buzzer.backend}, state dir {state_dir(cfg)})")
    return 0


def run_show(args: argparse.Namespace) -> int:
    from dms.config import load_config
    from dms.settings import settings_to_dict

    print(json.dumps(settings_to_dict(load_config(args.file)), indent=2))
    return 0
