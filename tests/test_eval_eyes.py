"""`dms eval --eyes`: the render and still-image evaluations and their bad-input errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from dms.paths import models_dir

SHARED = models_dir().parent.parent / "shared" / "data" / "aflw2000-64"


def _dms(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dms", *args], capture_output=True, text=True,
                          timeout=600)


def test_eval_eyes_on_a_render_reports_accuracy_and_gaze(tmp_path: Path):
    from dms.synth.render import render_scenario

    render_scenario("road 1s; close 1s; road 0.5s; look infotainment 1.2s", tmp_path,
                    use_cache=False)
    r = _dms("eval", "--eyes", "--format", "synth", str(tmp_path), "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["n_closed"] >= 5 and res["n_open"] >= 20
    assert res["accuracy"] > 0.9
    assert res["gaze_n"] > 0 and res["gaze_yaw_mae_deg"] < 15.0


def test_eval_eyes_refuses_a_folder_without_a_render(tmp_path: Path):
    r = _dms("eval", "--eyes", "--format", "synth", str(tmp_path))
    assert r.returncode == 2
    assert "video.mp4 and poses.csv" in r.stderr and "Traceback" not in r.stderr


def test_eval_eyes_refuses_a_truth_without_eye_columns(tmp_path: Path):
    (tmp_path / "video.mp4").write_bytes(b"")
    (tmp_path / "poses.csv").write_text("t,yaw,pitch,roll,face\n0,0,0,0,1\n")
    r = _dms("eval", "--eyes", "--format", "synth", str(tmp_path))
    assert r.returncode == 2 and "eye_open" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data/aflw2000-64 (not shipped)")
def test_eval_eyes_on_open_eyed_stills_reads_few_closed():
    r = _dms("eval", "--eyes", "--format", "aflw2000", str(SHARED), "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["measured"] >= 55
    assert res["closed_rate"] < 0.05 and 0.2 < res["openness_median"] < 0.5


@pytest.mark.skipif(not SHARED.is_dir(), reason="needs ../shared/data/aflw2000-64 (not shipped)")
def test_eval_eyes_on_stills_with_the_detectors_boxes():
    """The pipeline's own first ROI (the detector's box) instead of the labels': the faces it
    finds are measured, the ones it misses counted."""
    r = _dms("eval", "--eyes", "--format", "aflw2000", str(SHARED), "--boxes", "detector",
             "--json")
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["boxes"] == "detector"
    assert res["measured"] + res["not_found"] <= res["n"] and res["not_found"] <= 3
    assert res["measured"] >= 55
    assert res["closed_rate"] < 0.05 and 0.2 < res["openness_median"] < 0.5
    r = _dms("eval", "--eyes", "--format", "aflw2000", str(SHARED), "--boxes", "detector")
    assert r.returncode == 0 and "not found by blazeface" in r.stdout
