"""Every MQTT topic string the service uses, built in one place.

Layout under ``<prefix>/<device_id>/``:

========================  =====  ========  ==================================================
topic                     QoS    retained  payload
========================  =====  ========  ==================================================
``status``                1      yes       ``online`` / ``offline`` (Last Will: ``offline``)
``state``                 1      yes       JSON: driver state, calibration, fps, models
``alert``                 1      no        JSON: one engine event + schema, stream id, seq
``telemetry``             0      no        JSON: rate-limited pose
``cmd/<name>``            -      ignored   signed commands *to* the device (subscribed, QoS 1)
``reply``                 1      no        JSON: outcome of each command
========================  =====  ========  ==================================================

Home Assistant discovery configs go to ``<discovery_prefix>/<component>/<node>/<object>/config``.
See docs/mqtt.md for the payload schemas.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dms.errors import DmsError

_BAD_LEVEL = re.compile(r"[+#\x00]")
_HA_ID = re.compile(r"[^a-zA-Z0-9_-]")


def _check_path(value: str, what: str) -> None:
    if not value:
        raise DmsError(f"mqtt {what}: must not be empty")
    if value.startswith("/") or value.endswith("/") or "//" in value:
        raise DmsError(f"mqtt {what}: {value!r} has an empty topic level (leading, trailing or "
                       "double '/')")
    if _BAD_LEVEL.search(value):
        raise DmsError(f"mqtt {what}: {value!r} contains a wildcard '+', '#' or NUL")


@dataclass(frozen=True, slots=True)
class Topics:
    """Topic names for one device. ``prefix`` may have several levels (``fleet/dms``)."""

    prefix: str
    device_id: str

    def __post_init__(self) -> None:
        _check_path(self.prefix, "prefix")
        _check_path(self.device_id, "device_id")
        if "/" in self.device_id:
            raise DmsError(f"mqtt device_id: {self.device_id!r} must be one topic level (no '/')")

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.device_id}"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def state(self) -> str:
        return f"{self.base}/state"

    @property
    def alert(self) -> str:
        return f"{self.base}/alert"

    @property
    def telemetry(self) -> str:
        return f"{self.base}/telemetry"

    @property
    def reply(self) -> str:
        return f"{self.base}/reply"

    @property
    def command_filter(self) -> str:
        """Subscription filter matching every command topic of this device."""
        return f"{self.base}/cmd/#"

    def command(self, name: str) -> str:
        return f"{self.base}/cmd/{name}"

    def command_name(self, topic: str) -> str | None:
        """The command name of a ``cmd/...`` topic of this device, or None if it is not one."""
        head = f"{self.base}/cmd/"
        if not topic.startswith(head):
            return None
        return topic[len(head):]

    def ha_node_id(self) -> str:
        """The device id reduced to the characters Home Assistant allows in a node id."""
        return _HA_ID.sub("_", f"dms_{self.device_id}")

    def ha_config(self, discovery_prefix: str, component: str, object_id: str) -> str:
        _check_path(discovery_prefix, "ha_discovery_prefix")
        return f"{discovery_prefix}/{component}/{self.ha_node_id()}/{object_id}/config"


def listen_filter(prefix: str, device_id: str | None, leaf: str = "alert") -> str:
    """Subscription filter for ``dms listen``: one device, or every device (``+``)."""
    _check_path(prefix, "prefix")
    device = device_id or "+"
    if device != "+":
        _check_path(device, "device_id")
    return f"{prefix}/{device}/{leaf}"
