"""``dms run``: the service's lifecycle, and nothing else.

:func:`build_service` builds every collaborator from the configuration, in one place: the
per-frame step (:class:`dms.monitor.DriverMonitor`, models warm), the stored calibration
profile, the buzzer, the outputs (:class:`dms.outputs.routing.AlertOutputs`) and the systemd
notifier; :class:`Service` gets them as typed parts (:class:`Monitor`, :class:`Notify`).

:meth:`Service.run` starts the buzzer's thread, MQTT in the background (an unreachable broker
never stops monitoring; an outbox that cannot open is retried on a thread of its own) and the
preview (``[preview]``), then loops over the frame source (:class:`dms.capture.FrameSource`):
each frame goes through ``monitor.step`` and its result to ``AlertOutputs.handle`` (buzzer
first, then the durable outbox with a bounded wait, telemetry, the log). READY=1 once the
first frame went through the models, or once the camera is found missing (the service is up
and reporting it); WATCHDOG=1 while the loop is alive (frames processed, or a lost camera
being reopened). SIGTERM/SIGINT stop the loop and tell the buzzer to switch off at once; the
stop spills every undelivered alert first, publishes ``offline`` and waits a bounded time for
the outbox; SIGHUP (``systemctl reload dms``) does the same and exits with ``EXIT_RELOAD``
(75), which systemd's ``Restart=on-failure`` restarts at once with the configuration re-read.
A lost camera (also one missing at start) is a ``system_degraded`` / ``camera_lost`` record
and the ``camera`` field of the status; the source reopens it with back-off. No frame and no
error while processing one ends the loop.

Operator commands (calibrate, mute, state) are :mod:`dms.commands`: the same handlers for the
signed MQTT commands and the preview page's buttons. :meth:`Service.status` is the one status
view (the retained MQTT state, the ``state`` command, the preview page).
"""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Protocol

import numpy as np

from dms import __version__
from dms.calibration_store import (
    StoredCalibration,
    list_profiles,
    load_calibration,
    profile_path,
    save_calibration,
)
from dms.capture import Frame, FrameSource, SourceStatus
from dms.commands import Command, CommandRejected, Commands, Handler, MuteCommand, Result
from dms.config import Config, state_dir
from dms.engine.calibration import CalibrationCapture, CalibrationRefused, CalibrationResult
from dms.engine.engine import Engine, EngineState
from dms.engine.events import Event, Phase, Reason
from dms.errors import DmsError, ModelError
from dms.monitor import DriverMonitor, MonitorStep
from dms.outputs.buzzer import Buzzer, BuzzerThread, open_buzzer
from dms.outputs.notify import Notifier, Notify, Watchdog
from dms.outputs.routing import AlertOutputs, Communicator, Record, open_mqtt, summary_line
from dms.perception import Perception
from dms.preview.hub import FrameHub
from dms.preview.server import PreviewServer
from dms.preview.settings import preview_token
from dms.sync import SignalSafeEvent
from dms.vision.registry import find_entry

log = logging.getLogger(__name__)

MQTT_RETRY_S = 10.0  # retry starting MQTT this often when it could not start
EXIT_RELOAD = 75  # SIGHUP: stopped cleanly so that systemd restarts with the new config
FPS_WINDOW_S = 2.0  # the status's frame rate is measured over this long

__all__ = ["EXIT_RELOAD", "Monitor", "Service", "SignalSafeEvent", "build_service"]


class Monitor(Protocol):
    """What the service needs of the per-frame step (:class:`dms.monitor.DriverMonitor`)."""

    frames: int
    bad_frames: int
    perception: Perception

    @property
    def engine(self) -> Engine: ...

    def step(self, image: np.ndarray, t_s: float) -> MonitorStep: ...


class FrameStream(Protocol):
    """A source of frames and camera statuses (:class:`dms.capture.FrameSource`)."""

    def frames(self, stop: threading.Event) -> Iterator[Frame | SourceStatus]: ...


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """A model that runs, with its licence from the manifest (the status lists them)."""

    task: str
    name: str
    licence: str

    def to_dict(self) -> dict[str, str]:
        return {"task": self.task, "name": self.name, "licence": self.licence}


@dataclass(frozen=True, slots=True)
class Options:
    """How ``dms run`` / ``dms preview`` use the service."""

    mqtt: str | None = None  # --mqtt HOST:PORT
    environ: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))  # secrets
    preview_required: bool = False  # dms preview: a preview that cannot start is an error
    store_calibration: bool = True  # False: a bench look never replaces a driver's profile


