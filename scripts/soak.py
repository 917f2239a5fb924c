"""Soak and fault run of ``dms run`` (a benchmark script, not a unit test).

Runs the real service in a subprocess on a looped, deliberately damaged copy of the rendered
``demo`` drive (faster than real time) against a real mosquitto, with a subscriber recording
every message and its arrival time, and injects faults on a schedule (by video time):

* damaged frames, in every loop: a 2 s run of black frames, 0.6 s of random noise, 0.5 s of
  frames with garbage blocks, and one frame whose compressed data is overwritten with random
  bytes (the decoder rejects it: ``cap.read()`` fails in the middle of the file);
* the video source ending and reopening (``camera.loop``): once per 72 s of video;
* the broker stopped and restarted (three outages, one of them while the state directory is
  read-only);
* the state directory made read-only (``chattr +i`` on it and every file in it: as root,
  permission bits do not stop writes, and a read-only remount is refused while the outbox
  holds the file open for writing);
* at the end: the broker stopped, the service stopped (SIGTERM) with alerts still queued, the
  broker started again and the service started once more to deliver them (a process restart).

Samples the service's resident memory (/proc/PID/status) and its progress (telemetry ``t_s``)
every ``--sample-s`` seconds. Writes ``summary.json`` and ``samples.csv`` to ``--out`` and a
Markdown section to ``--md``.

    python scripts/soak.py --video-min 32 --out out/soak --md docs/_bench_soak.md
    python scripts/soak.py --video-min 2 --out out/soak-smoke        # harness check
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from statistics import mean, median
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from broker import Broker  # noqa: E402  (the tests' mosquitto helper)

DEVICE = "soak"

# damaged stretches of every loop, in seconds of the demo drive (all during "road" driving)
BLACK_S = (1.0, 3.0)
NOISE_S = (11.0, 11.6)
BLOCKS_S = (12.6, 13.1)
GARBAGE_FRAC = 0.25  # one frame around this fraction of the file gets random bytes


# -- the damaged clip ---------------------------------------------------------------------------


def build_clip(out: Path) -> tuple[Path, dict[str, Any]]:
    from dms.synth.render import render_scenario

    demo = render_scenario("demo")
    cap = cv2.VideoCapture(str(demo.video))
    fps = cap.get(cv2.CAP_PROP_FPS)
    frames = []
    while True:
        ok, img = cap.read()
        if not ok:
            break
        frames.append(img)
    cap.release()
    rng = np.random.default_rng(1)
    h, w = frames[0].shape[:2]
    clean = out / "soak.clean.mp4"
    writer = cv2.VideoWriter(str(clean), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for i, img in enumerate(frames):
        t = i / fps
        if BLACK_S[0] <= t < BLACK_S[1]:
            img = np.zeros_like(img)
        elif NOISE_S[0] <= t < NOISE_S[1]:
            img = rng.integers(0, 256, img.shape, dtype=np.uint8)
        elif BLOCKS_S[0] <= t < BLOCKS_S[1]:
            img = img.copy()
            for _ in range(12):
                y, x = int(rng.integers(0, h - 64)), int(rng.integers(0, w - 64))
                img[y:y + 64, x:x + 64] = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
            img[::7] = img[::7][:, ::-1]  # scrambled rows
        writer.write(img)
    writer.release()
    data = bytearray(clean.read_bytes())
    vops = [i for i in range(len(data) - 4) if data[i:i + 4] == b"\x00\x00\x01\xb6"]
    at = vops[int(len(vops) * GARBAGE_FRAC)]
    data[at:at + 3000] = rng.integers(0, 256, 3000, dtype=np.uint8).tobytes()
    clip = out / "soak.mp4"
    clip.write_bytes(bytes(data))
    cap, plain = cv2.VideoCapture(str(clip)), 0
    while cap.read()[0]:
        plain += 1
    cap.release()
    expected = json.loads(Path(demo.expected_events).read_text())["events"]
    info = {"frames": len(frames), "fps": fps, "duration_s": len(frames) / fps,
            "garbage_frame": int(len(vops) * GARBAGE_FRAC),
            "plain_read_stops_at_frame": plain, "expected_per_loop": expected,
            "source_clip": str(demo.video)}
    return clip, info


# -- observing ----------------------------------------------------------------------------------


@dataclass
class Subscriber:
    """Every message on dms/<device>/# with its arrival wall time (persistent session)."""

    port: int
    messages: list[tuple[float, str, bytes]] = field(default_factory=list)

    def start(self) -> Subscriber:
        import paho.mqtt.client as mqtt

        self.lock = threading.Lock()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="soak-subscriber",
                        protocol=mqtt.MQTTv311, clean_session=False)
        c.reconnect_delay_set(1, 1)
        c.on_connect = lambda cl, *_: cl.subscribe(f"dms/{DEVICE}/#", qos=1)
        c.on_message = self._on_message
        c.connect("127.0.0.1", self.port)
        c.loop_start()
        self.client = c
        return self

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        with self.lock:
            self.messages.append((time.time(), msg.topic, bytes(msg.payload)))

    def snapshot(self) -> list[tuple[float, str, bytes]]:
        with self.lock:
            return list(self.messages)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Service:
    """One ``dms run`` process; stdout (--print-events) lines recorded with wall times."""

    def __init__(self, cfg: Path, clip: Path, port: int, log: Path,
                 max_frames: int | None = None) -> None:
        cmd = [sys.executable, "-m", "dms", "run", "--config", str(cfg), "--source", str(clip),
               "--mqtt", f"127.0.0.1:{port}", "--print-events"]
        if max_frames:
            cmd += ["--max-frames", str(max_frames)]
        self.cmd = cmd
        self.log = log.open("ab")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, cwd=ROOT)
        self.printed: list[tuple[float, dict[str, Any]]] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.printed.append((time.time(), json.loads(line)))

    def rss_kb(self) -> int | None:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            return None
        return None

    def cpu_s(self) -> float | None:
        try:
            parts = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError):
            return None

    def stop(self, timeout_s: float = 60) -> int:
        self.proc.terminate()
        rc = self.proc.wait(timeout_s)
        self.thread.join(10)
        self.log.close()
        return rc


