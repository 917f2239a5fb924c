"""The one configuration file (TOML): every setting of every component, validated at start.

Sections: ``[camera]``, ``[vision]`` (``detector``, ``pose``, ``tracking``, ``runtime``,
``eyes``),
``[engine]``, ``[mqtt]``, ``[buzzer]``, ``[service]``, ``[preview]``. Unknown keys and wrong
types are errors that name the dotted key; TOML syntax errors name the line. Secrets never live
in the file: the MQTT password comes from the environment variable named by
``mqtt.password_env``, the preview's token from the one named by ``preview.token_env``.

The state directory (calibration profiles, MQTT outbox, TensorRT engine cache) is
``$STATE_DIRECTORY`` (set by systemd's ``StateDirectory=``), else ``service.state_dir``, else
``$XDG_STATE_HOME/dms`` (``~/.local/state/dms``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from dms.engine.settings import EngineSettings
from dms.errors import DmsError
from dms.outputs.settings import BuzzerSettings, MqttSettings
from dms.preview.settings import PreviewSettings
from dms.settings import (
    check_range,
    did_you_mean,
    load_settings,
    parse_toml,
    read_text_file,
)
from dms.vision.settings import (
    DetectorSettings,
    EyeSettings,
    PoseModelSettings,
    RuntimeSettings,
    TrackingSettings,
)

MAX_CONFIG_BYTES = 1 << 20  # a configuration file is a few kB


class ConfigError(DmsError):
    """The configuration file cannot be used."""


@dataclass(frozen=True, slots=True)
class CameraSettings:
    """The ``[camera]`` table."""

    source: str = field(
        default="0",
        metadata={
            "doc": "V4L2 index or /dev/videoN, a video file, an rtsp:// URL, or a GStreamer "
            "pipeline ending in appsink (Jetson CSI: nvarguscamerasrc ! ... ! appsink)"
        },
    )
    width: int = field(default=0, metadata={"doc": "requested width (0: the camera's default)"})
    height: int = field(default=0, metadata={"doc": "requested height (0: default)"})
    fps: float = field(default=0.0, metadata={"doc": "requested frame rate (0: default)"})
    realtime: bool = field(
        default=True,
        metadata={"doc": "video files: pace frames at the file's rate (false: full speed)"},
    )
    loop: bool = field(default=False, metadata={"doc": "video files: start again at the end"})
    frame_timeout_s: float = field(
        default=2.0, metadata={"doc": "no frame for this long counts as a lost camera"}
    )
    reconnect_min_s: float = field(default=1.0, metadata={"doc": "first reconnect back-off"})
    reconnect_max_s: float = field(default=30.0, metadata={"doc": "longest reconnect back-off"})

    def validate(self) -> None:
        if not self.source.strip() or len(self.source) > 4096:
            raise ValueError("source must be 1-4096 characters")
        check_range("width", self.width, 0, 16384)
        check_range("height", self.height, 0, 16384)
        check_range("fps", self.fps, 0.0, 1000.0)
        check_range("frame_timeout_s", self.frame_timeout_s, 0.0, 60.0, low_open=True)
        check_range("reconnect_min_s", self.reconnect_min_s, 0.0, 60.0, low_open=True)
        check_range("reconnect_max_s", self.reconnect_max_s, self.reconnect_min_s, 600.0)


@dataclass(frozen=True, slots=True)
class VisionSettings:
    """The ``[vision]`` table."""

    detector: DetectorSettings = field(default_factory=DetectorSettings)
    pose: PoseModelSettings = field(default_factory=PoseModelSettings)
    tracking: TrackingSettings = field(default_factory=TrackingSettings)
    runtime: RuntimeSettings = field(default_factory=lambda: RuntimeSettings())
    eyes: EyeSettings = field(default_factory=EyeSettings)


@dataclass(frozen=True, slots=True)
class ServiceSettings:
    """The ``[service]`` table."""

    state_dir: str = field(
        default="", metadata={"doc": "state directory; $STATE_DIRECTORY wins; empty: per-user"}
    )
    profile: str = field(default="default", metadata={"doc": "driver calibration profile"})
    log_level: Literal["debug", "info", "warning", "error"] = field(
        default="info", metadata={"doc": "log level"}
    )
    state_interval_s: float = field(
        default=5.0, metadata={"doc": "the retained state is republished at least this often"}
    )
    stop_drain_timeout_s: float = field(
        default=3.0,
        metadata={"doc": "on stop, wait this long for the outbox (the rest is sent next run)"},
    )
    stop_deadline_s: float = field(
        default=10.0,
        metadata={"doc": "a stop (signal) that has not finished after this long exits at once "
                         "with its exit code (the outbox keeps what is unsent); keep it above "
                         "stop_drain_timeout_s and below systemd's TimeoutStopSec"},
    )
    calibration_s: float = field(
        default=5.0, metadata={"doc": "length of a calibration started by command"}
    )

    def validate(self) -> None:
        check_range("state_interval_s", self.state_interval_s, 0.0, 3600.0, low_open=True)
        check_range("stop_drain_timeout_s", self.stop_drain_timeout_s, 0.0, 60.0)
        check_range("stop_deadline_s", self.stop_deadline_s, 0.0, 300.0, low_open=True)
        check_range("calibration_s", self.calibration_s, 0.0, 60.0, low_open=True)
        if self.stop_deadline_s <= self.stop_drain_timeout_s:
            raise ValueError("stop_deadline_s must be greater than stop_drain_timeout_s")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", self.profile):
            raise ValueError(f"profile {self.profile!r}: use 1-64 letters, digits, '_', '.' or "
                             "'-', not starting with '.' or '-' (it names a file)")


@dataclass(frozen=True, slots=True)
class Config:
    camera: CameraSettings = field(default_factory=CameraSettings)
    vision: VisionSettings = field(default_factory=VisionSettings)
    engine: EngineSettings = field(default_factory=EngineSettings)
    mqtt: MqttSettings = field(default_factory=MqttSettings)
    buzzer: BuzzerSettings = field(default_factory=BuzzerSettings)
    service: ServiceSettings = field(default_factory=ServiceSettings)
    preview: PreviewSettings = field(default_factory=PreviewSettings)
    path: str = ""


def parse_config(text: str, where: str = "config") -> Config:
    data = parse_toml(text, where, ConfigError)
    known = {"camera", "vision", "engine", "mqtt", "buzzer", "service", "preview"}
    unknown = sorted(set(data) - known)
    if unknown:
        names = ", ".join(sorted(known))
        raise ConfigError(f"{where}: unknown section [{unknown[0]}]"
                          f"{did_you_mean(unknown[0], known)} (known: {names})")
    try:
        cfg = load_settings(Config, data, "")
    except DmsError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return replace(cfg, path=where)


def load_config(path: str | Path | None) -> Config:
    """The configuration from ``path`` (None: all defaults)."""
    if path is None:
        return Config()
    return parse_config(read_text_file(path, "configuration file", ConfigError,
                                       max_bytes=MAX_CONFIG_BYTES), str(path))


def state_dir(cfg: Config, environ: Mapping[str, str] | None = None) -> Path:
    env: Mapping[str, Any] = os.environ if environ is None else environ
    if env.get("STATE_DIRECTORY"):
        return Path(str(env["STATE_DIRECTORY"]).split(":")[0])
    if cfg.service.state_dir:
        return Path(cfg.service.state_dir)
    base = env.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "dms"
