"""Settings objects: frozen dataclasses loaded from TOML tables with clear errors.

Every component declares its settings as a frozen dataclass whose fields carry defaults and a
``metadata={"doc": "..."}`` description (units in the name). :func:`load_settings` builds one
from a mapping, rejecting unknown keys (so typos fail) and wrong types, and naming the dotted
path of the offending key.
"""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import math
import sys
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from dms.errors import DmsError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 (JetPack 6)
    import tomli as tomllib


class SettingsError(DmsError):
    """A settings value is unknown, missing or of the wrong type."""


T = TypeVar("T")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except SettingsError as exc:
                errors.append(str(exc))
        raise SettingsError(errors[0] if len(errors) == 1 else f"{where}: {value!r} fits none of "
                            + ", ".join(_type_name(a) for a in args))
    if origin is typing.Literal:
        if value not in args:
            raise SettingsError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise SettingsError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if origin is tuple and args:
            if len(args) != len(value):
                raise SettingsError(f"{where}: expected {len(args)} values, got {len(value)}")
            pairs = enumerate(zip(args, value, strict=True))
            return tuple(_coerce(v, a, f"{where}[{i}]") for i, (a, v) in pairs)
        item = args[0] if args else Any
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, Mapping):
            raise SettingsError(f"{where}: expected a table, got {value!r}")
        vt = args[1] if args else Any
        return {str(k): _coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise SettingsError(f"{where}: expected a table, got {value!r}")
        return load_settings(tp, value, where)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            names = ", ".join(repr(m.value) for m in tp)
            raise SettingsError(f"{where}: {value!r} is not one of {names}") from None
    if tp is bool:
        if not isinstance(value, bool):
            raise SettingsError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SettingsError(f"{where}: expected a number, got {value!r}")
        if not math.isfinite(value):
            # nan and inf are valid TOML; no setting of dms means either (an infinite
            # long_glance_s would silently disable the alert)
            raise SettingsError(f"{where}: {value!r} is not a finite number")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SettingsError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise SettingsError(f"{where}: expected a string, got {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise SettingsError(f"{where}: expected {_type_name(tp)}, got {value!r}")
    return value


def load_settings(cls: type[T], mapping: Mapping[str, Any] | None, where: str = "") -> T:
    """Build the dataclass ``cls`` from ``mapping``; missing keys keep their defaults.

    ``where`` is the dotted path of the table, used in error messages. A dataclass may define
    ``validate(self) -> None`` raising ValueError for cross-field rules.
    """
    mapping = mapping or {}
    if not isinstance(mapping, Mapping):
        raise SettingsError(f"{where or 'settings'}: expected a table, got {mapping!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(mapping) - set(fields))
    if unknown:
        known = ", ".join(sorted(fields))
        raise SettingsError(
            f"{where + '.' if where else ''}{unknown[0]}: unknown setting"
            f"{did_you_mean(unknown[0], fields)} (known: {known})"
        )
    kwargs = {}
    for name, value in mapping.items():
        kwargs[name] = _coerce(value, hints[name], f"{where + '.' if where else ''}{name}")
    try:
        obj = cls(**kwargs)
    except TypeError as exc:
        raise SettingsError(f"{where or cls.__name__}: {exc}") from None
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ValueError as exc:
            raise SettingsError(f"{where or cls.__name__}: {exc}") from None
    return obj


def did_you_mean(word: str, known: typing.Iterable[str]) -> str:
    """``"; did you mean long_glance_s?"`` for the known name nearest ``word`` (a typo, a
    missing unit suffix), or ``""`` when none is near."""
    import difflib

    names = list(known)
    close = difflib.get_close_matches(word, names, n=1, cutoff=0.6)
    if not close:  # a missing or extra suffix: long_glance -> long_glance_s
        close = [n for n in names if n.startswith(word) or word.startswith(n)][:1]
    return f"; did you mean {close[0]}?" if close else ""


def settings_to_dict(obj: Any) -> Any:
    """Plain JSON-able form of a settings dataclass (enums by value, tuples as lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: settings_to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (list, tuple)):
        return [settings_to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: settings_to_dict(v) for k, v in obj.items()}
    return obj


def settings_version(obj: Any) -> str:
    """A short, stable digest of a settings object, stamped on events it produced."""
    blob = json.dumps(settings_to_dict(obj), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def describe(cls: type) -> list[tuple[str, str, Any, str]]:
    """(name, type, default, doc) per field, for generated documentation."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        rows.append((f.name, _type_name(hints[f.name]), default, f.metadata.get("doc", "")))
    return rows


def check_range(name: str, value: float, low: float, high: float, *,
                low_open: bool = False) -> None:
    """ValueError ``"<name> <value> must be in [low, high]"`` (``low_open``: ``(low, high]``)
    unless ``value`` is finite and within: the one wording of every range error."""
    above = value > low if low_open else value >= low
    if not (math.isfinite(value) and above and value <= high):
        raise ValueError(f"{name} {value!r} must be in {'(' if low_open else '['}{low:g}, "
                         f"{high:g}]")


MAX_TEXT_FILE_BYTES = 256 << 20  # ground-truth tables; a configuration gets far less


def read_text_file(path: str | Path, what: str, error: type[DmsError] = SettingsError,
                   max_bytes: int = MAX_TEXT_FILE_BYTES) -> str:
    """The text of ``path``, or ``error`` saying ``"<path>: <what> not found"`` or why it
    cannot be read: only a regular file (a FIFO would hang, a device never end) of at most
    ``max_bytes``."""
    import os
    import stat

    p = Path(path)
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise error(f"{p}: {what} not found") from None
    except OSError as exc:
        raise error(f"{p}: cannot read {what} ({exc.strerror or exc})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{p}: {what} is not a regular file")
        if st.st_size > max_bytes:
            raise error(f"{p}: {what} has {st.st_size} bytes, more than {max_bytes}")
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise error(f"{p}: {what} is larger than {max_bytes} bytes")
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{p}: cannot read {what} (not UTF-8: {exc.reason})") from None
    except OSError as exc:
        raise error(f"{p}: cannot read {what} ({exc.strerror or exc})") from None
    finally:
        os.close(fd)


def parse_toml(
    text: str, where: str | Path, error: type[DmsError] = SettingsError
) -> dict[str, Any]:
    """TOML text as a dict, or ``error`` naming ``where`` and the line of the syntax error."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{where}: not valid TOML: {exc}") from None
    except RecursionError:
        raise error(f"{where}: not valid TOML: nested too deeply") from None


def read_toml(
    path: str | Path, what: str, error: type[DmsError] = SettingsError
) -> dict[str, Any]:
    return parse_toml(read_text_file(path, what, error), path, error)


def parse_number(text: str, what: str, where: str, error: type[DmsError] = SettingsError) -> float:
    """A finite float from ``text``, or ``error`` saying "<where>: <what> '<text>' is not ..."."""
    try:
        x = float(text)
    except ValueError:
        raise error(f"{where}: {what} {text!r} is not a number") from None
    if not math.isfinite(x):
        raise error(f"{where}: {what} {text!r} is not finite")
    return x
