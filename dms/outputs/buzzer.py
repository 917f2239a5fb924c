"""The in-cab buzzer: beep patterns per alert level, a bounded mute, a maximum continuous
on-time, and backends for libgpiod v2, Jetson.GPIO, an external command, or none.

The pattern logic is pure and driven by timestamps (``update(now_s)``), so tests need no sleep.
In the service the frame loop and the command handlers only state what they want (``alert``,
``silence``, ``mute``; a signal handler ``request_off``): :class:`BuzzerThread`, the buzzer's
own thread, makes every hook or GPIO call, so a slow or hung hook never holds up monitoring.
Hardware libraries are imported only when their backend is opened. The line is forced off on
close, at interpreter exit (atexit) and when the buzzer thread stops.
"""

from __future__ import annotations

import atexit
import logging
import math
import shutil
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from dms.errors import DmsError
from dms.outputs.settings import BeepPattern, BuzzerSettings
from dms.settings import check_range
from dms.sync import SignalSafeEvent

log = logging.getLogger(__name__)

NEVER_MUTED_LEVEL = 3  # the most urgent level sounds even while muted
MUTE_BUDGET_WINDOW_S = 3600.0  # max_mute_per_hour_s bounds the muted time in any such window


# -- the line -----------------------------------------------------------------------------------


class BuzzerLine(Protocol):
    """One output line. ``set`` is called only when the wanted state changes; it may return
    False when switching failed (then an "off" is retried)."""

    def set(self, on: bool) -> bool | None: ...

    def close(self) -> None: ...


class NullLine:
    """No buzzer fitted."""

    def set(self, on: bool) -> None:
        pass

    def close(self) -> None:
        pass


class GpiodLine:
    """libgpiod v2 Python bindings (``pip install gpiod``, >= 2.0)."""

    def __init__(self, chip: str, offset: int, active_low: bool = False) -> None:
        try:
            import gpiod
        except ImportError as exc:
            raise DmsError("buzzer backend 'gpiod' needs the libgpiod v2 Python bindings: "
                           "pip install 'gpiod>=2'") from exc
        if not hasattr(gpiod, "request_lines"):
            raise DmsError("buzzer backend 'gpiod': the installed gpiod module is the v1 API; "
                           "install the v2 bindings: pip install 'gpiod>=2'")
        if not Path(chip).exists():
            raise DmsError(f"buzzer: GPIO chip {chip} does not exist (see ls /dev/gpiochip*)")
        from gpiod.line import Direction, Value

        self._active, self._inactive = Value.ACTIVE, Value.INACTIVE
        self._offset = offset
        try:
            self._request = gpiod.request_lines(
                chip, consumer="dms-buzzer",
                config={offset: gpiod.LineSettings(direction=Direction.OUTPUT,
                                                   output_value=Value.INACTIVE,
                                                   active_low=active_low)})
        except PermissionError as exc:
            raise DmsError(f"buzzer: no permission on {chip}; add the user to group 'gpio' and "
                           "install systemd/99-dms-gpio.rules") from exc
        except (OSError, ValueError) as exc:
            raise DmsError(f"buzzer: cannot request line {offset} of {chip}: {exc}") from exc

    def set(self, on: bool) -> None:
        self._request.set_value(self._offset, self._active if on else self._inactive)

    def close(self) -> None:
        self._request.release()


class JetsonGpioLine:
    """NVIDIA's Jetson.GPIO (>= 2.1 uses the GPIO character device)."""

    def __init__(self, pin: int, mode: str = "BOARD", active_low: bool = False) -> None:
        try:
            import Jetson.GPIO as GPIO
        except ImportError as exc:
            raise DmsError("buzzer backend 'jetson' needs the Jetson.GPIO package: "
                           "pip install Jetson.GPIO") from exc
        except RuntimeError as exc:  # raised at import on a board it does not recognise
            raise DmsError(f"buzzer backend 'jetson': Jetson.GPIO cannot run here: {exc}") from exc
        self._gpio = GPIO
        self._pin = pin
        self._on = GPIO.LOW if active_low else GPIO.HIGH
        self._off = GPIO.HIGH if active_low else GPIO.LOW
        try:
            GPIO.setmode(GPIO.BOARD if mode == "BOARD" else GPIO.BCM)
            GPIO.setup(pin, GPIO.OUT, initial=self._off)
        except (RuntimeError, ValueError, OSError) as exc:
            raise DmsError(f"buzzer: Jetson.GPIO cannot use {mode} pin {pin}: {exc}") from exc

    def set(self, on: bool) -> None:
        self._gpio.output(self._pin, self._on if on else self._off)

    def close(self) -> None:
        self._gpio.cleanup(self._pin)


