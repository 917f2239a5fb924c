"""``dms scenarios``: the synthetic driving stories of the engine.

    dms scenarios bench [--n 200] [--seed 0] [--json]   long-glance latency, false alerts
    dms scenarios mounts [--n 200] [--wrong-mount-deg 25] [--explicit] [--json]
                                                         the random-mount suite (default config)
    dms scenarios write NAME|SCENARIO|SCRIPT --out FILE.csv
                                                         a story as a poses CSV
    dms scenarios list                                   the named stories
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

from dms.errors import InputError


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("scenarios", help="synthetic driving stories: benchmark, CSVs",
                              description="Synthetic driving stories for the engine.")
    sub = p.add_subparsers(dest="scenarios_command", metavar="ACTION", required=True)
    b = sub.add_parser("bench", help="long-glance alert latency and short-glance false alerts")
    b.add_argument("--n", type=int, default=200, help="number of generated scenarios")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--json", action="store_true", help="print one JSON object")
    b.add_argument("--jitter", action="store_true",
                   help="also measure the jitter the filter removes (stationary noisy head)")
    m = sub.add_parser("mounts", help="random camera mounts: recall, latency, false alerts",
                       description="The default engine on drives seen from random camera "
                       "mounts (neutral yaw +-35, pitch +-20 deg), with noise, dropped frames, "
                       "outliers and flipped fits; see dms/sim/mount_suite.py.")
    m.add_argument("--n", type=int, default=200, help="number of generated scenarios")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--wrong-mount-deg", type=float, default=None, metavar="DEG",
                   help="give each drive a mount hint this far off its true neutral in yaw")
    m.add_argument("--explicit", action="store_true",
                   help="give the engine the true neutral (a perfect dms calibrate): the ceiling")
    m.add_argument("--json", action="store_true", help="print one JSON object")
    w = sub.add_parser("write", help="write a story as a poses CSV",
                       description="A named story, the script of a synth scenario (name or "
                       ".toml, see `dms synth list`) or a script in the scenario language "
                       "(docs/synth.md) through the engine's pose builder, as a poses CSV.")
    w.add_argument("name", help="story name (see `dms scenarios list`), a synth scenario name "
                   "or .toml, or a script such as 'road 5s; glance left-mirror 1.2s; road 3s'")
    w.add_argument("--out", type=Path, required=True, metavar="FILE.csv")
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--rate-hz", type=float, default=20.0)
    sub.add_parser("list", help="the named stories")
    for q in (b, m, w):
        q.add_argument("--settings", type=Path, action="append", default=[],
                       metavar="FILE.toml", help="TOML with an [engine] table (repeatable)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dms.sim import scenarios

    if args.scenarios_command == "list":
        for name in scenarios.library():
            print(name)
        return 0
    from dms.replay import load_settings_files

    settings = load_settings_files(args.settings)
    if args.scenarios_command == "write":
        return _write(args, settings)
    if args.n < 1:
        raise InputError(f"--n {args.n}: must be >= 1")
    if args.scenarios_command == "mounts":
        return _mounts(args, settings)
    with _progress_bar(args, "scenarios") as progress:
        result = scenarios.run_bench(args.n, args.seed, settings, progress).to_dict()
    result["seed"] = args.seed
    if args.jitter:
        result["jitter"] = jitter = scenarios.jitter_reduction(settings, seed=args.seed)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"scenarios: {result['scenarios']} (seed {args.seed})")
    print(f"long glances: {result['long_glances']}, alerted as slump (straight down): "
          f"{result['long_as_slump']}, missed: {result['missed_long_glances']}")
    print(f"long-distraction alert latency after glance start: median "
          f"{result['latency_median_s']:.3f} s, max {result['latency_max_s']:.3f} s, "
          f"min {result['latency_min_s']:.3f} s "
          f"(long_glance_s = {settings.policy.long_glance_s:g} s)")
    print(f"short glances (< 2 s): {result['short_glances']}, false alerts: "
          f"{result['false_alerts']} (rate {result['false_alert_rate']:.4f} per glance), "
          f"scenarios with a false alert: {result['scenarios_with_false_alert']}")
    if args.jitter:
        for rate, j in jitter.items():
            print(f"jitter at {rate}: raw {j['raw_std_deg']:.3f} deg -> filtered "
                  f"{j['filtered_std_deg']:.3f} deg (x{j['reduction']:.1f})")
    return 0


def _write(args: argparse.Namespace, settings: Any) -> int:
    """A library story, a synth scenario's script, or an inline script -> poses CSV."""
    from dms.sim import scenarios
    from dms.synth.script import list_scenarios, load_scenario

    lib = scenarios.library(settings, seed=args.seed, rate_hz=args.rate_hz)
    if args.name in lib:
        sc = lib[args.name]
    else:
        is_file = args.name.endswith(".toml") or args.name in list_scenarios()
        if not (is_file or ";" in args.name or " " in args.name):
            raise InputError(f"unknown scenario {args.name!r} (known: {', '.join(lib)}; "
                             f"synth scenarios: {', '.join(list_scenarios())}; or a script)")
        text, source = args.name, "scenario script"
        if is_file:
            text = load_scenario(args.name).script.text
            source = f"{args.name}: script"
        sc = scenarios.build_script(text, settings, source=source, seed=args.seed,
                                    rate_hz=args.rate_hz)
    try:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(scenarios.csv_text(sc.observations), encoding="utf-8")
    except OSError as exc:
        raise InputError(f"{args.out}: cannot write: {exc}") from None
    print(f"{args.out}: {len(sc.observations)} rows, {sc.duration_s:.1f} s", file=sys.stderr)
    return 0


