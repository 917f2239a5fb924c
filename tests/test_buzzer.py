"""Buzzer patterns, mute, max on-time and backends, driven by timestamps (no sleeping).

Hardware backends this machine lacks (GPIO chip, Jetson) are exercised through the BuzzerLine
interface with a recording fake; their import/initialisation errors are checked for real.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from dms.errors import DmsError
from dms.outputs.buzzer import (
    BeepPattern,
    Buzzer,
    BuzzerSettings,
    BuzzerThread,
    CommandLine,
    GpiodLine,
    JetsonGpioLine,
    NullLine,
    PatternPlayer,
    open_buzzer,
    open_line,
)
from dms.settings import SettingsError, load_settings


class RecordingLine:
    """A fake line recording every write, standing in for a GPIO pin."""

    def __init__(self) -> None:
        self.writes: list[bool] = []
        self.closed = False

    def set(self, on: bool) -> None:
        self.writes.append(on)

    def close(self) -> None:
        self.closed = True


def make(**kw: object) -> tuple[Buzzer, RecordingLine]:
    line = RecordingLine()
    settings = load_settings(BuzzerSettings, kw, "buzzer")
    return Buzzer(settings, line, register_atexit=False), line


def trace(buzzer: Buzzer, t0: float, t1: float, step: float = 0.01) -> np.ndarray:
    return np.array([buzzer.update(t) for t in np.arange(t0, t1, step)])


def on_time_s(states: np.ndarray, step: float = 0.01) -> float:
    return float(states.sum() * step)


def test_each_level_plays_its_pattern_then_stops() -> None:
    pat = {"1": {"on_off_s": [0.1, 0.9], "repeat": 1}, "2": {"on_off_s": [0.2, 0.2], "repeat": 3}}
    buzzer, line = make(patterns=pat)
    buzzer.alert(2, now_s=10.0)
    states = trace(buzzer, 10.0, 12.0)
    # three 0.2 s beeps (rising edges), 0.6 s on in all, silent after 1.2 s
    rising = np.flatnonzero(np.diff(states.astype(int)) == 1)
    assert len(rising) == 2 and states[0]  # starts on at t=10.0, two more rising edges
    assert on_time_s(states) == pytest.approx(0.6, abs=0.02)
    assert not states[125:].any()
    assert line.writes == [True, False] * 3  # only changes are written


def test_a_lower_level_does_not_cut_a_higher_one_short() -> None:
    buzzer, _ = make()
    buzzer.alert("3", now_s=0.0)
    buzzer.alert("1", now_s=0.5)  # ignored: level 3 still playing
    player = PatternPlayer(buzzer.settings.patterns)
    player.play("3", 0.0)
    assert [buzzer.update(t) for t in (0.1, 0.7, 1.0)] == [player.desired(t) for t in
                                                           (0.1, 0.7, 1.0)]


def test_unknown_level_plays_the_highest_pattern() -> None:
    player = PatternPlayer({"1": BeepPattern((0.1, 0.1), 1), "3": BeepPattern((1.0, 0.1), 1)})
    player.play("emergency", 0.0)
    assert player.level == "3" and player.desired(0.5)


def test_continuous_on_is_cut_at_max_on_s() -> None:
    buzzer, line = make(max_on_s=1.5, patterns={"1": {"on_off_s": [10.0], "repeat": 1}})
    buzzer.alert(1, now_s=0.0)
    states = trace(buzzer, 0.0, 5.0)
    assert on_time_s(states) == pytest.approx(1.5, abs=0.02)
    assert line.writes == [True, False]


def test_mute_silences_now_and_is_bounded() -> None:
    buzzer, line = make(max_mute_s=60, patterns={"1": {"on_off_s": [0.5, 0.5], "repeat": 20}})
    buzzer.alert(1, now_s=0.0)
    assert buzzer.update(0.1)
    buzzer.mute(5.0, now_s=0.2)
    assert line.writes[-1] is True  # mute only states what is wanted ...
    assert not buzzer.update(0.2) and line.writes[-1] is False  # ... the buzzer thread writes
    assert not trace(buzzer, 0.2, 5.2).any()
    assert buzzer.update(6.1)  # the pattern resumes after the mute
    with pytest.raises(ValueError, match="60"):
        buzzer.mute(61, now_s=7.0)
    with pytest.raises(ValueError):
        buzzer.mute(0, now_s=7.0)
    with pytest.raises(ValueError):
        buzzer.mute(float("nan"), now_s=7.0)


def test_force_off_and_close_switch_the_line_off() -> None:
    buzzer, line = make()
    buzzer.alert(3, now_s=0.0)
    assert line.writes == []  # the buzzer thread writes the line, not the caller
    buzzer.update(0.0)
    assert line.writes == [True]
    buzzer.force_off()
    assert line.writes[-1] is False
    buzzer.close()
    assert line.closed and line.writes[-1] is False
    assert buzzer.update(0.1) is False  # closed: stays off


def test_force_off_survives_a_failing_line() -> None:
    class Broken(RecordingLine):
        def set(self, on: bool) -> None:
            raise OSError("line gone")

    buzzer = Buzzer(BuzzerSettings(), Broken(), register_atexit=False)
    buzzer.force_off()  # logged, not raised


def test_command_backend_runs_argv_without_a_shell(tmp_path: Path) -> None:
    log = tmp_path / "calls.txt"
    script = "import sys; open(sys.argv[1], 'a').write(sys.argv[2] + '\\n')"
    line = CommandLine([sys.executable, "-c", script, str(log), "on; rm -rf /"],
                       [sys.executable, "-c", script, str(log), "off"])
    buzzer = Buzzer(BuzzerSettings(patterns={"1": BeepPattern((0.2, 0.2), 2)}), line,
                    register_atexit=False)
    buzzer.alert(1, now_s=0.0)
    trace(buzzer, 0.0, 1.0, 0.05)
    buzzer.close()
    # the shell metacharacters arrived as one literal argument
    assert log.read_text().splitlines() == ["on; rm -rf /", "off", "on; rm -rf /", "off", "off"]


def test_command_backend_rejects_a_missing_program() -> None:
    with pytest.raises(DmsError, match="no-such-buzzer-tool"):
        CommandLine(["no-such-buzzer-tool", "on"], ["no-such-buzzer-tool", "off"])


def test_gpiod_backend_errors_name_the_package_or_chip(tmp_path: Path) -> None:
    if importlib.util.find_spec("gpiod") is None:
        with pytest.raises(DmsError, match="gpiod"):
            GpiodLine("/dev/gpiochip0", 17)
    else:
        with pytest.raises(DmsError, match="gpiochip-missing"):
            GpiodLine(str(tmp_path / "gpiochip-missing"), 17)


def test_jetson_backend_error_names_the_package() -> None:
    if importlib.util.find_spec("Jetson") is not None:
        pytest.skip("Jetson.GPIO is installed here; its errors are board-specific")
    with pytest.raises(DmsError, match="Jetson.GPIO"):
        JetsonGpioLine(12)


def test_settings_pick_the_backend_and_validate() -> None:
    assert isinstance(open_line(BuzzerSettings()), NullLine)
    with pytest.raises(SettingsError, match="gpiod_line"):
        load_settings(BuzzerSettings, {"backend": "gpiod"}, "buzzer")
    with pytest.raises(SettingsError, match="buzzer.backend"):
        load_settings(BuzzerSettings, {"backend": "pwm"}, "buzzer")
    with pytest.raises(SettingsError, match=r"on_off_s duration -1.0 must be in \[0, 60\]"):
        load_settings(BuzzerSettings, {"patterns": {"1": {"on_off_s": [-1.0]}}}, "buzzer")
    buzzer = open_buzzer(BuzzerSettings(), register_atexit=False)
    buzzer.alert(2, now_s=0.0)
    buzzer.close()


def _hook(tmp_path: Path, name: str, body: str) -> list[str]:
    script = tmp_path / f"{name}.py"
    script.write_text(body)
    return [sys.executable, str(script)]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"  # a zombie waiting for its reaper is dead


def test_a_hanging_hook_never_blocks_mute_and_is_killed_with_its_children(
        tmp_path: Path) -> None:
    """issue 13: a hanging hook held the buzzer lock (mute blocked 1.8 s) and left its
    child processes behind."""
    import threading
    import time

    pidfile = tmp_path / "child.pid"
    on = _hook(tmp_path, "on", "import subprocess, time\n"
               f"p = subprocess.Popen(['sleep', '60'])\nopen({str(pidfile)!r}, 'w')"
               ".write(str(p.pid))\ntime.sleep(60)\n")
    off = _hook(tmp_path, "off", "pass\n")
    timeout = 3.0
    settings = BuzzerSettings(backend="command", command_on=tuple(on), command_off=tuple(off),
                              command_timeout_s=timeout)
    buzzer = open_buzzer(settings, register_atexit=False)
    buzzer.alert(2, now_s=0.0)  # the caller never writes while another write may hang
    writer = threading.Thread(target=buzzer.update, args=(0.01,))  # the buzzer thread's job
    writer.start()
    for _ in range(200):  # the hook has started and forked its child
        if pidfile.exists() and pidfile.read_text():
            break
        time.sleep(0.05)
    t0 = time.monotonic()
    buzzer.mute(30.0, now_s=0.02)
    assert time.monotonic() - t0 < timeout / 2  # mute did not wait for the hanging hook
    writer.join(timeout=timeout + 5)
    assert not writer.is_alive()
    child = int(pidfile.read_text())
    for _ in range(40):
        if not _alive(child):
            break
        time.sleep(0.05)
    assert not _alive(child)  # the whole process group was killed on the timeout


def test_a_failed_off_is_retried_until_it_succeeds(tmp_path: Path) -> None:
    count = tmp_path / "count"
    count.write_text("0")
    on = _hook(tmp_path, "on", "pass\n")
    off = _hook(tmp_path, "off", f"p = {str(count)!r}\nn = int(open(p).read()) + 1\n"
                "open(p, 'w').write(str(n))\nraise SystemExit(0 if n >= 3 else 1)\n")
    settings = BuzzerSettings(backend="command", command_on=tuple(on), command_off=tuple(off))
    buzzer = open_buzzer(settings, register_atexit=False)
    buzzer.alert(2, now_s=0.0)
    buzzer.update(0.0)
    assert buzzer.is_on
    buzzer.force_off()  # fails (1)
    t = 1.0
    while count.read_text() != "3" and t < 10.0:
        buzzer.update(t)  # the buzzer thread: retries the off every OFF_RETRY_S
        t += Buzzer.OFF_RETRY_S
    assert count.read_text() == "3" and not buzzer.is_on
    buzzer.update(t + 5.0)
    assert count.read_text() == "3"  # once off, no more retries


class HangingLine(RecordingLine):
    """A line whose writes hang until ``release`` is set (a slow or hung hook), recording
    the thread each write ran on."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.threads: list[str] = []

    def set(self, on: bool) -> None:
        self.threads.append(threading.current_thread().name)
        self.release.wait(30)
        self.writes.append(on)