class CommandLine:
    """Runs a configured program (argv list, never a shell) to switch the line.

    Each run gets its own process group; a run that outlives ``timeout_s`` is killed with its
    whole group (a hook that forks leaves nothing behind). ``set`` returns whether the program
    succeeded, so a failed "off" is retried by the caller. An "off" still running when a new
    alert is raised (:meth:`interrupt_off_when`) is killed the same way, so a slow "off" hook
    never delays the next alert's sound."""

    POLL_S = 0.005  # how often a running "off" checks whether a new alert wants the line on

    def __init__(self, on_argv: Sequence[str], off_argv: Sequence[str],
                 timeout_s: float = 2.0) -> None:
        for what, argv in (("command_on", on_argv), ("command_off", off_argv)):
            if not argv:
                raise DmsError(f"buzzer.{what}: empty command")
            if shutil.which(argv[0]) is None:
                raise DmsError(f"buzzer.{what}: program {argv[0]!r} not found or not executable")
        self._on = list(on_argv)
        self._off = list(off_argv)
        self._timeout_s = timeout_s
        self._interrupt_off: Callable[[], bool] = lambda: False

    def interrupt_off_when(self, predicate: Callable[[], bool]) -> None:
        """Kill a running "off" as soon as ``predicate()`` is true (a new alert was raised)."""
        self._interrupt_off = predicate

    def set(self, on: bool) -> bool:
        argv = self._on if on else self._off
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            log.error("buzzer command %s failed: %s", argv[0], exc)
            return False
        deadline = time.monotonic() + self._timeout_s
        while True:
            step = self._timeout_s if on else self.POLL_S
            try:
                _, err = proc.communicate(timeout=min(step, max(deadline - time.monotonic(), 0)))
                break
            except subprocess.TimeoutExpired:
                if not on and self._interrupt_off():
                    _kill_group(proc)
                    log.info("buzzer command %s interrupted: a new alert wants the line on",
                             argv[0])
                    return False
                if time.monotonic() >= deadline:
                    _kill_group(proc)
                    log.error("buzzer command %s took longer than %g s; killed with its "
                              "children", argv[0], self._timeout_s)
                    return False
        if proc.returncode != 0:
            log.error("buzzer command %s exited %d: %s", argv[0], proc.returncode,
                      err.decode(errors="replace").strip()[:200])
            return False
        return True

    def close(self) -> None:
        pass


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    import contextlib
    import os
    import signal

    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    try:
        proc.communicate(timeout=1.0)
    except subprocess.TimeoutExpired:
        log.error("buzzer command (pid %d) did not exit after SIGKILL", proc.pid)


def open_line(settings: BuzzerSettings) -> BuzzerLine:
    """The line of the configured backend; DmsError naming a missing package or chip."""
    if settings.backend == "gpiod":
        return GpiodLine(settings.gpiod_chip, settings.gpiod_line, settings.active_low)
    if settings.backend == "jetson":
        return JetsonGpioLine(settings.jetson_pin, settings.jetson_pin_mode, settings.active_low)
    if settings.backend == "command":
        return CommandLine(settings.command_on, settings.command_off, settings.command_timeout_s)
    return NullLine()


# -- patterns (pure) ----------------------------------------------------------------------------


def _rank(level: str) -> float:
    try:
        return float(level)
    except ValueError:
        return 0.0


