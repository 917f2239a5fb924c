"""Alert routing: where the engine's results go, shared by ``dms run``, ``replay`` and ``demo``.

:class:`AlertOutputs` sends each alert record to the MQTT communicator's durable outbox (or
holds it in memory while MQTT cannot start), drives the buzzer from the active level, publishes
rate-limited telemetry, logs every alert record at INFO (so ``journalctl -u dms`` shows what
happened) and hands records to an optional callback (printing). :func:`open_mqtt` starts the
communicator from the configuration. Records the service makes itself (a lost camera) are
:meth:`dms.engine.events.Event.system`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dms import __version__
from dms.errors import DmsError

if TYPE_CHECKING:
    from dms.config import Config
    from dms.engine.engine import StepResult

log = logging.getLogger(__name__)

AUDIBLE_MIN_LEVEL = 2  # Euro NCAP / openpilot: level 1 is a silent (visual) warning


class AlertOutputs:
    """Where engine results go: the MQTT communicator (alerts via its durable outbox,
    telemetry, state) and the buzzer (levels >= ``audible_min_level`` beep; silence once no
    audible alert is active). Either may be None. Shared by run, replay and demo."""

    def __init__(
        self,
        comm: Any | None = None,
        buzzer: Any | None = None,
        *,
        audible_min_level: int = AUDIBLE_MIN_LEVEL,
        on_event: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.comm = comm
        self.buzzer = buzzer
        self.audible_min_level = audible_min_level
        self.on_event = on_event
        self.published = 0
        self.failed = 0  # alerts the communicator refused (logged; should stay 0)
        self.records = 0  # alert records handled (whether or not MQTT took them)
        self.raised = 0  # alert records with phase "raised"
        self.delivered = 0  # alert records the broker acknowledged (set by close)
        self.outbox_left = 0  # undelivered alerts left for the next process (set by close)
        # alerts raised while MQTT is wanted but could not start (e.g. the state directory
        # was read-only at start): kept in order until attach() hands them over
        self.backlog: list[dict[str, Any]] | None = None

    def attach(self, comm: Any) -> None:
        """MQTT came up late: hand over the alerts held meanwhile, in order, then go live."""
        held, self.backlog = self.backlog or [], None
        self.comm = comm
        for record in held:
            self.publish_event(record, notify=False)
        if held:
            log.info("%d alerts held while MQTT was unavailable are now queued", len(held))

    def publish_event(self, record: dict[str, Any], notify: bool = True) -> None:
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
        """One step's outputs, the buzzer first (it only states what it wants: its own thread
        switches the line), then the alerts (a bounded wait for the disk), then telemetry."""
        if self.buzzer is not None and result.events:
            level = result.state.policy.max_level
            if level >= self.audible_min_level:
                if any(e.level >= self.audible_min_level and e.phase.value != "cleared"
                       for e in result.events):
                    self.buzzer.alert(level)
            else:
                self.buzzer.silence()
        for ev in result.events:
            self.publish_event(ev.to_dict())
        if self.comm is not None and result.pose is not None:
            rel = result.relative
            self.comm.publish_telemetry(
                {
                    "t_s": round(result.t_s, 3),
                    "yaw_deg": round(result.pose.yaw_deg, 2),
                    "pitch_deg": round(result.pose.pitch_deg, 2),
                    "roll_deg": round(result.pose.roll_deg, 2),
                    "rel_yaw_deg": None if rel is None else round(rel.yaw_deg, 2),
                    "rel_pitch_deg": None if rel is None else round(rel.pitch_deg, 2),
                    "confidence": round(result.pose.confidence, 3),
                    "driver_state": result.state.driver_state,
                },
                result.t_s,
            )

    def save(self) -> int:
        """Spill every undelivered alert now (the stop path, before anything that may hang
        and before a forced exit); how many. Never raises."""
        if self.comm is None:
            return 0
        try:
            return int(self.comm.save_unwritten())
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
            box = stats.get("outbox") or {}
            self.delivered = int(stats.get("alerts_acked", 0))
            self.outbox_left = int(box.get("pending_alerts", 0)) + int(
                box.get("alerts_unwritten", 0))
            self.comm.stop(0.0)
        if self.backlog:
            log.error("%d alerts held in memory are lost: MQTT never started (%s)",
                      len(self.backlog), ", ".join(str(r.get("event_id")) for r in self.backlog))
            drained = False
        return drained


def open_mqtt(cfg: Config, state: Path, host_port: str | None = None,
              record_clock: Callable[[], float] | None = None) -> Any | None:
    """The started communicator (connects in the background), or None when disabled.
    ``record_clock``: the run's clock, for the records the communicator makes itself."""
    from dataclasses import replace

    from dms.outputs.mqtt import MqttCommunicator

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
    import statistics

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


def log_alert(record: dict[str, Any]) -> None:
    """One INFO line per alert record: ``alert raised L2 distraction/long_glance ...``."""
    pose = record.get("pose") or {}
    where = ""
    if pose.get("yaw_deg") is not None:
        where = (f" (yaw {pose['yaw_deg']:+.0f}, pitch {pose['pitch_deg']:+.0f} deg from "
                 f"neutral{', ' + pose['zone'] if pose.get('zone') else ''})")
    log.info("alert %s L%s %s/%s at t=%.2f s, started %.2f s, id %s%s", record.get("phase"),
             record.get("level"), record.get("type"), record.get("reason"),
             float(record.get("t_s", 0.0)), float(record.get("started_t_s", 0.0)),
             record.get("event_id"), where)
