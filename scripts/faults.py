"""Fault injection against the real service and a real mosquitto: every fault of issues 13
and 21, one row each, with the alerts raised, delivered, lost and duplicated, the
``(stream, seq)`` pairs that named two different alerts, the recovery time, and the delay
from an alert's raise to the buzzer thread switching the line on (p50 / p99: the worst of
the row's processes; from the ``summary:`` line ``dms run`` logs at exit).

    python scripts/faults.py --out out/faults --md docs/_bench_faults.md [--only NAME ...]

Each row starts ``dms run`` (a subprocess, as systemd runs it) on a looping rendered drive
that raises an alert every few seconds, with a subscriber recording every alert message;
rows that need a camera this machine lacks run the same ``Service`` in-process with a
scripted frame source behind FrameSource's interface. ``raised`` counts the alert records
the service(s) printed (each is in the durable outbox before it is printed); ``delivered``
the distinct records the broker handed the subscriber; ``lost = raised - delivered`` after
every row ends with a clean drain; ``reused`` counts ``(stream, seq)`` pairs carrying two
different ``event_id``s. ``recovery`` is the time from the fault to the service publishing
again (its next ``state``, or the first alert after the fault when that comes first).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from broker import Broker, Collector  # noqa: E402  (the tests' mosquitto helper)

# a drive that raises (and clears) an alert every few seconds once the neutral is learned
SCRIPT = ("road 5s; glance infotainment 4s; road 3s; slump 4s; road 3s; occlude 3s; "
          "road 2s; glance left-window 4s; road 3s")


@dataclass
class Row:
    name: str
    fault: str
    raised: set[str] = field(default_factory=set)
    receipts: list[tuple[str, int, str]] = field(default_factory=list)  # stream, seq, id
    recovery_s: float | None = None
    note: str = ""
    audible: int = 0  # records printed that sound the buzzer (level >= 2, not cleared)
    sound_p50_ms: list[float] = field(default_factory=list)  # per process of the row
    sound_p99_ms: list[float] = field(default_factory=list)
    sounded: int = 0

    def read_summaries(self, log: Path) -> None:
        """The raise-to-sound figures of every ``dms run`` summary line in ``log``."""
        if not log.exists():
            return
        for line in log.read_text(errors="replace").splitlines():
            if "summary: " not in line:
                continue
            kv = dict(w.split("=", 1) for w in line.split("summary: ", 1)[1].split() if "=" in w)
            self.sounded += int(kv.get("buzzer_sounded", 0))
            if "raise_to_sound_p50_ms" in kv:
                self.sound_p50_ms.append(float(kv["raise_to_sound_p50_ms"]))
                self.sound_p99_ms.append(float(kv["raise_to_sound_p99_ms"]))

    def result(self) -> dict[str, Any]:
        delivered = {r[2] for r in self.receipts}
        pairs: dict[tuple[str, int], set[str]] = {}
        for stream, seq, eid in self.receipts:
            pairs.setdefault((stream, seq), set()).add(eid)
        return {"fault": self.name, "what": self.fault, "raised": len(self.raised),
                "delivered": len(delivered & self.raised),
                "lost": len(self.raised - delivered),
                "duplicates": len(self.receipts) - len(set(self.receipts)),
                "reused_stream_seq": sum(len(ids) > 1 for ids in pairs.values()),
                "recovery_s": None if self.recovery_s is None else round(self.recovery_s, 2),
                "sounded": self.sounded,
                "sound_p50_ms": max(self.sound_p50_ms) if self.sound_p50_ms else None,
                "sound_p99_ms": max(self.sound_p99_ms) if self.sound_p99_ms else None,
                "note": self.note}


class Harness:
    def __init__(self, out: Path, clip: Path) -> None:
        self.out = out
        self.clip = clip
        # the broker persists (tests/broker.py): QoS 1 messages queued for the persistent
        # subscriber survive a broker restart, so the observer itself never misses one
        self.broker = Broker(out / "broker").start()

    def config(self, name: str, state: Path | None = None, camera: str = "",
               **sections: str) -> Path:
        state = state or self.out / name / "state"
        camera = camera or f'source = "{self.clip}"\nloop = true'
        text = (f'[service]\nstate_dir = "{state}"\nstate_interval_s = 0.5\n'
                "stop_drain_timeout_s = 10\nstop_deadline_s = 20\n"
                f"[camera]\n{camera}\n"
                f'[mqtt]\nhost = "127.0.0.1"\nport = {self.broker.port}\n'
                f'device_id = "{name}"\nkeepalive_s = 5\n')
        for section, body in sections.items():
            text += f"[{section}]\n{body}\n"
        path = self.out / name / "dms.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    @contextlib.contextmanager
    def subscriber(self, row: Row) -> Iterator[Collector]:
        sub = Collector(self.broker.port, f"dms/{row.name}/#", client_id=f"faults-{row.name}",
                        persistent=True)
        try:
            yield sub
        finally:
            for topic, payload in sub.messages:
                if topic.endswith("/alert"):
                    doc = json.loads(payload)
                    row.receipts.append((doc["stream"], doc["seq"], doc["event"]["event_id"]))
            sub.close()

    def start(self, cfg: Path, row: Row, *extra: str, env: dict[str, str] | None = None,
              nofile: int | None = None) -> subprocess.Popen[str]:
        def limit() -> None:
            if nofile is not None:
                import resource

                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        proc = subprocess.Popen([sys.executable, "-m", "dms", "run", "--config", str(cfg),
                                 "--print-events", *extra], stdout=subprocess.PIPE,
                                stderr=open(cfg.parent / "service.log", "a"),  # noqa: SIM115
                                text=True, env=env, preexec_fn=limit)

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                with contextlib.suppress(ValueError, KeyError):
                    rec = json.loads(line)
                    row.raised.add(rec["event_id"])
                    if rec.get("level", 0) >= 2 and rec.get("phase") != "cleared":
                        row.audible += 1

        threading.Thread(target=read, daemon=True).start()
        return proc

    def stop(self, proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> int:
        if proc.poll() is None:
            proc.send_signal(sig)
        try:
            return proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()


def wait_for(pred: Callable[[], bool], timeout_s: float) -> bool:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.1)
    return pred()


def published_after(sub: Collector, t0: float) -> Callable[[], bool]:
    """True once any state/alert message arrived after wall time t0."""
    def pred() -> bool:
        return any(arrived >= t0 for arrived, topic in sub.arrivals
                   if topic.endswith(("/state", "/alert")))
    return pred


def recovery_s(sub: Collector, t0: float, timeout_s: float = 60.0) -> float | None:
    """Seconds from wall time t0 to the first state/alert message after it (None: none
    arrived within ``timeout_s``)."""
    if not wait_for(published_after(sub, t0), timeout_s):
        return None
    return sub.first_after(t0) - t0


def drain(h: Harness, row: Row, sub: Collector, cfg: Path) -> None:
    """A clean start-and-stop after the row, so whatever the outbox still holds is sent, then
    wait until every raised alert arrived (or 30 s)."""
    proc = h.start(cfg, row, "--max-frames", "5")
    proc.wait(timeout=120)

    def done() -> bool:
        got = {json.loads(p)["event"]["event_id"] for t, p in sub.messages
               if t.endswith("/alert")}
        return row.raised <= got
    wait_for(done, 30)


# ----------------------------------------------------------------------------- the faults


def signal_then_restart(h: Harness, name: str, sig: int) -> dict[str, Any]:
    row = Row(name, f"{signal.Signals(sig).name} mid-run, then a restart")
    cfg = h.config(name)
    with h.subscriber(row) as sub:
        proc = h.start(cfg, row)
        wait_for(lambda: len(row.raised) >= 3, 120)
        h.stop(proc, sig)
        t0 = time.time()
        proc = h.start(cfg, row)
        row.recovery_s = recovery_s(sub, t0)
        wait_for(lambda: len(row.raised) >= 6, 120)
        h.stop(proc)
        drain(h, row, sub, cfg)
    return row.result()


def broker_restart(h: Harness) -> dict[str, Any]:
    row = Row("broker", "broker stopped 5 s mid-run, then started")
    cfg = h.config("broker")
    with h.subscriber(row) as sub:
        proc = h.start(cfg, row)
        wait_for(lambda: len(row.raised) >= 2, 120)
        h.broker.stop()
        time.sleep(5.0)
        h.broker.start()
        t0 = time.time()
        row.recovery_s = recovery_s(sub, t0)
        wait_for(lambda: len(row.raised) >= 5, 120)
        h.stop(proc)
        drain(h, row, sub, cfg)
    return row.result()


def camera_missing(h: Harness) -> dict[str, Any]:
    row = Row("nocamera", "camera missing at start (/dev/video97)")
    cfg = h.config("nocamera", camera='source = "/dev/video97"\nreconnect_max_s = 2.0')
    t0 = time.time()
    with h.subscriber(row) as sub:
        proc = h.start(cfg, row)
        ok = wait_for(lambda: len(row.raised) >= 1, 60)
        row.recovery_s = sub.first_after(t0) - t0 if ok else None
        time.sleep(3.0)
        row.note = ("kept running, retrying the camera" if proc.poll() is None
                    else f"exited {proc.returncode}")
        h.stop(proc)
        drain(h, row, sub, h.config("nocamera"))  # the same device and state, with a camera
    return row.result()


def outbox_fault(h: Harness, name: str, what: str, damage: Callable[[Path], None],
                 while_running: bool = True) -> dict[str, Any]:
    """Alerts pile up in the outbox while the broker is down; then the outbox is damaged
    (while the service runs, or between two runs); the broker comes back."""
    row = Row(name, what)
    state = h.out / name / "state"
    cfg = h.config(name, state)
    with h.subscriber(row) as sub:
        proc = h.start(cfg, row)
        wait_for(lambda: len(row.raised) >= 1, 120)
        h.broker.stop()
        n = len(row.raised)
        wait_for(lambda: len(row.raised) >= n + 2, 120)  # pending in the outbox
        if not while_running:
            h.stop(proc)
        damage(state)
        t0 = time.time()
        if not while_running:
            proc = h.start(cfg, row)
        time.sleep(2.0)
        h.broker.start()
        row.recovery_s = recovery_s(sub, t0)
        wait_for(lambda: len(row.raised) >= n + 4, 120)
        h.stop(proc)
        drain(h, row, sub, cfg)
        reasons = [json.loads(p)["event"]["reason"] for t, p in sub.messages
                   if t.endswith("/alert")]
        row.note = f"outbox_damaged records: {reasons.count('outbox_damaged')}"
        if (state / "outbox.sqlite3").exists():
            aside = sorted(p.name for p in state.glob("outbox.sqlite3.damaged-*"))
            row.note += f"; set aside: {len(aside)}"
    return row.result()


def _outbox_files(state: Path) -> list[Path]:
    """The live outbox and its -wal (not files set aside after earlier damage)."""
    return [f for f in state.glob("outbox.sqlite3*") if ".damaged" not in f.name]


def _truncate(state: Path) -> None:
    for f in _outbox_files(state):
        os.truncate(f, 0)


def _delete(state: Path) -> None:
    for f in _outbox_files(state):
        f.unlink()


def _garbage(state: Path) -> None:
    f = state / "outbox.sqlite3"
    size = max(f.stat().st_size, 4096)
    f.write_bytes(os.urandom(size))
    for side in state.glob("outbox.sqlite3-*"):
        side.unlink()


def disk_full(h: Harness) -> dict[str, Any]:
    """The state directory on a 1 MB tmpfs that fills up mid-run; then a restart, and the
    space comes back: no (stream, seq) may name two alerts, none may be lost."""
    row = Row("diskfull", "state directory on a full disk (1 MB tmpfs), restart, space back")
    mnt = h.out / "diskfull" / "tmpfs"
    mnt.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        row.note = f"skipped: cannot mount a tmpfs here ({mounted.stderr.strip()})"
        return row.result()
    try:
        state = mnt / "state"
        cfg = h.config("diskfull", state)
        with h.subscriber(row) as sub:
            proc = h.start(cfg, row)
            wait_for(lambda: len(row.raised) >= 1, 120)
            h.broker.stop()
            filler = mnt / "filler"
            with contextlib.suppress(OSError), open(filler, "wb") as f:
                while True:
                    f.write(b"\0" * 65536)
            n = len(row.raised)
            wait_for(lambda: len(row.raised) >= n + 3, 120)
            h.stop(proc)
            proc = h.start(cfg, row)
            wait_for(lambda: len(row.raised) >= n + 5, 120)
            filler.unlink()
            t0 = time.time()
            h.broker.start()
            row.recovery_s = recovery_s(sub, t0)
            h.stop(proc)
            drain(h, row, sub, cfg)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
    return row.result()


def command_row(h: Harness, name: str, what: str, retained: bool) -> dict[str, Any]:
    """A mute command that must be refused: retained (signed, left on the broker before the
    service starts) or unsigned (published while it runs). Alerts must still flow."""
    import paho.mqtt.publish as publish

    from dms.outputs.command_auth import sign_command

    key = "faults-" + "k" * 32
    row = Row(name, what)
    cfg = h.config(name)
    os.environ["DMS_COMMAND_KEY"] = key
    topic = f"dms/{name}/cmd/mute"
    try:
        with h.subscriber(row) as sub:
            if retained:
                payload = sign_command(key.encode(), name, "mute", {"duration_s": 600})
                publish.single(topic, payload, qos=1, retain=True, hostname="127.0.0.1",
                               port=h.broker.port)
            proc = h.start(cfg, row)
            wait_for(lambda: len(row.raised) >= 1, 120)
            t0 = time.time()
            if not retained:
                publish.single(topic, json.dumps({"duration_s": 600}), qos=1,
                               hostname="127.0.0.1", port=h.broker.port)
            got_reply = wait_for(lambda: any(t.endswith("/reply") for t, _ in sub.messages),
                                 30)
            replies = [json.loads(p) for t, p in sub.messages if t.endswith("/reply")]
            del got_reply, t0  # monitoring never stops for a refused command: no recovery
            ok = [r.get("ok") for r in replies]
            row.note = f"replies ok={ok}: {replies[0].get('error', '')[:60]}" if replies \
                else "no reply"
            wait_for(lambda: len(row.raised) >= 3, 120)  # alerts (and the buzzer) go on
            h.stop(proc)
            if retained:
                publish.single(topic, b"", qos=1, retain=True, hostname="127.0.0.1",
                               port=h.broker.port)
            drain(h, row, sub, cfg)
    finally:
        os.environ.pop("DMS_COMMAND_KEY", None)
    return row.result()


def in_process(h: Harness, name: str, what: str,
               make_source: Callable[[Any], Any]) -> dict[str, Any]:
    """The real Service in this process, frames from a scripted source (a camera stand-in),
    alerts through the real MQTT path to the broker."""
    from dms.config import load_config
    from dms.service import build_service

    row = Row(name, what)
    cfg = load_config(h.config(name))
    with h.subscriber(row) as sub:
        t0 = time.time()
        svc = build_service(cfg, on_event=lambda rec: row.raised.add(str(rec["event_id"])))
        source = make_source(cfg)
        svc.run(source=source)
        row.recovery_s = getattr(source, "recovery_s", None)
        delays = sorted(1e3 * d for d in svc.buzzer.sound_delays_s())
        row.sounded = len(delays)
        if delays:
            row.sound_p50_ms.append(delays[len(delays) // 2])
            row.sound_p99_ms.append(delays[min(len(delays) - 1, round(0.99 * (len(delays) - 1)))])
        row.note = (f"{svc.frames} frames, {svc.monitor.bad_frames if svc.monitor else 0} "
                    f"skipped, loop errors {svc.loop_errors}")
        wait_for(lambda: {json.loads(p)["event"]["event_id"] for t, p in sub.messages
                          if t.endswith("/alert")} >= row.raised, 30)
        del t0
    return row.result()


def bad_frames_source(clip: Path) -> Callable[[Any], Any]:
    import numpy as np

    from dms.capture import Frame, video_frames

    frames = [f.image for f in video_frames(str(clip))]

    class Source:
        recovery_s = None  # monitoring never stops: nothing to recover from

        def frames(self, stop: threading.Event) -> Iterator[Any]:
            import cv2

            kinds: list[Any] = [
                lambda g: cv2.cvtColor(g, cv2.COLOR_BGR2GRAY),  # GRAY8
                lambda g: np.zeros((0, 0, 3), np.uint8),  # 0x0
                lambda g: cv2.cvtColor(g, cv2.COLOR_BGR2BGRA),  # 4 channels
                lambda g: g.astype(np.float32) * np.nan,  # NaN
                lambda g: np.zeros((g.shape[0], g.shape[1], 5), np.uint8),  # 5 channels
            ]
            k = 0
            for i, img in enumerate(frames * 2):
                if stop.is_set():
                    return
                if i % 7 == 3:
                    img = kinds[k % len(kinds)](img)
                    k += 1
                yield Frame(img, i / 10.0, i)

    return lambda cfg: Source()


def camera_lost_source(clip: Path) -> Callable[[Any], Any]:
    from dms.capture import FrameSource
    from dms.capture import video_frames as vf

    frames = [f.image for f in vf(str(clip))]
    state = {"opens": 0, "lost_at": 0.0, "back_at": 0.0}

    class FakeCamera:
        """Delivers the clip, goes dark after 150 frames; reopening fails twice."""

        def __init__(self) -> None:
            self.i = 0

        def read(self) -> tuple[bool, Any]:
            time.sleep(0.02)
            if state["opens"] == 1 and self.i >= 150 or self.i >= len(frames) * 2:
                if not state["lost_at"]:
                    state["lost_at"] = time.time()
                return False, None
            self.i += 1
            return True, frames[self.i % len(frames)]

        def release(self) -> None:
            pass

    def opener(_source: str) -> FakeCamera:
        from dms.errors import InputError

        state["opens"] += 1
        if 2 <= state["opens"] <= 3:
            raise InputError("/dev/video0: camera cannot be opened")
        if state["opens"] == 4:
            state["back_at"] = time.time()
        return FakeCamera()

    def make(cfg: Any) -> Any:
        from dataclasses import replace

        cam = replace(cfg.camera, source="0", frame_timeout_s=1.0, reconnect_min_s=0.5,
                      reconnect_max_s=1.0)
        src = FrameSource(cam, opener=opener)

        class Timed:
            @property
            def recovery_s(self) -> float | None:
                if state["lost_at"] and state["back_at"]:
                    return state["back_at"] - state["lost_at"]
                return None

            def frames(self, stop: threading.Event) -> Iterator[Any]:
                for n, item in enumerate(src.frames(stop)):
                    yield item
                    if state["opens"] >= 4 and n > 600:
                        return

        return Timed()

    return make


# ----------------------------------------------------------------------- issue 21's faults

SOUNDS = 6  # audible alert records (level >= 2) each fault lasts for, for the delay figures


def _row_with(h: Harness, name: str, what: str, fault: Callable[[Row, Collector], str],
              sections: dict[str, str] | None = None, env: dict[str, str] | None = None,
              nofile: int | None = None, state: Path | None = None) -> dict[str, Any]:
    """Start the service, let it raise two alerts, run ``fault`` (it returns a note) while
    alerts go on, stop, drain, and read the raise-to-sound figures from the log."""
    row = Row(name, what)
    cfg = h.config(name, state, **(sections or {}))
    with h.subscriber(row) as sub:
        proc = h.start(cfg, row, env=env, nofile=nofile)
        wait_for(lambda: len(row.raised) >= 2, 120)
        row.note = fault(row, sub)
        h.stop(proc)
        drain(h, row, sub, cfg)
    row.read_summaries(cfg.parent / "service.log")
    return row.result()


def preview_flood(h: Harness) -> dict[str, Any]:
    """1,100 idle connections without a token to the preview of a process limited to 1,024
    descriptors, while alerts sound through a buzzer hook."""
    import resource
    import socket

    from broker import free_port

    port = free_port()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):  # this harness needs > 1,100 itself
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
    env = {**os.environ, "DMS_PREVIEW_TOKEN": "faults-" + "p" * 24}

    def fault(row: Row, sub: Collector) -> str:
        idle: list[socket.socket] = []
        try:
            for _ in range(1100):
                try:
                    idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
                except OSError:
                    break
            a = row.audible
            wait_for(lambda: row.audible >= a + SOUNDS, 600)  # alerts sound meanwhile
            ok = _status_answers(port, env["DMS_PREVIEW_TOKEN"])
        finally:
            for s in idle:
                s.close()
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        return f"{len(idle)} idle connections; status answered: {ok}"

    return _row_with(h, "previewflood", "1,100 idle preview connections, 1,024 descriptors",
                     fault, {"preview": f"enabled = true\nport = {port}",
                             "buzzer": 'backend = "command"\ncommand_on = ["true"]\n'
                                       'command_off = ["true"]'}, env=env, nofile=1024)


def _status_answers(port: int, token: str) -> bool:
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/api/status", headers={"Authorization": f"Bearer {token}"})
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def slow_hook(h: Harness) -> dict[str, Any]:
    """Buzzer hooks that take 1.5 s each (on and off)."""
    slow = f'["{sys.executable}", "-c", "import time; time.sleep(1.5)"]'

    def fault(row: Row, sub: Collector) -> str:
        a = row.audible
        wait_for(lambda: row.audible >= a + SOUNDS, 600)
        return "hooks of 1.5 s on and off"

    return _row_with(h, "slowhook", "buzzer hooks taking 1.5 s (on and off)", fault,
                     {"buzzer": f'backend = "command"\ncommand_on = {slow}\n'
                                f"command_off = {slow}\ncommand_timeout_s = 5.0"})


def frozen_disk(h: Harness) -> dict[str, Any]:
    """The state directory's file system frozen (fsfreeze) for 15 s while alerts come."""
    row = Row("frozendisk", "state directory frozen 15 s (fsfreeze)")
    mnt = h.out / "frozendisk" / "mnt"
    image = h.out / "frozendisk" / "fs.img"
    mnt.mkdir(parents=True, exist_ok=True)
    with open(image, "wb") as f:
        f.truncate(32 << 20)
    made = subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], capture_output=True,
                          text=True)
    mounted = subprocess.run(["mount", "-o", "loop", str(image), str(mnt)],
                             capture_output=True, text=True) if made.returncode == 0 else made
    if mounted.returncode != 0:
        row.note = f"skipped: cannot loop-mount an ext4 image here ({mounted.stderr.strip()})"
        return row.result()

    def fault(row: Row, sub: Collector) -> str:
        n = len(row.raised)
        subprocess.run(["fsfreeze", "-f", str(mnt)], check=True)
        t0 = time.monotonic()
        try:
            while time.monotonic() - t0 < 15.0:
                time.sleep(0.2)
            during = len(row.raised) - n
        finally:
            subprocess.run(["fsfreeze", "-u", str(mnt)], check=True)
        t1 = time.time()
        row.recovery_s = recovery_s(sub, t1)
        wait_for(lambda: len(row.raised) >= n + during + 1, 120)
        for _ in range(3):  # three more freezes, so that more alerts sound during one
            a = row.audible
            subprocess.run(["fsfreeze", "-f", str(mnt)], check=True)
            try:
                wait_for(lambda a=a: row.audible >= a + 2, 120)  # type: ignore[misc]
            finally:
                subprocess.run(["fsfreeze", "-u", str(mnt)], check=True)
        return f"{during} alert records raised during the first 15 s freeze"

    try:
        return _row_with(h, "frozendisk", row.fault, fault, state=mnt / "state")
    finally:
        subprocess.run(["fsfreeze", "-u", str(mnt)], capture_output=True)
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def command_flood(h: Harness) -> dict[str, Any]:
    """1,000 unsigned commands a second (for 10 s, and until SOUNDS alerts sounded), a signed
    `state` in the middle, and a SIGTERM while the flood goes on."""
    import paho.mqtt.client as mqtt

    from dms.outputs.command_auth import sign_command

    key = "faults-" + "k" * 32
    name = "cmdflood"
    row = Row(name, "1,000 unsigned commands a second, a signed state, SIGTERM in the flood")
    cfg = h.config(name)
    env = {**os.environ, "DMS_COMMAND_KEY": key}
    with h.subscriber(row) as sub:
        proc = h.start(cfg, row, env=env)
        wait_for(lambda: len(row.raised) >= 2, 120)
        flood = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="faults-flood")
        flood.connect("127.0.0.1", h.broker.port)
        flood.loop_start()
        topic = f"dms/{name}/cmd/mute"
        t_state = t_reply = None
        try:
            t0 = time.monotonic()
            sent, a = 0, row.audible
            while time.monotonic() - t0 < 10.0 or (row.audible < a + SOUNDS and
                                                    time.monotonic() - t0 < 600):
                for _ in range(100):
                    flood.publish(topic, b'{"duration_s": 600}', qos=0)
                    sent += 1
                if t_state is None and time.monotonic() - t0 > 5.0:
                    t_state = time.monotonic()
                    flood.publish(f"dms/{name}/cmd/state", sign_command(
                        key.encode(), name, "state", request_id="through"), qos=1)
                if t_reply is None and any(t.endswith("/reply") and b"through" in p
                                           for t, p in sub.messages):
                    t_reply = time.monotonic()
                time.sleep(max(0.0, t0 + sent / 1000.0 - time.monotonic()))
            code = h.stop(proc)  # SIGTERM while the last of the flood is still arriving
        finally:
            flood.loop_stop()
            flood.disconnect()
        replies = sum(t.endswith("/reply") for t, _ in sub.messages)
        took = "-" if t_state is None or t_reply is None else f"{t_reply - t_state:.2f} s"
        row.note = (f"{sent} sent; {replies} reply (the signed state, in {took}); "
                    f"exit {code} after SIGTERM")
        drain(h, row, sub, cfg)
    row.read_summaries(cfg.parent / "service.log")
    return row.result()


