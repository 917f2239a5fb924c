"""``dms replay`` publishing through the same MQTT + outbox path as ``dms run``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from broker import Collector, free_port, start_broker


def dms(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dms", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def vats_csv(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("poses") / "vats.csv"
    p = dms("scenarios", "write", "vats", "--out", str(out))
    assert p.returncode == 0, p.stderr
    return out


def config(tmp_path: Path, port: int) -> Path:
    c = tmp_path / "dms.toml"
    c.write_text(f'[service]\nstate_dir = "{tmp_path / "state"}"\n'
                 f'[mqtt]\nhost = "127.0.0.1"\nport = {port}\ndevice_id = "replay"\n')
    return c


def test_replayed_events_reach_the_broker_in_order(tmp_path, vats_csv):
    with start_broker(tmp_path / "broker") as b:
        sub = Collector(b.port, "dms/replay/alert")
        p = dms("replay", "--poses", str(vats_csv), "--config", str(config(tmp_path, b.port)),
                "--publish")
        assert p.returncode == 0, p.stderr
        printed = [json.loads(line) for line in p.stdout.splitlines()]
        assert printed and any(e["reason"] == "time_sharing" for e in printed)
        assert sub.wait_for(lambda m: len(m) >= len(printed), 15)
        got = sub.payloads("/alert")
        sub.close()
    assert [g["event"] for g in got] == printed
    assert [g["seq"] for g in got] == sorted(g["seq"] for g in got)


def test_undelivered_events_go_out_with_the_next_process(tmp_path, vats_csv):
    port = free_port()
    cfg = config(tmp_path, port)
    p = dms("replay", "--poses", str(vats_csv), "--config", str(cfg), "--publish",
            "--drain-timeout-s", "1")
    assert p.returncode == 0, p.stderr
    assert "outbox not drained" in p.stderr
    first = [json.loads(line)["event_id"] for line in p.stdout.splitlines()]
    with start_broker(tmp_path / "broker", port=port) as b:
        sub = Collector(b.port, "dms/replay/alert")
        p2 = dms("replay", "--poses", str(vats_csv), "--config", str(cfg), "--publish")
        assert p2.returncode == 0, p2.stderr
        second = [json.loads(line)["event_id"] for line in p2.stdout.splitlines()]
        assert sub.wait_for(lambda m: len(m) >= len(first) + len(second), 20)
        got = [g["event"]["event_id"] for g in sub.payloads("/alert")]
        sub.close()
    assert got == first + second  # the stored ones first, in order, then the new run's


def test_replay_with_the_service_config_never_touches_its_outbox(tmp_path, vats_csv):
    """Replaying with the service's config (for its [engine] and [vision] settings) must not
    queue replayed alerts in the service's outbox: the next `dms run` would publish them."""
    with start_broker(tmp_path / "broker") as b:
        sub = Collector(b.port, "dms/replay/alert")
        p = dms("replay", "--poses", str(vats_csv), "--config", str(config(tmp_path, b.port)))
        assert p.returncode == 0, p.stderr
        assert [json.loads(line) for line in p.stdout.splitlines()]  # events were printed
        assert not sub.wait_for(lambda m: len(m) > 0, 2)
        sub.close()
    assert not (tmp_path / "state").exists() or not list((tmp_path / "state").glob("outbox*"))
    p = dms("replay", "--poses", str(vats_csv), "--publish")
    assert p.returncode == 2 and "--publish needs" in p.stderr


def test_video_replay_writes_annotated_video_and_plot(tmp_path):
    from dms.benchclip import render_clip

    face = render_clip(tmp_path / "face.mp4", seconds=2.0)
    cap = cv2.VideoCapture(str(face))
    src = tmp_path / "drive.mp4"
    w = cv2.VideoWriter(str(src), cv2.VideoWriter_fourcc(*"mp4v"), 30, (640, 480))
    n = 0
    while True:
        ok, img = cap.read()
        if not ok:
            break
        w.write(img)
        n += 1
    for _ in range(60):  # 2 s without a face
        w.write(np.full((480, 640, 3), 30, np.uint8))
    w.release()
    out, plot = tmp_path / "annotated.mp4", tmp_path / "timeline.png"
    p = dms("replay", str(src), "--out-video", str(out), "--plot", str(plot))
    assert p.returncode == 0, p.stderr
    events = [json.loads(line) for line in p.stdout.splitlines()]
    assert any(e["type"] == "driver_not_visible" and e["phase"] == "raised" for e in events)
    cap = cv2.VideoCapture(str(out))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == n + 60
    ok, first = cap.read()
    assert ok and first.shape == (480, 640 + 400, 3)  # the camera image and the text panel
    fourcc = int(cap.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little").decode().lower()
    assert fourcc in ("avc1", "h264")  # H.264: browsers play it
    assert "OpenCV:" not in p.stderr and "[ERROR" not in p.stderr  # no codec noise
    png = cv2.imread(str(plot))
    assert png is not None and png.shape[0] > 200 and png.shape[1] > 400
    assert f"summary: frames={n + 60} " in p.stderr  # the summary line, on stderr
    # the annotated copy's overlays cover the face: replaying it is refused, naming the clip
    again = dms("replay", str(out))
    assert again.returncode == 2 and again.stdout == ""
    assert "annotated output" in again.stderr and str(src) in again.stderr
    assert "Traceback" not in again.stderr


def test_a_replay_drives_the_buzzer_and_telemetry_as_dms_run_does(tmp_path, vats_csv):
    """issue 21: replay drives the same AlertOutputs.handle as dms run, so the buzzer (a
    command hook: this machine has no GPIO chip) and the telemetry run in a replay too."""
    calls = tmp_path / "calls"
    hook = tmp_path / "hook.py"
    hook.write_text(f"import sys\nopen({str(calls)!r}, 'a').write(sys.argv[1] + '\\n')\n")
    with start_broker(tmp_path / "broker") as b:
        cfg = config(tmp_path, b.port)
        cfg.write_text(cfg.read_text() + f'[buzzer]\nbackend = "command"\n'
                       f'command_on = ["{sys.executable}", "{hook}", "on"]\n'
                       f'command_off = ["{sys.executable}", "{hook}", "off"]\n')
        sub = Collector(b.port, "dms/replay/telemetry")
        p = dms("replay", "--poses", str(vats_csv), "--config", str(cfg), "--publish")
        assert p.returncode == 0, p.stderr
        assert sub.wait_for(lambda m: len(m) >= 10, 15)  # rate-limited pose telemetry
        sub.close()
    printed = [json.loads(line) for line in p.stdout.splitlines()]
    assert any(e["level"] >= 2 for e in printed)  # an audible alert in the drive
    assert calls.exists() and "on" in calls.read_text().split()
    assert "buzzer_sounded=" in p.stderr and "buzzer_sounded=0 " not in p.stderr
