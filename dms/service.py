"""``dms run``: the service's lifecycle, and nothing else.

Load the config -> warm the models (:class:`dms.pipeline.DriverMonitor`, the one per-frame
step) -> start MQTT in the background (an unreachable broker never stops monitoring) -> loop
over :class:`dms.capture.FrameSource`: each frame goes through ``monitor.step`` and its result
to :class:`dms.outputs.routing.AlertOutputs` (MQTT outbox + buzzer + log). READY=1 once the
first frame went through the models, or once the camera is found missing (the service is up
and reporting it); WATCHDOG=1 while the loop is alive (frames processed, or a lost camera
being reopened). SIGTERM/SIGINT stop the loop, force the buzzer off at once, publish
``offline`` and wait a bounded time for the outbox; SIGHUP (``systemctl reload dms``) does the
same and exits with ``EXIT_RELOAD`` (75), which systemd's ``Restart=on-failure`` restarts at
once, so the new configuration is read: a reload that never leaves monitoring down for more
than a restart. A lost camera (also one missing at start) is a ``system_degraded`` /
``camera_lost`` record on the alert topic and the ``camera`` field of the state; the source
reopens it with back-off. No frame and no error while processing one ends the loop
(:class:`dms.pipeline.DriverMonitor`; anything else raised is logged and the loop goes on).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from dms import __version__
from dms.capture import Frame, FrameSource, SourceStatus
from dms.config import Config, state_dir
from dms.errors import DmsError
from dms.outputs.routing import AlertOutputs, open_mqtt, system_record
from dms.pipeline import DriverMonitor, MonitorStep

log = logging.getLogger(__name__)

MQTT_RETRY_S = 10.0  # retry starting MQTT this often when it could not start
EXIT_RELOAD = 75  # SIGHUP: stopped cleanly so that systemd restarts with the new config

__all__ = ["AlertOutputs", "FrameSource", "Service", "SourceStatus", "open_mqtt"]


class Service:
    """``dms run``: see the module doc. ``monitor`` may be injected (tests)."""

    def __init__(self, cfg: Config, *, monitor: DriverMonitor | None = None,
                 notifier: Any | None = None, mqtt: str | None = None,
                 on_event: Callable[[dict[str, Any]], None] | None = None) -> None:
        from dms.outputs.notify import Notifier

        self.cfg = cfg
        self.state_dir = state_dir(cfg)
        self.monitor = monitor
        self.notifier = notifier or Notifier.from_environ()
        self._mqtt_override = mqtt
        self._on_event = on_event
        self.run_id = uuid.uuid4().hex[:8]
        self.stop = threading.Event()
        self._sys_n = 0
        self._lost_t: float | None = None
        self._camera = "starting"
        self._fps = 0.0
        self._calibrate_requested = False
        self._exit_code = 0
        self.loop_errors = 0

    # -- set-up ---------------------------------------------------------------------------------
    def _load(self) -> None:
        from dms.calibration_store import load_calibration
        from dms.outputs.buzzer import BuzzerThread, open_buzzer

        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DmsError(f"{self.state_dir}: cannot create state directory ({exc})") from None
        stored = load_calibration(self.state_dir, self.cfg.service.profile)
        if self.monitor is None:
            self.monitor = DriverMonitor.from_settings(
                self.cfg.vision, self.cfg.engine, neutral=stored.neutral if stored else None,
                run_id=self.run_id, trt_cache_dir=str(self.state_dir / "trt-cache"))
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
        self._calibrate_requested = True  # armed by the loop at the next frame
        return {"calibration": "started", "duration_s": self.cfg.service.calibration_s}

    def _calibration_done(self, outcome: Any) -> None:
        from dms.calibration_store import save_calibration
        from dms.engine.calibration import CalibrationResult

        if isinstance(outcome, CalibrationResult):
            path = save_calibration(self.state_dir, self.cfg.service.profile, outcome,
                                    mount=self.cfg.engine.mount.name)
            log.info("calibration stored in %s", path)

    def state_payload(self) -> dict[str, Any]:
        assert self.monitor is not None
        st = self.monitor.engine.state.to_dict()
        perception = self.monitor.perception
        return st | {
            "camera": self._camera,
            "fps": round(self._fps, 1),
            "bad_frames": self.monitor.bad_frames,
            "loop_errors": self.loop_errors,
            "outbox": self._outbox_health(),
            "models": {"detector": perception.detector.name, "pose": perception.estimator.name},
            "profile": self.cfg.service.profile,
            "version": __version__,
        }

    # -- the loop -------------------------------------------------------------------------------
    def process(self, frame: Frame) -> MonitorStep:
        assert self.monitor is not None
        if self._calibrate_requested:
            self._calibrate_requested = False
            self.monitor.calibrate(self.cfg.service.calibration_s, self._calibration_done)
        step = self.monitor.step(frame.image, frame.t_s)
        self.outputs.handle(step.result)
        return step

    def _outbox_health(self) -> dict[str, int] | None:
        comm = getattr(self, "outputs", None) and self.outputs.comm
        if comm is None:
            return None
        box = comm.stats().get("outbox") or {}
        return {k: int(box.get(k, 0)) for k in ("pending_alerts", "alerts_in_memory",
                                                 "damaged", "streams_started", "alerts_lost")}

    @property
    def frames(self) -> int:
        return 0 if self.monitor is None else self.monitor.frames

    def _source_status(self, st: SourceStatus) -> None:
        assert self.monitor is not None
        version = self.monitor.engine.version
        if st.status == "lost":
            self._sys_n += 1
            self._camera, self._lost_t = "lost", st.t_s
            self.outputs.publish_event(system_record(
                "camera_lost", "raised", st.t_s, st.t_s, 3, version, self.run_id, self._sys_n))
            self.notifier.status(f"camera lost: {st.detail}")
        elif st.status == "restored":
            self._camera = "ok"
            self.outputs.publish_event(system_record(
                "camera_lost", "cleared", st.t_s, self._lost_t or st.t_s, 3, version,
                self.run_id, self._sys_n))
            self.notifier.status("camera restored")

    def run(self, source: FrameSource | None = None, max_frames: int | None = None) -> int:
        from dms.outputs.notify import Watchdog

        self._load()
        source = source or FrameSource(self.cfg.camera)
        watchdog = Watchdog.from_environ(self.notifier)
        self._install_signals()
        last_state = -1e9
        fps_t0, fps_n = time.monotonic(), 0
        ready = False
        try:
            for item in source.frames(self.stop):
                now = time.monotonic()
                if isinstance(item, SourceStatus):
                    if item.status == "ended":
                        log.info("video source ended after %d frames", self.frames)
                        break
                    self._source_status(item)
                    if item.status == "lost" and not ready:
                        ready = True
                        self.notifier.ready(f"up; camera {self.cfg.camera.source} missing")
                else:
                    self._guarded_process(item)
                    self._camera = "ok"
                    fps_n += 1
                    if not ready:
                        ready = True
                        self.notifier.ready(f"monitoring {self.cfg.camera.source}")
                        log.info("ready: camera and models warm")
                watchdog.frame_processed(now)  # the loop is alive (a frame or a heartbeat)
                if now - fps_t0 >= 2.0:
                    self._fps, fps_t0, fps_n = fps_n / (now - fps_t0), now, 0
                watchdog.maybe_ping(now)
                last_state = self._housekeeping(now, last_state)
                if self.stop.is_set() or (max_frames is not None and self.frames >= max_frames):
                    break
        finally:
            self.buzzer.force_off()
            self.notifier.stopping("stopping")
            self.buzzer_thread.stop()
            comm = self.outputs.comm
            drained = self.outputs.close(self.cfg.service.stop_drain_timeout_s)
            if not drained and comm is not None:
                # the communicator logged what stays on disk for the next start, and what
                # (if anything) could not be kept
                log.warning("outbox not drained within %g s on exit",
                            self.cfg.service.stop_drain_timeout_s)
        return self._exit_code

    def _guarded_process(self, frame: Frame) -> None:
        """``process``, but an error in it is logged and counted, never the end of the loop
        (the per-frame step already absorbs bad frames; this guards the outputs too)."""
        try:
            self.process(frame)
        except Exception:  # noqa: BLE001 - monitoring must go on
            self.loop_errors += 1
            if self.loop_errors == 1 or self.loop_errors % 100 == 0:
                log.exception("error while processing the frame at t=%.2f s (%d so far); "
                              "monitoring continues", frame.t_s, self.loop_errors)

    def _housekeeping(self, now: float, last_state: float) -> float:
        """Retry MQTT when it could not start; republish the retained state when due.
        Returns when the state was last published."""
        if self._mqtt_retry_at is not None and now >= self._mqtt_retry_at:
            self._try_mqtt(now)
        if self.outputs.comm is not None and now - last_state >= \
                self.cfg.service.state_interval_s:
            self.outputs.comm.publish_state(self.state_payload())
            return now
        return last_state

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum: int, _frame: Any) -> None:
            self.buzzer.force_off()  # at once, before the loop notices
            if signum == signal.SIGHUP:
                self._exit_code = EXIT_RELOAD
                log.info("SIGHUP: stopping cleanly to be restarted with the configuration "
                         "re-read (exit %d)", EXIT_RELOAD)
            else:
                log.info("signal %d: stopping", signum)
            self.stop.set()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGHUP, handler)