def chattr(flag: str, state: Path) -> None:
    paths = [state, *sorted(state.iterdir())]
    subprocess.run(["chattr", flag, *map(str, paths)], check=True)


# -- the run ------------------------------------------------------------------------------------


def telemetry_t(msgs: list[tuple[float, str, bytes]]) -> list[tuple[float, float]]:
    out = []
    for wall, topic, payload in msgs:
        if topic.endswith("/telemetry"):
            out.append((wall, float(json.loads(payload)["t_s"])))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--video-min", type=float, default=32.0, help="video time to cover")
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "soak")
    ap.add_argument("--md", type=Path, help="write the Markdown section here")
    ap.add_argument("--sample-s", type=float, default=3.0)
    ap.add_argument("--outage-s", default="30,45,20", help="broker outages (wall seconds)")
    ap.add_argument("--readonly-s", default="30,40", help="read-only periods (wall seconds)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="dms-soak-"))
    state = work / "state"
    clip, clip_info = build_clip(work)
    loop_s = clip_info["duration_s"]
    target_s = args.video_min * 60
    outages = [float(x) for x in args.outage_s.split(",")]
    readonly = [float(x) for x in args.readonly_s.split(",")]
    # schedule, by video time: outages at 15/45/75 %, read-only at 30 % and inside outage 2
    plan: list[tuple[float, str, float]] = [
        (0.15 * target_s, "broker", outages[0]),
        (0.30 * target_s, "readonly", readonly[0]),
        (0.45 * target_s, "broker+readonly", outages[1]),
        (0.75 * target_s, "broker", outages[2]),
    ]
    cfg = work / "dms.toml"
    cfg.write_text(
        f'[camera]\nrealtime = false\nloop = true\n'
        f'[service]\nstate_dir = "{state}"\nstate_interval_s = 1.0\nstop_drain_timeout_s = 5\n'
        f'[mqtt]\ndevice_id = "{DEVICE}"\ntelemetry_interval_s = 0.1\n')
    log_path = args.out / "service.log"
    log_path.unlink(missing_ok=True)
    broker = Broker(work / "broker").start()
    sub = Subscriber(broker.port).start()
    wall0 = time.time()
    svc = Service(cfg, clip, broker.port, log_path)
    services = [svc]
    samples: list[dict[str, Any]] = []
    faults: list[dict[str, Any]] = []
    pending = list(plan)
    active: list[dict[str, Any]] = []
    video_t = 0.0

    def sample() -> None:
        nonlocal video_t
        tel = telemetry_t(sub.snapshot()[-400:])
        if tel:
            video_t = max(video_t, max(t for _, t in tel))
        samples.append({"wall_s": round(time.time() - wall0, 2), "video_s": round(video_t, 2),
                        "rss_kb": svc.rss_kb(), "cpu_s": svc.cpu_s(),
                        "printed": len(svc.printed)})

    try:
        next_sample = time.monotonic()
        while True:
            if svc.proc.poll() is not None:
                raise RuntimeError(f"dms run exited with {svc.proc.returncode}; see {log_path}")
            now = time.monotonic()
            if now >= next_sample:
                sample()
                next_sample = now + args.sample_s
                s = samples[-1]
                print(f"[{s['wall_s']:7.1f} s] video {s['video_s'] / 60:6.2f} min  "
                      f"rss {s['rss_kb']} kB  alerts printed {s['printed']}", flush=True)
            for f in list(active):
                if time.time() >= f["end_wall"]:
                    if "readonly" in f["kind"] and not f.get("rw_wall"):
                        chattr("-i", state)
                        f["rw_wall"] = time.time()
                    if "broker" in f["kind"] and not f.get("back_wall"):
                        broker.start()
                        f["back_wall"] = time.time()
                    f["video_end_s"] = video_t
                    active.remove(f)
            if pending and video_t >= pending[0][0] and not active:
                at, kind, dur = pending.pop(0)
                f = {"kind": kind, "video_start_s": round(video_t, 1), "duration_s": dur,
                     "start_wall": time.time(), "end_wall": time.time() + dur}
                if "broker" in kind:
                    broker.stop()
                    f["down_wall"] = time.time()
                if "readonly" in kind:
                    if "broker" in kind:
                        time.sleep(5)  # alerts already queued while the broker was away
                    chattr("+i", state)
                    f["ro_wall"] = time.time()
                faults.append(f)
                active.append(f)
            if video_t >= target_s and not active and not pending:
                break
            time.sleep(0.2)
        # the restart: broker away, alerts queued, service stopped, broker and service back
        broker.stop()
        restart = {"kind": "broker+process restart", "down_wall": time.time(),
                   "video_start_s": round(video_t, 1)}
        time.sleep(15)
        sample()
        restart["stop_wall"] = time.time()
        restart["rc"] = svc.stop()
        broker.start()
        restart["back_wall"] = time.time()
        second = Service(cfg, clip, broker.port, log_path, max_frames=60)
        services.append(second)
        restart["second_rc"] = second.proc.wait(120)
        second.thread.join(10)
        faults.append(restart)
        time.sleep(3)
    finally:
        for s in services:
            if s.proc.poll() is None:
                s.proc.kill()
        with contextlib.suppress(Exception):
            chattr("-i", state)
    wall_total = time.time() - wall0
    msgs = sub.snapshot()
    sub.close()
    broker.stop()
    summary = analyse(args, clip_info, services, msgs, samples, faults, log_path, wall_total,
                      loop_s, wall0)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    with (args.out / "messages.jsonl").open("w") as fh:  # everything the subscriber got
        for w, t, p in msgs:
            fh.write(json.dumps({"wall_s": round(w, 3), "topic": t,
                                 "payload": p.decode(errors="replace")}) + "\n")
    with (args.out / "samples.csv").open("w") as fh:
        fh.write("wall_s,video_s,rss_kb,cpu_s,printed\n")
        for s in samples:
            fh.write(f"{s['wall_s']},{s['video_s']},{s['rss_kb']},{s['cpu_s']},{s['printed']}\n")
    if args.md:
        args.md.write_text(markdown(summary, " ".join([sys.executable.rsplit("/", 1)[-1],
                                                       *sys.argv])))
    print(json.dumps(summary, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return 0 if summary["alerts"]["lost"] == 0 and summary["service_exit_codes"] == [0, 0] else 1


def log_times(log_path: Path, needle: str) -> list[float]:
    out = []
    for line in log_path.read_text(errors="replace").splitlines():
        if needle in line:
            with contextlib.suppress(ValueError):
                stamp, ms = line[:23].split(",")
                out.append(time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(ms) / 1e3)
    return out


def analyse(args: argparse.Namespace, clip_info: dict[str, Any], services: list[Service],
            msgs: list[tuple[float, str, bytes]], samples: list[dict[str, Any]],
            faults: list[dict[str, Any]], log_path: Path, wall_total: float,
            loop_s: float, wall0: float) -> dict[str, Any]:
    fps = clip_info["fps"]
    printed = [(w, e) for s in services for w, e in s.printed]
    alerts = [(w, json.loads(p)) for w, t, p in msgs if t.endswith("/alert")]
    got_ids: dict[str, list[float]] = {}
    for w, a in alerts:
        got_ids.setdefault(a["event"]["event_id"], []).append(w)
    seqs = [a["seq"] for _, a in alerts]
    lost = [e["event_id"] for _, e in printed if e["event_id"] not in got_ids]
    latency = [min(got_ids[e["event_id"]]) - w for w, e in printed if e["event_id"] in got_ids]
    spans = [(f.get("down_wall", f.get("ro_wall", 0)), f.get("back_wall", f.get("rw_wall", 0))
              + 35) for f in faults]  # fault plus the reconnect back-off after it
    calm = [min(got_ids[e["event_id"]]) - w for w, e in printed if e["event_id"] in got_ids
            and not any(a <= w <= b for a, b in spans)]
    # scripted alerts found in each complete loop (tolerance of the scenario)
    raised = [e for _, e in printed if e["phase"] == "raised"]
    video_end = max((s["video_s"] for s in samples), default=0.0)
    loops = int(video_end // loop_s)
    found = 0
    for k in range(loops):
        for exp in clip_info["expected_per_loop"]:
            t = k * loop_s + exp["t_s"]
            found += any(e["type"] == exp["type"] and abs(e["t_s"] - t) <= exp["tolerance_s"]
                         for e in raised)
    per_loop = [sum(1 for e in raised if k * loop_s <= e["t_s"] < (k + 1) * loop_s)
                for k in range(loops)]
    # memory: median of the first five samples after warm-up (10 % of the run) vs the last five
    rss = [(s["wall_s"], s["rss_kb"]) for s in samples if s["rss_kb"]]
    warm = [r for w, r in rss if w >= 0.10 * rss[-1][0]]
    rss_warm, rss_end = median(warm[:5]), median(warm[-5:])
    # speed over time: from the telemetry payloads (service wall clock, video t_s), which
    # include those queued during outages; frames per wall second over 10 s windows
    pts = sorted((json.loads(p)["wall_s"], json.loads(p)["t_s"]) for _, t, p in msgs
                 if t.endswith("/telemetry"))
    speed, i = [], 0
    for j in range(len(pts)):
        if pts[j][0] - pts[i][0] >= 10.0:
            dt_video = pts[j][1] - pts[i][1]
            if 0 < dt_video < 120:  # not across a gap (telemetry refused when the box is full)
                speed.append(dt_video * fps / (pts[j][0] - pts[i][0]))
            i = j
    # recovery per fault
    tel = telemetry_t(msgs)
    status = [(w, p.decode()) for w, t, p in msgs if t.endswith("/status")]
    writable = log_times(log_path, "takes writes again")
    for f in faults:
        back = f.get("back_wall")
        if back:
            online = [w for w, p in status if p == "online" and w >= back]
            f["reconnect_s"] = round(online[0] - back, 2) if online else None
            queued = [e["event_id"] for w, e in printed if f["down_wall"] <= w <= back]
            arrived = [min(got_ids[i]) for i in queued if i in got_ids]
            f["alerts_queued"] = len(queued)
            f["queued_delivered"] = len(arrived)
            f["backlog_delivered_s"] = round(max(arrived) - back, 2) if arrived else None
        if f.get("rw_wall"):
            during = [e["event_id"] for w, e in printed if f["ro_wall"] <= w <= f["rw_wall"]]
            f["alerts_while_read_only"] = len(during)
            f["delivered_of_those"] = sum(1 for i in during if i in got_ids)
            after = [w for w in writable if w >= f["rw_wall"] - 1]
            f["outbox_writes_again_s"] = round(after[0] - f["rw_wall"], 2) if after else None
        for key in ("start_wall", "end_wall", "down_wall", "back_wall", "ro_wall", "rw_wall",
                    "stop_wall"):
            if key in f:
                f[key] = round(f[key] - wall0, 2)  # seconds from the start of the run
    # damaged frames: video seconds from the end of each damaged stretch to the next pose
    recov: dict[str, list[float]] = {"black": [], "noise": [], "blocks": []}
    times = sorted(t for _, t in tel)
    for k in range(loops):
        for name, (_, end) in (("black", BLACK_S), ("noise", NOISE_S), ("blocks", BLOCKS_S)):
            t_end = k * loop_s + end
            nxt = [t for t in times if t >= t_end - 0.01]
            if nxt and nxt[0] - t_end < 5:
                recov[name].append(nxt[0] - t_end)
    log_text = log_path.read_text(errors="replace")
    err_lines = [ln for ln in log_text.splitlines() if " ERROR " in ln or "Traceback" in ln]
    expected_err = [ln for ln in err_lines if "the disk refuses writes" in ln]
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores shared with other work "
                   "(a model training); FPS is lower than on a quiet machine",
        "video_min": round(video_end / 60, 2),
        "wall_min": round(wall_total / 60, 2),
        "frames": int(video_end * fps),
        "loops_reopened": loops,
        "fps_mean": round(mean(speed), 1) if speed else None,
        "fps_min": round(min(speed), 1) if speed else None,
        "rss_kb_after_warmup": rss_warm,
        "rss_kb_end": rss_end,
        "rss_kb_max": max(r for _, r in rss),
        "rss_growth_pct": round(100 * (rss_end - rss_warm) / rss_warm, 2),
        "alerts": {
            "scripted_expected": loops * len(clip_info["expected_per_loop"]),
            "scripted_found": found,
            "raised_per_loop": per_loop,
            "printed": len(printed),
            "delivered_unique": len(set(got_ids) & {e["event_id"] for _, e in printed}),
            "lost": len(lost),
            "lost_ids": lost[:20],
            "duplicates": len(alerts) - len(got_ids),
            "seq_gaps": sorted(set(range(1, max(seqs) + 1)) - set(seqs)) if seqs else [],
            "latency_s_median": round(median(latency), 3) if latency else None,
            "latency_s_p95": round(sorted(latency)[int(0.95 * (len(latency) - 1))], 3)
            if latency else None,
            "latency_s_max": round(max(latency), 2) if latency else None,
            "latency_s_median_no_fault": round(median(calm), 3) if calm else None,
            "latency_s_max_no_fault": round(max(calm), 3) if calm else None,
        },
        "damaged_frames": {
            "per_loop": {"black_s": BLACK_S, "noise_s": NOISE_S, "blocks_s": BLOCKS_S,
                         "undecodable_frame": clip_info["garbage_frame"]},
            "plain_read_stops_at_frame": clip_info["plain_read_stops_at_frame"],
            "clip_frames": clip_info["frames"],
            "pose_back_after_s": {k: {"median": round(median(v), 2), "max": round(max(v), 2),
                                      "n": len(v)} for k, v in recov.items() if v},
            "skipped_frame_warnings": log_text.count("undecodable frame(s) skipped"),
        },
        "faults": faults,
        "service_exit_codes": [s.proc.returncode for s in services],
        "log_errors": len(err_lines),
        "log_errors_read_only_outbox": len(expected_err),
        "log_error_other_samples": [ln for ln in err_lines if ln not in expected_err][:8],
    }


def markdown(s: dict[str, Any], command: str) -> str:
    a = s["alerts"]
    lines = [
        "## Soak and fault run (`scripts/soak.py`)",
        "",
        f"2026-11-21, {s['machine']}. Command: `{command}`.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| video time covered | {s['video_min']} min ({s['frames']} frames, "
        f"{s['loops_reopened']} loops: the source ended and reopened each time) |",
        f"| wall time | {s['wall_min']} min |",
        f"| FPS (10 s windows, from telemetry) | mean {s['fps_mean']}, min {s['fps_min']} |",
        f"| RSS after warm-up -> end (max) | {s['rss_kb_after_warmup'] / 1024:.1f} MiB -> "
        f"{s['rss_kb_end'] / 1024:.1f} MiB ({s['rss_kb_max'] / 1024:.1f}); growth "
        f"{s['rss_growth_pct']} % |",
        f"| scripted alerts found / expected | {a['scripted_found']} / "
        f"{a['scripted_expected']} |",
        f"| alerts printed / delivered / lost / duplicates | {a['printed']} / "
        f"{a['delivered_unique']} / {a['lost']} / {a['duplicates']} (seq gaps: "
        f"{len(a['seq_gaps'])}) |",
        f"| alert latency queued -> subscriber | median {a['latency_s_median']} s, p95 "
        f"{a['latency_s_p95']} s, max {a['latency_s_max']} s (outages included); away from "
        f"faults median {a['latency_s_median_no_fault']} s, max {a['latency_s_max_no_fault']} s |",
        f"| service exit codes | {s['service_exit_codes']} |",
        f"| ERROR lines in the service log | {s['log_errors']} "
        f"({s['log_errors_read_only_outbox']} the outbox reporting the read-only disk) |",
        "",
        "| fault | at video min | length | recovery |",
        "|---|---|---|---|",
    ]
    for f in s["faults"]:
        rec = []
        if "reconnect_s" in f:
            rec.append(f"reconnected {f['reconnect_s']} s after the broker was back; "
                       f"{f['queued_delivered']}/{f['alerts_queued']} alerts queued meanwhile "
                       f"delivered, last {f['backlog_delivered_s']} s after")
        if "outbox_writes_again_s" in f:
            rec.append(f"{f['delivered_of_those']}/{f['alerts_while_read_only']} alerts "
                       f"raised while read-only delivered; outbox writing again "
                       f"{f['outbox_writes_again_s']} s after the directory was writable")
        lines.append(f"| {f['kind']} | {f['video_start_s'] / 60:.1f} | "
                     f"{f.get('duration_s', '-')} s | {'; '.join(rec)} |")
    d = s["damaged_frames"]
    back = ", ".join(f"{k} {v['median']} s (max {v['max']})"
                     for k, v in d["pose_back_after_s"].items())
    lines += ["", f"Damaged frames in every loop (black {d['per_loop']['black_s']} s, noise "
              f"{d['per_loop']['noise_s']} s, garbage blocks {d['per_loop']['blocks_s']} s, "
              f"frame {d['per_loop']['undecodable_frame']} undecodable): pose back after "
              f"(video time, median over loops) {back}; a plain `cap.read()` loop stops at "
              f"frame {d['plain_read_stops_at_frame']} of {d['clip_frames']}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
