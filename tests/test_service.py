"""``dms run`` as systemd runs it: a real process, a real broker, real video files, a real
NOTIFY_SOCKET, and the command-hook buzzer (the only fake would be a GPIO chip)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from dms.capture import Frame, FrameSource, SourceStatus
from dms.config import CameraSettings
from dms.engine.settings import EngineSettings

from broker import Collector, free_port, start_broker

FPS = 20


@pytest.fixture(scope="module")
def face_then_blank(tmp_path_factory) -> tuple[Path, float]:
    """A video: the astronaut's face for 3 s, then 4 s of an empty cabin."""
    from dms.benchclip import render_clip

    d = tmp_path_factory.mktemp("video")
    face = render_clip(d / "face.mp4", seconds=3.0)
    cap = cv2.VideoCapture(str(face))
    out = d / "face_then_blank.mp4"
    w = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (640, 480))
    n = 0
    while True:
        ok, img = cap.read()
        if not ok or n >= 3 * FPS:
            break
        w.write(img)
        n += 1
    blank = np.full((480, 640, 3), 35, np.uint8)
    for _ in range(4 * FPS):
        w.write(blank)
    w.release()
    return out, n / FPS


def write_config(path: Path, state: Path, **sections: str) -> Path:
    # the clip's face looks straight into the camera: make that the neutral pose
    text = (
        f'[service]\nstate_dir = "{state}"\nstate_interval_s = 0.5\nstop_drain_timeout_s = 5\n'
        "[engine.mount]\nneutral_pitch_deg = 0.0\nneutral_yaw_deg = 0.0\n"
    )
    for name, body in sections.items():
        text += f"[{name}]\n{body}\n"
    path.write_text(text)
    return path


def dms_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "dms", *args]


