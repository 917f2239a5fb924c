"""Simulated vehicles for the fleet side: each device publishes engine events through the
project's own durable path (:class:`dms.outputs.mqtt.MqttCommunicator` and its SQLite outbox),
exactly as ``dms run`` does, so what the fleet store receives is what vehicles send.

Re-sends are made the way they happen on a vehicle: a device's first alerts are queued in its
outbox while the broker is unreachable, a copy of its state directory is kept (a backup, or a
crash between the broker's PUBACK and the outbox's delete leaves the same), and after the
device has delivered everything, the copy is started too: its outbox sends those alerts again
with their original ``(stream, seq)``.

Used by ``dms fleet simulate``, the fleet tests and ``scripts/bench_fleet.py``.
"""

from __future__ import annotations

import logging
import random
import shutil
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from dms.engine.events import Event, EventType, Phase, PoseSnapshot, Reason
from dms.errors import DmsError
from dms.outputs.mqtt import MqttCommunicator
from dms.outputs.outbox import Outbox
from dms.outputs.settings import MqttSettings

log = logging.getLogger(__name__)

#: (type, reason, level) drawn for the simulated alerts
KINDS: tuple[tuple[EventType, Reason, int], ...] = (
    (EventType.DISTRACTION, Reason.LONG_GLANCE, 1),
    (EventType.DISTRACTION, Reason.TIME_SHARING, 2),
    (EventType.DROWSINESS, Reason.NODDING, 1),
    (EventType.DROWSINESS, Reason.MICROSLEEP, 2),
    (EventType.DRIVER_NOT_VISIBLE, Reason.FACE_LOST, 1),
    (EventType.SLUMP, Reason.HEAD_DOWN, 3),
)


@dataclass(frozen=True, slots=True)
class SimulationSettings:
    devices: int = 50
    alerts_per_device: int = 200
    resend_devices: int = 5  # devices whose first alerts are sent twice (from a copy)
    resend_alerts: int = 20  # how many of their first alerts
    prefix: str = "dms"
    device_prefix: str = "sim"
    spread_h: float = 0.0  # >0: the alerts' queued_wall_s spread over the last spread_h hours
    drain_timeout_s: float = 300.0
    seed: int = 0

    def validate(self) -> None:
        if self.devices < 1 or self.alerts_per_device < 1:
            raise DmsError("--devices and --alerts must be >= 1")
        if not 0 <= self.resend_devices <= self.devices:
            raise DmsError("--resend-devices must be in 0..--devices")
        if not 0 <= self.resend_alerts <= self.alerts_per_device:
            raise DmsError("--resend-alerts must be in 0..--alerts")
        if self.spread_h < 0:
            raise DmsError("--spread-h must be >= 0")


@dataclass
class SimulationResult:
    streams: dict[str, str] = field(default_factory=dict)  # device -> its stream id
    published: int = 0  # distinct alerts
    resent: int = 0  # alerts sent a second time from a device's copy
    undelivered: dict[str, int] = field(default_factory=dict)  # device -> left in its outbox

    def expected(self, alerts_per_device: int) -> set[tuple[str, str, int]]:
        """Every (device, stream, seq) the simulation published."""
        return {(d, s, n) for d, s in self.streams.items()
                for n in range(1, alerts_per_device + 1)}

    def as_dict(self) -> dict[str, object]:
        return {"devices": len(self.streams), "published": self.published,
                "resent": self.resent, "undelivered": sum(self.undelivered.values()),
                "streams": self.streams}


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (a broker that cannot be reached)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Clock:
    """The wall clock the device's communicator stamps ``queued_wall_s`` with."""

    def __init__(self) -> None:
        self.fixed: float | None = None

    def __call__(self) -> float:
        return time.time() if self.fixed is None else self.fixed


