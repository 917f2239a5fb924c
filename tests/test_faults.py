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
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from dms.outputs.mqtt import MqttCommunicator, MqttSettings
from dms.outputs.outbox import Outbox
from dms.outputs.routing import AlertOutputs

from broker import Broker, Collector, free_port, require_mosquitto, start_broker


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


def payload(stream: str, seq: int) -> bytes:
    return json.dumps({"stream": stream, "seq": seq}).encode()


def key(row: object) -> tuple[str, int]:
    """The (stream, seq) an alert row's payload carries."""
    data = json.loads(row.payload)  # type: ignore[attr-defined]
    return data["stream"], data["seq"]


def test_alerts_wait_in_memory_while_the_disk_refuses_writes_then_land_on_disk(
        tmp_path: Path) -> None:
    state = tmp_path / "state"
    box = Outbox(state / "outbox.sqlite3")
    first = box.put_alert("al", payload)
    old = box.stream_id
    assert first.persisted and key(first.row) == (old, 1)
    with read_only(state):
        # before the fix: DmsError("cannot store an alert: disk I/O error"), alert gone
        kept = [box.put_alert("al", payload) for _ in range(3)]
        # the counter on disk cannot move: a new stream, never seq 2.. of the old one again
        new = box.stream_id
        assert new != old and [key(r.row) for r in kept] == [(new, 1), (new, 2), (new, 3)]
        assert not any(r.persisted for r in kept)
        assert box.degraded is not None
        assert [key(r) for r in box.pending()] == [(old, 1), (new, 1), (new, 2), (new, 3)]
        box.delete(kept[0].row.id)  # acknowledged while in memory: nothing to write later
        box.delete(first.row.id)  # on disk: the delete is remembered
        assert [key(r) for r in box.pending()] == [(new, 2), (new, 3)]
        assert len(box) == 2
        assert box.put_telemetry("tm", b"{}") is None  # best effort: refused, not raised
        st = box.stats()
        assert (st.alerts_in_memory, st.alerts_not_persisted, st.next_seq) == (2, 3, 4)
        assert st.streams_started == 1
        box.delete(kept[1].row.id)  # all delivered before any reached the disk
        box.delete(kept[2].row.id)
        assert len(box) == 0
    assert box.sync(force=True)  # the worker retries about once a second
    after = box.put_alert("al", payload)
    assert after.persisted and key(after.row) == (new, 4)  # the new stream is on disk now
    # a sender whose cursor is past the ids handed out from memory must still see it
    assert [key(r) for r in box.pending(after_id=kept[2].row.id)] == [(new, 4)]
    box.close()

    again = Outbox(state / "outbox.sqlite3")  # a restart sees exactly what is undelivered
    assert [key(r) for r in again.pending()] == [(new, 4)]
    assert again.stats().alerts_in_memory == 0
    assert key(again.put_alert("al", payload).row) == (new, 5)
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
                assert seqs == [1, 2, 3, 4, 5]  # in a new stream: the disk cannot count
                # published from memory and acknowledged, though nothing reached the disk
                assert sub.wait_for(lambda m: len(m) >= 6, 15)
                assert comm.wait_drained(10)
            comm.publish_alert({"i": 6})  # the disk is back: stored and sent as before
            assert comm.wait_drained(10)
            assert sub.wait_for(lambda m: len(m) >= 7, 15)
        finally:
            comm.stop()
            sub.close()
    alerts = sub.payloads("/alert")
    pairs = {(p["stream"], p["seq"]): p["event"]["i"] for p in alerts}
    assert sorted(pairs.values()) == list(range(7))  # each alert once per (stream, seq)
    first, second = alerts[0]["stream"], alerts[1]["stream"]
    assert first != second and sorted(k for k in pairs if k[0] == second) == [
        (second, s) for s in range(1, 7)]
    assert [p["event"]["i"] for p in alerts][:7] == list(range(7))
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


# -- issue 13: (stream, seq) never names two alerts; a damaged outbox loses nothing -------------


