"""Alert routing: where the engine's results go, shared by ``dms run``, ``dms replay`` and
``dms demo``.

:class:`AlertOutputs` tells the buzzer first (it only states what it wants: its own thread
switches the line), then sends each alert record to the MQTT communicator's durable outbox
(or holds it in memory while MQTT cannot start), publishes rate-limited telemetry, logs every
alert record at INFO (so ``journalctl -u dms`` shows what happened) and hands records to an
optional callback (printing). It sees the communicator and the buzzer through the
:class:`Communicator` and :class:`Sounder` protocols. :func:`open_mqtt` starts the
communicator from the configuration; :func:`summary_line` is the line a run or a replay ends
with. Records the service makes itself (a lost camera) are
:meth:`dms.engine.events.Event.system`.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeAlias

from dms import __version__
from dms.commands import Handler
from dms.errors import DmsError
from dms.outputs.mqtt import MqttCommunicator
from dms.outputs.settings import MqttSettings

if TYPE_CHECKING:
    from dms.config import Config
    from dms.engine.engine import StepResult

log = logging.getLogger(__name__)

AUDIBLE_MIN_LEVEL = 2  # Euro NCAP / openpilot: level 1 is a silent (visual) warning

Record: TypeAlias = dict[str, object]  # one alert record (Event.to_dict() and the like)


class Communicator(Protocol):
    """What the outputs and the service need of the MQTT communicator
    (:class:`dms.outputs.mqtt.MqttCommunicator`)."""

    settings: MqttSettings

    @property
    def connected(self) -> bool: ...

    def publish_alert(self, event: Mapping[str, object],
                      wait_s: float | None = None) -> int | None: ...

    def publish_telemetry(self, data: Mapping[str, object], t_s: float) -> bool: ...

    def publish_state(self, state: Mapping[str, object]) -> None: ...

    def set_command_handlers(self, handlers: Mapping[str, Handler]) -> None: ...

    def stats(self) -> dict[str, object]: ...

    def wait_drained(self, timeout_s: float) -> bool: ...

    def save_unwritten(self) -> int: ...

    def stop(self, drain_timeout_s: float = 0.0) -> None: ...


class Sounder(Protocol):
    """What the outputs need of the buzzer (:class:`dms.outputs.buzzer.Buzzer`)."""

    def alert(self, level: object, now_s: float | None = None) -> None: ...

    def silence(self) -> None: ...

    def force_off(self) -> None: ...


def _count(value: object) -> int:
    return value if isinstance(value, int) else 0


class AlertOutputs:
    """Where engine results go: the MQTT communicator (alerts via its durable outbox,
    telemetry, state) and the buzzer (levels >= ``audible_min_level`` beep; silence once no
    audible alert is active). Either may be None. Shared by run, replay and demo."""

    def __init__(self, comm: Communicator | None = None, buzzer: Sounder | None = None, *,
                 audible_min_level: int = AUDIBLE_MIN_LEVEL,
                 on_event: Callable[[Record], None] | None = None) -> None:
        self.comm = comm
        self.buzzer = buzzer
        self.audible_min_level = audible_min_level
        self.on_event = on_event
        self.published = 0  # alert records the communicator took
        self.failed = 0  # alerts the communicator refused (logged; should stay 0)
        self.records = 0  # alert records handled (whether or not MQTT took them)
        self.raised = 0  # alert records with phase "raised"
        self.delivered = 0  # alert records the broker acknowledged (set by close)
        self.outbox_left = 0  # undelivered alerts left for the next process (set by close)
        # alerts raised while MQTT is wanted but could not start (e.g. the state directory
        # was read-only at start): kept in order until attach() hands them over
        self.backlog: list[Record] | None = None

    def attach(self, comm: Communicator) -> None:
        """MQTT came up late: hand over the alerts held meanwhile, in order, then go live."""
        held, self.backlog = self.backlog or [], None
        self.comm = comm
        for record in held:
            self.publish_event(record, notify=False)
        if held:
            log.info("%d alerts held while MQTT was unavailable are now queued", len(held))

    def publish_event(self, record: Record, notify: bool = True) -> None:
        """Queue ``record`` for the durable outbox: on disk when this returns, unless the
        disk took longer than ``mqtt.alert_write_wait_s`` (then it waits in memory and is
        stored as soon as the disk answers). A failure here is logged, never raised:
        monitoring and the buzzer must not stop because the alert path broke."""
        if self.comm is not None:
            try:
                self.comm.publish_alert(record, wait_s=self.comm.settings.alert_write_wait_s)
                self.published += 1
            except Exception:
                self.failed += 1
                log.exception("alert %s could not be queued for MQTT (%d so far)",
                              record.get("event_id"), self.failed)
        elif self.backlog is not None:
            self.backlog.append(record)
        self.records += 1
        if record.get("phase") == "raised":
            self.raised += 1
        if notify:
            log_alert(record)
            if self.on_event is not None:
                self.on_event(record)

    def handle(self, result: StepResult) -> None:
        """One step's outputs: the buzzer first, then the alerts (a bounded wait for the
        disk), then telemetry."""
        if self.buzzer is not None and result.events:
            self._sound(result)
        for ev in result.events:
            self.publish_event(ev.to_dict())
        if self.comm is not None and result.pose is not None:
            self.comm.publish_telemetry(telemetry(result), result.t_s)

    def _sound(self, result: StepResult) -> None:
        assert self.buzzer is not None
        level = result.state.policy.max_level
        if level < self.audible_min_level:
            self.buzzer.silence()
        elif any(e.level >= self.audible_min_level and e.phase.value != "cleared"
                 for e in result.events):
            self.buzzer.alert(level)

    def save(self) -> int:
        """Spill every undelivered alert now (the stop path, before anything that may hang
        and before a forced exit); how many. Never raises."""
        if self.comm is None:
            return 0
        try:
            return self.comm.save_unwritten()
        except Exception:  # a stop must go on
            log.exception("could not spill the undelivered alerts")
            return 0

    def close(self, drain_timeout_s: float = 0.0) -> bool:
        """Buzzer off; stop MQTT after waiting up to ``drain_timeout_s`` for the outbox.
        Returns whether the outbox drained (what is left goes out with the next process)."""
        if self.buzzer is not None:
            self.buzzer.force_off()
        drained = True
        if self.comm is not None:
            drained = self.comm.wait_drained(drain_timeout_s) if drain_timeout_s > 0 else False
            stats = self.comm.stats()
            box = stats.get("outbox")
            figures = box if isinstance(box, dict) else {}
            self.delivered = _count(stats.get("alerts_acked"))
            self.outbox_left = (_count(figures.get("pending_alerts"))
                                + _count(figures.get("alerts_unwritten")))
            self.comm.stop(0.0)
        if self.backlog:
            log.error("%d alerts held in memory are lost: MQTT never started (%s)",
                      len(self.backlog), ", ".join(str(r.get("event_id")) for r in self.backlog))
            drained = False
        return drained


def telemetry(result: StepResult) -> dict[str, object]:
    """The telemetry payload of one step with a pose."""
    assert result.pose is not None
    rel = result.relative
    return {"t_s": round(result.t_s, 3), "yaw_deg": round(result.pose.yaw_deg, 2),
            "pitch_deg": round(result.pose.pitch_deg, 2),
            "roll_deg": round(result.pose.roll_deg, 2),
            "rel_yaw_deg": None if rel is None else round(rel.yaw_deg, 2),
            "rel_pitch_deg": None if rel is None else round(rel.pitch_deg, 2),
            "confidence": round(result.pose.confidence, 3),
            "driver_state": result.state.driver_state}


def open_mqtt(cfg: Config, state: Path, host_port: str | None = None,
              record_clock: Callable[[], float] | None = None) -> MqttCommunicator | None:
    """The started communicator (connects in the background), or None when disabled.
    ``record_clock``: the run's clock, for the records the communicator makes itself."""
    settings = cfg.mqtt
    if host_port:
        host, _, port = host_port.rpartition(":")
        if not host or not port.isdigit():
            raise DmsError(f"--mqtt {host_port!r}: expected HOST:PORT")
        settings = replace(settings, enabled=True, host=host, port=int(port))
    if not settings.enabled:
        return None
    return MqttCommunicator(settings, state, sw_version=__version__,
                            record_clock=record_clock).start()