class SimulatedDevice:
    def __init__(self, index: int, sim: SimulationSettings, host: str, port: int,
                 root: Path) -> None:
        self.sim = sim
        self.device = f"{sim.device_prefix}-{index:03d}"
        self.host, self.port = host, port
        self.state_dir = root / self.device
        self.rng = random.Random(sim.seed * 100_003 + index)
        self.clock = _Clock()
        self.sent = 0
        now = time.time()
        span = sim.spread_h * 3600.0
        self.times = sorted(now - self.rng.uniform(0, span) for _ in range(sim.alerts_per_device)
                            ) if span else []

    def _comm(self, state_dir: Path, port: int) -> MqttCommunicator:
        settings = MqttSettings(host=self.host, port=port, prefix=self.sim.prefix,
                                device_id=self.device, telemetry_interval_s=0.0,
                                spill_dir=str(state_dir.parent / f"{state_dir.name}.spill"))
        return MqttCommunicator(settings, state_dir, clock_wall=self.clock).start()

    def _publish(self, comm: MqttCommunicator, n: int) -> None:
        for _ in range(n):
            kind, reason, level = self.rng.choice(KINDS)
            k = self.sent
            self.clock.fixed = self.times[k] if self.times else None
            event = Event(kind, reason, level, Phase.RAISED, t_s=10.0 * (k + 1),
                          started_t_s=10.0 * (k + 1) - 2.0, alert_id=k + 1,
                          event_id=f"{self.device}-{k + 1}",
                          pose=PoseSnapshot(25.0, -5.0, 0.0, 25.0, False, "infotainment"),
                          settings_version="sim")
            comm.publish_alert(event.to_dict())
            self.sent += 1
        self.clock.fixed = None

    def _finish(self, comm: MqttCommunicator) -> int:
        """Deliver what is queued, stop; how many alerts were left undelivered."""
        ok = comm.wait_drained(self.sim.drain_timeout_s)
        box = comm.stats().get("outbox")
        pending = box.get("pending_alerts", 0) if isinstance(box, dict) else 0
        left = 0 if ok else int(pending)
        comm.stop(drain_timeout_s=0.0)
        return left

    def run(self, result: SimulationResult, lock: threading.Lock, resend: bool) -> None:
        n_first = self.sim.resend_alerts if resend else 0
        if n_first:
            # the broker cannot be reached: the first alerts wait in the outbox ...
            comm = self._comm(self.state_dir, closed_port())
            self._publish(comm, n_first)
            comm.stop()
            # ... and a copy of the state directory holds them too
            shutil.copytree(self.state_dir, self.state_dir.with_name(self.device + ".copy"))
        comm = self._comm(self.state_dir, self.port)
        comm.publish_state({"driver_state": self.rng.choice(["attentive", "distracted",
                                                             "drowsy"]),
                            "calibrated": True, "fps": 30.0, "models": ["simulated"]})
        self._publish(comm, self.sim.alerts_per_device - n_first)
        left = self._finish(comm)
        copy_left = 0
        if n_first:  # the copy starts and sends its queued alerts again
            copy_left = self._finish(self._comm(self.state_dir.with_name(self.device + ".copy"),
                                                self.port))
        outbox = Outbox(self.state_dir / "outbox.sqlite3")
        stream = outbox.stream_id
        outbox.close()
        with lock:
            result.streams[self.device] = stream
            result.published += self.sent
            result.resent += n_first
            if left or copy_left:
                result.undelivered[self.device] = left + copy_left


def simulate(host: str, port: int, root: Path, sim: SimulationSettings,
             progress: Callable[[str], None] | None = None) -> SimulationResult:
    """Run every simulated device (one thread each) to the end; see the module doc."""
    sim.validate()
    root.mkdir(parents=True, exist_ok=True)
    result = SimulationResult()
    lock = threading.Lock()
    devices = [SimulatedDevice(i + 1, sim, host, port, root) for i in range(sim.devices)]
    resenders = {d.device for d in devices[:sim.resend_devices]}
    errors: list[str] = []

    def run(d: SimulatedDevice) -> None:
        try:
            d.run(result, lock, d.device in resenders)
        except Exception as exc:  # reported below; the other devices go on
            log.exception("simulate: device %s failed", d.device)
            errors.append(f"{d.device}: {exc}")

    threads = [threading.Thread(target=run, args=(d,), name=f"sim-{d.device}", daemon=True)
               for d in devices]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if progress is not None:
        progress(f"simulate: {result.published} alerts from {len(result.streams)} devices, "
                 f"{result.resent} re-sent")
    if errors:
        raise DmsError(f"simulate: {len(errors)} device(s) failed: {errors[0]}")
    return result