FAULTS: dict[str, Callable[[Harness], dict[str, Any]]] = {
    "bad_frames": lambda h: in_process(h, "badframes", "GRAY8, 0x0, BGRA, NaN and 5-channel "
                                       "frames mixed into the drive", bad_frames_source(h.clip)),
    "sigterm": lambda h: signal_then_restart(h, "sigterm", signal.SIGTERM),
    "sigkill": lambda h: signal_then_restart(h, "sigkill", signal.SIGKILL),
    "sighup": lambda h: signal_then_restart(h, "sighup", signal.SIGHUP),
    "broker_restart": broker_restart,
    "camera_missing": camera_missing,
    "camera_lost": lambda h: in_process(h, "camlost", "camera lost mid-run, two failed "
                                        "reopens, then back", camera_lost_source(h.clip)),
    "outbox_truncated": lambda h: outbox_fault(h, "truncated", "outbox (and -wal) truncated "
                                               "to 0 bytes while running, broker down",
                                               _truncate),
    "outbox_deleted": lambda h: outbox_fault(h, "deleted", "outbox files deleted while "
                                             "running, broker down", _delete),
    "outbox_corrupted": lambda h: outbox_fault(h, "corrupted", "outbox overwritten with "
                                               "random bytes between two runs", _garbage,
                                               while_running=False),
    "disk_full": disk_full,
    "retained_command": lambda h: command_row(h, "retained", "a signed mute left retained "
                                              "on the broker, then a start", retained=True),
    "unsigned_command": lambda h: command_row(h, "unsigned", "an unsigned mute while "
                                              "running", retained=False),
    "preview_flood": preview_flood,
    "slow_hook": slow_hook,
    "frozen_disk": frozen_disk,
    "command_flood": command_flood,
}