def _settings(port: int) -> MqttSettings:
    return MqttSettings(host="127.0.0.1", port=port, device_id="cab1", reconnect_min_s=1,
                        reconnect_max_s=1, keepalive_s=5)


def _restart_and_deliver(tmp_path: Path, settings: MqttSettings, state: Path,
                         arrived: Any) -> Collector:
    """Start a broker and a new communicator on ``state``; it must drain its outbox and
    the alerts satisfy ``arrived`` (messages -> bool) at a subscriber. Returns it (closed)."""
    with start_broker(tmp_path / "broker", port=settings.port) as brk:
        sub = Collector(brk.port, "dms/cab1/alert")
        try:
            comm = MqttCommunicator(settings, state).start()
            assert comm.wait_drained(20), comm.stats()
            comm.stop()
            assert sub.wait_for(arrived, 15)
        finally:
            sub.close()
    return sub


def _pairs_are_unique(alerts: list[dict[str, object]]) -> dict[tuple[str, int], object]:
    """(stream, seq) -> event of every alert received; fails if one pair named two alerts."""
    seen: dict[tuple[str, int], object] = {}
    for a in alerts:
        k = (str(a["stream"]), int(a["seq"]))  # type: ignore[call-overload]
        assert seen.setdefault(k, a["event"]) == a["event"], f"{k} names two alerts"
    return seen


@contextlib.contextmanager
def small_tmpfs(directory: Path, size: str = "1m") -> Iterator[Path]:
    directory.mkdir(parents=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                           str(directory)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], capture_output=True)


def fill(directory: Path) -> Path:
    """Fill the file system of ``directory`` to the last byte; returns the filler file."""
    import os

    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 512, 1):
            try:
                while os.write(fd, b"\0" * size):
                    pass
            except OSError:
                continue
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_never_reuses_a_stream_and_seq_pair(tmp_path: Path) -> None:
    """Before: the disk full, next_seq never reached it; the next run restarted at seq 6 and
    pairs 6.. named two different alerts."""
    require_mosquitto()
    with start_broker(tmp_path / "broker") as brk, small_tmpfs(tmp_path / "state") as state:
        sub = Collector(brk.port, "dms/cab1/alert")
        try:
            comm = MqttCommunicator(_settings(brk.port), state).start()
            assert comm.wait_connected(10)
            for i in range(5):
                comm.publish_alert({"run": 1, "i": i})
            assert comm.wait_drained(10)
            filler = fill(state)
            for i in range(5, 60):
                comm.publish_alert({"run": 1, "i": i})
            assert comm.wait_drained(15)  # published from memory
            assert comm.stats()["outbox"]["alerts_not_persisted"] >= 50  # the disk was full
            comm.stop()  # the disk still full: the counter on disk says 6
            filler.unlink()
            comm = MqttCommunicator(_settings(brk.port), state).start()
            for i in range(20):
                comm.publish_alert({"run": 2, "i": i})
            assert comm.wait_drained(15)
            comm.stop()
            assert sub.wait_for(lambda m: len(m) >= 80, 15)
        finally:
            sub.close()
    pairs = _pairs_are_unique(sub.payloads("/alert"))
    assert len(pairs) == 80  # every alert once, each under its own (stream, seq)


def _all_and_both_records(messages: list[tuple[str, bytes]], n: int) -> bool:
    events = [json.loads(p)["event"] for _, p in messages]
    return (len({e["i"] for e in events if "i" in e}) >= n
            and len({e["phase"] for e in events if e.get("type") == "system_degraded"}) >= 2)