class PatternPlayer:
    """Which state the line should have at ``now_s`` for the pattern being played. Pure."""

    def __init__(self, patterns: Mapping[str, BeepPattern]) -> None:
        if not patterns:
            raise ValueError("no beep patterns")
        self._patterns = dict(patterns)
        self._level: str | None = None
        self._start_s = 0.0

    def resolve(self, level: object) -> str:
        """The pattern key for an alert level; an unknown level plays the highest pattern
        (a loud false alarm is safer than a silent true one)."""
        key = str(level.value if hasattr(level, "value") else level)
        if key in self._patterns:
            return key
        highest = max(self._patterns, key=_rank)
        log.warning("buzzer: no pattern for level %r; playing level %s", key, highest)
        return highest

    def play(self, level: object, now_s: float) -> bool:
        """Start the pattern of ``level`` unless a higher level is still playing."""
        key = self.resolve(level)
        if self._level is not None and self.playing(now_s) and _rank(self._level) > _rank(key):
            return False
        self._level, self._start_s = key, now_s
        return True

    def stop(self) -> None:
        self._level = None

    def playing(self, now_s: float) -> bool:
        if self._level is None:
            return False
        return now_s - self._start_s < self._patterns[self._level].duration_s

    @property
    def level(self) -> str | None:
        return self._level

    def desired(self, now_s: float) -> bool:
        if self._level is None:
            return False
        pattern = self._patterns[self._level]
        elapsed = now_s - self._start_s
        if elapsed < 0 or elapsed >= pattern.duration_s:
            return False
        elapsed %= sum(pattern.on_off_s)
        for i, d in enumerate(pattern.on_off_s):
            if elapsed < d:
                return i % 2 == 0
            elapsed -= d
        return False