def test_the_loops_calls_only_state_the_wanted_buzzer_and_its_thread_writes_the_line() -> None:
    """issue 21, fault 2: a hook taking 1.5 s blocked the frame loop 1.5 s on alert() and
    2.5 s on silence(). Now alert, silence and mute return while the line hangs, and every
    write runs on the buzzer's own thread."""
    line = HangingLine()
    buzzer = Buzzer(BuzzerSettings(), line, register_atexit=False)

    def loop() -> None:  # what the frame loop and the command handlers call
        buzzer.alert(2)
        buzzer.silence()
        buzzer.alert(3)
        buzzer.mute(10.0)

    caller = threading.Thread(target=loop, name="frame-loop")
    caller.start()
    caller.join(timeout=10)  # a liveness bound: the line hangs for 30 s
    returned = not caller.is_alive()
    line.release.set()
    caller.join()
    assert returned, "the loop waited for the buzzer line"
    assert line.threads == []  # nothing was written from the loop's thread
    line.release.clear()
    worker = BuzzerThread(buzzer).start()
    for _ in range(500):  # the buzzer thread picks the wanted state up and writes it
        if line.threads:
            break
        time.sleep(0.01)
    line.release.set()
    for _ in range(500):
        if line.writes:
            break
        time.sleep(0.01)
    written_by = set(line.threads)
    worker.stop()  # the stop path may switch off itself (bounded): not the loop
    assert line.threads and written_by == {"dms-buzzer"}
    assert line.writes[0] is True  # level 3 sounds while muted


