"""The one JSON-cleaning helper: what any dms output (MQTT payloads, replay's JSON lines)
writes is strict JSON whatever the record holds."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from enum import Enum
from typing import Any


def jsonable(obj: Any) -> Any:
    """A JSON-safe copy: enums by value, numpy scalars and arrays as numbers and lists,
    non-finite floats (NaN, inf) as None, objects with ``to_dict`` as their dict. An alert
    must never be lost to a serialisation error, so anything else becomes its ``str()``."""
    if obj is None or isinstance(obj, (bool, str, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Enum):
        return jsonable(obj.value)
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in obj]
    tolist = getattr(obj, "tolist", None)  # numpy arrays and scalars
    if callable(tolist):
        return jsonable(tolist())
    to_dict = getattr(obj, "to_dict", None)
    if callable(to_dict):
        return jsonable(to_dict())
    return str(obj)


def json_line(obj: Any) -> str:
    """``obj`` as strict JSON on one line (never a bare NaN, which JSON does not have)."""
    return json.dumps(jsonable(obj), separators=(",", ":"), allow_nan=False)