class Buzzer:
    """Patterns + mute + max on-time on top of one line. Thread-safe.

    The callers (the frame loop, command handlers, signal handlers) only *state* what they
    want: :meth:`alert`, :meth:`silence`, :meth:`mute` and :meth:`request_off` change the
    wanted state and wake the buzzer's own thread, and return at once. Only :meth:`update`
    (the buzzer thread, :class:`BuzzerThread`) and :meth:`force_off` (exit paths) write the
    line, so a slow or hanging hook never holds up monitoring.

    ``clock`` (monotonic seconds) is used only where a call gives no ``now_s``, and to time
    the delay from an alert's raise to the line being switched on (:meth:`sound_delays_s`).
    """

    OFF_RETRY_S = 0.5  # a failed "off" is tried again this often until it succeeds
    DELAYS_KEPT = 10_000  # raise-to-sound delays remembered for the statistics

    def __init__(self, settings: BuzzerSettings, line: BuzzerLine, *,
                 clock: Callable[[], float] = time.monotonic,
                 register_atexit: bool = True) -> None:
        self.settings = settings
        self._line = line
        self._clock = clock
        self._player = PatternPlayer(settings.patterns)
        self._lock = threading.RLock()  # the state; never held while a line is written
        self._io_lock = threading.Lock()  # one line write at a time
        self._wake = SignalSafeEvent()  # set when the wanted state changed
        self._wanted = False
        self._off_requested = False  # set by request_off (signal handlers: no lock taken)
        self._off_retry_at_s = -math.inf
        self._is_on: bool | None = False  # None: unknown (a write failed)
        self._on_since_s: float | None = None
        self._guard_tripped = False
        self._muted_until_s = -math.inf
        self._mutes: list[tuple[float, float]] = []  # (start, end) of mutes in the last hour
        self._closed = False
        self._raised_at: float | None = None  # clock() of a raise not yet sounding
        self._delays: deque[float] = deque(maxlen=self.DELAYS_KEPT)
        self._atexit = register_atexit
        if isinstance(line, CommandLine):
            line.interrupt_off_when(lambda: self._raised_at is not None)
        if register_atexit:
            atexit.register(self.force_off)

    @property
    def is_on(self) -> bool:
        """The line is on, or its state is unknown (a failed switch)."""
        return self._is_on is not False

    @property
    def has_line(self) -> bool:
        """False when no buzzer is fitted (backend ``none``)."""
        return not isinstance(self._line, NullLine)

    def pattern_s(self, level: object) -> float:
        """How long the pattern ``level`` plays (an unknown level plays the highest)."""
        return self.settings.patterns[self._player.resolve(level)].duration_s

    def wait_for_change(self, timeout_s: float) -> bool:
        """Block the buzzer thread until the wanted state changes or ``timeout_s`` passed."""
        changed = self._wake.wait(timeout_s)
        self._wake.clear()
        return changed

    def _apply(self, now: float, block: bool) -> None:
        """Write the wanted state to the line outside ``_lock``. ``block`` False: skip when a
        write is under way. A failed "off" leaves the line counted as on, so it is retried
        every ``OFF_RETRY_S``."""
        if not self._io_lock.acquire(blocking=block):
            return
        try:
            want = self._wanted
            if want and self._raised_at is not None:
                # the line is switched on now (or already is): the raise sounds
                self._delays.append(max(0.0, self._clock() - self._raised_at))
                self._raised_at = None
            if want == self._is_on or (not want and now < self._off_retry_at_s):
                return
            ok = self._line.set(want) is not False
            if ok:
                self._is_on = want
                self._off_retry_at_s = -math.inf
            else:
                self._is_on = None  # unknown: the next wanted state is written, whatever it is
                if not want and self._raised_at is None:  # (not an "off" a new alert cut)
                    self._off_retry_at_s = now + self.OFF_RETRY_S
                    log.error("buzzer: switching off failed; retrying every %.1f s",
                              self.OFF_RETRY_S)
        finally:
            self._io_lock.release()

    def alert(self, level: object, now_s: float | None = None) -> None:
        """Start the beep pattern of ``level`` (e.g. an event's level); the buzzer thread
        switches the line. Never waits for the line."""
        now = self._clock() if now_s is None else now_s
        with self._lock:
            if self._player.play(level, now):
                self._raised_at = self._clock()
            self._update_state(now)
        self._wake.set()

    def update(self, now_s: float | None = None, *, block: bool = True) -> bool:
        """Drive the line for time ``now_s`` (the buzzer thread's job); returns the wanted
        line state."""
        now = self._clock() if now_s is None else now_s
        if self._off_requested:
            self._off_requested = False
            with self._lock:
                self._player.stop()
        want = self._update_state(now)
        self._apply(now, block)
        return want

    def _update_state(self, now: float) -> bool:
        with self._lock:
            if self._closed:
                return False
            muted = self.muted(now) and _rank(self._player.level or "") < NEVER_MUTED_LEVEL
            want = self._player.desired(now) and not muted
            if want:
                want = self._within_max_on(now)
            else:
                self._guard_tripped = False
                self._on_since_s = None
                if muted or not self._player.playing(now):
                    self._raised_at = None  # a muted (or finished) alert never sounds
            self._wanted = want
            return want

    def _within_max_on(self, now: float) -> bool:
        """Whether the line may stay on: never longer than ``max_on_s`` continuously."""
        if self._guard_tripped:
            return False
        if self._on_since_s is None:
            self._on_since_s = now
        elif now - self._on_since_s >= self.settings.max_on_s:
            log.warning("buzzer: on for %.1f s, the maximum; forced off",
                        now - self._on_since_s)
            self._guard_tripped = True
            return False
        return True

    def muted(self, now_s: float | None = None) -> bool:
        now = self._clock() if now_s is None else now_s
        return now < self._muted_until_s

    def _muted_in_last_hour(self, now: float) -> float:
        """Seconds muted within [now - 1 h, now] (past mutes and the current one so far)."""
        since = now - MUTE_BUDGET_WINDOW_S
        self._mutes = [(a, b) for a, b in self._mutes if b > since]
        return sum(min(b, now) - max(a, since) for a, b in self._mutes if a < now)

    def mute_budget_left_s(self, now_s: float | None = None) -> float:
        """How long a mute asked now may last under ``max_mute_per_hour_s``."""
        now = self._clock() if now_s is None else now_s
        with self._lock:
            return max(0.0, self.settings.max_mute_per_hour_s - self._muted_in_last_hour(now))

    def mute(self, duration_s: float, now_s: float | None = None) -> dict[str, object]:
        """Silence levels below NEVER_MUTED_LEVEL for ``duration_s`` (0 < duration_s <=
        max_mute_s); a new mute replaces the one running. The muted time in any rolling hour
        stays within ``max_mute_per_hour_s``.

        Raises ValueError beyond either bound (the command dispatch turns it into a reply).
        """
        check_range("mute: duration_s", duration_s, 0.0, self.settings.max_mute_s,
                    low_open=True)
        now = self._clock() if now_s is None else now_s
        with self._lock:
            left = self.settings.max_mute_per_hour_s - self._muted_in_last_hour(now)
            if duration_s > left:
                raise ValueError(
                    f"mute refused: {duration_s:g} s asked, {max(left, 0.0):.0f} s of the "
                    f"{self.settings.max_mute_per_hour_s:g} s per hour mute budget left")
            self._end_mute(now)  # replaced: its time so far stays counted
            self._muted_until_s = now + duration_s
            self._mutes.append((now, now + duration_s))
            self._update_state(now)
        self._wake.set()
        log.info("buzzer muted for %.0f s (level %d and above still sound)", duration_s,
                 NEVER_MUTED_LEVEL)
        return {"muted_s": duration_s, "mute_budget_left_s": round(left - duration_s, 1)}

    def _end_mute(self, now: float) -> None:
        """End the running mute at ``now`` (its time so far stays counted)."""
        if self._mutes and self._mutes[-1][1] > now:
            self._mutes[-1] = (self._mutes[-1][0], now)
        self._muted_until_s = -math.inf

    def silence(self) -> None:
        """Stop the current pattern; the buzzer thread switches the line off."""
        with self._lock:
            self._player.stop()
            self._raised_at = None
            self._wanted = False
            self._on_since_s = None
        self._wake.set()

    def request_off(self) -> None:
        """Ask the buzzer thread to stop the pattern and switch off. Safe in a signal handler:
        it takes no lock (a flag and a re-entrant event)."""
        self._off_requested = True
        self._wanted = False
        self._wake.set()

    def force_off(self) -> None:
        """Switch the line off now, on the caller's thread (exit paths: close, atexit, the
        buzzer thread's end). Never raises; waits at most for a write under way (bounded by
        the hook's timeout)."""
        self._wanted = False
        self._on_since_s = None
        got = self._io_lock.acquire(timeout=self.settings.command_timeout_s + 1.0)
        try:
            if self._line.set(False) is False:
                log.error("buzzer: could not switch the line off (will retry)")
                self._is_on = None
                self._off_retry_at_s = -math.inf
            else:
                self._is_on = False
        except Exception:  # on exit paths, report and carry on
            log.exception("buzzer: could not switch the line off")
        finally:
            if got:
                self._io_lock.release()

    def sound_delays_s(self) -> list[float]:
        """Seconds from each raise (:meth:`alert` starting a pattern) to the buzzer thread
        switching the line on, oldest first (muted raises are not counted)."""
        return list(self._delays)

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._player.stop()
            self.force_off()
            self._closed = True
            try:
                self._line.close()
            except Exception:
                log.exception("buzzer: closing the line failed")
        if self._atexit:
            atexit.unregister(self.force_off)


