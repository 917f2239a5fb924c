"""One per-frame step: ``dms replay VIDEO --config F`` reproduces ``dms run --source VIDEO
--config F`` exactly (same engine and vision settings, same step), and the service logs
every alert."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

# a long glance and a slump (each needs the neutral learned first), then the face covered
SCRIPT = "road 6s; glance infotainment 4s; road 3s; slump 4s; road 3s; occlude 3s; road 2s"
KEYS = ("type", "reason", "phase", "level", "t_s", "started_t_s")


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    from dms.synth.render import render_scenario

    out = tmp_path_factory.mktemp("clip")
    return Path(render_scenario(SCRIPT, out, fps=10, size="320x240").video)


def dms(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dms", *args], capture_output=True, text=True,
                          timeout=600)


def test_replay_video_with_a_config_matches_dms_run(tmp_path: Path, clip: Path) -> None:
    cfg = tmp_path / "dms.toml"
    # settings that differ from the defaults in both [vision] and [engine], so a replay that
    # ignored either would differ from the run
    cfg.write_text(f'[service]\nstate_dir = "{tmp_path / "state"}"\n'
                   "[camera]\nrealtime = false\n"
                   "[vision.tracking]\nredetect_interval_frames = 7\n"
                   "[vision.pose.landmarks]\nflip_average = false\n"
                   "[engine.policy]\nlong_glance_s = 2.5\n"
                   "[mqtt]\nenabled = false\n")
    run = dms("run", "--config", str(cfg), "--source", str(clip), "--print-events")
    assert run.returncode == 0, run.stderr
    replay = dms("replay", str(clip), "--config", str(cfg), "--quiet")
    assert replay.returncode == 0, replay.stderr
    ran = [json.loads(line) for line in run.stdout.splitlines()]
    replayed = [json.loads(line) for line in replay.stdout.splitlines()]
    assert ran, run.stderr
    assert [e["type"] for e in ran if e["phase"] == "raised"] == [
        "distraction", "slump", "driver_not_visible"]
    assert [{k: e[k] for k in KEYS} for e in replayed] == [{k: e[k] for k in KEYS} for e in ran]
    # dms run logs every alert record at INFO (journalctl shows what happened)
    logged = [line for line in run.stderr.splitlines() if " alert " in line]
    assert len(logged) == len(ran)
    assert any("alert raised L1 distraction/long_glance" in line for line in logged)
