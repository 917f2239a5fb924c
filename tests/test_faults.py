"""Faults found by the soak run (scripts/soak.py): a state directory that stops taking writes
while the service runs, and an alert path that fails.

"Read-only" is made with the immutable attribute (``chattr +i``): as root, permission bits do
not stop writes, and a read-only remount is refused while the outbox holds the file open for
writing. The immutable flag makes every write through the already open descriptors fail (EPERM),
which SQLite reports as a disk I/O error, as on a disk gone read-only. Needs root and a file
system with the flag (ext4, xfs, btrfs); skipped otherwise.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dms.outputs.mqtt import MqttCommunicator, MqttSettings
from dms.outputs.outbox import Outbox
from dms.outputs.routing import AlertOutputs

from broker import Collector, require_mosquitto, start_broker


def _chattr(flag: str, paths: list[Path]) -> subprocess.CompletedProcess[str]:
    if shutil.which("chattr") is None:
        pytest.skip("needs chattr (e2fsprogs)")
    return subprocess.run(["chattr", flag, *map(str, paths)], capture_output=True, text=True)


@contextlib.contextmanager
def read_only(directory: Path) -> Iterator[None]:
    """The directory and every file in it immutable (no writes, even by root) until exit."""
    paths = [directory, *sorted(directory.iterdir())]
    done = _chattr("+i", paths)
    if done.returncode != 0:
        _chattr("-i", paths)
        pytest.skip(f"cannot make {directory} immutable here (needs root and chattr): "
                    f"{done.stderr.strip()}")
    try:
        yield
    finally:
        _chattr("-i", paths)


def payload(seq: int) -> bytes:
    return json.dumps({"seq": seq}).encode()


def test_alerts_wait_in_memory_while_the_disk_refuses_writes_then_land_on_disk(
        tmp_path: Path) -> None:
    state = tmp_path / "state"
    box = Outbox(state / "outbox.sqlite3")
    first = box.put_alert("al", payload)
    assert first.persisted
    with read_only(state):
        # before the fix: DmsError("cannot store an alert: disk I/O error"), alert gone
        kept = [box.put_alert("al", payload) for _ in range(3)]
        assert [r.row.seq for r in kept] == [2, 3, 4]
        assert not any(r.persisted for r in kept)
        assert box.degraded is not None
        assert [r.seq for r in box.pending()] == [1, 2, 3, 4]  # still handed out
        box.delete(kept[0].row.id)  # acknowledged while in memory: nothing to write later
        box.delete(first.row.id)  # on disk: the delete is remembered
        assert [r.seq for r in box.pending()] == [3, 4]
        assert len(box) == 2
        assert box.put_telemetry("tm", b"{}") is None  # best effort: refused, not raised
        st = box.stats()
        assert (st.alerts_in_memory, st.alerts_not_persisted, st.next_seq) == (2, 3, 5)
        box.delete(kept[1].row.id)  # all delivered before any reached the disk
        box.delete(kept[2].row.id)
        assert len(box) == 0
    assert box.sync(force=True)  # the worker retries about once a second
    after = box.put_alert("al", payload)
    assert after.persisted and after.row.seq == 5
    # a sender whose cursor is past the ids handed out from memory must still see it
    assert [r.seq for r in box.pending(after_id=kept[2].row.id)] == [5]
    box.close()

    again = Outbox(state / "outbox.sqlite3")  # a restart sees exactly what is undelivered
    assert [r.seq for r in again.pending()] == [5]
    assert again.stats().alerts_in_memory == 0
    assert again.put_alert("al", payload).row.seq == 6
    again.close()


def test_a_read_only_state_dir_loses_no_alert_on_the_broker(tmp_path: Path) -> None:
    require_mosquitto()
    with start_broker(tmp_path / "broker") as brk:
        sub = Collector(brk.port, "dms/cab1/alert")
        settings = MqttSettings(host="127.0.0.1", port=brk.port, device_id="cab1")
        state = tmp_path / "state"
        comm = MqttCommunicator(settings, state).start()
        try:
            assert comm.wait_connected(10)
            comm.publish_alert({"i": 0})
            assert comm.wait_drained(10)
            with read_only(state):
                seqs = [comm.publish_alert({"i": i}) for i in range(1, 6)]
                assert seqs == [2, 3, 4, 5, 6]
                # published from memory and acknowledged, though nothing reached the disk
                assert sub.wait_for(lambda m: len(m) >= 6, 15)
                assert comm.wait_drained(10)
            comm.publish_alert({"i": 6})  # the disk is back: stored and sent as before
            assert comm.wait_drained(10)
            assert sub.wait_for(lambda m: len(m) >= 7, 15)
        finally:
            comm.stop()
            sub.close()
    got = [p["seq"] for p in sub.payloads("/alert")]
    assert sorted(set(got)) == [1, 2, 3, 4, 5, 6, 7]
    assert [p["event"]["i"] for p in sub.payloads("/alert")][:7] == list(range(7))
    assert len(Outbox(state / "outbox.sqlite3")) == 0  # nothing stale left for the next run


def test_an_alert_the_communicator_refuses_still_reaches_the_other_outputs(
        tmp_path: Path) -> None:
    settings = MqttSettings(host="127.0.0.1", port=1, device_id="cab1")
    comm = MqttCommunicator(settings, tmp_path / "state").start()
    comm.stop()  # publish_alert now raises RuntimeError
    seen: list[dict[str, object]] = []
    outputs = AlertOutputs(comm, on_event=seen.append)
    outputs.publish_event({"event_id": "x-1", "type": "slump"})  # must not raise
    assert seen == [{"event_id": "x-1", "type": "slump"}]
    assert (outputs.published, outputs.failed) == (0, 1)


def test_a_second_process_on_the_same_outbox_is_a_clear_error(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db")
    box.put_alert("al", payload)
    code = ("import sys; from dms.outputs.outbox import Outbox\n"
            "try:\n    Outbox(sys.argv[1])\nexcept Exception as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "o.db")],
                         capture_output=True, text=True, timeout=60).stdout
    assert "another dms process" in out
    box.close()
    Outbox(tmp_path / "o.db").close()  # free again once closed


def damaged_video(path: Path, frames: int = 90, fps: float = 15.0) -> tuple[Path, int]:
    """A clip with one stretch of garbage bytes in its middle, as a bad sector or a broken
    upload leaves; returns it and the frames a plain ``cap.read()`` loop gets before stopping."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(7)
    clean = path.with_suffix(".clean.mp4")
    w = cv2.VideoWriter(str(clean), cv2.VideoWriter_fourcc(*"mp4v"), fps, (320, 240))
    for i in range(frames):
        img = rng.integers(0, 60, (240, 320, 3), dtype=np.uint8)
        cv2.circle(img, (40 + 3 * i, 120), 30, (255, 255, 255), -1)
        w.write(img)
    w.release()
    data = bytearray(clean.read_bytes())
    vops = [i for i in range(len(data) - 4) if data[i:i + 4] == b"\x00\x00\x01\xb6"]
    at = vops[len(vops) // 2]  # garbage over one frame in the middle, start code included
    data[at:at + 2000] = rng.integers(0, 256, 2000, dtype=np.uint8).tobytes()
    path.write_bytes(bytes(data))
    cap, n = cv2.VideoCapture(str(path)), 0
    while cap.read()[0]:
        n += 1
    cap.release()
    return path, n


def test_a_damaged_frame_mid_file_is_skipped_not_the_end_of_the_video(tmp_path: Path) -> None:
    import threading

    from dms.capture import Frame, FrameSource, SourceStatus, video_frames
    from dms.config import CameraSettings

    video, plain = damaged_video(tmp_path / "damaged.mp4")
    assert plain < 60  # the damage stops a naive read loop (before the fix: the whole file)
    frames = list(video_frames(str(video)))
    assert len(frames) >= 80
    assert frames[-1].t_s == pytest.approx(89 / 15.0)  # timestamps stay those of the file

    source = FrameSource(CameraSettings(source=str(video), realtime=False, loop=True))
    stop, got = threading.Event(), []
    for item in source.frames(stop):
        assert isinstance(item, Frame), item
        got.append(item)
        if len(got) >= 2 * len(frames):
            stop.set()
    assert source.reopens == 1 and source.skipped_frames >= 1
    assert got[len(frames)].t_s == pytest.approx(90 / 15.0)  # the 2nd loop starts after 6 s
    assert not isinstance(got[-1], SourceStatus)


def test_read_only_state_dir_at_start_keeps_monitoring_and_delivers_later(tmp_path):
    """The outbox cannot open at start: dms run still monitors (events printed), holds the
    alerts in memory and, once the directory is writable, MQTT starts and delivers them."""
    import json
    import shutil
    import subprocess
    import sys
    import time

    import cv2
    import numpy as np

    from dms.benchclip import render_clip

    if shutil.which("chattr") is None:
        pytest.skip("needs chattr to make a directory refuse writes, even for root")
    face = render_clip(tmp_path / "face.mp4", seconds=2.0)
    cap = cv2.VideoCapture(str(face))
    src = tmp_path / "drive.mp4"
    w = cv2.VideoWriter(str(src), cv2.VideoWriter_fourcc(*"mp4v"), 30, (640, 480))
    while True:
        ok, img = cap.read()
        if not ok:
            break
        w.write(img)
    for _ in range(90):
        w.write(np.full((480, 640, 3), 30, np.uint8))
    w.release()
    state = tmp_path / "state"
    state.mkdir()
    if subprocess.run(["chattr", "+i", str(state)], capture_output=True).returncode != 0:
        pytest.skip("this filesystem does not support chattr +i")
    try:
        with start_broker(tmp_path / "broker") as b:
            sub = Collector(b.port, "dms/ro/alert")
            cfg = tmp_path / "dms.toml"
            cfg.write_text(f'[camera]\nloop = true\n[service]\nstate_dir = "{state}"\n'
                           '[mqtt]\ndevice_id = "ro"\n')
            proc = subprocess.Popen(
                [sys.executable, "-m", "dms", "run", "--config", str(cfg), "--source", str(src),
                 "--mqtt", f"127.0.0.1:{b.port}", "--print-events"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            try:
                first = json.loads(proc.stdout.readline())  # monitoring works: an event
                assert first["type"] == "driver_not_visible"
                time.sleep(1.0)
                assert sub.messages == []  # nothing could be sent yet
                subprocess.run(["chattr", "-i", str(state)], check=True)
                assert sub.wait_for(lambda m: len(m) >= 1, 30)  # retried within 10 s
                got = sub.payloads("/alert")
                assert got[0]["event"]["event_id"] == first["event_id"]
            finally:
                proc.terminate()
                proc.wait(timeout=20)
                sub.close()
    finally:
        subprocess.run(["chattr", "-i", str(state)], capture_output=True)
