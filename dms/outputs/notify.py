"""systemd's sd_notify protocol, spoken directly: one datagram per message to the unix socket
named by ``$NOTIFY_SOCKET`` (a path, or an abstract name written with a leading ``@``).

:class:`Notifier` sends READY=1, STATUS=..., STOPPING=1, WATCHDOG=1; it is a no-op (logged at
debug level) when NOTIFY_SOCKET is absent, and never raises on send errors. :class:`Watchdog`
pets systemd only while frames are being processed: ``frame_processed(t_s)`` on every frame,
``maybe_ping(now_s)`` from the loop; a stalled pipeline stops the pings and systemd restarts us.
The environment is read in ``from_environ`` (called by the service), never at import.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from typing import Protocol

log = logging.getLogger(__name__)


def socket_address(value: str) -> str | bytes:
    """NOTIFY_SOCKET's value as a ``sendto`` address (``@name`` -> abstract ``\\0name``)."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


class Notify(Protocol):
    """What the service tells systemd (:class:`Notifier`)."""

    @property
    def enabled(self) -> bool: ...

    def ready(self, status: str | None = None) -> bool: ...

    def status(self, text: str) -> bool: ...

    def stopping(self, status: str | None = None) -> bool: ...

    def watchdog(self) -> bool: ...


class Notifier:
    """Sends sd_notify messages to ``address`` (None: no-op)."""

    def __init__(self, address: str | None) -> None:
        self.address = address or None
        self._sock: socket.socket | None = None
        if self.address is None:
            log.debug("sd_notify: NOTIFY_SOCKET not set; notifications are no-ops")

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        return cls(env.get("NOTIFY_SOCKET"))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *lines: str) -> bool:
        """Send ``KEY=VALUE`` lines as one datagram; True if it was sent."""
        if self.address is None:
            log.debug("sd_notify (no NOTIFY_SOCKET): %s", " ".join(lines))
            return False
        message = "\n".join(lines).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message, socket_address(self.address))
        except OSError as exc:
            log.warning("sd_notify to %s failed: %s", self.address, exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        """READY=1: camera open and models warm (Type=notify units wait for this)."""
        return self.notify("READY=1", *(["STATUS=" + status] if status else []))

    def status(self, text: str) -> bool:
        return self.notify("STATUS=" + text.replace("\n", " "))

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", *(["STATUS=" + status] if status else []))

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class Watchdog:
    """Pets systemd's watchdog only while frames keep being processed.

    ``timeout_s`` is WatchdogSec (from ``$WATCHDOG_USEC``); None disables the watchdog.
    ``maybe_ping`` sends WATCHDOG=1 when a frame was processed within the last
    ``timeout_s / 2``, at most once per ``timeout_s / 4``.
    """

    def __init__(self, notifier: Notify, timeout_s: float | None) -> None:
        self.notifier = notifier
        self.timeout_s = timeout_s if timeout_s and timeout_s > 0 else None
        self._last_frame_s: float | None = None
        self._last_ping_s: float | None = None
        if self.timeout_s is None:
            log.debug("sd_notify: no WATCHDOG_USEC; watchdog pings are no-ops")

    @classmethod
    def from_environ(cls, notifier: Notify,
                     environ: Mapping[str, str] | None = None) -> Watchdog:
        env = os.environ if environ is None else environ
        timeout_s = None
        usec = env.get("WATCHDOG_USEC")
        pid = env.get("WATCHDOG_PID")
        if usec:
            if pid and pid.strip() != str(os.getpid()):
                log.debug("sd_notify: WATCHDOG_PID=%s is not us; watchdog disabled", pid)
            else:
                try:
                    timeout_s = int(usec) / 1e6
                except ValueError:
                    log.warning("sd_notify: WATCHDOG_USEC=%r is not an integer; ignored", usec)
        return cls(notifier, timeout_s)

    @property
    def enabled(self) -> bool:
        return self.timeout_s is not None and self.notifier.enabled

    def frame_processed(self, t_s: float) -> None:
        self._last_frame_s = t_s

    def maybe_ping(self, now_s: float) -> bool:
        """Send WATCHDOG=1 if frames are flowing and a ping is due; True if sent."""
        if self.timeout_s is None or self._last_frame_s is None:
            return False
        if now_s - self._last_frame_s > self.timeout_s / 2:
            return False
        if self._last_ping_s is not None and now_s - self._last_ping_s < self.timeout_s / 4:
            return False
        self._last_ping_s = now_s
        return self.notifier.watchdog()
