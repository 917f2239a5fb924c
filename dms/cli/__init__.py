"""The ``dms`` command line. Each subcommand lives in its own module in this package and
exposes ``register(subparsers)``; modules are discovered, so adding a command touches no
shared file. Commands hold no logic of their own: they parse, call the library, print.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys

from dms import __version__
from dms.errors import DmsError

log = logging.getLogger("dms")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dms", description="Open driver-monitoring software.")
    parser.add_argument("--version", action="version", version=f"dms {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(sub)
    return parser


def setup_logging(verbosity: int) -> None:
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv: list[str] | None = None) -> int:
    # OpenCV's own warnings (e.g. a camera that cannot open) would precede our one-line
    # error; they are shown with -vv. Must be set before cv2 is first imported.
    if not any(a.startswith("-vv") for a in (argv if argv is not None else sys.argv[1:])):
        os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except DmsError as exc:
        print(f"dms {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"dms {args.command}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
