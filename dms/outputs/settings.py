"""Settings of the outputs (``[mqtt]``, ``[buzzer]``): plain dataclasses, importing nothing of
the components, so the configuration (:mod:`dms.config`) sits below them in the import graph."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from dms.settings import check_range


@dataclass(frozen=True, slots=True)
class MqttSettings:
    """The ``[mqtt]`` table of the configuration file."""

    enabled: bool = field(default=True, metadata={"doc": "publish to a broker at all"})
    host: str = field(default="localhost", metadata={"doc": "broker host name or address"})
    port: int = field(default=1883, metadata={"doc": "broker port (8883 is usual with TLS)"})
    prefix: str = field(default="dms", metadata={"doc": "first topic level(s), e.g. fleet/dms"})
    device_id: str = field(default="", metadata={"doc": "second topic level; empty: host name"})
    client_id: str = field(default="", metadata={"doc": "MQTT client id; empty: dms-<device_id>"})
    protocol: Literal["3.1.1", "5"] = field(
        default="5", metadata={"doc": "MQTT version; 5 reports refused publishes (ACL denials)"})
    keepalive_s: int = field(default=30, metadata={"doc": "keepalive; the Will fires after "
                                                          "1.5x this if the link dies silently"})
    reconnect_min_s: int = field(default=1, metadata={"doc": "first reconnect delay"})
    reconnect_max_s: int = field(
        default=10,
        metadata={"doc": "reconnect back-off ceiling (the soak run saw 11-16 s recoveries at 30)"},
    )
    username: str = field(default="", metadata={"doc": "broker user name; empty: anonymous"})
    password_env: str = field(
        default="DMS_MQTT_PASSWORD",
        metadata={"doc": "environment variable holding the password (read when the client is "
                         "built; put it in /etc/dms/dms.env)"})
    tls: bool = field(default=False, metadata={"doc": "connect with TLS"})
    tls_ca_file: str = field(default="", metadata={"doc": "CA bundle; empty: system CAs"})
    tls_cert_file: str = field(default="", metadata={"doc": "client certificate (mutual TLS)"})
    tls_key_file: str = field(default="", metadata={"doc": "client private key (mutual TLS)"})
    tls_insecure: bool = field(default=False,
                               metadata={"doc": "skip host name check (bench use only)"})
    telemetry_interval_s: float = field(
        default=1.0, metadata={"doc": "minimum time between telemetry messages; 0 disables"})
    outbox_file: str = field(default="outbox.sqlite3",
                             metadata={"doc": "outbox database, relative to the state directory"})
    spill_dir: str = field(
        default="", metadata={"doc": "where alerts the state directory refused go when the "
                                     "process stops (another filesystem, in RAM); empty: "
                                     "$RUNTIME_DIRECTORY (systemd), else /dev/shm/dms-<uid>"})
    outbox_max_messages: int = field(
        default=10_000, metadata={"doc": "outbox bound; telemetry is refused/evicted first, "
                                         "alerts are kept beyond it and reported"})
    outbox_max_telemetry: int = field(
        default=600, metadata={"doc": "telemetry rows kept while offline (10 min at 1 Hz)"})
    alert_write_wait_s: float = field(
        default=0.2, metadata={"doc": "the frame loop waits at most this long for an alert to be "
                                      "on disk (a stalled disk: it is kept in memory, stored "
                                      "and sent as soon as the disk answers, spilled if the "
                                      "process stops first); range [0, 2]"})
    max_inflight: int = field(default=20,
                              metadata={"doc": "outbox rows handed to paho before PUBACKs"})
    command_max_bytes: int = field(default=4096,
                                   metadata={"doc": "larger command payloads are rejected"})
    command_key_env: str = field(
        default="DMS_COMMAND_KEY",
        metadata={"doc": "environment variable holding the HMAC key that commands must be "
                         "signed with (>= 16 bytes; put it in /etc/dms/dms.env); unset: every "
                         "command is refused"})
    command_window_s: float = field(
        default=30.0, metadata={"doc": "a signed command's timestamp must be within this many "
                                       "seconds of the device clock (1..600)"})
    ha_discovery: bool = field(default=False,
                               metadata={"doc": "publish Home Assistant discovery configs"})
    ha_discovery_prefix: str = field(default="homeassistant",
                                     metadata={"doc": "Home Assistant discovery prefix"})

    def validate(self) -> None:
        self._validate_names()
        check_range("port", self.port, 1, 65535)
        check_range("keepalive_s", self.keepalive_s, 5, 3600)
        check_range("reconnect_min_s", self.reconnect_min_s, 1, 600)
        check_range("reconnect_max_s", self.reconnect_max_s, self.reconnect_min_s, 600)
        check_range("telemetry_interval_s", self.telemetry_interval_s, 0.0, 3600.0)
        check_range("outbox_max_messages", self.outbox_max_messages, 1, 1_000_000)
        check_range("outbox_max_telemetry", self.outbox_max_telemetry, 0, 100_000)
        check_range("max_inflight", self.max_inflight, 1, 1000)
        check_range("command_max_bytes", self.command_max_bytes, 256, 65536)
        check_range("command_window_s", self.command_window_s, 1.0, 600.0)
        check_range("alert_write_wait_s", self.alert_write_wait_s, 0.0, 2.0)
        if (self.tls_cert_file == "") != (self.tls_key_file == ""):
            raise ValueError("tls_cert_file and tls_key_file go together")

    def _validate_names(self) -> None:
        from dms.errors import DmsError
        from dms.outputs.topics import Topics

        try:  # the same rules the topics are built with: no wildcard, one level for the id
            Topics(self.prefix[:128], self.device_id[:64] or "device")
        except DmsError as exc:
            raise ValueError(str(exc).removeprefix("mqtt ")) from None
        if len(self.device_id) > 64 or len(self.prefix) > 128:
            raise ValueError("device_id must be at most 64 characters and prefix at most 128")
        if len(self.host) > 253 or len(self.username) > 256:
            raise ValueError("host must be at most 253 characters and username at most 256")
        if self.client_id and (len(self.client_id) > 64 or not self.client_id.isprintable()):
            raise ValueError(f"client_id {self.client_id!r}: at most 64 printable characters")


@dataclass(frozen=True, slots=True)
class BeepPattern:
    """``on_off_s``: alternating on and off durations starting with on; played ``repeat``
    times. ``repeat = 0`` is silent."""

    on_off_s: tuple[float, ...] = field(default=(0.2, 0.8),
                                        metadata={"doc": "on, off, on, ... durations (s)"})
    repeat: int = field(default=1, metadata={"doc": "times the sequence is played"})

    def validate(self) -> None:
        if not self.on_off_s:
            raise ValueError("on_off_s must not be empty")
        if len(self.on_off_s) > 64:
            raise ValueError("on_off_s: at most 64 durations")
        for d in self.on_off_s:
            check_range("on_off_s duration", d, 0.0, 60.0)
        check_range("repeat", self.repeat, 0, 1000)

    @property
    def duration_s(self) -> float:
        return sum(self.on_off_s) * self.repeat


def default_patterns() -> dict[str, BeepPattern]:
    """Level 1: one short chirp; 2: five quick beeps; 3: insistent, ~8 s (levels of the engine's
    escalation, cf. openpilot's silent / sound / full alert)."""
    return {
        "1": BeepPattern((0.1, 0.9), 1),
        "2": BeepPattern((0.2, 0.2), 5),
        "3": BeepPattern((0.6, 0.2), 10),
    }


@dataclass(frozen=True, slots=True)
class BuzzerSettings:
    """The ``[buzzer]`` table of the configuration file."""

    backend: Literal["none", "gpiod", "jetson", "command"] = field(
        default="none", metadata={"doc": "how the buzzer line is driven"})
    gpiod_chip: str = field(default="/dev/gpiochip0", metadata={"doc": "gpiod: chip device"})
    gpiod_line: int = field(default=-1, metadata={"doc": "gpiod: line offset on the chip"})
    jetson_pin: int = field(default=-1, metadata={"doc": "jetson: pin number"})
    jetson_pin_mode: Literal["BOARD", "BCM"] = field(
        default="BOARD", metadata={"doc": "jetson: numbering of jetson_pin"})
    active_low: bool = field(default=False, metadata={"doc": "line is active low"})
    command_on: tuple[str, ...] = field(
        default=(), metadata={"doc": "command: argv run to switch on (no shell)"})
    command_off: tuple[str, ...] = field(
        default=(), metadata={"doc": "command: argv run to switch off (no shell)"})
    command_timeout_s: float = field(default=2.0, metadata={"doc": "command: time limit"})
    max_on_s: float = field(default=2.0,
                            metadata={"doc": "longest continuous on-time; then forced off"})
    max_mute_s: float = field(default=600.0, metadata={"doc": "longest mute a command may ask"})
    max_mute_per_hour_s: float = field(
        default=900.0,
        metadata={"doc": "total muted time in any rolling hour (0 < x <= 3600); a mute beyond "
                         "it is refused. Level 3 sounds even while muted"})
    update_period_s: float = field(default=0.02,
                                   metadata={"doc": "how often the driver thread updates"})
    patterns: dict[str, BeepPattern] = field(
        default_factory=default_patterns,
        metadata={"doc": "beep pattern per alert level (replaces the defaults as a whole)"})

    def validate(self) -> None:
        if self.backend == "gpiod" and self.gpiod_line < 0:
            raise ValueError("backend 'gpiod' needs gpiod_line (the line offset)")
        if self.backend == "jetson" and self.jetson_pin < 0:
            raise ValueError("backend 'jetson' needs jetson_pin")
        if self.backend == "command" and not (self.command_on and self.command_off):
            raise ValueError("backend 'command' needs command_on and command_off (argv lists)")
        check_range("max_on_s", self.max_on_s, 0.0, 60.0, low_open=True)
        check_range("max_mute_s", self.max_mute_s, 0.0, 3600.0, low_open=True)
        check_range("max_mute_per_hour_s", self.max_mute_per_hour_s, 0.0, 3600.0,
                    low_open=True)
        check_range("command_timeout_s", self.command_timeout_s, 0.0, 60.0, low_open=True)
        check_range("update_period_s", self.update_period_s, 0.0, 0.5, low_open=True)
        if not self.update_period_s <= min(0.5, self.max_on_s):
            # the thread that enforces max_on_s runs this often: a longer period bypasses it
            raise ValueError(f"update_period_s must be <= 0.5 and <= max_on_s, got "
                             f"{self.update_period_s}")