def test_a_slow_off_hook_is_interrupted_when_a_new_alert_wants_the_line_on(
        tmp_path: Path) -> None:
    """A slow "off" must not delay the next alert's sound: it is killed with its group."""
    calls, hang = tmp_path / "calls", tmp_path / "hang"
    hang.touch()
    on = _hook(tmp_path, "on", f"open({str(calls)!r}, 'a').write('on\\n')\n")
    off = _hook(tmp_path, "off", f"import os, time\nopen({str(calls)!r}, 'a').write('off\\n')\n"
                f"while os.path.exists({str(hang)!r}):\n    time.sleep(0.01)\n")
    settings = BuzzerSettings(backend="command", command_on=tuple(on), command_off=tuple(off),
                              command_timeout_s=30.0)
    buzzer = open_buzzer(settings, register_atexit=False)
    thread = BuzzerThread(buzzer).start()
    try:
        buzzer.alert(2)
        for _ in range(1000):
            if calls.exists() and calls.read_text().count("off") >= 1:
                break  # the pattern's first "off" is running (and hangs)
            time.sleep(0.01)
        buzzer.alert(3)  # a new alert: the hanging "off" is killed, the line goes on
        for _ in range(1000):
            if calls.read_text().splitlines()[-1:] == ["on"] and \
                    calls.read_text().count("on") >= 2:
                break
            time.sleep(0.01)
        assert calls.read_text().splitlines()[:3] == ["on", "off", "on"]
        assert len(buzzer.sound_delays_s()) == 2  # both raises sounded
    finally:
        hang.unlink()  # "off" hooks return at once from here on
        buzzer.silence()
        thread.stop()