def summary_line(frames: int, faces: int, outputs: AlertOutputs,
                 delays_s: list[float] | None = None) -> str:
    """The one line ``dms run`` and ``dms replay`` end with: frames, face found, alerts
    raised and delivered, what the outbox still holds, and (with a buzzer) how long each
    raise took to sound, as ``key=value`` pairs."""
    parts = [f"frames={frames}",
             f"face_found={100.0 * faces / frames if frames else 0.0:.1f}%",
             f"alerts_raised={outputs.raised}", f"alert_records={outputs.records}"]
    if outputs.comm is not None:
        parts += [f"delivered={outputs.delivered}", f"outbox_left={outputs.outbox_left}"]
    if delays_s is not None:
        ms = sorted(1e3 * d for d in delays_s)
        parts.append(f"buzzer_sounded={len(ms)}")
        if ms:
            p99 = ms[min(len(ms) - 1, int(round(0.99 * (len(ms) - 1))))]
            parts += [f"raise_to_sound_p50_ms={statistics.median(ms):.1f}",
                      f"raise_to_sound_p99_ms={p99:.1f}"]
    return "summary: " + " ".join(parts)


def _num(value: object) -> float:
    return float(value) if isinstance(value, (int, float)) else 0.0


def log_alert(record: Record) -> None:
    """One INFO line per alert record: ``alert raised L2 distraction/long_glance ...``."""
    pose = record.get("pose")
    where = ""
    if isinstance(pose, dict) and isinstance(pose.get("yaw_deg"), (int, float)):
        zone = pose.get("zone")
        where = (f" (yaw {_num(pose.get('yaw_deg')):+.0f}, pitch "
                 f"{_num(pose.get('pitch_deg')):+.0f} deg from neutral"
                 f"{', ' + str(zone) if zone else ''})")
    log.info("alert %s L%s %s/%s at t=%.2f s, started %.2f s, id %s%s", record.get("phase"),
             record.get("level"), record.get("type"), record.get("reason"),
             _num(record.get("t_s")), _num(record.get("started_t_s")), record.get("event_id"),
             where)
