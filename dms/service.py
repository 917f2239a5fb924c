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

Operator commands (calibrate, mute, state) go through one handler table, whether they come
signed over MQTT or from the preview page's buttons (``[preview]``, :mod:`dms.preview`; the
page's token instead of the MQTT signature): the same argument checks, the same handlers (the
buzzer's mute budget; the most urgent level never muted) and the same log lines. The preview
only ever reads the newest frame and state: a fault in it is logged and monitoring goes on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from dms import __version__
from dms.capture import Frame, FrameSource, SourceStatus
from dms.commands import Commands, Handler
from dms.config import Config, state_dir
from dms.engine.calibration import CalibrationCapture, CalibrationRefused, CalibrationResult
from dms.engine.events import Event, Phase, Reason
from dms.errors import DmsError
from dms.outputs.routing import AlertOutputs, open_mqtt, summary_line
from dms.pipeline import DriverMonitor, MonitorStep
from dms.sync import SignalSafeEvent

log = logging.getLogger(__name__)

MQTT_RETRY_S = 10.0  # retry starting MQTT this often when it could not start
EXIT_RELOAD = 75  # SIGHUP: stopped cleanly so that systemd restarts with the new config

__all__ = ["AlertOutputs", "FrameSource", "Service", "SignalSafeEvent", "SourceStatus",
           "open_mqtt"]


