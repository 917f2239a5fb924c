"""Operator commands: their types, the parsing of their arguments and the one dispatch.

Where a command comes from only decides how it is authenticated: the MQTT communicator
verifies its signature (:mod:`dms.outputs.command_auth`), the preview page its token. Both then
call :meth:`Commands.run`: the same argument checks, the same handlers (the buzzer's mute
budget; the most urgent level never muted), the same log lines and the same reply fields.

``calibrate``, ``mute DURATION_S`` and ``state`` take their arguments as a JSON object (with an
optional ``request_id``, echoed in the reply); ``mute`` also as a bare number of seconds. The
range of ``duration_s`` is the buzzer's (``max_mute_s``), checked there.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeAlias

from dms.errors import DmsError

log = logging.getLogger(__name__)

MAX_REQUEST_ID = 64  # characters of a request id


class CommandRejected(DmsError):
    """A command is refused: malformed, not authentic, replayed, or refused by its handler.

    ``request_id`` is the request id the sender gave, when one could be read (echoed in the
    reply so the sender can match it; it is never trusted for anything else)."""

    def __init__(self, message: str, request_id: str | None = None) -> None:
        super().__init__(message)
        self.request_id = request_id


@dataclass(frozen=True, slots=True)
class CalibrateCommand:
    """Start a neutral-pose calibration."""

    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class MuteCommand:
    """Mute the buzzer for ``duration_s`` (the buzzer enforces its bounds)."""

    duration_s: float
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class StateRequest:
    """Send the current state."""

    request_id: str | None = None


Command: TypeAlias = CalibrateCommand | MuteCommand | StateRequest
Result: TypeAlias = Mapping[str, object] | None
Handler: TypeAlias = Callable[[Command], Result]  # may raise CommandRejected or ValueError


def short_repr(value: object, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters (a reply must not echo a huge payload)."""
    try:
        text = repr(value)
    except RecursionError:
        return f"<deeply nested {type(value).__name__}>"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def loads(text: str, what: str) -> object:
    """``json.loads`` that reports a deeply nested or malformed document as CommandRejected
    (never a RecursionError traceback)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise CommandRejected(f"{what}: JSON nested too deeply") from None
    except ValueError as exc:
        raise CommandRejected(f"{what}: payload is not JSON: {exc}") from None


def _no_args(name: str, args: dict[str, object], request_id: str | None) -> Command:
    if args:
        raise CommandRejected(f"{name}: takes no arguments, got {sorted(args)}")
    return CalibrateCommand(request_id) if name == "calibrate" else StateRequest(request_id)


def _mute_args(name: str, args: dict[str, object], request_id: str | None) -> Command:
    unknown = sorted(set(args) - {"duration_s"})
    if unknown:
        raise CommandRejected(f"{name}: unknown argument {unknown[0]!r} (known: duration_s)")
    value = args.get("duration_s")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CommandRejected(f"{name}: duration_s must be a number of seconds, got "
                              f"{short_repr(value)}")
    try:  # its range is the buzzer's (max_mute_s): one check, one wording
        return MuteCommand(float(value), request_id)
    except OverflowError:
        raise CommandRejected(f"{name}: duration_s {short_repr(value)} is not a number of "
                              "seconds") from None


#: command name -> parser of its arguments (the handlers are the device's: :class:`Commands`)
PARSERS: Mapping[str, Callable[[str, dict[str, object], str | None], Command]] = {
    "calibrate": _no_args,
    "mute": _mute_args,
    "state": _no_args,
}


def check_name(name: str) -> None:
    if name not in PARSERS:
        raise CommandRejected(f"unknown command {short_repr(name)} "
                              f"(known: {', '.join(PARSERS)})")


def command_from_args(name: str, args: object) -> Command:
    """The command ``name`` from its decoded arguments (a dict with an optional
    ``request_id``; for ``mute`` also a bare number of seconds)."""
    check_name(name)
    if name == "mute" and isinstance(args, (int, float)) and not isinstance(args, bool):
        args = {"duration_s": args}
    if not isinstance(args, dict):
        raise CommandRejected(f"{name}: payload must be a JSON object, got {type(args).__name__}")
    fields = dict(args)
    request_id = fields.pop("request_id", None)
    if request_id is not None and (not isinstance(request_id, (str, int))
                                   or isinstance(request_id, bool)
                                   or len(str(request_id)) > MAX_REQUEST_ID):
        raise CommandRejected(f"{name}: request_id must be a string of at most "
                              f"{MAX_REQUEST_ID} characters")
    return PARSERS[name](name, fields, None if request_id is None else str(request_id))


def parse_command(name: str, payload: bytes, max_bytes: int = 4096) -> Command:
    """The command of one unsigned payload (what a signed command's body carries besides its
    authentication fields): empty, a JSON object, or for ``mute`` a bare number."""
    check_name(name)
    if len(payload) > max_bytes:
        raise CommandRejected(f"{name}: payload of {len(payload)} bytes exceeds {max_bytes}")
    text = payload.decode("utf-8", errors="strict").strip() if payload else ""
    return command_from_args(name, loads(text, name) if text else {})


def reply(name: str, request_id: str | None, error: str | None = None,
          result: Result = None) -> dict[str, object]:
    """A command's reply: ``command``, ``request_id``, ``ok``, ``error``, ``result``."""
    out: dict[str, object] = {"command": name, "request_id": request_id, "ok": error is None,
                           "error": error}
    if error is None:
        out["result"] = dict(result) if result else None
    return out


def _log_refusal(origin: str, name: str, why: str) -> None:
    log.warning("%s command %s rejected: %s", origin, short_repr(name), why)


class Commands:
    """The device's handlers by command name, and the one dispatch that runs them.

    ``on_refused(origin, name, why)`` reports a refusal (default: a WARNING line; the MQTT
    communicator counts and aggregates them)."""

    def __init__(self, handlers: Mapping[str, Handler] | None = None, *,
                 on_refused: Callable[[str, str, str], None] = _log_refusal) -> None:
        self._handlers: dict[str, Handler] = {}
        self._on_refused = on_refused
        for name, handler in (handlers or {}).items():
            self.set(name, handler)

    def set(self, name: str, handler: Handler) -> None:
        """Route command ``name`` to ``handler(command)``: it returns the reply's ``result``
        (a mapping or None) or raises CommandRejected / ValueError to refuse."""
        check_name(name)
        self._handlers[name] = handler

    def refuse(self, origin: str, name: str, request_id: str | None, why: str
               ) -> dict[str, object]:
        """The reply refusing ``name`` (authentication failed before it could run)."""
        self._on_refused(origin, name, why)
        return reply(name, request_id, why)

    def run(self, name: str, args: object, origin: str,
            request_id_hint: str | None = None) -> dict[str, object]:
        """Parse and run one authenticated command; its reply. ``request_id_hint``: the
        request id to echo when the arguments cannot even be parsed."""
        request_id = request_id_hint
        try:
            command = command_from_args(name, args)
            request_id = command.request_id or request_id
            handler = self._handlers.get(name)
            if handler is None:
                raise CommandRejected(f"{name}: not available on this device")
            result = handler(command)
        except (CommandRejected, ValueError) as exc:  # UnicodeDecodeError is a ValueError
            self._on_refused(origin, name, str(exc))
            return reply(name, request_id, str(exc))
        except Exception as exc:  # noqa: BLE001 - a handler bug must not kill the caller
            log.exception("%s command %r: handler failed", origin, name)
            return reply(name, request_id, f"internal error: {type(exc).__name__}: {exc}")
        log.info("%s command %r accepted", origin, name)
        return reply(name, request_id, result=result)
