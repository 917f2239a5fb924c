"""The in-vehicle service: the only place that wires everything together.

Lifecycle of ``dms run``: load and validate the config -> warm the models -> open the camera
-> connect MQTT in the background (an unreachable broker never stops monitoring) -> loop:
frame -> :class:`dms.pipeline.Perception` -> :class:`dms.engine.engine.Engine` ->
:class:`AlertOutputs` (MQTT outbox + buzzer). READY=1 is sent once the first frame went
through the models; WATCHDOG=1 only while frames are processed. SIGTERM/SIGINT stop the loop,
force the buzzer off at once, publish ``offline`` and wait a bounded time for the outbox.

A lost camera is reported (a ``system_degraded``/``camera_lost`` record on the alert topic
and the ``camera`` field of the state), then reopened with exponential back-off.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dms import __version__
from dms.capture import (
    FileFrames,
    Frame,
    LatestFrameReader,
    open_capture,
    source_kind,
    video_fps,
)
from dms.config import CameraSettings, Config, state_dir
from dms.engine.engine import Engine, StepResult
from dms.errors import DmsError
from dms.pipeline import Perception

log = logging.getLogger(__name__)

AUDIBLE_MIN_LEVEL = 2  # Euro NCAP / openpilot: level 1 is a silent (visual) warning
MQTT_RETRY_S = 10.0  # retry starting MQTT this often when it could not start


@dataclass(frozen=True, slots=True)
class SourceStatus:
    """A change of the camera's condition, yielded between frames."""

    t_s: float
    status: str  # "lost" | "restored" | "ended"
    detail: str = ""


