"""The ``[preview]`` table: the installer's live view (:mod:`dms.preview`). A plain dataclass
that imports nothing of the server, OpenCV or numpy, so ``dms config check`` stays light."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from dms.errors import DmsError
from dms.settings import check_range

MIN_TOKEN_BYTES = 16  # as the MQTT command key: a guessable token is worse than none


@dataclass(frozen=True, slots=True)
class PreviewSettings:
    """The ``[preview]`` table of the configuration file. Off by default: video of a driver
    is personal data."""

    enabled: bool = field(default=False, metadata={
        "doc": "serve the live view and status page in `dms run` (`dms preview` always does)"})
    host: str = field(default="127.0.0.1", metadata={
        "doc": "address to listen on; the default is reachable from this machine only (use an "
               "SSH tunnel); 0.0.0.0 exposes the driver's video on every interface"})
    port: int = field(default=8088, metadata={"doc": "TCP port of the page"})
    token_env: str = field(default="DMS_PREVIEW_TOKEN", metadata={
        "doc": "environment variable holding the access token (>= 16 bytes; put it in "
               "/etc/dms/dms.env); every request needs it, and without it the page is off"})
    max_fps: float = field(default=5.0, metadata={
        "doc": "stream frames per second at most (encoded once for all viewers, on their own "
               "thread, from the latest frame: slow viewers drop frames, monitoring never "
               "waits); range [0.5, 15]"})
    max_width: int = field(default=640, metadata={
        "doc": "stream width in pixels at most (larger frames are scaled down before "
               "drawing); range [160, 1920]"})
    jpeg_quality: int = field(default=70, metadata={"doc": "JPEG quality; range [20, 95]"})
    max_viewers: int = field(default=2, metadata={
        "doc": "streams at once; more are refused with 503; range [1, 8]"})
    status_poll_s: float = field(default=0.25, metadata={
        "doc": "how often the page asks for the status (an alert shows within this plus a "
               "network round trip); range [0.1, 5]"})
    client_timeout_s: float = field(default=10.0, metadata={
        "doc": "a viewer that accepts no data for this long is dropped; range [1, 120]"})
    request_timeout_s: float = field(default=5.0, metadata={
        "doc": "a connection that sends nothing for this long is closed (an idle or slow "
               "client never holds a thread for ever); range [1, 60]"})
    max_connections: int = field(default=16, metadata={
        "doc": "connections served at once, viewers included; a new one beyond closes the "
               "oldest still waiting for its request (503 when all are busy), so the preview "
               "never takes the descriptors the alert path needs; range [4, 128]"})
    session_max_age_s: float = field(default=43200.0, metadata={
        "doc": "a viewing session (the cookie the token link sets, random per link) ends "
               "after this long; range [60, 604800]"})

    def validate(self) -> None:
        if not self.host.strip():
            raise ValueError("host must not be empty (127.0.0.1: this machine only)")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"port {self.port} must be in [1, 65535]")
        if not self.token_env.strip():
            raise ValueError("token_env must name an environment variable (the page always "
                             "needs a token)")
        check_range("max_fps", self.max_fps, 0.5, 15.0)
        check_range("max_width", self.max_width, 160, 1920)
        check_range("jpeg_quality", self.jpeg_quality, 20, 95)
        check_range("max_viewers", self.max_viewers, 1, 8)
        check_range("status_poll_s", self.status_poll_s, 0.1, 5.0)
        check_range("client_timeout_s", self.client_timeout_s, 1.0, 120.0)
        check_range("request_timeout_s", self.request_timeout_s, 1.0, 60.0)
        check_range("max_connections", self.max_connections, 4, 128)
        check_range("session_max_age_s", self.session_max_age_s, 60.0, 604800.0)
        if self.max_viewers >= self.max_connections:
            raise ValueError(f"max_viewers {self.max_viewers} must be below max_connections "
                             f"{self.max_connections} (the page and its status need one)")


def preview_token(environ: Mapping[str, str], variable: str) -> bytes:
    """The access token in environment variable ``variable``. Raises DmsError naming the
    variable when it is unset, empty or shorter than MIN_TOKEN_BYTES."""
    value = environ.get(variable, "")
    if not value:
        raise DmsError(f"preview: no access token (environment variable {variable} is not set; "
                       "e.g. `openssl rand -hex 32` in /etc/dms/dms.env)")
    token = value.encode("utf-8")
    if len(token) < MIN_TOKEN_BYTES:
        raise DmsError(f"preview: the token in ${variable} has {len(token)} bytes; use at "
                       f"least {MIN_TOKEN_BYTES} (e.g. openssl rand -hex 32)")
    return token
