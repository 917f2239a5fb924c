"""Every number in the configuration is finite and within its documented range, identifiers
are validated, and a hostile file is one clear error (issue 13, item 8)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dms.config import ConfigError, parse_config


@pytest.mark.parametrize("text, key", [
    ("[engine.policy]\nlong_glance_s = inf\n", "engine.policy.long_glance_s"),
    ("[engine.mount]\nneutral_yaw_deg = nan\n", "engine.mount.neutral_yaw_deg"),
    ("[engine.zones]\nyaw_inboard_deg = nan\n", "engine.zones.yaw_inboard_deg"),
    ("[buzzer]\ncommand_timeout_s = nan\n", "buzzer.command_timeout_s"),
    ("[engine.calibration]\nonline_memory_s = -inf\n", "engine.calibration.online_memory_s"),
])
def test_non_finite_numbers_are_refused_naming_the_key(text: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        parse_config(text, "dms.toml")


@pytest.mark.parametrize("text, words", [
    ("[buzzer]\ncommand_timeout_s = 0\n", "command_timeout_s"),
    ("[buzzer]\ncommand_timeout_s = -1\n", "command_timeout_s"),
    ("[buzzer]\nupdate_period_s = 1e9\n", "update_period_s"),
    ('[mqtt]\ndevice_id = "cab/1"\n', "device_id"),
    ('[mqtt]\ndevice_id = "cab+"\n', "device_id"),
    ('[mqtt]\nprefix = "fleet/#"\n', "prefix"),
    ('[service]\nprofile = "../../etc/passwd"\n', "profile"),
    ('[service]\nprofile = ".hidden"\n', "profile"),
    ("[engine.mount]\nneutral_pitch_deg = 400\n", "neutral_pitch_deg"),
    ("[engine.zones]\nyaw_inboard_deg = 120\n", "road limits"),
    ("[engine.policy]\nlong_glance_s = 1e9\n", "long_glance_s"),
    ("[[engine.zones.glance]]\nname = \"x\"\nradius_deg = 0\n", "radius_deg"),
])
def test_out_of_range_numbers_and_bad_identifiers_are_refused(text: str, words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        parse_config(text, "dms.toml")


def test_a_deeply_nested_file_is_one_clear_error(tmp_path: Path) -> None:
    deep = tmp_path / "deep.toml"
    deep.write_text("x = " + "[" * 100_000 + "]" * 100_000 + "\n")
    p = subprocess.run([sys.executable, "-m", "dms", "config", "check", str(deep)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert "deep.toml" in p.stderr and "Traceback" not in p.stderr


def test_config_check_loads_no_model_or_network_code() -> None:
    """The configuration sits at the bottom of the import graph (issue 12): checking a file
    imports neither OpenCV, onnxruntime nor paho."""
    root = Path(__file__).resolve().parents[1]
    p = subprocess.run([sys.executable, "-X", "importtime", "-m", "dms", "config", "check",
                        str(root / "systemd" / "dms.example.toml")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    imported = {line.rsplit("|", 1)[-1].strip() for line in p.stderr.splitlines()
                if line.startswith("import time:")}
    assert not imported & {"cv2", "onnxruntime", "paho", "paho.mqtt.client", "insightface",
                           "matplotlib", "torch"}


@pytest.mark.parametrize("text, words", [
    # issue 21, fault 6: each passed `config check`, then crashed or silently disconnected
    ("[camera]\nframe_timeout_s = 1e10\n", "camera: frame_timeout_s 10000000000.0 must be in"),
    ("[mqtt]\nkeepalive_s = 100000\n", "mqtt: keepalive_s 100000 must be in"),
    ('[mqtt]\ndevice_id = "' + "d" * 65536 + '"\n', "device_id"),
    ("[mqtt]\nreconnect_max_s = 1000000\n", "reconnect_max_s"),
    ("[service]\nstop_deadline_s = 1e9\n", "stop_deadline_s"),
    ("[buzzer]\nmax_mute_s = 1e12\n", "max_mute_s"),
])
def test_numbers_that_would_crash_later_are_refused_by_config_check(text: str,
                                                                    words: str) -> None:
    with pytest.raises(ConfigError, match=words.replace("+", r"\+")):
        parse_config(text, "dms.toml")


def test_range_errors_are_worded_one_way() -> None:
    """issue 22: "<key> <value> must be in [low, high]" everywhere (the two mute range
    errors, the buzzer's and the command parser's, were worded differently)."""
    from dms.commands import parse_command
    from dms.outputs.buzzer import Buzzer, NullLine
    from dms.outputs.settings import BuzzerSettings

    buzzer = Buzzer(BuzzerSettings(max_mute_s=600), NullLine(), register_atexit=False)
    messages = []
    for seconds in (601.0, -1.0):
        with pytest.raises(ValueError) as caught:
            buzzer.mute(parse_command("mute", str(seconds).encode()).duration_s)
        messages.append(str(caught.value))
    assert messages == ["mute: duration_s 601.0 must be in (0, 600]",
                        "mute: duration_s -1.0 must be in (0, 600]"]
    with pytest.raises(ConfigError, match=r"preview: max_fps 99.0 must be in \[0.5, 15\]"):
        parse_config("[preview]\nmax_fps = 99.0\n")
    with pytest.raises(ConfigError, match=r"mqtt: command_window_s 0.0 must be in \[1, 600\]"):
        parse_config("[mqtt]\ncommand_window_s = 0.0\n")


@pytest.mark.parametrize("make", ["zero", "fifo", "huge", "dir"])
def test_config_check_reads_only_a_regular_file_of_sane_size(tmp_path: Path, make: str) -> None:
    """issue 21, fault 6: `config check /dev/zero` died of MemoryError with a traceback, and
    on a FIFO it hung. Only a regular file up to 1 MiB is read."""
    import os

    path = {"zero": Path("/dev/zero"), "fifo": tmp_path / "fifo", "huge": tmp_path / "big.toml",
            "dir": tmp_path}[make]
    if make == "fifo":
        os.mkfifo(path)
    if make == "huge":
        path.write_text("# padding\n" * 200_000)
    p = subprocess.run([sys.executable, "-m", "dms", "config", "check", str(path)],
                       capture_output=True, text=True, timeout=60)  # a FIFO hung for ever
    assert p.returncode == 2, p.stderr
    assert str(path) in p.stderr and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("text, hint", [
    ("[engine.policy]\nlong_glance = 3.0\n", "engine.policy.long_glance: unknown setting; "
                                             "did you mean long_glance_s?"),
    ("[engine.policy]\nlong_glanse_s = 3.0\n", "did you mean long_glance_s?"),
    ("[mqtt]\nkeepalive = 30\n", "did you mean keepalive_s?"),
    ("[camra]\nsource = '0'\n", "unknown section [camra]; did you mean camera?"),
])
def test_an_unknown_key_names_the_nearest_known_one(text: str, hint: str) -> None:
    """issue 22: `config check` suggests the nearest key."""
    with pytest.raises(ConfigError) as caught:
        parse_config(text, "dms.toml")
    assert hint in str(caught.value)