@dataclass(frozen=True, slots=True)
class Parts:
    """Every collaborator of the service (:func:`build_service` makes them)."""

    monitor: Monitor
    models: tuple[ModelInfo, ...]
    buzzer: Buzzer
    outputs: AlertOutputs
    notifier: Notify
    state_dir: Path
    run_id: str


def build_service(cfg: Config, *, mqtt: str | None = None,
                  on_event: Callable[[Record], None] | None = None,
                  environ: Mapping[str, str] | None = None, preview_required: bool = False,
                  store_calibration: bool = True, monitor: Monitor | None = None,
                  notifier: Notify | None = None) -> Service:
    """The service with every collaborator built from ``cfg`` (the models loaded and warm).
    ``monitor`` and ``notifier`` may be given (tests); ``on_event`` gets every alert
    record (``--print-events``). DmsError names what cannot be used."""
    directory = state_dir(cfg)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DmsError(f"{directory}: cannot create state directory ({exc})") from None
    run_id = uuid.uuid4().hex[:8]
    stored = load_profile(directory, cfg.service.profile)
    if monitor is None:
        monitor = DriverMonitor.from_settings(
            cfg.vision, cfg.engine, neutral=stored.neutral if stored else None, run_id=run_id,
            trt_cache_dir=str(directory / "trt-cache"))
    buzzer = open_buzzer(cfg.buzzer)
    parts = Parts(monitor, model_licences(monitor.perception), buzzer,
                  AlertOutputs(None, buzzer, on_event=on_event),
                  notifier or Notifier.from_environ(), directory, run_id)
    return Service(cfg, parts, Options(mqtt, dict(os.environ if environ is None else environ),
                                       preview_required, store_calibration))


def load_profile(directory: Path, profile: str) -> StoredCalibration | None:
    """The stored calibration of ``profile``, saying in the log which one was loaded, or that
    the named one does not exist (and what is used instead)."""
    stored = load_calibration(directory, profile)
    if stored is not None:
        pitch, yaw, _ = stored.neutral.euler_deg
        log.info("calibration profile %r loaded from %s (made %s; neutral yaw %.1f, pitch "
                 "%.1f deg): the driver's neutral pose from the start", profile, stored.path,
                 stored.created_utc, yaw, pitch)
        return stored
    known = list_profiles(directory)
    log.log(logging.INFO if profile == "default" and not known else logging.WARNING,
            "calibration profile %r does not exist (%s; stored: %s): the neutral pose is "
            "learned from the driver's dominant pose within seconds of driving; `dms "
            "calibrate --profile %s` stores one", profile, profile_path(directory, profile),
            ", ".join(known) or "none", profile)
    return None


def model_licences(perception: Perception) -> tuple[ModelInfo, ...]:
    """Each model that runs, with its licence from the manifest."""
    models = perception.models_in_use()
    out = []
    for task, name in models:
        try:
            licence = find_entry(name).licence
        except ModelError:
            licence = "unknown: not in the model manifest (a file given by path?)"
        out.append(ModelInfo(task, name, licence))
    return tuple(out)


