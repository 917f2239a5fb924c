"""``dms models list | pull NAME | verify``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list, download and verify models")
    msub = p.add_subparsers(dest="models_command", metavar="ACTION", required=True)
    ls = msub.add_parser("list", help="models in the manifest and whether they are here")
    ls.add_argument("--json", action="store_true", help="one JSON object per model")
    ls.set_defaults(func=run_list)
    pl = msub.add_parser("pull", help="download a model and check its sha256")
    pl.add_argument("name")
    pl.add_argument("--dest", type=Path, help="directory (default: the user model directory)")
    pl.add_argument("--timeout-s", type=float, default=60.0)
    pl.set_defaults(func=run_pull)
    vf = msub.add_parser("verify", help="check the sha256 of every model on this machine")
    vf.set_defaults(func=run_verify)


def run_list(args: argparse.Namespace) -> int:
    from dms.vision.registry import entry_path, load_manifest

    for e in load_manifest():
        p = entry_path(e)
        if args.json:
            row = {"name": e.name, "task": e.task, "embedded": e.embedded, "licence": e.licence,
                   "present": p is not None, "path": str(p) if p else None, "url": e.url}
            print(json.dumps(row))
        else:
            where = str(p) if p else "not downloaded"
            tag = "embedded" if e.embedded else "download"
            print(f"{e.name:24s} {e.task:15s} {tag:8s} {e.licence:22s} {where}")
    return 0


def run_pull(args: argparse.Namespace) -> int:
    from dms.vision.registry import find_entry, pull

    target = pull(find_entry(args.name), args.dest, timeout_s=args.timeout_s)
    print(f"{args.name}: installed {target}")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from dms.vision.registry import verify

    bad = 0
    for r in verify():
        print(f"{r.name:24s} {r.status:9s} {r.path or ''} {r.detail}".rstrip())
        bad += r.status == "mismatch"
    return 1 if bad else 0