def test_alert_from_a_video_reaches_a_subscriber_and_status_goes_offline(tmp_path,
                                                                      face_then_blank):
    video, face_s = face_then_blank
    with start_broker(tmp_path / "broker") as b:
        sub = Collector(b.port, "dms/#")
        cfg = write_config(tmp_path / "dms.toml", tmp_path / "state",
                           camera="realtime = false", mqtt='device_id = "cab"')
        p = subprocess.run(dms_cmd("run", "--config", str(cfg), "--source", str(video),
                                   "--mqtt", f"127.0.0.1:{b.port}", "--print-events"),
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        printed = [json.loads(line) for line in p.stdout.splitlines()]
        assert sub.wait_for(lambda m: any(t.endswith("/status") and v == b"offline"
                                          for t, v in m), 10)
        alerts = [a["event"] for a in sub.payloads("/alert")]
        sub.close()
    assert alerts == printed  # what the service printed is exactly what the broker got
    raised = [a for a in alerts if a["type"] == "driver_not_visible" and a["phase"] == "raised"]
    assert raised, alerts
    # the face vanishes at face_s; the alert is due not_visible_s later (one frame of slack)
    due = face_s + EngineSettings().policy.not_visible_s
    assert raised[0]["t_s"] == pytest.approx(due, abs=2.0 / FPS)
    assert raised[0]["started_t_s"] == pytest.approx(face_s, abs=2.0 / FPS)
    assert sub.payloads("/status")[0] == "online"


def test_sigterm_stops_cleanly_with_buzzer_off_and_sigkill_leaves_the_will(tmp_path,
                                                                          face_then_blank):
    video, _ = face_then_blank
    line = tmp_path / "buzzer.txt"
    hook = f"import sys; open({str(line)!r}, 'a').write(sys.argv[1] + chr(10))"
    buzzer = (f'backend = "command"\ncommand_on = ["{sys.executable}", "-c", "{hook}", "on"]\n'
              f'command_off = ["{sys.executable}", "-c", "{hook}", "off"]')
    with start_broker(tmp_path / "broker") as b:
        for sig, final in ((signal.SIGTERM, "clean"), (signal.SIGKILL, "will")):
            topic = f"dms/{final}/status"
            sub = Collector(b.port, "dms/+/status")
            # system_degraded (level 2, audible) 1.5 s after the face leaves at 3 s
            cfg = write_config(tmp_path / f"{final}.toml", tmp_path / "state",
                               camera="loop = true", buzzer=buzzer,
                               mqtt=f'device_id = "{final}"\nkeepalive_s = 5',
                               **{"engine.policy": "degraded_s = 1.5"})
            proc = subprocess.Popen(dms_cmd("run", "--config", str(cfg), "--source", str(video),
                                            "--mqtt", f"127.0.0.1:{b.port}"),
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            alerts = Collector(b.port, f"dms/{final}/alert")
            try:
                assert sub.wait_for(lambda m, t=topic: (t, b"online") in m, 30)
                # the level-2 alert is out: the buzzer is beeping its pattern now (waiting
                # for it, not a fixed time, keeps the test right on a slow, loaded machine)
                assert alerts.wait_for(lambda m: any(
                    json.loads(p)["event"]["level"] >= 2 for _, p in m), 120)
                alerts.close()
                time.sleep(0.5)
                proc.send_signal(sig)
                rc = proc.wait(timeout=20)
            finally:
                proc.kill()
            assert sub.wait_for(lambda m, t=topic: (t, b"offline") in m, 15)
            sub.close()
            if sig == signal.SIGTERM:
                assert rc == 0, proc.stderr.read().decode()
                assert b"Traceback" not in proc.stderr.read()
            else:
                assert rc == -signal.SIGKILL
            if sig == signal.SIGTERM:  # the buzzer sounded, and was left off
                states = line.read_text().split()
                assert "on" in states and states[-1] == "off", states


def test_unreachable_broker_does_not_stop_monitoring_and_the_next_start_delivers(
        tmp_path, face_then_blank):
    video, _ = face_then_blank
    port = free_port()  # nothing listens here yet
    cfg = write_config(tmp_path / "dms.toml", tmp_path / "state", camera="realtime = false",
                       mqtt=f'device_id = "cab"\nhost = "127.0.0.1"\nport = {port}')
    t0 = time.monotonic()
    p = subprocess.run(dms_cmd("run", "--config", str(cfg), "--source", str(video),
                               "--print-events"),
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    events = [json.loads(line) for line in p.stdout.splitlines()]
    assert any(e["type"] == "driver_not_visible" for e in events)  # still monitored
    assert time.monotonic() - t0 < 60
    assert (tmp_path / "state" / "outbox.sqlite3").exists()
    # the broker comes up; a new run on a short clip delivers the stored alerts too
    with start_broker(tmp_path / "broker", port=port) as b:
        sub = Collector(b.port, "dms/cab/alert")
        p2 = subprocess.run(dms_cmd("run", "--config", str(cfg), "--source", str(video),
                                    "--max-frames", "5"),
                            capture_output=True, text=True, timeout=120)
        assert p2.returncode == 0, p2.stderr
        ids = [e["event_id"] for e in events]
        assert sub.wait_for(lambda m: len(m) >= len(ids), 15)
        got = [a["event"]["event_id"] for a in sub.payloads("/alert")]
        sub.close()
    assert got[: len(ids)] == ids  # all of them, in order


@pytest.mark.parametrize(
    "args, message",
    [
        (["--source", "missing.mp4"], "missing.mp4: no such video file"),
    ],
)
def test_a_video_that_cannot_open_is_one_clear_line(args, message):
    # (a missing live camera is not a configuration error: the service starts and reports it,
    # tests/test_hardening.py)
    p = subprocess.run(dms_cmd("run", *args), capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert p.stderr.strip().startswith("dms run: error: ") and message in p.stderr
    assert "Traceback" not in p.stderr


def test_bad_config_and_missing_model_are_one_clear_line(tmp_path, face_then_blank):
    video, _ = face_then_blank
    bad = tmp_path / "bad.toml"
    bad.write_text("[mqtt]\nport = 'eighty'\n")
    p = subprocess.run(dms_cmd("run", "--config", str(bad)), capture_output=True, text=True)
    assert p.returncode == 2 and "mqtt.port: expected an integer" in p.stderr
    nomodel = tmp_path / "nomodel.toml"
    nomodel.write_text(f'[vision.pose]\nmodel = "{tmp_path}/gone.onnx"\n')
    for cmd in (["config", "check", str(nomodel)],
                ["run", "--config", str(nomodel), "--source", str(video)]):
        p = subprocess.run(dms_cmd(*cmd), capture_output=True, text=True, timeout=60)
        assert p.returncode == 2, p.stdout
        assert f"{tmp_path}/gone.onnx: model file not found" in p.stderr
        assert "Traceback" not in p.stderr


def test_sd_notify_ready_watchdog_and_stopping_over_a_real_socket(tmp_path, face_then_blank):
    video, _ = face_then_blank
    sock_path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(sock_path))
    sock.settimeout(1.0)
    got: list[str] = []

    def receive() -> None:
        while True:
            try:
                got.extend(sock.recv(4096).decode().splitlines())
            except (TimeoutError, OSError):
                if stop.is_set():
                    return

    stop = threading.Event()
    t = threading.Thread(target=receive, daemon=True)
    t.start()
    env = os.environ | {"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "1000000"}
    cfg = write_config(tmp_path / "dms.toml", tmp_path / "state", mqtt="enabled = false")
    p = subprocess.run(dms_cmd("run", "--config", str(cfg), "--source", str(video)),
                       capture_output=True, text=True, timeout=60, env=env)
    stop.set()
    t.join(5)
    sock.close()
    assert p.returncode == 0, p.stderr
    assert "READY=1" in got and "STOPPING=1" in got
    assert got.index("READY=1") < got.index("STOPPING=1")
    # 7 s of realtime video with WatchdogSec=1: pinged about every 0.5 s while frames flow
    assert got.count("WATCHDOG=1") >= 6, got


class _FakeCamera:
    """Stands in for a V4L2 device (none on this machine): N frames, then it fails."""

    def __init__(self, frames: int) -> None:
        self.left = frames

    def read(self):
        time.sleep(0.01)
        if self.left <= 0:
            return False, None
        self.left -= 1
        return True, np.zeros((8, 8, 3), np.uint8)

    def isOpened(self) -> bool:  # noqa: N802 - OpenCV's name
        return True

    def release(self) -> None:
        pass


def test_lost_camera_is_reported_and_reopened_with_backoff():
    opened: list[float] = []

    def opener(_source: str) -> _FakeCamera:
        opened.append(time.monotonic())
        return _FakeCamera(5)

    src = FrameSource(CameraSettings(source="0", frame_timeout_s=0.3, reconnect_min_s=0.1,
                                     reconnect_max_s=0.4), opener=opener)
    stop = threading.Event()
    items = []
    for item in src.frames(stop):
        items.append(item)
        if sum(isinstance(i, SourceStatus) and i.status == "restored" for i in items) == 2:
            stop.set()
    kinds = [i.status if isinstance(i, SourceStatus) else "frame" for i in items]
    # while reopening, "waiting" heartbeats keep the service loop (and its watchdog) alive
    assert [k for k in kinds if k != "waiting"] == (["frame"] * 5 + ["lost", "restored"]) * 2
    assert kinds.count("waiting") >= 2
    assert kinds.index("lost") > kinds.index("frame")
    assert all(isinstance(i, Frame) for i in items[:5])
    assert src.reconnects == 2 and len(opened) == 3


def test_a_long_reconnect_back_off_still_yields_heartbeats():
    """A camera that stays missing: the back-off grows to reconnect_max_s, yet the loop hears
    from the source at least every HEARTBEAT_S (the watchdog is pinged from the loop)."""
    from dms.errors import InputError

    calls = {"n": 0}

    def opener(_source: str) -> _FakeCamera:
        calls["n"] += 1
        if calls["n"] == 1:
            return _FakeCamera(2)
        raise InputError("0: camera cannot be opened")

    cfg = CameraSettings(source="0", frame_timeout_s=0.2, reconnect_min_s=2.5,
                         reconnect_max_s=2.5)
    src = FrameSource(cfg, opener=opener)
    stop = threading.Event()
    times = []
    t0 = time.monotonic()
    for item in src.frames(stop):
        if isinstance(item, SourceStatus) and item.status == "waiting":
            times.append(time.monotonic())
        if time.monotonic() - t0 > 3 * cfg.reconnect_max_s:
            stop.set()
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert len(times) >= 5
    assert max(gaps) <= FrameSource.HEARTBEAT_S + 0.5
    assert calls["n"] >= 2  # it kept trying


def test_dms_run_ends_with_a_summary_and_says_which_profile_it_loaded(tmp_path,
                                                                       face_then_blank):
    """issue 22: `dms run` ends with one summary line (frames, face found, alerts raised and
    delivered, outbox left, raise-to-sound), and logs the calibration profile it loaded, or
    that the named one does not exist."""
    from dms.calibration_store import save_calibration
    from dms.engine.calibration import CalibrationResult, NeutralPose

    video, _ = face_then_blank
    state = tmp_path / "state"
    with start_broker(tmp_path / "broker") as b:
        cfg = write_config(tmp_path / "dms.toml", state, camera="realtime = false",
                           mqtt=f'host = "127.0.0.1"\nport = {b.port}\ndevice_id = "cab"')
        cfg.write_text(cfg.read_text().replace("[service]\n", '[service]\nprofile = "alice"\n'))
        missing = subprocess.run(dms_cmd("run", "--config", str(cfg), "--source", str(video)),
                                 capture_output=True, text=True, timeout=120)
        save_calibration(state, "alice", CalibrationResult(
            NeutralPose.from_euler(2.0, -5.0, 0.0, "explicit", 100, 0.5), 100, 0, 0, 0.5, 5.0))
        loaded = subprocess.run(dms_cmd("run", "--config", str(cfg), "--source", str(video),
                                        "--max-frames", "10"),
                                capture_output=True, text=True, timeout=120)
    assert missing.returncode == 0 and loaded.returncode == 0, missing.stderr + loaded.stderr
    assert "calibration profile 'alice' does not exist" in missing.stderr
    assert "dms calibrate --profile alice" in missing.stderr
    assert "calibration profile 'alice' loaded from" in loaded.stderr
    assert "yaw -5.0, pitch 2.0" in loaded.stderr
    summary = [line for line in missing.stderr.splitlines() if "summary: " in line]
    assert len(summary) == 1, missing.stderr
    fields = dict(kv.split("=") for kv in summary[0].split("summary: ")[1].split())
    assert int(fields["frames"]) == 7 * FPS and fields["face_found"].endswith("%")
    assert 40.0 <= float(fields["face_found"][:-1]) <= 45.0  # the face is in 3 s of 7
    assert int(fields["alerts_raised"]) >= 1  # driver_not_visible once the face is gone
    assert int(fields["delivered"]) == int(fields["alert_records"])
    assert fields["outbox_left"] == "0"
    assert "frames=10" in loaded.stderr


def test_every_record_of_a_run_uses_the_runs_clock(tmp_path):
    """issue 22: camera_lost records carried t_s as seconds since boot while every other
    record used the run's own clock. A camera missing at start, then found: its camera_lost
    records and the engine's share one clock, seconds since the run started (docs/mqtt.md)."""
    from dms.config import parse_config
    from dms.errors import InputError
    from dms.service import build_service

    booted_long_ago = 50_000.0  # what the monotonic clock reads on a device up for 14 h
    opens = []

    def opener(_source: str) -> _FakeCamera:
        opens.append(1)
        if len(opens) == 1:
            raise InputError("/dev/video0: camera cannot be opened")
        return _FakeCamera(10_000)

    cfg = parse_config(f'[service]\nstate_dir = "{tmp_path}"\n[mqtt]\nenabled = false\n'
                       '[camera]\nsource = "0"\nreconnect_min_s = 0.2\n')
    source = FrameSource(cfg.camera, opener=opener,
                         clock=lambda: booted_long_ago + time.monotonic())
    records: list[dict] = []
    svc = build_service(cfg, on_event=records.append)
    svc.run(source=source, max_frames=120)  # blank frames: driver_not_visible after a while
    lost = [r for r in records if r["reason"] == "camera_lost"]
    others = [r for r in records if r["reason"] != "camera_lost"]
    assert [r["phase"] for r in lost] == ["raised", "cleared"]
    assert all(0.0 <= r["t_s"] < 60.0 for r in records), records  # not since boot
    assert lost[1]["t_s"] <= min((r["t_s"] for r in others), default=60.0)


def test_the_calibrate_command_captures_stores_and_applies_the_neutral(tmp_path,
                                                                      face_then_blank):
    """The one calibration capture in `dms run`: the command arms it, the next 2 s of frames
    make the neutral, the engine takes it and the profile is stored."""
    from dms.calibration_store import load_calibration
    from dms.config import parse_config
    from dms.service import build_service

    video, _ = face_then_blank
    cfg = parse_config(f'[service]\nstate_dir = "{tmp_path}"\nprofile = "bob"\n'
                       'calibration_s = 2.0\n[mqtt]\nenabled = false\n'
                       f'[camera]\nsource = "{video}"\nrealtime = false\n')
    svc = build_service(cfg)
    reply = svc.commands.run("calibrate", {"request_id": "c1"}, "test")
    assert reply["ok"] and reply["request_id"] == "c1"
    svc.run(max_frames=FPS * 3)
    stored = load_calibration(tmp_path, "bob")
    assert stored is not None and stored.sample_count >= FPS  # 2 s of frames, outliers out
    assert svc.monitor is not None
    assert svc.monitor.engine.state.neutral_source == "explicit"