class Service:
    """``dms run``: see the module doc. Built by :func:`build_service`."""

    def __init__(self, cfg: Config, parts: Parts, options: Options) -> None:
        self.cfg = cfg
        self.monitor = parts.monitor
        self.buzzer = parts.buzzer
        self.outputs = parts.outputs
        self.notifier = parts.notifier
        self.state_dir = parts.state_dir
        self.run_id = parts.run_id
        self._models = parts.models
        self._options = options
        self.stop = SignalSafeEvent()
        self.preview: PreviewServer | None = None
        self.loop_errors = 0
        self.faces = 0  # frames on which a face was found
        self._buzzer_thread = BuzzerThread(self.buzzer)
        self._signal: int | None = None
        self._exit_code = 0
        self._camera = "starting"
        self._fps = 0.0
        self._fps_window = (time.monotonic(), 0)  # (since, frames since)
        self._sys_n = 0  # the service's own system records (camera_lost)
        self._lost_t: float | None = None
        self._calibrate_requested = False
        self._capture: CalibrationCapture | None = None  # an explicit calibration under way
        self._clock_mark = (0.0, time.monotonic())  # (run clock, monotonic) at the last mark
        self._last_state: EngineState = self.monitor.engine.state  # the newest (immutable)
        self._last_published = -1e9  # when the retained state was last published
        self._mqtt_retry_at: float | None = None
        self._mqtt_started: Communicator | None = None  # came up in the background
        self._mqtt_retry_thread: threading.Thread | None = None
        handlers: dict[str, Handler] = {
            "calibrate": self._cmd_calibrate,
            "mute": self._cmd_mute,
            "state": lambda _c: self.status(),
        }
        self._handlers = handlers
        # the preview's buttons: the same handlers through the one dispatch (dms.commands);
        # MQTT gets the same handlers and verifies signatures before the same dispatch
        self.commands = Commands(handlers)

    @property
    def frames(self) -> int:
        return self.monitor.frames

    def run_clock(self) -> float:
        """The run's clock, the time base of every record (docs/mqtt.md): the newest frame's
        ``t_s`` plus the monotonic time since it arrived (before any frame: seconds since the
        service was built)."""
        t_s, at = self._clock_mark
        return t_s + (time.monotonic() - at)

    # -- starting the background parts ---------------------------------------------------------

    def _try_mqtt(self, now: float) -> None:
        """Start MQTT; if it cannot start (the outbox cannot open: a read-only or full state
        directory), monitoring and the buzzer go on, alerts are held in memory, and the start
        is retried every MQTT_RETRY_S, on a thread of its own (opening the outbox touches the
        disk: the loop never waits for it)."""
        try:
            comm = open_mqtt(self.cfg, self.state_dir, self._options.mqtt, self.run_clock)
        except DmsError as exc:
            if self._mqtt_retry_at is None:
                log.error("MQTT cannot start (%s); monitoring and the buzzer continue, alerts "
                          "are held in memory and MQTT is retried every %g s", exc, MQTT_RETRY_S)
                self.outputs.backlog = []
            self._mqtt_retry_at = now + MQTT_RETRY_S
            return
        self._mqtt_retry_at = None
        if comm is not None:
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
        settings = self.cfg.preview
        try:
            token = preview_token(self._options.environ, settings.token_env)
            hub = FrameHub(settings, self.cfg.engine.zones)
            self.preview = PreviewServer(settings, token, hub, self.status,
                                         self.commands.run).start()
        except DmsError as exc:
            if self._options.preview_required:
                raise
            log.error("%s; the preview is off, monitoring goes on", exc)

    # -- commands (run on the MQTT or an HTTP thread: only set flags) ---------------------------

    def _cmd_mute(self, cmd: Command) -> Result:
        if not isinstance(cmd, MuteCommand):
            raise CommandRejected(f"mute: not a mute command ({type(cmd).__name__})")
        return self.buzzer.mute(cmd.duration_s)

    def _cmd_calibrate(self, _cmd: Command) -> Result:
        self._calibrate_requested = True  # armed by the loop at the next frame
        return {"calibration": "started", "duration_s": self.cfg.service.calibration_s}

    def _calibration_done(self, outcome: CalibrationResult | CalibrationRefused) -> None:
        """A calibration ended: the engine takes the neutral and the profile is stored
        (unless ``store_calibration`` is off), or the refusal is logged."""
        if isinstance(outcome, CalibrationRefused):
            log.warning("calibration refused: %s", outcome)
            return
        self.monitor.engine.set_neutral(outcome.neutral)
        log.info("calibration done: %s", outcome.to_dict())
        if not self._options.store_calibration:
            log.info("calibration kept for this run only (not stored)")
            return
        path = save_calibration(self.state_dir, self.cfg.service.profile, outcome,
                                mount=self.cfg.engine.mount.name)
        log.info("calibration stored in %s", path)

    # -- the status ----------------------------------------------------------------------------

    def status(self) -> dict[str, object]:
        """The service's status, one view for all who ask: the retained MQTT ``state``, the
        ``state`` command's reply and the preview page. Safe from any thread: it reads the
        newest immutable engine state (:meth:`process` keeps it) and plain counters."""
        return self._last_state.to_dict() | {
            "camera": self._camera,
            "camera_source": self.cfg.camera.source,
            "fps": round(self._fps, 1),
            "bad_frames": self.monitor.bad_frames,
            "loop_errors": self.loop_errors,
            "calibration_command": self._capture is not None or self._calibrate_requested,
            "mqtt": self._mqtt_status(),
            "outbox": self._outbox_health(),
            "buzzer": self._buzzer_status(),
            "models": {m.task: m.name for m in self._models},
            "model_licences": [m.to_dict() for m in self._models],
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

    def _outbox_health(self) -> dict[str, int] | None:
        comm = self.outputs.comm
        if comm is None:
            return None
        box = comm.stats().get("outbox")
        figures = box if isinstance(box, dict) else {}
        return {k: int(figures.get(k, 0)) for k in ("pending_alerts", "alerts_in_memory",
                                                     "damaged", "streams_started",
                                                     "alerts_lost", "alerts_unwritten")}

    # -- one frame, one status -----------------------------------------------------------------

    def process(self, frame: Frame) -> MonitorStep:
        """One frame through the per-frame step and its result to the outputs."""
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

    def _source_status(self, st: SourceStatus) -> None:
        """A lost camera is a ``camera_lost`` record (raised, then cleared once it is back)."""
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

    # -- the loop ------------------------------------------------------------------------------

    def run(self, source: FrameStream | None = None, max_frames: int | None = None, *,
            stop_deadline: bool = False) -> int:
        """Monitor until the source ends, ``max_frames`` or a stop (signal or ``stop``).
        ``stop_deadline`` (the ``dms run`` process only: it ends the process): a stop that
        has not finished within ``service.stop_deadline_s`` exits at once with its code."""
        self._buzzer_thread.start()
        self._try_mqtt(time.monotonic())
        self._retry_mqtt(time.monotonic())
        if self.cfg.preview.enabled:
            self._start_preview()
        self._install_signals()
        finished = threading.Event()
        if stop_deadline:
            threading.Thread(target=self._stop_deadline, args=(finished,), daemon=True,
                             name="dms-stop-deadline").start()
        try:
            self._loop(source or FrameSource(self.cfg.camera), max_frames)
        finally:
            self._shut_down()
            finished.set()
        return self._exit_code

    def _loop(self, source: FrameStream, max_frames: int | None) -> None:
        watchdog = Watchdog.from_environ(self.notifier)
        ready = False
        for item in source.frames(self.stop):
            now = time.monotonic()
            if isinstance(item, SourceStatus) and item.status == "ended":
                log.info("video source ended after %d frames", self.frames)
                return
            ready = self._take(item, ready)
            watchdog.frame_processed(now)  # the loop is alive (a frame or a heartbeat)
            watchdog.maybe_ping(now)
            self._housekeeping(now)
            if self.stop.is_set() or (max_frames is not None and self.frames >= max_frames):
                return

    def _take(self, item: Frame | SourceStatus, ready: bool) -> bool:
        """One item of the source; whether the service has said READY."""
        if isinstance(item, SourceStatus):
            self._source_status(item)
            if item.status == "lost" and not ready:
                self.notifier.ready(f"up; camera {self.cfg.camera.source} missing")
                return True
            return ready
        self._guarded_process(item)
        self._camera = "ok"
        since, n = self._fps_window
        self._fps_window = (since, n + 1)
        if not ready:
            self.notifier.ready(f"monitoring {self.cfg.camera.source}")
            log.info("ready: camera and models warm")
        return True

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

    def _housekeeping(self, now: float) -> None:
        """The frame rate; a retry of MQTT when it could not start; the retained state when
        due."""
        since, n = self._fps_window
        if now - since >= FPS_WINDOW_S:
            self._fps, self._fps_window = n / (now - since), (now, 0)
        self._retry_mqtt(now)
        comm = self.outputs.comm
        if comm is not None and now - self._last_published >= self.cfg.service.state_interval_s:
            comm.publish_state(self.status())
            self._last_published = now

    # -- stopping ------------------------------------------------------------------------------

    def _shut_down(self) -> None:
        """The stop path: the buzzer told to switch off, the undelivered alerts spilled first
        (before anything that may hang), then the preview, the buzzer's thread and MQTT
        (bounded waits), and the summary line."""
        self.buzzer.request_off()  # the buzzer thread switches off; its stop makes sure
        self.outputs.save()
        self._log_signal()
        self.notifier.stopping("stopping")
        if self.preview is not None:
            self.preview.close()
        self._buzzer_thread.stop()
        if self._mqtt_started is not None:  # came up in the background meanwhile
            self.outputs.attach(self._mqtt_started)
        drain_s = self.cfg.service.stop_drain_timeout_s
        if not self.outputs.close(drain_s) and self.outputs.comm is not None:
            # the communicator logged what stays for the next start and what could not
            log.warning("outbox not drained within %g s on exit", drain_s)
        log.info("%s", summary_line(self.frames, self.faces, self.outputs,
                                    self.buzzer.sound_delays_s()))

    def _stop_deadline(self, finished: threading.Event) -> None:
        """Once a stop is asked for: if the loop and the clean-up have not finished within
        ``service.stop_deadline_s``, spill the undelivered alerts, dump every thread's stack
        to the log (what hung) and exit the process at once with the stop's exit code."""
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

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # Only what is safe to do between any two bytecodes of the main thread: no logging
        # (see _log_signal), a re-entrant event (SignalSafeEvent), no lock.
        if self._signal is None:
            self._signal = signum
            if signum == signal.SIGHUP:
                self._exit_code = EXIT_RELOAD
        self.stop.set()
        self.buzzer.request_off()  # the buzzer thread switches off at once

    def _install_signals(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                signal.signal(sig, self._on_signal)
