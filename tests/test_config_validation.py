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
