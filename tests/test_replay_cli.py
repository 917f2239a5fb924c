"""``dms replay``, ``dms calibrate`` and ``dms scenarios`` as a user runs them: the real
console entry (``python -m dms``) in a subprocess, on files written by the test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dms.engine import EngineSettings
from dms.sim.scenarios import ScenarioBuilder, csv_text, run

ROOT = Path(__file__).resolve().parents[1]
S = EngineSettings()


def dms(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dms", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd or ROOT, timeout=120)


@pytest.fixture(scope="module")
def long_glance_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sc = ScenarioBuilder(S, rate_hz=20).road(5).glance("passenger", 9).road(5).build()
    path = tmp_path_factory.mktemp("replay") / "long.csv"
    path.write_text(csv_text(sc.observations))
    return path


def test_replay_prints_only_event_json_lines(long_glance_csv: Path) -> None:
    res = dms("replay", "--poses", long_glance_csv)
    assert res.returncode == 0, res.stderr
    # stderr: one summary line (issue 22), as at the end of dms run
    (summary,) = res.stderr.splitlines()
    assert summary.startswith("dms replay: neutral learned at ")
    assert "summary: frames=380 face_found=100.0% alerts_raised=1 alert_records=4" in summary
    lines = res.stdout.splitlines()
    events = [json.loads(line) for line in lines]
    assert [(e["type"], e["phase"], e["level"]) for e in events] == [
        ("distraction", "raised", 1), ("distraction", "escalated", 2),
        ("distraction", "escalated", 3), ("distraction", "cleared", 3)]
    # same as the library's engine run (the CSV round trip keeps the timing)
    sc = ScenarioBuilder(S, rate_hz=20).road(5).glance("passenger", 9).road(5).build()
    direct = run(sc)
    assert [e["t_s"] for e in events] == pytest.approx([e.t_s for e in direct], abs=1e-3)


def test_face_column_and_optional_columns(tmp_path: Path) -> None:
    rows = ["t,yaw,pitch,roll,face,confidence,speed_kmh,steering_deg"]
    rows += [f"{k / 20:.2f},-20,8,0,1,0.9,80," for k in range(100)]
    rows += [f"{5 + k / 20:.2f},,,,0,,80," for k in range(300)]
    rows += [f"{20 + k / 20:.2f},-20,8,0,1,0.9,80,5" for k in range(40)]
    path = tmp_path / "lost.csv"
    path.write_text("\n".join(rows) + "\n")
    res = dms("replay", "--poses", path)
    assert res.returncode == 0, res.stderr
    types = [(json.loads(x)["type"], json.loads(x)["phase"]) for x in res.stdout.splitlines()]
    assert ("driver_not_visible", "raised") in types and ("system_degraded", "raised") in types
    assert types[-1][1] == "cleared"


@pytest.mark.parametrize("body,needle,line", [
    ("t,yaw,pitch,roll\n0,1,2,3\n0.05,abc,2,3\n", "yaw 'abc' is not a number", 3),
    ("t,yaw,pitch,roll\n0,1,2,3\n0.05,1,2\n", "3 fields, header has 4", 3),
    ("t,yaw,pitch,roll\n0,1,2,3\n0,1,2,3\n", "does not increase", 3),
    ("t,yaw,pitch\n0,1,2\n", "missing column(s) roll", 1),
    ("t,yaw,pitch,roll,mood\n0,1,2,3,x\n", "unknown column(s) mood", 1),
    ("t,yaw,pitch,roll,face\n0,1,2,3,1\n\n0.1,,,,2\n", "face '2' is not 0 or 1", 4),
    ("t,yaw,pitch,roll,face\n0,,2,3,1\n", "face present but", 2),
    ("t,yaw,pitch,roll,confidence\n0,1,2,3,1.5\n", "outside [0, 1]", 2),
    ("t,yaw,pitch,roll\n0,nan,2,3\n", "not finite", 2),
    ("", "empty file", None),
])
def test_malformed_rows_name_the_line(tmp_path: Path, body: str, needle: str,
                                      line: int | None) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(body)
    res = dms("replay", "--poses", path)
    assert res.returncode == 2
    assert res.stdout == ""  # nothing half-printed
    assert needle in res.stderr
    assert f"{path}:{line}:" in res.stderr if line else str(path) in res.stderr
    assert "Traceback" not in res.stderr and len(res.stderr.splitlines()) == 1


def test_missing_file(tmp_path: Path) -> None:
    res = dms("replay", "--poses", tmp_path / "nope.csv")
    assert res.returncode == 2 and "nope.csv: poses file not found" in res.stderr


def test_needs_poses_or_video() -> None:
    res = dms("replay")
    assert res.returncode == 2 and "either --poses" in res.stderr


@pytest.mark.parametrize("profile", sorted((ROOT / "calibration").glob("*.toml")))
def test_shipped_mount_profiles_load_and_replay(profile: Path, tmp_path: Path) -> None:
    from dms.replay import load_settings_files

    settings = load_settings_files([profile])
    assert settings.mount.name == profile.stem
    # a story filmed from that mount: attentive driving raises nothing, a long glance alerts
    sc = ScenarioBuilder(settings, rate_hz=20).road(10).glance("passenger", 4).road(5).build()
    path = tmp_path / "drive.csv"
    path.write_text(csv_text(sc.observations))
    res = dms("replay", "--poses", path, "--settings", profile)
    assert res.returncode == 0, res.stderr
    first = json.loads(res.stdout.splitlines()[0])
    assert (first["type"], first["reason"]) == ("distraction", "long_glance")


def test_bad_settings_name_the_key(tmp_path: Path, long_glance_csv: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[engine.policy]\nlong_glance_secs = 2.0\n")
    res = dms("replay", "--poses", long_glance_csv, "--settings", cfg)
    assert res.returncode == 2 and "engine.policy.long_glance_secs: unknown setting" in res.stderr
    cfg.write_text("[engine.policy]\nlong_glance_s = 1.5\n")
    res = dms("replay", "--poses", long_glance_csv, "--settings", cfg)
    first = json.loads(res.stdout.splitlines()[0])
    default = json.loads(dms("replay", "--poses", long_glance_csv).stdout.splitlines()[0])
    assert first["t_s"] == pytest.approx(default["t_s"] - 1.5, abs=0.06)
    assert first["settings_version"] != default["settings_version"]


def test_plot_with_poses(tmp_path: Path, long_glance_csv: Path) -> None:
    png = tmp_path / "timeline.png"
    res = dms("replay", "--poses", long_glance_csv, "--plot", png)
    assert res.returncode == 0, res.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_calibrate_from_poses_stores_the_profile(tmp_path: Path) -> None:
    sc = ScenarioBuilder(S, rate_hz=30, noise_deg=0.5, seed=2).road(8).build()
    path = tmp_path / "still.csv"
    path.write_text(csv_text(sc.observations))
    res = dms("calibrate", "--poses", path, "--profile", "alice", "--state-dir", tmp_path,
              "--duration-s", "5")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["ok"] and out["profile"] == "alice" and out["sample_count"] == 151
    assert out["yaw_deg"] == pytest.approx(S.mount.neutral_yaw_deg, abs=0.5)
    doc = json.loads((tmp_path / "calibration" / "alice.json").read_text())
    assert doc["schema_version"] == 1 and doc["mount"] == "dashboard-centre"
    # issue 22: how the profile will be used (the built-in configuration names "default")
    assert "`dms run` uses this one only with [service] profile = \"alice\"" in res.stderr
    cfg = tmp_path / "dms.toml"
    cfg.write_text('[service]\nprofile = "alice"\n')
    res = dms("calibrate", "--poses", path, "--profile", "alice", "--state-dir", tmp_path,
              "--config", cfg)
    assert res.returncode == 0, res.stderr
    assert f"`dms run` with {cfg} ([service] profile = \"alice\") uses this" in res.stderr


def test_calibrate_refuses_a_moving_driver(tmp_path: Path) -> None:
    sc = ScenarioBuilder(S, rate_hz=30).script("road 1" + "; glance left_mirror 0.6; road 0.4" * 4)
    path = tmp_path / "moving.csv"
    path.write_text(csv_text(sc.build().observations))
    res = dms("calibrate", "--poses", path, "--state-dir", tmp_path)
    assert res.returncode == 3
    assert json.loads(res.stdout)["code"] == "moved_too_much"
    assert "refused" in res.stderr and "moved" in res.stderr
    assert not (tmp_path / "calibration").exists()


def test_scenarios_write_then_replay(tmp_path: Path) -> None:
    out = tmp_path / "slump.csv"
    res = dms("scenarios", "write", "slump", "--out", out)
    assert res.returncode == 0, res.stderr
    events = [json.loads(x) for x in dms("replay", "--poses", out).stdout.splitlines()]
    assert [(e["type"], e["level"], e["phase"]) for e in events] == [
        ("slump", 3, "raised"), ("slump", 3, "cleared")]
    script = tmp_path / "s.csv"
    assert dms("scenarios", "write", "road 2; glance left_mirror 1; road 2", "--out",
               script).returncode == 0
    assert len(script.read_text().splitlines()) == 1 + 5 * 20
    bad = dms("scenarios", "write", "nosuch", "--out", script)
    assert bad.returncode == 2 and "unknown scenario" in bad.stderr


def test_scenarios_bench_small(tmp_path: Path) -> None:
    res = dms("scenarios", "bench", "--n", "4", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["scenarios"] == 4 and out["long_glances"] == 2
    assert S.policy.long_glance_s <= out["latency_median_s"] <= out["latency_max_s"]


def test_the_preview_overlay_keeps_the_frame_size_and_lists_the_alert() -> None:
    """Without the side panel (the preview's live view) the text goes on the frame itself:
    same size, the input untouched, the alert row in its level's colour."""
    import numpy as np

    from dms.engine import Engine
    from dms.types import FaceBox
    from dms.viz import LEVEL_BGR, VideoAnnotator

    # the neutral is learned first (online_settle_s), then the glance alerts
    sc = ScenarioBuilder(S, rate_hz=20).road(S.calibration.online_settle_s + 2).glance(
        "passenger", 4).build()
    eng = Engine(S)
    results = [eng.step(o) for o in sc.observations]
    hit = next(r for r in results if r.events)
    frame = np.zeros((480, 640, 3), np.uint8)
    box = FaceBox(300, 160, 420, 300, 0.9)
    ann = VideoAnnotator(S)
    out = ann.frame(frame, box, hit)
    assert out.shape == frame.shape and frame.max() == 0  # input untouched
    assert [t.split(",")[0] for t, _, _ in ann.rows(hit)] == ["L1 DISTRACTION: long_glance"]
    amber = np.all(out == np.array(LEVEL_BGR[1], np.uint8), axis=-1)
    assert amber.sum() > 50  # the row's level bar
    quiet = VideoAnnotator(S).frame(frame, None, results[0])
    assert not np.all(quiet == np.array(LEVEL_BGR[1], np.uint8), axis=-1).any()
    assert quiet.max() > 0  # the clock and the state
