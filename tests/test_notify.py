"""sd_notify over a real unix datagram socket standing in for systemd's NOTIFY_SOCKET."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dms.outputs.notify import Notifier, Watchdog


@pytest.fixture
def systemd_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = tmp_path / "notify.sock"
    if len(str(path)) > 100:
        pytest.skip(f"tmp path too long for a unix socket: {path}")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2.0)
    yield sock, str(path)
    sock.close()


def received(sock: socket.socket) -> list[str]:
    """Every datagram waiting on the socket."""
    out = []
    sock.settimeout(0.2)
    try:
        while True:
            out.append(sock.recv(4096).decode())
    except TimeoutError:
        return out


def test_ready_status_watchdog_stopping_arrive(systemd_socket: tuple[socket.socket, str]) -> None:
    sock, path = systemd_socket
    n = Notifier.from_environ({"NOTIFY_SOCKET": path})
    assert n.enabled
    assert n.ready("camera and models warm")
    assert n.status("30 fps")
    assert n.watchdog()
    assert n.stopping()
    n.close()
    assert received(sock) == ["READY=1\nSTATUS=camera and models warm", "STATUS=30 fps",
                              "WATCHDOG=1", "STOPPING=1"]


def test_abstract_socket_names_start_with_at() -> None:
    name = f"dms-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    try:
        assert Notifier("@" + name).ready()
        assert received(sock) == ["READY=1"]
    finally:
        sock.close()


def test_without_notify_socket_it_is_a_logged_no_op(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="dms.outputs.notify")
    n = Notifier.from_environ({})
    assert not n.enabled and not n.ready()
    assert "NOTIFY_SOCKET not set" in caplog.text
    wd = Watchdog.from_environ(n, {"WATCHDOG_USEC": "10000000"})
    wd.frame_processed(1.0)
    assert not wd.maybe_ping(1.0)


def test_a_vanished_socket_does_not_raise(tmp_path: Path) -> None:
    assert not Notifier(str(tmp_path / "gone.sock")).ready()


def test_watchdog_is_fed_only_while_frames_flow(systemd_socket: tuple[socket.socket, str]) -> None:
    sock, path = systemd_socket
    env = {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(os.getpid())}
    wd = Watchdog.from_environ(Notifier.from_environ(env), env)
    assert wd.enabled and wd.timeout_s == 10.0
    assert not wd.maybe_ping(0.0)  # no frame yet: the camera is not up, no ping
    pings = []
    t = 0.0
    while t < 20.0:  # 20 s of frames at 10 fps, loop polls every frame
        wd.frame_processed(t)
        pings.append(wd.maybe_ping(t))
        t = round(t + 0.1, 3)
    n_running = sum(pings)
    assert 7 <= n_running <= 9  # every timeout/4 = 2.5 s
    # last frame at 19.9 s, then a stall: the loop keeps polling; one more ping is due at
    # 20.5 (rate limit), none at 22.0 (too soon), none once the newest frame is older than
    # timeout/2 = 5 s, so systemd's watchdog fires 10 s after the last ping
    stalled = [wd.maybe_ping(t) for t in (20.5, 22.0, 25.5, 30.0, 60.0)]
    assert stalled == [True, False, False, False, False]
    assert received(sock) == ["WATCHDOG=1"] * (n_running + 1)
    wd.frame_processed(61.0)  # frames again
    assert wd.maybe_ping(61.0)


def test_watchdog_env_for_another_pid_is_ignored() -> None:
    wd = Watchdog.from_environ(Notifier(None), {"WATCHDOG_USEC": "5000000", "WATCHDOG_PID": "1"})
    assert wd.timeout_s is None