def _outage_then_damage(tmp_path: Path, damage: Callable[[Path], None], n: int = 100
                        ) -> tuple[list[Any], MqttCommunicator, Path]:
    """Alerts pile up while the broker is down, the outbox file is damaged under the running
    communicator, more alerts come, the broker returns: what a fleet subscriber got."""
    state = tmp_path / "state"
    with start_broker(tmp_path / "broker") as brk:
        sub = Collector(brk.port, "dms/cab1/alert", client_id="fleet", persistent=True)
        assert sub.wait_for(lambda m: True)
        comm = MqttCommunicator(_settings(brk.port), state)
        try:
            brk.stop()
            comm.start()
            for i in range(n):
                comm.publish_alert({"i": i})
            assert comm.stats()["outbox"]["pending_alerts"] == n
            damage(state / "outbox.sqlite3")
            deadline = time.monotonic() + 10
            while comm.stats()["outbox"]["damaged"] == 0:  # the worker looks every 0.5 s
                assert time.monotonic() < deadline, "damage not detected"
                time.sleep(0.1)
            for i in range(n, n + 10):
                comm.publish_alert({"i": i})
            brk.start()
            assert comm.wait_drained(30), comm.stats()
            assert sub.wait_for(lambda m: _all_and_both_records(m, n + 10), 30)
        finally:
            comm.stop()
            sub.close()
    return sub.payloads("/alert"), comm, state


def _check_no_loss_and_reported(alerts: list[Any], n: int, state: Path) -> None:
    _pairs_are_unique(alerts)
    events = [a["event"] for a in alerts]
    got = {e["i"] for e in events if "i" in e}
    assert got == set(range(n + 10))  # before: 100 of 100 pending alerts lost
    degraded = [e for e in events if e.get("type") == "system_degraded"]
    assert [(e["reason"], e["phase"]) for e in degraded] == [
        ("outbox_damaged", "raised"), ("outbox_damaged", "cleared")]
    streams = [a["stream"] for a in alerts]
    assert streams[0] != streams[-1]  # a new stream after the damage
    # the next run starts (before: "database disk image is malformed" for ever) and
    # finds nothing stale
    box = Outbox(state / "outbox.sqlite3")
    assert len(box) == 0 and box.stats().damaged == 0
    box.close()


def test_a_truncated_outbox_is_set_aside_and_nothing_is_lost(tmp_path: Path) -> None:
    require_mosquitto()

    def truncate(db: Path) -> None:
        subprocess.run(["truncate", "-s", "0", str(db), f"{db}-wal"], check=True)

    alerts, comm, state = _outage_then_damage(tmp_path, truncate)
    _check_no_loss_and_reported(alerts, 100, state)
    aside = sorted(p.name for p in state.iterdir() if ".damaged-" in p.name)
    assert len(aside) == 2 and aside[0].startswith("outbox.sqlite3-wal.damaged-")


def test_a_deleted_outbox_is_noticed_and_nothing_is_lost(tmp_path: Path) -> None:
    require_mosquitto()

    def delete(db: Path) -> None:
        subprocess.run(["sh", "-c", f'rm -f "{db}"*'], check=True)

    alerts, comm, state = _outage_then_damage(tmp_path, delete)
    _check_no_loss_and_reported(alerts, 100, state)
    assert comm.stats()["connected"] is False


