"""``dms replay --poses`` with eye columns (the synthetic renders' truth format): the eye
rules run on them, sunglasses make the eyes unmeasurable, bad cells are named."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from dms.engine.settings import EyeSettings

E = EyeSettings()
HEADER = "t,yaw,pitch,roll,face,eye_open,gaze_yaw_deg,gaze_pitch_deg,mouth_open,sunglasses"


def dms(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dms", *map(str, args)], capture_output=True,
                          text=True, timeout=120)


def write(tmp_path: Path, rows: list[tuple[float, float, int]]) -> Path:
    """rows of (t, eye_open, sunglasses), head at a fixed pose."""
    lines = [HEADER] + [f"{t:.4f},-20,8,0,1,{eo},0,0,0,{sg}" for t, eo, sg in rows]
    p = tmp_path / "poses.csv"
    p.write_text("\n".join(lines) + "\n")
    return p


def raised(out: str) -> list[dict]:
    return [e for e in map(json.loads, out.splitlines()) if e["phase"] == "raised"]


def test_a_microsleep_in_the_eye_columns(tmp_path: Path) -> None:
    rate = 30
    rows = [(i / rate, 0.0 if 300 <= i < 348 else 1.0, 0) for i in range(600)]  # shut 10-11.6 s
    r = dms("replay", "--poses", write(tmp_path, rows))
    assert r.returncode == 0, r.stderr
    ups = raised(r.stdout)
    assert [(e["type"], e["reason"]) for e in ups] == [("drowsiness", "microsleep")]
    assert 10.0 + E.microsleep_s <= ups[0]["t_s"] <= 10.0 + E.microsleep_s + 2 / rate


def test_sunglasses_column_makes_the_eyes_unmeasurable(tmp_path: Path) -> None:
    rate = 30
    rows = [(i / rate, 1.0, 1 if i >= 300 else 0) for i in range(600)]  # on from 10 s
    ups = raised(dms("replay", "--poses", write(tmp_path, rows)).stdout)
    assert [(e["type"], e["reason"]) for e in ups] == [("eyes_not_visible", "eyes_occluded")]
    assert 10.0 + E.occluded_s <= ups[0]["t_s"] <= 10.0 + E.occluded_s + 2 / rate


def test_bad_eye_cells_are_named(tmp_path: Path) -> None:
    r = dms("replay", "--poses", write(tmp_path, [(0.0, 1.0, 0), (0.1, 1.7, 0)]))
    assert r.returncode != 0 and "eye_open 1.7 is outside [0, 1]" in r.stderr
    assert "Traceback" not in r.stderr
    r = dms("replay", "--poses", write(tmp_path, [(0.0, 1.0, 2)]))
    assert r.returncode != 0 and "sunglasses '2' is not 0 or 1" in r.stderr
