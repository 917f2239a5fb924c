"""Signed MQTT commands: an HMAC-SHA256 over the command with a timestamp and a nonce.

A command payload is a JSON object with two strings::

    {"body": "{\\"device\\":\\"cab-7\\",\\"command\\":\\"mute\\",\\"ts\\":1795260382.1,
               \\"nonce\\":\\"9f1c...\\",\\"request_id\\":\\"a1\\",\\"duration_s\\":60}",
     "sig": "<64 hex digits: HMAC-SHA256(key, body as UTF-8)>"}

``body`` is signed exactly as sent (no canonical form to agree on). It names the device and the
command, so a signature is valid for one device and one command topic only; ``ts`` (Unix
seconds) must be within ``window_s`` of the device's clock, and a ``nonce`` is accepted once
within that window. The rest of the body is the command's arguments and an optional
``request_id``. The key is a shared secret from the environment (``[mqtt] command_key_env``,
put it in ``/etc/dms/dms.env``); without one the device accepts no command at all.

:func:`sign_command` is what ``dms command`` uses; :class:`CommandVerifier` runs on the device.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from dms.commands import CommandRejected, loads, short_repr
from dms.errors import DmsError

MIN_KEY_BYTES = 16
MAX_NONCES = 1024  # nonces remembered at most (fail closed beyond: a flood cannot evict them)
START_TOLERANCE_S = 2.0  # clock skew allowed for a command sent just after the device started
AUTH_FIELDS = ("device", "command", "ts", "nonce")


def command_key(environ: Mapping[str, str], variable: str) -> bytes | None:
    """The key in environment variable ``variable`` (None when unset or empty). Raises
    DmsError when it is shorter than MIN_KEY_BYTES (a guessable key is worse than none)."""
    value = environ.get(variable, "") if variable else ""
    if not value:
        return None
    key = value.encode("utf-8")
    if len(key) < MIN_KEY_BYTES:
        raise DmsError(f"command key in ${variable} has {len(key)} bytes; use at least "
                       f"{MIN_KEY_BYTES} (e.g. openssl rand -hex 32)")
    return key


def signature(key: bytes, body: bytes) -> str:
    return hmac.new(key, body, hashlib.sha256).hexdigest()


def sign_command(key: bytes, device: str, command: str,
                 args: Mapping[str, object] | None = None,
                 *, request_id: str | None = None, ts: float | None = None,
                 nonce: str | None = None) -> bytes:
    """The payload of a signed command for ``<prefix>/<device>/cmd/<command>``."""
    body: dict[str, Any] = {"device": device, "command": command,
                            "ts": round(time.time() if ts is None else ts, 3),
                            "nonce": nonce or secrets.token_hex(16)}
    if request_id is not None:
        body["request_id"] = request_id
    for name, value in (args or {}).items():
        if name in body:
            raise ValueError(f"argument {name!r} collides with an authentication field")
        body[name] = value
    text = json.dumps(body, separators=(",", ":"))
    return json.dumps({"body": text, "sig": signature(key, text.encode())},
                      separators=(",", ":")).encode()


_SIG = re.compile(r"[0-9a-fA-F]{64}")


def is_envelope(payload: bytes, max_bytes: int) -> bool:
    """Whether ``payload`` is a well-formed signed envelope (``{"body": "...", "sig": "<64
    hex digits>"}``, at most ``max_bytes``), whatever its signature's worth. Only these get
    a reply: a flood of anything else is counted, not answered."""
    if len(payload) > max_bytes or not payload.startswith(b"{"):
        return False
    try:
        outer = json.loads(payload)
    except (ValueError, RecursionError):
        return False
    return (isinstance(outer, dict) and set(outer) == {"body", "sig"}
            and isinstance(outer["body"], str) and isinstance(outer["sig"], str)
            and _SIG.fullmatch(outer["sig"]) is not None)


def request_id_of(payload: bytes) -> str | None:
    """The request id an envelope's (untrusted) body names, to echo in a refusal."""
    try:
        outer = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    body = outer.get("body") if isinstance(outer, dict) else None
    return _request_id_hint(body) if isinstance(body, str) else None


def _request_id_hint(text: str) -> str | None:
    """The request id of a body that is not (yet) trusted, to echo in a rejection."""
    try:
        body = json.loads(text)
    except (ValueError, RecursionError):
        return None
    rid = body.get("request_id") if isinstance(body, dict) else None
    if isinstance(rid, (str, int)) and not isinstance(rid, bool) and len(str(rid)) <= 64:
        return str(rid)
    return None


class CommandVerifier:
    """Checks signed commands for one device. Thread-safe only under the caller's lock (the
    communicator calls it from paho's network thread alone)."""

    def __init__(self, key: bytes, device_id: str, window_s: float, *,
                 max_nonces: int = MAX_NONCES,
                 clock_wall: Callable[[], float] = time.time) -> None:
        """Commands stamped before this verifier was made (less START_TOLERANCE_S) are
        refused: the nonces of an earlier process are not known, and a command issued before
        this process subscribed cannot be a live one (retained ones are ignored anyway)."""
        if not (math.isfinite(window_s) and window_s > 0):
            raise ValueError("window_s must be finite and > 0")
        self._key = key
        self._device_id = device_id
        self._window_s = window_s
        self._max_nonces = max_nonces
        self._clock_wall = clock_wall
        self._not_before = clock_wall() - START_TOLERANCE_S
        self._nonces: OrderedDict[str, float] = OrderedDict()  # nonce -> forget after (wall s)

    @property
    def nonces_remembered(self) -> int:
        return len(self._nonces)

    def _envelope(self, name: str, text: str) -> tuple[str, str]:
        outer = loads(text, name)
        if not isinstance(outer, dict) or set(outer) != {"body", "sig"}:
            raise CommandRejected(
                f"{name}: unsigned command refused: the payload must be {{\"body\": ..., "
                "\"sig\": ...}} signed with the device's command key (see docs/mqtt.md; "
                "`dms command` signs)")
        body, sig = outer["body"], outer["sig"]
        if not isinstance(body, str) or not isinstance(sig, str):
            raise CommandRejected(f"{name}: body and sig must be strings")
        if not _SIG.fullmatch(sig):
            raise CommandRejected(f"{name}: sig must be 64 hex digits (HMAC-SHA256)")
        return body, sig

    def _timestamp(self, name: str, body: dict[str, object], now: float) -> float:
        """The body's ``ts``, once it is Unix seconds within the window and after the start."""
        raw = body.get("ts")
        try:
            ts = float(raw) if not isinstance(raw, bool) and isinstance(raw, (int, float)) \
                else math.nan
        except OverflowError:  # a 401-digit integer
            ts = math.nan
        if not math.isfinite(ts):
            raise CommandRejected(f"{name}: ts must be Unix seconds")
        if abs(now - ts) > self._window_s:
            raise CommandRejected(
                f"{name}: timestamp {ts:.3f} is {now - ts:+.1f} s from the device clock, "
                f"outside the {self._window_s:g} s window (replayed, or a clock is wrong)")
        if ts < self._not_before:
            raise CommandRejected(f"{name}: timestamp {ts:.3f} is before this device started "
                                  "(a replay from before a restart?)")
        return ts

    def _check_fresh(self, name: str, body: dict[str, object], now: float) -> str:
        self._timestamp(name, body, now)
        nonce = body.get("nonce")
        if not isinstance(nonce, str) or not 8 <= len(nonce) <= 128:
            raise CommandRejected(f"{name}: nonce must be a string of 8-128 characters")
        while self._nonces and next(iter(self._nonces.values())) < now:
            # oldest first; one that expires before an older one waits for it (remembered
            # longer than needed, never shorter)
            self._nonces.popitem(last=False)
        if nonce in self._nonces:
            raise CommandRejected(f"{name}: nonce already used (replayed command)")
        if len(self._nonces) >= self._max_nonces:
            raise CommandRejected(f"{name}: more than {self._max_nonces} commands within "
                                  f"{self._window_s:g} s; refused")
        return nonce

    def verify(self, name: str, text: str) -> dict[str, object]:
        """The authenticated body of a command on topic ``cmd/<name>`` without its
        authentication fields (its arguments and ``request_id``). Raises CommandRejected."""
        body_text, sig = self._envelope(name, text)
        if not hmac.compare_digest(signature(self._key, body_text.encode("utf-8")),
                                   sig.lower()):
            raise CommandRejected(f"{name}: bad signature (wrong key or altered command)",
                                  _request_id_hint(body_text))
        body = loads(body_text, name)
        if not isinstance(body, dict):
            raise CommandRejected(f"{name}: body must be a JSON object")
        rid = _request_id_hint(body_text)
        if body.get("device") != self._device_id:
            raise CommandRejected(f"{name}: signed for device {short_repr(body.get('device'))}, "
                                  f"this is {self._device_id!r}", rid)
        if body.get("command") != name:
            raise CommandRejected(f"{name}: signed for command "
                                  f"{short_repr(body.get('command'))}, sent to cmd/{name}", rid)
        now = self._clock_wall()
        try:
            nonce = self._check_fresh(name, body, now)
        except CommandRejected as exc:
            exc.request_id = rid
            raise
        # remembered until its timestamp can no longer pass the window check
        self._nonces[nonce] = max(float(body["ts"]) + self._window_s, now)
        self._nonces.move_to_end(nonce)
        return {k: v for k, v in body.items() if k not in AUTH_FIELDS}