def open_buzzer(settings: BuzzerSettings, *, clock: Callable[[], float] = time.monotonic,
                register_atexit: bool = True) -> Buzzer:
    """A Buzzer on the configured backend (DmsError if its library or chip is missing)."""
    return Buzzer(settings, open_line(settings), clock=clock, register_atexit=register_atexit)


class BuzzerThread:
    """The buzzer's own thread: every line write happens here. It wakes when the wanted
    state changes (:meth:`Buzzer.alert`, ``silence``, ``mute``) and at least every
    ``period_s`` (patterns, the maximum on-time, retries); forces the line off on stop."""

    def __init__(self, buzzer: Buzzer, period_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._buzzer = buzzer
        self._period_s = period_s or buzzer.settings.update_period_s
        self._clock = clock
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> BuzzerThread:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="dms-buzzer", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._buzzer.update(self._clock())
                self._buzzer.wait_for_change(self._period_s)
        except Exception:
            log.exception("buzzer thread failed; line forced off")
        finally:
            self._buzzer.force_off()

    def stop(self) -> None:
        self._stop.set()
        self._buzzer.request_off()  # wakes the thread
        if self._thread is not None:
            self._thread.join(timeout=self._buzzer.settings.command_timeout_s + 2.0)
            self._thread = None
        self._buzzer.force_off()