class Service:
    """``dms run``: see the module doc. ``monitor`` may be injected (tests)."""

    def __init__(self, cfg: Config, *, monitor: DriverMonitor | None = None,
                 notifier: Any | None = None, mqtt: str | None = None,
                 on_event: Callable[[dict[str, Any]], None] | None = None,
                 environ: Mapping[str, str] | None = None, preview_required: bool = False,
                 store_calibration: bool = True) -> None:
        """``environ`` holds the secrets (default ``os.environ``). ``preview_required``: a
        preview that cannot start is an error (``dms preview``) instead of a logged fault
        (``dms run``: monitoring goes on without it). ``store_calibration=False`` keeps
        calibrations in memory (a bench look must not replace a driver's profile)."""
        from dms.outputs.notify import Notifier

        self.cfg = cfg
        self.state_dir = state_dir(cfg)
        self.monitor = monitor
        self.notifier = notifier or Notifier.from_environ()
        self._mqtt_override = mqtt
        self._on_event = on_event
        self.run_id = uuid.uuid4().hex[:8]
        self.stop = SignalSafeEvent()
        self._signal: int | None = None
        self._sys_n = 0
        self._lost_t: float | None = None
        self._camera = "starting"
        self._fps = 0.0
        self._calibrate_requested = False
        self._capture: CalibrationCapture | None = None  # an explicit calibration under way
        self._exit_code = 0
        self.loop_errors = 0
        self.faces = 0  # frames on which a face was found
        self._clock_mark = (0.0, time.monotonic())  # (run clock, monotonic) at the last mark
        self._environ: Mapping[str, str] = os.environ if environ is None else environ
        self._preview_required = preview_required
        self._store_calibration = store_calibration
        self.preview: Any | None = None  # dms.preview.server.PreviewServer while serving
        self._last_state: Any | None = None  # the newest EngineState (immutable)
        self._models: list[dict[str, str]] = []
        self._handlers: dict[str, Handler] = {
            "calibrate": self._cmd_calibrate,
            "mute": lambda c: self.buzzer.mute(c.duration_s),
            "state": lambda c: self.status(),
        }
        # the preview's buttons: the same handlers through the one dispatch (dms.commands);
        # MQTT gets the same handlers and verifies signatures before the same dispatch
        self.commands = Commands(self._handlers)

    # -- set-up ---------------------------------------------------------------------------------
    def _load(self) -> None:
        from dms.outputs.buzzer import BuzzerThread, open_buzzer

        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DmsError(f"{self.state_dir}: cannot create state directory ({exc})") from None
        stored = self._load_profile()
        if self.monitor is None:
            self.monitor = DriverMonitor.from_settings(
                self.cfg.vision, self.cfg.engine, neutral=stored.neutral if stored else None,
                run_id=self.run_id, trt_cache_dir=str(self.state_dir / "trt-cache"))
        self.buzzer = open_buzzer(self.cfg.buzzer)
        self.buzzer_thread = BuzzerThread(self.buzzer).start()
        self.outputs = AlertOutputs(None, self.buzzer, on_event=self._on_event)
        self._mqtt_retry_at: float | None = None
        self._mqtt_started: Any | None = None  # a communicator started, to be attached
        self._mqtt_retry_thread: threading.Thread | None = None
        self._try_mqtt(time.monotonic())
        self._retry_mqtt(time.monotonic())
        self._models = self._model_licences()
        self._first_state = self.monitor.engine.state  # until the first frame's
        if self.cfg.preview.enabled:
            self._start_preview()

    def run_clock(self) -> float:
        """The run's clock, the time base of every record (docs/mqtt.md): the newest frame's
        ``t_s`` plus the monotonic time since it arrived (before any frame: seconds since the
        service started)."""
        t_s, at = self._clock_mark
        return t_s + (time.monotonic() - at)

    def _load_profile(self) -> Any:
        """The stored calibration of ``[service] profile``, saying in the log which one was
        loaded, or that the named one does not exist (and what is used instead)."""
        from dms.calibration_store import list_profiles, load_calibration, profile_path

        profile = self.cfg.service.profile
        stored = load_calibration(self.state_dir, profile)
        if stored is not None:
            pitch, yaw, _ = stored.neutral.euler_deg
            log.info("calibration profile %r loaded from %s (made %s; neutral yaw %.1f, pitch "
                     "%.1f deg): the driver's neutral pose from the start", profile,
                     stored.path, stored.created_utc, yaw, pitch)
            return stored
        known = list_profiles(self.state_dir)
        log.log(logging.INFO if profile == "default" and not known else logging.WARNING,
                "calibration profile %r does not exist (%s; stored: %s): the neutral pose is "
                "learned from the driver's dominant pose within seconds of driving; `dms "
                "calibrate --profile %s` stores one", profile,
                profile_path(self.state_dir, profile), ", ".join(known) or "none", profile)
        return None

    def _try_mqtt(self, now: float) -> None:
        """Start MQTT; if it cannot start (the outbox cannot open: a read-only or full state
        directory), monitoring and the buzzer go on, alerts are held in memory, and the start
        is retried every MQTT_RETRY_S, on a thread of its own (opening the outbox touches the
        disk: the loop never waits for it)."""
        try:
            comm = open_mqtt(self.cfg, self.state_dir, self._mqtt_override, self.run_clock)
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
        comm.set_command_handlers(self._handlers)
        self._mqtt_started = comm

    def _retry_mqtt(self, now: float) -> None:
        """The loop's part of a retry: start one in the background when due, attach the
        communicator once one came up."""
        started, self._mqtt_started = self._mqtt_started, None
        if started is not None:
            self.outputs.attach(started)
            return
        retrying = self._mqtt_retry_thread is not None and self._mqtt_retry_thread.is_alive()
        if self._mqtt_retry_at is not None and now >= self._mqtt_retry_at and not retrying:
            self._mqtt_retry_at = now + MQTT_RETRY_S  # also while this try runs
            self._mqtt_retry_thread = threading.Thread(target=self._try_mqtt, args=(now,),
                                                       name="dms-mqtt-start", daemon=True)
            self._mqtt_retry_thread.start()

    def _start_preview(self) -> None:
        """Serve the preview page; a preview that cannot start is logged (or raised when
        ``preview_required``) and monitoring goes on without it."""
        from dms.preview.hub import FrameHub
        from dms.preview.server import PreviewServer
        from dms.preview.settings import preview_token

        settings = self.cfg.preview
        try:
            token = preview_token(self._environ, settings.token_env)
            hub = FrameHub(settings, self.cfg.engine.zones)
            self.preview = PreviewServer(settings, token, hub, self.status,
                                         self.commands.run).start()
        except DmsError as exc:
            if self._preview_required:
                raise
            log.error("%s; the preview is off, monitoring goes on", exc)

    def _model_licences(self) -> list[dict[str, str]]:
        """Each model that runs, with its licence from the manifest."""
        from dms.errors import ModelError
        from dms.vision.registry import find_entry

        assert self.monitor is not None
        p = self.monitor.perception
        models: list[tuple[str, Any]] = [("detector", p.detector), ("pose", p.estimator)]
        mirror = getattr(p.estimator, "mirror_landmarker", None)
        if mirror is not None:  # the landmark model of flip averaging's mirrored pass
            models.append(("pose_mirror", mirror))
        if p.eyes is not None:
            models.append(("eyes", p.eyes.iris))
        out = []
        for task, model in models:
            name = str(getattr(model, "name", type(model).__name__))
            try:
                licence = find_entry(name).licence
            except ModelError:
                licence = "unknown: not in the model manifest (a file given by path?)"
            out.append({"task": task, "name": name, "licence": licence})
        return out

    # -- commands (run on the MQTT thread: only set flags) ---------------------------------------
    def _cmd_calibrate(self, _cmd: Any) -> dict[str, Any]:
        self._calibrate_requested = True  # armed by the loop at the next frame
        return {"calibration": "started", "duration_s": self.cfg.service.calibration_s}

    def _calibration_done(self, outcome: CalibrationResult | CalibrationRefused) -> None:
        """A calibration ended: the engine takes the neutral and the profile is stored
        (unless ``store_calibration`` is off), or the refusal is logged."""
        from dms.calibration_store import save_calibration

        assert self.monitor is not None
        if isinstance(outcome, CalibrationRefused):
            log.warning("calibration refused: %s", outcome)
            return
        self.monitor.engine.set_neutral(outcome.neutral)
        log.info("calibration done: %s", outcome.to_dict())
        if not self._store_calibration:
            log.info("calibration kept for this run only (not stored)")
            return
        path = save_calibration(self.state_dir, self.cfg.service.profile, outcome,
                                mount=self.cfg.engine.mount.name)
        log.info("calibration stored in %s", path)

    def status(self) -> dict[str, Any]:
        """The service's status, one view for all who ask: the retained MQTT ``state``, the
        ``state`` command's reply and the preview page. Safe from any thread: it reads the
        newest immutable engine state (:meth:`process` keeps it) and plain counters."""
        assert self.monitor is not None
        state = self._last_state or self._first_state
        return state.to_dict() | {
            "camera": self._camera,
            "camera_source": self.cfg.camera.source,
            "fps": round(self._fps, 1),
            "bad_frames": self.monitor.bad_frames,
            "loop_errors": self.loop_errors,
            "calibration_command": self._capture is not None or self._calibrate_requested,
            "mqtt": self._mqtt_status(),
            "outbox": self._outbox_health(),
            "buzzer": self._buzzer_status(),
            "models": {m["task"]: m["name"] for m in self._models},
            "model_licences": self._models,
            "preview_viewers": self.preview.hub.viewers if self.preview is not None else 0,
            "profile": self.cfg.service.profile,
            "version": __version__,
        }

    def _mqtt_status(self) -> str:
        comm = self.outputs.comm
        if comm is not None:
            return "connected" if comm.connected else "disconnected (alerts wait in the outbox)"
        return "could not start (retrying)" if self._mqtt_retry_at is not None else "off"

    def _buzzer_status(self) -> str:
        if not self.buzzer.has_line:
            return "no buzzer fitted ([buzzer] backend \"none\")"
        return (f"{'muted' if self.buzzer.muted() else 'on'}; mute budget left "
                f"{self.buzzer.mute_budget_left_s():.0f} s")

    # -- the loop -------------------------------------------------------------------------------
    def process(self, frame: Frame) -> MonitorStep:
        assert self.monitor is not None
        if self._calibrate_requested:
            self._calibrate_requested = False
            s = self.cfg.engine
            self._capture = CalibrationCapture(self.cfg.service.calibration_s, s.calibration,
                                               s.mount)
        self._clock_mark = (frame.t_s, time.monotonic())
        step = self.monitor.step(frame.image, frame.t_s)
        if self._capture is not None:
            outcome = self._capture.add(step.frame.observation())
            if outcome is not None:
                self._capture = None
                self._calibration_done(outcome)
        self.faces += step.frame.pose is not None
        self._last_state = step.result.state
        self.outputs.handle(step.result)
        if self.preview is not None:
            self.preview.hub.offer(frame.image, step.frame.face, step.result)
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
        self._clock_mark = (st.t_s, time.monotonic())  # the source's statuses: the same clock
        if st.status == "lost":
            self._sys_n += 1
            self._camera, self._lost_t = "lost", st.t_s
            self.outputs.publish_event(Event.system(
                Reason.CAMERA_LOST, Phase.RAISED, st.t_s, st.t_s, 3, -self._sys_n,
                f"{self.run_id}-sys{self._sys_n}-raised", version).to_dict())
            self.notifier.status(f"camera lost: {st.detail}")
        elif st.status == "restored":
            self._camera = "ok"
            self.outputs.publish_event(Event.system(
                Reason.CAMERA_LOST, Phase.CLEARED, st.t_s, self._lost_t or st.t_s, 3,
                -self._sys_n, f"{self.run_id}-sys{self._sys_n}-cleared", version).to_dict())
            self.notifier.status("camera restored")

    def run(self, source: FrameSource | None = None, max_frames: int | None = None, *,
            stop_deadline: bool = False) -> int:
        """Monitor until the source ends, ``max_frames`` or a stop (signal or ``stop``).
        ``stop_deadline`` (the ``dms run`` process only: it ends the process): a stop that
        has not finished within ``service.stop_deadline_s`` exits at once with its code."""
        from dms.outputs.notify import Watchdog

        self._load()
        source = source or FrameSource(self.cfg.camera)
        watchdog = Watchdog.from_environ(self.notifier)
        self._install_signals()
        finished = threading.Event()
        if stop_deadline:
            threading.Thread(target=self._stop_deadline, args=(finished,), daemon=True,
                             name="dms-stop-deadline").start()
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
            self.buzzer.request_off()  # the buzzer thread switches off; stop() makes sure
            self.outputs.save()  # before anything that may hang: undelivered alerts spilled
            self._log_signal()
            self.notifier.stopping("stopping")
            if self.preview is not None:
                self.preview.close()
            self.buzzer_thread.stop()
            if self._mqtt_started is not None:  # came up in the background meanwhile
                self.outputs.attach(self._mqtt_started)
            comm = self.outputs.comm
            drained = self.outputs.close(self.cfg.service.stop_drain_timeout_s)
            if not drained and comm is not None:
                # the communicator logged what stays on disk for the next start, and what
                # (if anything) could not be kept
                log.warning("outbox not drained within %g s on exit",
                            self.cfg.service.stop_drain_timeout_s)
            log.info("%s", summary_line(self.frames, self.faces, self.outputs,
                                        self.buzzer.sound_delays_s()))
            finished.set()
        return self._exit_code

    def _stop_deadline(self, finished: threading.Event) -> None:
        """Once a stop is asked for: if the loop and the clean-up have not finished within
        ``service.stop_deadline_s``, dump every thread's stack to the log (what hung) and exit
        the process at once with the stop's exit code. Alerts not yet sent stay in the outbox
        (SQLite: committed rows survive) and go out with the next process."""
        import faulthandler
        import sys

        self.stop.wait()
        if finished.wait(self.cfg.service.stop_deadline_s):
            return
        with contextlib.suppress(Exception):  # alerts first: spilled for the next start
            self.outputs.save()
        log.error("stop not finished after %g s (service.stop_deadline_s): exiting now with "
                  "%d; the stacks of every thread follow", self.cfg.service.stop_deadline_s,
                  self._exit_code)
        with contextlib.suppress(Exception):  # no stderr: exit anyway
            faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
        logging.shutdown()
        os._exit(self._exit_code)

    def _log_signal(self) -> None:
        """Say which signal stopped the loop (logged here, not in the handler: a handler
        that logs can interrupt a write to the same stream)."""
        if self._signal == signal.SIGHUP:
            log.info("SIGHUP: stopping cleanly to be restarted with the configuration "
                     "re-read (exit %d)", EXIT_RELOAD)
        elif self._signal is not None:
            log.info("signal %d: stopping", self._signal)

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
        self._retry_mqtt(now)
        if self.outputs.comm is not None and now - last_state >= \
                self.cfg.service.state_interval_s:
            self.outputs.comm.publish_state(self.status())
            return now
        return last_state

    def _install_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum: int, _frame: Any) -> None:
            # Only what is safe to do between any two bytecodes of the main thread: no
            # logging (see _log_signal), a re-entrant event (SignalSafeEvent).
            if self._signal is None:
                self._signal = signum
                if signum == signal.SIGHUP:
                    self._exit_code = EXIT_RELOAD
            self.stop.set()
            self.buzzer.request_off()  # the buzzer thread switches off at once

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
        signal.signal(signal.SIGHUP, handler)
