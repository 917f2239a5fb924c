#!/usr/bin/env python3
"""The preview's cost on the frame loop (issue 15): the real service loop (``Service.run``:
embedded models, engine, buzzer thread; MQTT off) at full speed on a rendered clip, with the
preview off, on with no viewer, and with one and two MJPEG viewers (real HTTP clients, each its
own process reading the stream as a browser does). Cases are interleaved over ``--rounds``, in a
rotated order, so that other load on the machine spreads over all of them; fps is frames
processed in a ``--window-s`` window after ``--warmup-s``; process CPU per frame and the
encoder thread's CPU time say what the preview costs whatever else runs on the machine.

    .venv/bin/python scripts/bench_preview.py [--rounds 3] [--window-s 20] [--size 640x480]

Prints one line per run and a table (median fps per case and its change from "off")."""

from __future__ import annotations

import argparse
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

SCRIPT = "road 8s; glance left-mirror 1s; road 6s; glance infotainment 3s; road 6s"
TOKEN = "bench-preview-token-0123456789"
CASES = ("off", "0 viewers", "1 viewer", "2 viewers")

CLIENT = r"""
import http.client, signal, sys, time
port, token = int(sys.argv[1]), sys.argv[2]
stop = False
def on_term(*_):
    global stop
    stop = True
signal.signal(signal.SIGTERM, on_term)
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
conn.request("GET", "/stream.mjpg", headers={"Authorization": "Bearer " + token})
r = conn.getresponse()
assert r.status == 200, r.status
n, t0, nbytes = 0, time.monotonic(), 0
while not stop:
    line = r.fp.readline()
    if not line:
        break
    if line.startswith(b"Content-Length:"):
        size = int(line.split(b":")[1])
        r.fp.readline()
        nbytes += len(r.fp.read(size))
        n += 1
dt = time.monotonic() - t0
print(f"{n} {dt:.2f} {nbytes}", flush=True)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def one_run(clip: Path, state: Path, case: str, warmup_s: float, window_s: float) -> dict:
    from dms.capture import FrameSource
    from dms.config import Config
    from dms.service import build_service

    port = free_port()
    cfg = Config()
    cfg = replace(cfg, camera=replace(cfg.camera, source=str(clip), realtime=False, loop=True),
                  mqtt=replace(cfg.mqtt, enabled=False),
                  service=replace(cfg.service, state_dir=str(state)),
                  preview=replace(cfg.preview, enabled=case != "off", port=port))
    svc = build_service(cfg, environ={"DMS_PREVIEW_TOKEN": TOKEN}, preview_required=True)
    runner = threading.Thread(target=svc.run, kwargs={"source": FrameSource(cfg.camera)},
                              daemon=True)
    runner.start()
    deadline = time.monotonic() + 120
    while svc.frames == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    viewers = int(case[0]) if case[0].isdigit() else 0
    clients = [subprocess.Popen([sys.executable, "-c", CLIENT, str(port), TOKEN],
                                stdout=subprocess.PIPE, text=True) for _ in range(viewers)]
    time.sleep(warmup_s)
    hub = svc.preview.hub if svc.preview is not None else None
    f0, t0, cpu0 = svc.frames, time.monotonic(), time.process_time()
    enc0 = hub.encode_cpu_s if hub else 0.0
    time.sleep(window_s)
    f1, t1, cpu1 = svc.frames, time.monotonic(), time.process_time()
    enc1 = hub.encode_cpu_s if hub else 0.0
    children0 = os.times().children_user + os.times().children_system
    stream_fps = []
    for c in clients:
        c.send_signal(signal.SIGTERM)
        out, _ = c.communicate(timeout=30)
        n, dt, _nbytes = out.split()
        stream_fps.append(int(n) / float(dt))
    clients_cpu = os.times().children_user + os.times().children_system - children0
    svc.stop.set()
    runner.join(30)
    return {"case": case, "fps": (f1 - f0) / (t1 - t0), "stream_fps": stream_fps,
            "cpu_ms_per_frame": 1000 * (cpu1 - cpu0) / max(1, f1 - f0),
            "encoder_cpu_per_s": (enc1 - enc0) / (t1 - t0),
            "clients_cpu_s": clients_cpu}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup-s", type=float, default=3.0)
    ap.add_argument("--window-s", type=float, default=20.0)
    ap.add_argument("--size", default="640x480", help="clip size (the camera's frame size)")
    ap.add_argument("--fps", type=float, default=30.0, help="clip frame rate")
    ap.add_argument("--work", default="out/bench_preview", help="clip and state folder")
    args = ap.parse_args()

    import logging

    logging.basicConfig(level=logging.WARNING)
    from dms.synth.render import render_scenario

    work = Path(args.work)
    clip = Path(render_scenario(SCRIPT, work / "clip", fps=args.fps, size=args.size).video)
    print(f"# {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}, {time.strftime('%Y-%m-%d %H:%M %Z')}")
    print(f"# clip {clip} ({args.size} @ {args.fps:g} fps, looped, full speed), "
          f"{args.rounds} rounds x {len(CASES)} cases, {args.window_s:g} s windows")
    results: dict[str, list[float]] = {c: [] for c in CASES}
    streams: dict[str, list[float]] = {c: [] for c in CASES}
    cpu: dict[str, list[float]] = {c: [] for c in CASES}
    enc: dict[str, list[float]] = {c: [] for c in CASES}
    for r in range(args.rounds):
        for case in CASES[r % len(CASES):] + CASES[:r % len(CASES)]:  # no fixed order
            res = one_run(clip, work / "state", case, args.warmup_s, args.window_s)
            results[case].append(res["fps"])
            streams[case].extend(res["stream_fps"])
            cpu[case].append(res["cpu_ms_per_frame"])
            enc[case].append(res["encoder_cpu_per_s"])
            print(f"round {r + 1} {case:>9}: {res['fps']:6.1f} fps, process CPU "
                  f"{res['cpu_ms_per_frame']:.1f} ms/frame, encoder {res['encoder_cpu_per_s']:.3f}"
                  f" CPU-s/s, clients {res['clients_cpu_s']:.2f} CPU-s (whole run); stream fps"
                  f" per viewer {[round(x, 1) for x in res['stream_fps']]}", flush=True)
    base = statistics.median(results["off"])
    print("\n| preview | frame loop fps (median) | runs | change vs off | process CPU ms/frame "
          "(median) | encoder CPU-s per s | stream fps/viewer |")
    print("|---|---|---|---|---|---|---|")
    for case in CASES:
        med = statistics.median(results[case])
        runs = ", ".join(f"{x:.1f}" for x in results[case])
        sfps = f"{statistics.median(streams[case]):.1f}" if streams[case] else "-"
        print(f"| {case} | {med:.1f} | {runs} | {100 * (med / base - 1):+.1f} % | "
              f"{statistics.median(cpu[case]):.1f} | {statistics.median(enc[case]):.3f} | "
              f"{sfps} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
