"""``dms alarm``: sound the buzzer on its own, without the service: what systemd runs when
``dms.service`` has failed for good (``OnFailure=dms-failed.service``, after its restart
limit), so the driver is told that monitoring is off.

    dms alarm --config /etc/dms/dms.toml [--level 3] [--seconds 30]

Plays the configured beep pattern of ``--level`` (repeated) for ``--seconds`` on the
configured ``[buzzer]`` backend, then switches the line off. With no buzzer fitted
(``backend = "none"``) it says so and exits 0.
"""

from __future__ import annotations

import argparse
import logging
import time

log = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("alarm", help="sound the buzzer without the service (monitoring is "
                                     "off: what systemd runs when dms.service has failed)")
    p.add_argument("--config", help="configuration file (TOML): its [buzzer]")
    p.add_argument("--level", default="3", help="beep pattern to play (default 3)")
    p.add_argument("--seconds", type=float, default=30.0,
                   help="how long to sound, in [1, 600] (default 30)")
    p.add_argument("--reason", default="dms is not running",
                   help="logged (the journal says why the buzzer sounds)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dms.config import load_config
    from dms.errors import InputError
    from dms.outputs.buzzer import BuzzerThread, open_buzzer
    from dms.settings import check_range

    try:
        check_range("--seconds", args.seconds, 1.0, 600.0)
    except ValueError as exc:
        raise InputError(str(exc)) from None
    cfg = load_config(args.config)
    buzzer = open_buzzer(cfg.buzzer)
    if not buzzer.has_line:
        log.warning("alarm (%s): no buzzer fitted ([buzzer] backend = \"none\")", args.reason)
        print(f"dms alarm: no buzzer fitted ([buzzer] backend = \"none\"): {args.reason}")
        return 0
    print(f"dms alarm: sounding level {args.level} for {args.seconds:g} s: {args.reason}",
          flush=True)
    thread = BuzzerThread(buzzer).start()
    end = time.monotonic() + args.seconds
    try:
        while (left := end - time.monotonic()) > 0:
            buzzer.alert(args.level)
            time.sleep(min(left, buzzer.pattern_s(args.level) or 1.0))
            buzzer.silence()
    finally:
        thread.stop()
        buzzer.close()
    return 0