def _mounts(args: argparse.Namespace, settings: Any) -> int:
    import logging

    from dms.sim.mount_suite import run_suite

    logging.getLogger("dms.engine").setLevel(logging.ERROR)  # one mismatch line per drive

    with _progress_bar(args, "drives") as progress:
        res = run_suite(args.n, args.seed, settings, hint_yaw_error_deg=args.wrong_mount_deg,
                        explicit=args.explicit, progress=progress)
    d = res.to_dict()
    d["seed"] = args.seed
    d["wrong_mount_deg"] = args.wrong_mount_deg
    d["explicit"] = args.explicit
    if args.json:
        print(json.dumps(d))
        return 0
    how = ("true neutral given explicitly" if args.explicit else
           f"mount hint {args.wrong_mount_deg:g} deg off in yaw" if args.wrong_mount_deg
           is not None else "default configuration, no mount")
    print(f"random-mount suite: {d['scenarios']} drives (seed {args.seed}), {how}")
    print(f"recall {d['recall']:.3f} (events from t = {60:g} s, in the story-test windows)")
    per_kind = cast(dict[str, dict[str, Any]], d["per_kind"])
    for kind, k in per_kind.items():
        print(f"  {kind:13s} {k['caught']:3d}/{k['expected']:<3d} latency median "
              f"{k['latency_median_s']} s, max {k['latency_max_s']} s")
    print(f"false distraction/drowsiness/slump alerts from t = 0: {d['false_alerts_total']} "
          f"{d['false_alerts'] or ''}")
    print(f"neutral settled after median {d['settled_median_s']} s (max {d['settled_max_s']} s,"
          f" never: {d['never_settled']}); final neutral error median "
          f"{d['neutral_error_median_deg']} deg, max {d['neutral_error_max_deg']} deg")
    for miss in cast(list[str], d["misses"]):
        print(f"  missed: {miss}")
    return 0


@contextlib.contextmanager
def _progress_bar(args: argparse.Namespace, unit: str) -> Iterator[Callable[[int, int], None]]:
    """A tqdm bar on stderr (nothing with --json, so the output stays one JSON object)."""
    from tqdm import tqdm

    bar = tqdm(total=args.n, desc=args.scenarios_command, unit=unit, file=sys.stderr,
               leave=False, disable=bool(args.json))

    def progress(done: int, _total: int) -> None:
        bar.update(done - bar.n)

    try:
        yield progress
    finally:
        bar.close()
