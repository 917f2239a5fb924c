"""A real mosquitto broker for tests, on a free 127.0.0.1 port, with its config in tmp_path.

``Broker`` can be stopped and started again on the same port; persistence is on, so persistent
subscriber sessions and their queued QoS 1 messages survive a restart (as on a fleet broker).
The ``broker`` fixture skips the test with a reason when no mosquitto binary is installed.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest


def find_mosquitto() -> str | None:
    found = shutil.which("mosquitto")
    if found:
        return found
    for candidate in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto"):
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    def __init__(self, workdir: Path, port: int | None = None, extra_config: str = "",
                 binary: str | None = None, allow_anonymous: bool = True) -> None:
        self.binary = binary or find_mosquitto()
        if self.binary is None:
            raise FileNotFoundError("mosquitto binary not found (apt install mosquitto)")
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.config = self.workdir / "mosquitto.conf"
        self.log_file = self.workdir / "mosquitto.log"
        user = pwd.getpwuid(os.geteuid()).pw_name  # root would otherwise drop to 'mosquitto'
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            f"allow_anonymous {'true' if allow_anonymous else 'false'}\n"
            f"user {user}\n"
            "persistence true\n"
            f"persistence_location {self.workdir}/\n"
            "autosave_interval 1\n"
            f"log_dest file {self.log_file}\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            + extra_config)
        self.proc: subprocess.Popen[bytes] | None = None
        self.restarts = 0

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self, timeout_s: float = 10.0) -> Broker:
        if self.running:
            return self
        if self.proc is not None:
            self.restarts += 1
        self.proc = subprocess.Popen([self.binary, "-c", str(self.config)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                log = self.log_file.read_text() if self.log_file.exists() else ""
                raise RuntimeError(f"mosquitto exited with {self.proc.returncode}: {err}{log}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"mosquitto did not accept connections on port {self.port}")

    def stop(self, timeout_s: float = 10.0) -> None:
        """Graceful stop (SIGTERM: mosquitto saves its persistence file)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def require_mosquitto() -> str:
    binary = find_mosquitto()
    if binary is None:
        pytest.skip("needs the mosquitto broker binary (Debian: apt install mosquitto)")
    return binary


def start_broker(workdir: Path, **kwargs: object) -> Broker:
    """A started Broker (use as a context manager); skips the test without mosquitto."""
    binary = require_mosquitto()
    return Broker(workdir, binary=binary, **kwargs).start()  # type: ignore[arg-type]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    """A running broker; import it into a test module (or conftest) to use it as a fixture."""
    with start_broker(tmp_path / "broker") as b:
        yield b


class Collector:
    """A subscriber recording (topic, payload) in arrival order."""

    def __init__(self, port: int, topic: str, client_id: str = "",
                 persistent: bool = False, user: str | None = None) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.arrivals: list[tuple[float, str]] = []  # (wall time, topic), as messages
        self._cond = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=mqtt.MQTTv311, clean_session=not persistent)
        self.client.reconnect_delay_set(1, 1)
        if user:
            self.client.username_pw_set(user, f"{user}-pw")
        self.subscribed = threading.Event()
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        # what is published from here on reaches it (a message the broker gets before the
        # SUBACK is not delivered to a new session): wait for the subscription, not a race
        self.subscribed.wait(10)

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        with self._cond:
            self.messages.append((msg.topic, bytes(msg.payload)))
            self.arrivals.append((time.time(), msg.topic))
            self._cond.notify_all()

    def first_after(self, t0: float) -> float:
        """Wall time of the first message that arrived at or after ``t0`` (inf: none)."""
        with self._cond:
            return min((t for t, _ in self.arrivals if t >= t0), default=float("inf"))

    def wait_for(self, pred: Callable[[list[tuple[str, bytes]]], bool],
                 timeout_s: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while not pred(self.messages):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True

    def clear(self) -> None:
        """Forget what arrived so far."""
        with self._cond:
            self.messages.clear()

    def payloads(self, suffix: str) -> list[Any]:
        with self._cond:
            return [json.loads(p) if p[:1] == b"{" else p.decode()
                    for t, p in self.messages if t.endswith(suffix)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
