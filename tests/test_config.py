from pathlib import Path

import pytest

from dms.config import ConfigError, load_config, parse_config, state_dir

ROOT = Path(__file__).resolve().parents[1]


def test_the_shipped_example_config_is_valid_and_complete():
    cfg = load_config(ROOT / "systemd" / "dms.example.toml")
    assert cfg.camera.source == "0" and cfg.vision.detector.model == "blazeface"
    assert cfg.vision.pose.landmarks.flip_average is True
    assert cfg.engine.policy.long_glance_s == 3.0 and cfg.service.state_dir == "/var/lib/dms"


def test_state_dir_precedence_systemd_then_config_then_per_user(tmp_path):
    cfg = parse_config('[service]\nstate_dir = "/srv/dms"\n')
    assert state_dir(cfg, {"STATE_DIRECTORY": "/var/lib/dms:/other"}) == Path("/var/lib/dms")
    assert state_dir(cfg, {}) == Path("/srv/dms")
    assert state_dir(parse_config(""), {"XDG_STATE_HOME": str(tmp_path)}) == tmp_path / "dms"


@pytest.mark.parametrize("text, message", [
    ("[camera]\nsorce = '0'\n", "camera.sorce: unknown setting"),
    ("[vision.pose.landmarks]\nflip_average = 'yes'\n", "flip_average: expected true or false"),
    ("[vision.pose.landmarks]\nyaw_gain = -0.5\n", "yaw_gain must be in [0, 2]"),
    ("[engine.policy]\nlong_glance_s = -1\n", "engine.policy"),
    ("[cameras]\n", "unknown section [cameras]"),
    ("[camera]\nsource = \n", "not valid TOML"),
])
def test_bad_config_names_the_key(text, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(".", r"\.")):
        parse_config(text, "dms.toml")