class FrameSource:
    """Frames from the configured camera, reopened with back-off when lost.

    Video files are paced at their own frame rate when ``realtime`` (so ``dms run`` on a
    recording behaves like the car), and their timestamps come from the file.
    """

    def __init__(
        self,
        cfg: CameraSettings,
        *,
        opener: Callable[[str], Any] = open_capture,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self._opener = opener
        self._clock = clock
        self.reconnects = 0
        self.reopens = 0  # video files with loop: times the file was opened again
        self.skipped_frames = 0  # undecodable frames skipped in video files

    def frames(self, stop: threading.Event) -> Iterator[Frame | SourceStatus]:
        if source_kind(self.cfg.source) == "file":
            yield from self._file_frames(stop)
        else:
            yield from self._live_frames(stop)

    def _file_frames(self, stop: threading.Event) -> Iterator[Frame | SourceStatus]:
        fps = video_fps(self.cfg.source)
        offset_s, index = 0.0, 0
        start = self._clock()
        while not stop.is_set():
            cap = self._opener(self.cfg.source)
            reader = FileFrames(cap, self.cfg.source)
            n = 0
            try:
                for pos, img in reader:
                    if stop.is_set():
                        break
                    t_s = offset_s + pos / fps
                    if self.cfg.realtime:
                        delay = start + t_s - self._clock()
                        if delay > 0 and stop.wait(delay):
                            return
                    yield Frame(img, t_s, index)
                    n += 1
                    index += 1
            finally:
                cap.release()
                self.skipped_frames += reader.skipped
            if stop.is_set():
                return
            if n == 0 or not self.cfg.loop:
                yield SourceStatus(offset_s + reader.positions / fps, "ended", self.cfg.source)
                return
            offset_s += reader.positions / fps
            self.reopens += 1
            log.debug("%s: end of file after %d frames; looping (reopen %d)", self.cfg.source,
                      n, self.reopens)

    def _live_frames(self, stop: threading.Event) -> Iterator[Frame | SourceStatus]:
        reader = LatestFrameReader(self.cfg.source, opener=self._opener, clock=self._clock)
        backoff = self.cfg.reconnect_min_s
        try:
            while not stop.is_set():
                frame = reader.read(timeout_s=self.cfg.frame_timeout_s)
                if frame is not None:
                    backoff = self.cfg.reconnect_min_s
                    yield frame
                    continue
                why = "stream ended" if reader.failed else (
                    f"no frame for {self.cfg.frame_timeout_s:g} s")
                yield SourceStatus(self._clock(), "lost", f"{self.cfg.source}: {why}")
                reader.close()
                while not stop.is_set():
                    log.warning("camera %s lost (%s); reopening in %.1f s", self.cfg.source,
                                why, backoff)
                    if stop.wait(backoff):
                        return
                    backoff = min(backoff * 2.0, self.cfg.reconnect_max_s)
                    try:
                        reader = LatestFrameReader(
                            self.cfg.source, opener=self._opener, clock=self._clock)
                    except DmsError as exc:
                        why = str(exc)
                        continue
                    self.reconnects += 1
                    yield SourceStatus(self._clock(), "restored", self.cfg.source)
                    break
        finally:
            reader.close()


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
        """Queue ``record`` in the durable outbox (on disk, or in memory while the disk refuses
        writes, before this returns). A failure here is logged, never raised: monitoring and
        the buzzer must not stop because the alert path broke."""
        if self.comm is not None:
            try:
                self.comm.publish_alert(record)
                self.published += 1
            except Exception:
                self.failed += 1
                log.exception("alert %s could not be queued for MQTT (%d so far)",
                              record.get("event_id"), self.failed)
        elif self.backlog is not None:
            self.backlog.append(record)
        if notify and self.on_event is not None:
            self.on_event(record)

    def handle(self, result: StepResult) -> None:
        for ev in result.events:
            self.publish_event(ev.to_dict())
        if self.buzzer is not None and result.events:
            level = result.state.policy.max_level
            if level >= self.audible_min_level:
                if any(e.level >= self.audible_min_level and e.phase.value != "cleared"
                       for e in result.events):
                    self.buzzer.alert(level)
            else:
                self.buzzer.silence()
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

    def close(self, drain_timeout_s: float = 0.0) -> bool:
        """Buzzer off; stop MQTT after waiting up to ``drain_timeout_s`` for the outbox.
        Returns whether the outbox drained (what is left goes out with the next process)."""
        if self.buzzer is not None:
            self.buzzer.force_off()
        drained = True
        if self.comm is not None:
            drained = self.comm.wait_drained(drain_timeout_s) if drain_timeout_s > 0 else False
            self.comm.stop(0.0)
        if self.backlog:
            log.error("%d alerts held in memory are lost: MQTT never started (%s)",
                      len(self.backlog), ", ".join(str(r.get("event_id")) for r in self.backlog))
            drained = False
        return drained


def system_record(kind: str, phase: str, t_s: float, started_t_s: float, level: int,
                  settings_version: str, run_id: str, n: int) -> dict[str, Any]:
    """A service-level record in the engine's event schema (e.g. a lost camera)."""
    return {
        "schema_version": 1, "event_id": f"{run_id}-sys{n}", "alert_id": -n,
        "type": "system_degraded", "reason": kind, "level": level, "phase": phase,
        "t_s": round(t_s, 4), "started_t_s": round(started_t_s, 4),
        "pose": {"yaw_deg": None, "pitch_deg": None, "roll_deg": None,
                 "yaw_inboard_deg": None, "on_road": False, "zone": None},
        "settings_version": settings_version,
    }


def open_mqtt(cfg: Config, state: Path, host_port: str | None = None) -> Any | None:
    """The started communicator (connects in the background), or None when disabled."""
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
    return MqttCommunicator(settings, state, sw_version=__version__).start()


class Service:
    """``dms run``: see the module doc."""

    def __init__(self, cfg: Config, *, perception: Perception | None = None,
                 notifier: Any | None = None, mqtt: str | None = None,
                 on_event: Callable[[dict[str, Any]], None] | None = None) -> None:
        from dms.outputs.notify import Notifier

        self.cfg = cfg
        self.state_dir = state_dir(cfg)
        self.perception = perception
        self.notifier = notifier or Notifier.from_environ()
        self._mqtt_override = mqtt
        self._on_event = on_event
        self.run_id = uuid.uuid4().hex[:8]
        self.stop = threading.Event()
        self.frames = 0
        self._calibrate_until: float | None = None
        self._calibration_obs: list[Any] = []
        self._sys_n = 0
        self._camera = "starting"
        self._fps = 0.0

    # -- set-up ---------------------------------------------------------------------------------
    def _load(self) -> None:
        from dataclasses import replace

        from dms.calibration_store import load_calibration
        from dms.outputs.buzzer import BuzzerThread, open_buzzer
        from dms.vision.detect import create_detector
        from dms.vision.headpose import create_pose_estimator

        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DmsError(f"{self.state_dir}: cannot create state directory ({exc})") from None
        if self.perception is None:
            rt = self.cfg.vision.runtime
            if not rt.trt_engine_cache_dir:
                rt = replace(rt, trt_engine_cache_dir=str(self.state_dir / "trt-cache"))
            self.perception = Perception(
                create_detector(self.cfg.vision.detector, rt),
                create_pose_estimator(self.cfg.vision.pose, rt),
                self.cfg.vision.tracking,
                self.cfg.vision.detector.driver_choice,
            )
        stored = load_calibration(self.state_dir, self.cfg.service.profile)
        self.engine = Engine(self.cfg.engine, stored.neutral if stored else None, self.run_id)
        if stored:
            log.info("calibration profile %s loaded (%s)", self.cfg.service.profile, stored.path)
        self.buzzer = open_buzzer(self.cfg.buzzer)
        self.buzzer_thread = BuzzerThread(self.buzzer).start()
        self.outputs = AlertOutputs(None, self.buzzer, on_event=self._on_event)
        self._mqtt_retry_at: float | None = None
        self._try_mqtt(time.monotonic())

    def _try_mqtt(self, now: float) -> None:
        """Start MQTT; if it cannot start (the outbox cannot open: a read-only or full state
        directory), monitoring and the buzzer go on, alerts are held in memory, and the start
        is retried every MQTT_RETRY_S."""
        try:
            comm = open_mqtt(self.cfg, self.state_dir, self._mqtt_override)
        except DmsError as exc:
            if self._mqtt_retry_at is None:
                log.error("MQTT cannot start (%s); monitoring and the buzzer continue, alerts "
                          "are held in memory and MQTT is retried every %g s", exc, MQTT_RETRY_S)
                self.outputs.backlog = []
            self._mqtt_retry_at = now + MQTT_RETRY_S
            return
        self._mqtt_retry_at = None
        if comm is None:
            return
        comm.set_command_handlers({
            "calibrate": self._cmd_calibrate,
            "mute": lambda c: self.buzzer.mute(c.duration_s),
            "state": lambda c: self.state_payload(),
        })
        self.outputs.attach(comm)

    # -- commands (run on the MQTT thread: only set flags) ---------------------------------------
    def _cmd_calibrate(self, _cmd: Any) -> dict[str, Any]:
        self._calibrate_until = -1.0  # armed: starts at the next frame's t_s
        return {"calibration": "started", "duration_s": self.cfg.service.calibration_s}

    def state_payload(self) -> dict[str, Any]:
        st = self.engine.state.to_dict()
        return st | {
            "camera": self._camera,
            "fps": round(self._fps, 1),
            "models": {"detector": self.perception.detector.name,  # type: ignore[union-attr]
                       "pose": self.perception.estimator.name},  # type: ignore[union-attr]
            "profile": self.cfg.service.profile,
            "version": __version__,
        }

    # -- the loop -------------------------------------------------------------------------------
    def _calibration_step(self, obs: Any) -> None:
        from dms.calibration_store import save_calibration
        from dms.engine.calibration import CalibrationRefused, calibrate_neutral

        if self._calibrate_until == -1.0:
            self._calibrate_until = obs.t_s + self.cfg.service.calibration_s
            self._calibration_obs = []
        self._calibration_obs.append(obs)
        if self._calibrate_until is not None and obs.t_s >= self._calibrate_until:
            self._calibrate_until = None
            try:
                res = calibrate_neutral(self._calibration_obs, self.cfg.engine.calibration,
                                        self.cfg.engine.mount)
            except CalibrationRefused as exc:
                log.warning("calibration refused: %s", exc)
                return
            path = save_calibration(self.state_dir, self.cfg.service.profile, res,
                                    mount=self.cfg.engine.mount.name)
            self.engine.set_neutral(res.neutral)
            log.info("calibration stored in %s: %s", path, res.to_dict())

    def process(self, frame: Frame) -> StepResult:
        assert self.perception is not None
        obs = self.perception.process(frame.image, frame.t_s).observation()
        if self._calibrate_until is not None:
            self._calibration_step(obs)
        result = self.engine.step(obs)
        self.outputs.handle(result)
        self.frames += 1
        return result

    def _source_status(self, st: SourceStatus) -> None:
        self._sys_n += 1
        if st.status == "lost":
            self._camera = "lost"
            self._lost_t = st.t_s
            self.outputs.publish_event(system_record(
                "camera_lost", "raised", st.t_s, st.t_s, 3, self.engine.version, self.run_id,
                self._sys_n))
            self.notifier.status(f"camera lost: {st.detail}")
        elif st.status == "restored":
            self._camera = "ok"
            self.outputs.publish_event(system_record(
                "camera_lost", "cleared", st.t_s, getattr(self, "_lost_t", st.t_s), 3,
                self.engine.version, self.run_id, self._sys_n))
            self.notifier.status("camera restored")

    def run(self, source: FrameSource | None = None, max_frames: int | None = None) -> int:
        from dms.outputs.notify import Watchdog

        self._load()
        source = source or FrameSource(self.cfg.camera)
        watchdog = Watchdog.from_environ(self.notifier)
        stop = self.stop
        self._install_signals()
        last_state = -1e9
        fps_t0, fps_n = time.monotonic(), 0
        ready = False
        try:
            for item in source.frames(stop):
                now = time.monotonic()
                if isinstance(item, SourceStatus):
                    if item.status == "ended":
                        log.info("video source ended after %d frames", self.frames)
                        break
                    self._source_status(item)
                else:
                    self.process(item)
                    self._camera = "ok"
                    watchdog.frame_processed(now)
                    fps_n += 1
                    if not ready:
                        ready = True
                        self.notifier.ready(f"monitoring {self.cfg.camera.source}")
                        log.info("ready: camera and models warm")
                if now - fps_t0 >= 2.0:
                    self._fps, fps_t0, fps_n = fps_n / (now - fps_t0), now, 0
                watchdog.maybe_ping(now)
                if self._mqtt_retry_at is not None and now >= self._mqtt_retry_at:
                    self._try_mqtt(now)
                if self.outputs.comm is not None and now - last_state >= \
                        self.cfg.service.state_interval_s:
                    self.outputs.comm.publish_state(self.state_payload())
                    last_state = now
                if stop.is_set() or (max_frames is not None and self.frames >= max_frames):
                    break
        finally:
            self.buzzer.force_off()
            self.notifier.stopping("stopping")
            self.buzzer_thread.stop()
            drained = self.outputs.close(self.cfg.service.stop_drain_timeout_s)
            if not drained and self.outputs.comm is not None:
                log.warning("outbox not drained on exit; the next start delivers the rest")
        return 0

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum: int, _frame: Any) -> None:
            self.buzzer.force_off()  # at once, before the loop notices
            self.stop.set()
            log.info("signal %d: stopping", signum)

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
