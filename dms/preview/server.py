"""The preview's HTTP server (the standard library's ``http.server``, one thread per request):
the page, the MJPEG stream, the status as JSON and the two operator buttons.

Every request needs the token (``[preview] token_env``), compared in constant time, else 401:

* ``GET /?token=T`` checks T, sets an HttpOnly, SameSite=Strict cookie (a random value made
  for this viewing session, valid ``session_max_age_s``, never the token) and redirects to
  ``/#token=T``: the fragment stays in the browser, where the page's buttons read it; the
  address bar is then cleared;
* ``GET /``, ``/stream.mjpg``, ``/api/status``: the cookie or ``Authorization: Bearer T``;
* ``POST /api/command/calibrate|mute``: ``Authorization: Bearer T`` only (a cookie alone is
  refused: another site cannot make the browser press a button). The command then goes to the
  service's command handling, the same parsing, handlers, mute budget and logging as the
  signed MQTT commands.

Each viewer of the stream is logged with its address when it connects and leaves; the stream
carries a "LIVE VIEW" mark while anyone watches (:mod:`dms.preview.hub`). The query string
(which may hold the token) is never logged.

No client can take the process's resources: every connection that sends nothing for
``request_timeout_s`` is closed, and at most ``max_connections`` are served at once: a new one
beyond closes the oldest connection still waiting for its request (so a flood of idle
connections never locks a real request out), or, when all are busy with requests, gets ``503``
and is closed at once (logged once per ``REFUSAL_LOG_S``). A flood never reaches the descriptor
limit the alert path needs.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
import secrets
import socket
import threading
import time
from collections.abc import Callable, Mapping
from http import HTTPStatus
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from dms.errors import DmsError
from dms.preview.hub import FrameHub
from dms.preview.page import page_html
from dms.preview.settings import PreviewSettings

log = logging.getLogger(__name__)

COOKIE = "dms_preview"
BOUNDARY = "dmsframe"
MAX_BODY_BYTES = 4096  # as the MQTT command payload bound
BUTTON_COMMANDS = ("calibrate", "mute")
MAX_SESSIONS = 64  # viewing sessions remembered at once (the oldest is forgotten first)
REFUSAL_LOG_S = 10.0  # connections refused beyond max_connections: one log line per this
BUSY_REPLY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
              b"Content-Length: 18\r\nConnection: close\r\n\r\ntoo many clients\r\n")

StatusFn = Callable[[], Mapping[str, Any]]
CommandFn = Callable[[str, Any, str], Mapping[str, Any]]


class PreviewServer:
    """Serves the page for one :class:`FrameHub` on ``settings.host:settings.port``.

    ``status()`` returns the JSON of the status view; ``command(name, args, origin)`` runs an
    operator command and returns its reply (``ok``, ``error``, ``result``)."""

    def __init__(self, settings: PreviewSettings, token: bytes, hub: FrameHub,
                 status: StatusFn, command: CommandFn, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.hub = hub
        self._token = token
        self._clock = clock
        self._sessions: dict[str, float] = {}  # sha256 of a session cookie -> ends at (clock)
        self._sessions_lock = threading.Lock()
        self._status = status
        self._command = command
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.stopping = threading.Event()

    @property
    def port(self) -> int:
        assert self._httpd is not None
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        host = self.settings.host
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{self.port}/"

    def start(self) -> PreviewServer:
        """Bind and serve in a daemon thread. DmsError when the address cannot be bound."""
        handler = type("Handler", (_Handler,), {"app": self,
                                                "timeout": self.settings.request_timeout_s})
        server_cls = _Server6 if ":" in self.settings.host else _Server
        try:
            self._httpd = server_cls((self.settings.host, self.settings.port), handler)
            self._httpd.max_connections = self.settings.max_connections
        except OSError as exc:
            raise DmsError(f"preview: cannot listen on {self.settings.host}:"
                           f"{self.settings.port} ({exc.strerror or exc})") from None
        self.hub.start()
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        kwargs={"poll_interval": 0.5},
                                        name="dms-preview-http", daemon=True)
        self._thread.start()
        log.info("preview: serving %s (token in $%s; %s)", self.url, self.settings.token_env,
                 "this machine only" if self.settings.host in ("127.0.0.1", "::1", "localhost")
                 else "REACHABLE FROM THE NETWORK")
        return self

    def close(self) -> None:
        self.stopping.set()
        self.hub.close()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=2.0)

    # -- authorisation --------------------------------------------------------------------------
    def token_ok(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token.encode("utf-8"), self._token)

    def cookie_ok(self, header: str | None) -> bool:
        """The request carries the cookie of a viewing session that has not ended."""
        if not header:
            return False
        try:
            jar = SimpleCookie(header)
        except Exception:  # noqa: BLE001 - a malformed cookie is no cookie
            return False
        morsel = jar.get(COOKIE)
        if morsel is None:
            return False
        key = hashlib.sha256(morsel.value.encode()).hexdigest()
        with self._sessions_lock:
            ends = self._sessions.get(key)
            if ends is not None and ends <= self._clock():
                del self._sessions[key]
                ends = None
        return ends is not None

    def new_session(self) -> str:
        """A random cookie value for one viewing session, valid ``session_max_age_s``."""
        value = secrets.token_urlsafe(32)
        now = self._clock()
        with self._sessions_lock:
            self._sessions = {k: t for k, t in self._sessions.items() if t > now}
            while len(self._sessions) >= MAX_SESSIONS:
                self._sessions.pop(next(iter(self._sessions)))
            self._sessions[hashlib.sha256(value.encode()).hexdigest()] = \
                now + self.settings.session_max_age_s
        return value

    def status(self) -> Mapping[str, Any]:
        return self._status()

    def command(self, name: str, args: Any, origin: str) -> Mapping[str, Any]:
        return self._command(name, args, origin)


class _Server(ThreadingHTTPServer):
    """One thread per connection, at most ``max_connections`` at once. A new connection
    beyond that closes the oldest one that is still waiting for its request (an idle or slow
    client: its thread ends at once), so a flood of idle connections never locks a real
    request out; only when every connection is busy with a request is the new one answered
    503 and closed, on the accepting thread, without a thread of its own."""

    daemon_threads = True
    max_connections = 16
    request_queue_size = 64  # a burst of connections waits to be accepted

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._active = 0
        self._lock = threading.Lock()
        self._waiting: dict[socket.socket, float] = {}  # waiting for a request, oldest first
        self._dropped = 0
        self._dropped_logged_at = -REFUSAL_LOG_S

    def waiting(self, conn: socket.socket) -> None:
        """``conn``'s thread waits for its next request (it may be closed for a new one)."""
        with self._lock:
            self._waiting.pop(conn, None)
            self._waiting[conn] = time.monotonic()

    def busy(self, conn: socket.socket) -> None:
        """``conn`` sent a whole request (or is gone): it is no longer closed for others."""
        with self._lock:
            self._waiting.pop(conn, None)

    def process_request(self, request: Any, client_address: Any) -> None:
        victim: socket.socket | None = None
        with self._lock:
            full = self._active >= self.max_connections
            if full and self._waiting:
                victim = next(iter(self._waiting))
                del self._waiting[victim]
            if not full or victim is not None:
                self._active += 1
        if victim is not None:
            with contextlib.suppress(OSError):  # its thread reads EOF and ends
                victim.shutdown(socket.SHUT_RDWR)
            self._note_dropped(client_address, "closed the oldest idle connection")
        elif full:
            self._refuse(request)
            self._note_dropped(client_address, "refused (503): every connection is busy")
            return
        try:
            super().process_request(request, client_address)
        except BaseException:  # no thread started: this connection is not served
            with self._lock:
                self._active -= 1
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.busy(request)
            with self._lock:
                self._active -= 1

    def _refuse(self, request: socket.socket) -> None:
        try:
            request.setblocking(False)  # never wait for a client that does not read
            request.send(BUSY_REPLY)
        except OSError:
            pass
        self.shutdown_request(request)

    def _note_dropped(self, client_address: Any, what: str) -> None:
        self._dropped += 1
        now = time.monotonic()
        if now - self._dropped_logged_at >= REFUSAL_LOG_S:
            self._dropped_logged_at = now
            log.warning("preview: %d connection(s) beyond max_connections (%d) so far; the "
                        "last %s, for %s", self._dropped, self.max_connections, what,
                        client_address[0])

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.exception("preview: error while serving %s", client_address)


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    app: PreviewServer
    server_version = "dms-preview"
    protocol_version = "HTTP/1.1"

    server: _Server

    # -- helpers --------------------------------------------------------------------------------
    def handle_one_request(self) -> None:
        self.server.waiting(self.connection)  # idle until its request is in
        super().handle_one_request()

    def parse_request(self) -> bool:
        self.server.busy(self.connection)
        return super().parse_request()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        pass  # requests are logged by what they do (viewers, commands, refusals), not here

    @property
    def who(self) -> str:
        host, port = self.client_address[:2]
        return f"{host}:{port}"

    def _send(self, status: int, body: bytes, ctype: str,
              headers: Mapping[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Frame-Options", "DENY")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, json.dumps(obj).encode(), "application/json")

    def _bearer(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        return auth[7:].strip() if auth.lower().startswith("bearer ") else None

    def _viewing_allowed(self) -> bool:
        return (self.app.token_ok(self._bearer())
                or self.app.cookie_ok(self.headers.get("Cookie")))

    def _unauthorised(self, what: str) -> None:
        log.warning("preview: %s from %s refused: no valid token", what, self.who)
        self._send(HTTPStatus.UNAUTHORIZED, b"401: a valid preview token is needed\n",
                   "text/plain; charset=utf-8", {"WWW-Authenticate": 'Bearer realm="dms"'})

    # -- routes ---------------------------------------------------------------------------------
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        url = urlsplit(self.path)
        if url.path == "/" and url.query:
            tokens = parse_qs(url.query).get("token") or []
            token = tokens[0] if tokens else None
            if not self.app.token_ok(token):
                return self._unauthorised("page")
            assert token is not None
            cookie = (f"{COOKIE}={self.app.new_session()}; HttpOnly; SameSite=Strict; Path=/; "
                      f"Max-Age={int(self.app.settings.session_max_age_s)}")
            return self._send(HTTPStatus.SEE_OTHER, b"", "text/plain",
                              {"Location": "/#token=" + quote(token, safe=""),
                               "Set-Cookie": cookie})
        if not self._viewing_allowed():
            return self._unauthorised(f"GET {url.path}")
        if url.path == "/":
            body = page_html(self.app.settings).encode()
            return self._send(HTTPStatus.OK, body, "text/html; charset=utf-8",
                              {"Content-Security-Policy": "default-src 'self'; "
                               "script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
                               "img-src 'self'"})
        if url.path == "/api/status":
            return self._json(HTTPStatus.OK, dict(self.app.status()))
        if url.path == "/stream.mjpg":
            return self._stream()
        self._send(HTTPStatus.NOT_FOUND, b"404\n", "text/plain")

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        path = urlsplit(self.path).path
        name = path.removeprefix("/api/command/")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_BODY_BYTES:
            self.close_connection = True
            return self._json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                              {"ok": False, "error": f"Content-Length must be 0-{MAX_BODY_BYTES}"})
        raw = self.rfile.read(length) if length else b""
        if not self.app.token_ok(self._bearer()):
            return self._unauthorised(f"command {name!r}")
        if not path.startswith("/api/command/") or name not in BUTTON_COMMANDS:
            return self._json(HTTPStatus.NOT_FOUND, {"ok": False, "error": f"no command at "
                                                     f"{path} (known: calibrate, mute)"})
        try:
            args: Any = json.loads(raw.decode("utf-8")) if raw.strip() else {}
        except (ValueError, RecursionError) as exc:
            return self._json(HTTPStatus.BAD_REQUEST,
                              {"command": name, "ok": False, "error": f"body is not JSON: {exc}"})
        reply = dict(self.app.command(name, args, f"preview {self.who}"))
        self._json(HTTPStatus.OK if reply.get("ok") else HTTPStatus.CONFLICT, reply)

    def _stream(self) -> None:
        hub, app = self.app.hub, self.app
        if hub.viewers >= app.settings.max_viewers:
            log.warning("preview: stream for %s refused: %d viewers already (max_viewers)",
                        self.who, hub.viewers)
            return self._send(HTTPStatus.SERVICE_UNAVAILABLE, b"too many viewers\n",
                              "text/plain")
        self.connection.settimeout(app.settings.client_timeout_s)
        self.close_connection = True
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        t0, sent, seq = time.monotonic(), 0, 0
        with hub.viewer():
            log.info("preview: viewer %s started watching (%d watching)", self.who, hub.viewers)
            try:
                while not app.stopping.is_set():
                    jpeg, seq = hub.wait_jpeg(seq, timeout_s=1.0)
                    if jpeg is None:
                        continue
                    self.wfile.write(
                        f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: "
                        f"{len(jpeg)}\r\n\r\n".encode() + jpeg + b"\r\n")
                    self.wfile.flush()
                    sent += 1
            except OSError:
                pass  # the viewer left (or stopped reading for client_timeout_s)
            finally:
                log.info("preview: viewer %s stopped watching after %.0f s, %d frames",
                         self.who, time.monotonic() - t0, sent)