def test_an_outbox_deleted_just_before_exit_is_rewritten_for_the_next_run(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Before: the exit log said the alerts "remain ... for the next run"; the file was gone."""
    require_mosquitto()
    port = free_port()
    state = tmp_path / "state"
    comm = MqttCommunicator(_settings(port), state).start()  # no broker yet
    for i in range(20):
        comm.publish_alert({"i": i})
    subprocess.run(["sh", "-c", f'rm -f "{state}/outbox.sqlite3"*'], check=True)
    with caplog.at_level(logging.WARNING):
        comm.stop()  # at once: the exit checks the file before it claims anything
    assert any("remain" in r.getMessage() and "next run" in r.getMessage()
               for r in caplog.records)
    with Broker(tmp_path / "broker", port=port) as brk:
        sub = Collector(brk.port, "dms/cab1/alert")
        again = MqttCommunicator(_settings(port), state).start()
        try:
            assert again.wait_drained(20)
            assert sub.wait_for(lambda m: len(m) >= 20, 15)
        finally:
            again.stop()
            sub.close()
    assert sorted(a["event"]["i"] for a in sub.payloads("/alert")) == list(range(20))


def test_an_outbox_that_is_not_a_database_at_start_is_set_aside(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "outbox.sqlite3").write_bytes(b"garbage, not SQLite" * 300)
    box = Outbox(state / "outbox.sqlite3")  # before: DmsError, and MQTT never started
    assert [d for d in box.take_damage() if "cannot be read at start" in d]
    assert box.put_alert("al", payload).row.seq == 1
    box.close()
    assert [p.name.split(".damaged-")[0] for p in state.iterdir() if ".damaged-" in p.name] \
        == ["outbox.sqlite3"]


def test_alerts_the_full_disk_refused_survive_a_restart_through_the_spill(tmp_path: Path) -> None:
    """The state directory full and the broker down: the alerts live only in memory. A stop
    then spills them to another filesystem (here a folder beside it; systemd's
    RuntimeDirectory in RAM on a device); the next start takes them back and delivers them
    with their own (stream, seq)."""
    require_mosquitto()
    spill = tmp_path / "spill"
    settings = replace(_settings(free_port()), spill_dir=str(spill))
    with small_tmpfs(tmp_path / "state") as state:
        comm = MqttCommunicator(settings, state).start()  # no broker yet
        filler = fill(state)
        for i in range(12):
            comm.publish_alert({"i": i})
        assert comm.stats()["outbox"]["alerts_in_memory"] == 12
        comm.stop()
        assert list(spill.glob("*.spill"))  # spilled, not lost
        filler.unlink()
        sub = _restart_and_deliver(tmp_path, settings, state, lambda m: len(m) >= 12)
    got = _pairs_are_unique(sub.payloads("/alert"))
    assert sorted(e["i"] for e in got.values()) == list(range(12))  # type: ignore[index]
    assert not list(spill.glob("*.spill"))  # taken back and stored: nothing left behind


def test_an_outbox_destroyed_while_stopped_is_rebuilt_from_the_spill(tmp_path: Path) -> None:
    """Undelivered alerts at a clean stop are also written to the spill file; when the
    database is then overwritten (or deleted) before the next start, that start sets the
    damaged file aside and sends them from the spill."""
    require_mosquitto()
    spill = tmp_path / "spill"
    state = tmp_path / "state"
    settings = replace(_settings(free_port()), spill_dir=str(spill))
    comm = MqttCommunicator(settings, state).start()  # no broker: everything stays pending
    for i in range(15):
        comm.publish_alert({"i": i})
    comm.stop()
    db = state / "outbox.sqlite3"
    db.write_bytes(b"\x13" * max(db.stat().st_size, 4096))  # destroyed while stopped
    for side in state.glob("outbox.sqlite3-*"):
        side.unlink()
    sub = _restart_and_deliver(tmp_path, settings, state, lambda m: len(
        {json.loads(p)["event"].get("i") for _, p in m} - {None}) >= 15)
    got = _pairs_are_unique([a for a in sub.payloads("/alert") if "i" in a["event"]])
    assert sorted(e["i"] for e in got.values()) == list(range(15))  # type: ignore[index]
    assert list(state.glob("outbox.sqlite3.damaged-*"))  # the destroyed file set aside


# -- issue 21, fault 3: a stalled disk froze monitoring ------------------------------------


@contextlib.contextmanager
def loop_mount(directory: Path, size_mb: int = 16) -> Iterator[Path]:
    """An ext4 file system of its own, mounted at ``directory`` (so it can be frozen alone).
    Skips without root, a loop device or mkfs.ext4."""
    tools = [shutil.which(t) for t in ("mkfs.ext4", "fsfreeze", "mount", "umount")]
    if not all(tools):
        pytest.skip("needs mkfs.ext4, fsfreeze, mount and umount (util-linux, e2fsprogs)")
    image = directory.with_suffix(".img")
    with open(image, "wb") as f:
        f.truncate(size_mb << 20)
    made = subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], capture_output=True, text=True)
    directory.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-o", "loop", str(image), str(directory)],
                             capture_output=True, text=True) if made.returncode == 0 else made
    if mounted.returncode != 0:
        pytest.skip(f"cannot loop-mount an ext4 image here (needs root and a loop device): "
                    f"{mounted.stderr.strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["fsfreeze", "-u", str(directory)], capture_output=True)
        subprocess.run(["umount", "-l", str(directory)], capture_output=True)


@contextlib.contextmanager
def frozen(mountpoint: Path) -> Iterator[None]:
    """Every write to the file system blocks (``fsfreeze``, as a stalled disk) until exit."""
    subprocess.run(["fsfreeze", "-f", str(mountpoint)], check=True)
    try:
        yield
    finally:
        subprocess.run(["fsfreeze", "-u", str(mountpoint)], check=True)


def long_glance_results() -> list[Any]:
    """The engine's step results of a driver with a stored neutral who looks away for 6 s:
    a level-2 distraction raised (and escalated), then cleared."""
    import numpy as np

    from dms.engine.calibration import NeutralPose
    from dms.engine.engine import Engine
    from dms.geometry import rotation_from_euler
    from dms.types import HeadPose, Observation

    engine = Engine(neutral=NeutralPose(np.eye(3), "explicit"))
    out = []
    for i in range(int(10 * 30)):
        t = i / 30.0
        yaw = 55.0 if 1.0 <= t < 7.0 else 0.0
        pose = HeadPose(rotation_from_euler(0.0, yaw, 0.0), 0.0, yaw, 0.0, 1.0)
        out.append(engine.step(Observation(t_s=t, pose=pose)))
    assert any(r.events for r in out)
    return out


def test_a_frozen_state_dir_never_holds_up_the_loop_and_no_alert_is_lost(
        tmp_path: Path) -> None:
    """issue 21, fault 3: with the state directory frozen (fsfreeze) a glance due at :47
    was raised at :54 and its buzzer sounded at :55.8. Now the buzzer is stated first and
    the durable write waits at most ``mqtt.alert_write_wait_s``: the loop goes on while the
    disk is frozen, and every alert reaches the broker once it thaws."""
    from dms.outputs.buzzer import Buzzer, NullLine
    from dms.outputs.settings import BuzzerSettings

    require_mosquitto()
    results = long_glance_results()
    events = [e for r in results for e in r.events]
    with loop_mount(tmp_path / "mnt") as mnt, start_broker(tmp_path / "broker") as brk:
        sub = Collector(brk.port, "dms/cab1/alert")
        comm = MqttCommunicator(_settings(brk.port), mnt / "state").start()
        buzzer = Buzzer(BuzzerSettings(), NullLine(), register_atexit=False)
        outputs = AlertOutputs(comm, buzzer)
        try:
            assert comm.wait_connected(10)
            comm.publish_alert({"event_id": "before"})
            assert comm.wait_drained(10)
            first = next(i for i, r in enumerate(results)  # the first audible raise
                         if any(e.level >= 2 for e in r.events))
            loop = threading.Thread(target=lambda: [outputs.handle(r) for r in
                                                    results[:first + 5]])
            status: list[Any] = []
            asked = threading.Thread(target=lambda: status.append(comm.stats()))
            with frozen(mnt):
                loop.start()
                loop.join(timeout=20)  # a liveness bound: frozen, every write would block
                went_on = not loop.is_alive()
                sounds = buzzer.update()  # the buzzer thread's turn: the raise sounds
                asked.start()
                asked.join(timeout=5)
            loop.join()
            asked.join()
            assert went_on, "the loop waited for the frozen disk"
            assert status and "outbox" in status[0]  # the status answered while frozen
            assert sounds and buzzer.sound_delays_s()
            for r in results[first + 5:]:
                outputs.handle(r)
            assert comm.wait_drained(20), comm.stats()
            want = {"before", *(e.event_id for e in events)}
            assert sub.wait_for(lambda msgs: {json.loads(p)["event"]["event_id"]
                                              for _, p in msgs} >= want, 15)
            _pairs_are_unique([json.loads(p) for _, p in sub.messages])
        finally:
            comm.stop()
            buzzer.close()
            sub.close()


STOP_WHILE_FROZEN = """
import json, os, sys
from pathlib import Path
from dms.outputs.mqtt import MqttCommunicator, MqttSettings
state, spill, port = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
comm = MqttCommunicator(MqttSettings(host="127.0.0.1", port=port, device_id="cab1",
                                     spill_dir=spill), state).start()
comm.publish_alert({"event_id": "a0"})
print("ready", flush=True)
sys.stdin.readline()  # the parent froze the state directory
for i in (1, 2, 3):
    comm.publish_alert({"event_id": f"a{i}"}, wait_s=0.1)
comm.stop()
print("stopped", flush=True)
os._exit(0)
"""


def test_a_stop_while_the_disk_is_frozen_spills_what_was_not_written(tmp_path: Path) -> None:
    """The stop does not hang on a stalled disk: alerts still waiting for it are spilled
    (another file system) and the next start stores and delivers them, each once under its
    own (stream, seq)."""
    require_mosquitto()
    port = free_port()
    spill = tmp_path / "spill"
    with loop_mount(tmp_path / "mnt") as mnt:
        child = subprocess.Popen([sys.executable, "-c", STOP_WHILE_FROZEN, str(mnt / "state"),
                                  str(spill), str(port)], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
        assert child.stdin is not None and child.stdout is not None
        try:
            assert child.stdout.readline().strip() == "ready"
            with frozen(mnt):
                child.stdin.write("go\n")
                child.stdin.flush()
                assert child.stdout.readline().strip() == "stopped"  # while still frozen
                spilled = [json.loads(line) for f in spill.glob("*.spill")
                           for line in f.read_text().splitlines()]
            assert {"a1", "a2", "a3"} <= {d["event"]["event_id"] for d in spilled
                                          if "event" in d}
        finally:
            child.wait(timeout=60)
        sub_alerts: list[dict[str, Any]] = []
        with start_broker(tmp_path / "broker", port=port) as brk:
            sub = Collector(brk.port, "dms/cab1/alert")
            try:
                comm = MqttCommunicator(replace(_settings(port), spill_dir=str(spill)),
                                        mnt / "state").start()
                assert comm.wait_drained(20), comm.stats()
                comm.stop()
                assert sub.wait_for(lambda m: {json.loads(p)["event"]["event_id"]
                                               for _, p in m} >= {"a1", "a2", "a3"}, 15)
                sub_alerts = sub.payloads("/alert")
            finally:
                sub.close()
    _pairs_are_unique(sub_alerts)
    named: dict[str, set[tuple[str, int]]] = {}
    for a in sub_alerts:
        named.setdefault(a["event"]["event_id"], set()).add((a["stream"], a["seq"]))
    assert sorted(named) == ["a0", "a1", "a2", "a3"]
    assert all(len(p) == 1 for p in named.values())  # none stored twice (spilled and landed)


# -- issue 21, fault 4: spill files trusted from a folder another local user made ----------


def forged_line(topic: str, *, stream: str = "ab" * 16, seq: int = 7, qos: int = 1,
                payload_seq: int | None = None) -> str:
    """A spill-file line carrying a level-3 alert that this device never raised."""
    payload = json.dumps({"schema": 1, "device": "cab1", "stream": stream,
                          "seq": seq if payload_seq is None else payload_seq,
                          "queued_wall_s": 0.0,
                          "event": {"event_id": f"forged-{topic}-{qos}-{seq}",
                                    "type": "slump", "level": 3, "phase": "raised"}})
    return json.dumps({"topic": topic, "payload": payload, "qos": qos, "seq": seq,
                       "created_wall_s": 0.0})


def spill_path_of(db: Path, spill: Path) -> Path:
    box = Outbox(db, spill_dir=spill)
    path = box.spill_path
    box.close()
    assert path is not None
    return path


def test_a_spill_folder_others_can_write_is_refused(tmp_path: Path) -> None:
    """issue 21, fault 4: outside systemd, another local user pre-created the spill folder
    (/dev/shm/dms-<uid>) 0777, and a forged level-3 alert written there was published as
    the device. A folder that is not ours alone is now neither read nor written."""
    db, spill = tmp_path / "state" / "outbox.sqlite3", tmp_path / "spill"
    path = spill_path_of(db, spill)
    spill.mkdir()
    os.chmod(spill, 0o777)
    path.write_text(forged_line("dms/cab1/alert") + "\n")
    os.chmod(path, 0o600)
    box = Outbox(db, spill_dir=spill)
    assert box.pending() == []  # the forged alert is not taken
    box.put_alert("dms/cab1/alert", payload)
    box.close()  # undelivered: not written into a folder others can write either
    assert "forged" in path.read_text()
    if os.geteuid() == 0:  # owned by another user, even if not writable by others
        os.chmod(spill, 0o755)
        os.chown(spill, 65534, 65534)
        box = Outbox(db, spill_dir=spill)
        assert [json.loads(r.payload).get("seq") for r in box.pending()] == [1]  # ours only
        box.close()


def test_spilled_rows_are_checked_one_by_one_and_a_bad_one_is_skipped(tmp_path: Path) -> None:
    """A wildcard topic, another device's topic, QoS 0, a malformed stream, a payload whose
    seq is not the row's: each is refused; the good row next to them is taken."""
    require_mosquitto()
    state, spill = tmp_path / "state", tmp_path / "spill"
    settings = replace(_settings(free_port()), spill_dir=str(spill))
    comm = MqttCommunicator(settings, state).start()  # no broker: the spill path is known
    path = comm._outbox.spill_path if comm._outbox is not None else None
    comm.stop()
    assert path is not None
    spill.mkdir(mode=0o750, exist_ok=True)
    path.write_text("\n".join([
        forged_line("dms/cab1/#"), forged_line("dms/other/alert", seq=2),
        forged_line("dms/cab1/alert", qos=0, seq=3), forged_line("dms/cab1/alert", stream="x"),
        forged_line("dms/cab1/alert", seq=5, payload_seq=6), "not json",
        forged_line("dms/cab1/alert", seq=9)]) + "\n")
    comm = MqttCommunicator(settings, state).start()
    try:
        assert comm.stats()["outbox"]["pending_alerts"] == 1  # only the well-formed row
    finally:
        comm.stop()


def test_the_spill_never_follows_a_link_planted_in_its_place(tmp_path: Path) -> None:
    """The temporary spill file followed a symbolic link, so a root-owned file was
    overwritten. Now a link in its place is removed, never followed."""
    db, spill = tmp_path / "state" / "outbox.sqlite3", tmp_path / "spill"
    path = spill_path_of(db, spill)
    victim = tmp_path / "victim"
    victim.write_text("another user's file\n")
    spill.mkdir(mode=0o750, exist_ok=True)
    os.symlink(victim, path.with_name(path.name + ".tmp"))
    box = Outbox(db, spill_dir=spill)
    box.put_alert("dms/cab1/alert", payload)
    box.close()  # spills the undelivered alert
    assert victim.read_text() == "another user's file\n"
    assert not path.is_symlink() and json.loads(path.read_text())["seq"] == 1


def test_a_row_the_broker_cannot_take_never_blocks_the_queue(tmp_path: Path) -> None:
    """A spilled row with a wildcard topic blocked the whole queue for good, even after a
    restart. A row that can never be published is now logged and dropped."""
    require_mosquitto()
    state = tmp_path / "state"
    box = Outbox(state / "outbox.sqlite3")  # a row that got in before the checks
    box.put_alert("dms/cab1/#", lambda stream, seq: forged_line("x").encode())
    box.close()
    with start_broker(tmp_path / "broker") as brk:
        sub = Collector(brk.port, "dms/cab1/alert")
        comm = MqttCommunicator(_settings(brk.port), state).start()
        try:
            for i in range(3):
                comm.publish_alert({"i": i})
            assert comm.wait_drained(15), comm.stats()
            assert sub.wait_for(lambda m: len(m) >= 3, 10)
        finally:
            comm.stop()
            sub.close()