def with_sound(result: dict[str, Any], out: Path) -> dict[str, Any]:
    """A row's raise-to-sound figures from its processes' logs, when it has none yet."""
    if result["sound_p99_ms"] is None:
        row = Row(result["fault"], result["what"])
        row.read_summaries(out / result["fault"] / "service.log")
        result |= {k: v for k, v in row.result().items()
                   if k in ("sounded", "sound_p50_ms", "sound_p99_ms")}
    return result


def markdown(rows: list[dict[str, Any]], machine: str) -> str:
    lines = [f"Machine: {machine}. Command: `python scripts/faults.py`.", "",
             "| fault | raised | delivered | lost | duplicates | (stream, seq) reused | "
             "recovery | raise to buzzer p50 / p99 (sounded) | note |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rec = "-" if r["recovery_s"] is None else f"{r['recovery_s']:.1f} s"
        sound = ("-" if r["sound_p99_ms"] is None else
                 f"{r['sound_p50_ms']:.1f} / {r['sound_p99_ms']:.1f} ms ({r['sounded']})")
        lines.append(f"| {r['what']} | {r['raised']} | {r['delivered']} | **{r['lost']}** | "
                     f"{r['duplicates']} | **{r['reused_stream_seq']}** | {rec} | {sound} | "
                     f"{r['note']} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("out/faults"))
    ap.add_argument("--md", type=Path, default=None, help="write the table as Markdown here")
    ap.add_argument("--only", nargs="*", choices=sorted(FAULTS), default=None)
    args = ap.parse_args()
    from dms.synth.render import render_scenario

    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    clip = Path(render_scenario(SCRIPT, args.out / "clip", fps=10, size="320x240").video)
    h = Harness(args.out, clip)
    rows = []
    try:
        for name in args.only or list(FAULTS):
            print(f"faults: {name} ...", file=sys.stderr, flush=True)
            rows.append(with_sound(FAULTS[name](h), args.out))
            print(f"  {json.dumps(rows[-1])}", file=sys.stderr, flush=True)
    finally:
        h.broker.stop()
    machine = f"{platform.machine()}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}"
    (args.out / "faults.json").write_text(json.dumps(rows, indent=2) + "\n")
    md = markdown(rows, machine)
    if args.md:
        args.md.write_text(md)
    print(md)
    bad = [r for r in rows if r["lost"] or r["reused_stream_seq"]]
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
