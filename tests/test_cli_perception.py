"""The perception commands as a user runs them: real process, real files, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from onnx_builders import head_pose_onnx


def dms(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dms", *args], capture_output=True, text=True, timeout=timeout
    )


def _no_traceback(p: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in p.stderr, p.stderr


def test_pose_missing_and_unreadable_images(tmp_path):
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image")
    p = dms("pose", str(tmp_path / "nope.jpg"), str(junk))
    assert p.returncode == 2
    _no_traceback(p)
    assert f"{tmp_path / 'nope.jpg'}: no such file" in p.stderr
    assert f"{junk}: not a readable image" in p.stderr


def test_pose_model_that_is_not_onnx(tmp_path):
    fake = tmp_path / "model.onnx"
    fake.write_text("hello")
    p = dms("pose", "--pose-model", str(fake), str(fake))
    assert p.returncode == 2
    _no_traceback(p)
    assert p.stderr.strip().splitlines() == [f"dms pose: error: {fake}: not an ONNX model "
                                              "(unexpected file contents)"]


def test_pose_model_with_unexpected_outputs(tmp_path):
    pytest.importorskip("onnx")
    m = head_pose_onnx(tmp_path / "odd.onnx", {"embedding": np.zeros(128)})
    p = dms("pose", "--pose-model", str(m), str(m))
    assert p.returncode == 2
    _no_traceback(p)
    assert "unexpected head-pose outputs embedding[1, 128]" in p.stderr


def test_eval_directory_without_labels(tmp_path):
    p = dms("eval", "--format", "aflw2000", str(tmp_path))
    assert p.returncode == 2
    _no_traceback(p)
    assert f"{tmp_path}: no AFLW2000 labels (*.mat files) found" in p.stderr


def test_pose_json_with_scrfd_and_a_cnn_model(tmp_path, scrfd_models, aflw_dir):
    pytest.importorskip("onnx")
    from dms import geometry as g

    M = g.aflw_matrix_from_euler(-5.0, 20.0, 3.0)
    model = head_pose_onnx(tmp_path / "hp.onnx", {"rotation_matrix": M},
                           reshape_3x3="rotation_matrix")
    images = [str(aflw_dir / "image00002.jpg"), str(aflw_dir / "image00008.jpg")]
    # the graph answers the same whatever the crop: read once ([vision.pose.cnn]) ...
    one_pass = tmp_path / "one_pass.toml"
    one_pass.write_text("[vision.pose.cnn]\nflip_average = false\n")
    p = dms("pose", "--json", "--detector", str(scrfd_models["scrfd_500m_bnkps"]),
            "--pose-model", str(model), "--config", str(one_pass), *images)
    assert p.returncode == 0, p.stderr
    recs = [json.loads(line) for line in p.stdout.splitlines()]
    assert {r["image"] for r in recs} == set(images)
    for r in recs:
        assert r["detector"] == "scrfd_500m_bnkps" and r["pose_model"] == "hp"
        assert len(r["box"]) == 4 and 0 < r["score"] <= 1
        assert (r["pitch"], r["yaw"], r["roll"]) == pytest.approx((-5.0, 20.0, 3.0), abs=0.01)
        assert r["confidence"] == 1.0
    # ... by default it also reads the mirrored crop, which it reads as the same head turned
    # the same way: 40 deg of disagreement, reported unsure
    p = dms("pose", "--json", "--detector", str(scrfd_models["scrfd_500m_bnkps"]),
            "--pose-model", str(model), *images)
    assert p.returncode == 0, p.stderr
    assert [json.loads(line)["confidence"] for line in p.stdout.splitlines()] == [0.0, 0.0]


def test_bench_reports_stages_and_fps_on_the_embedded_default(tmp_path):
    from dms.benchclip import render_clip

    clip = render_clip(tmp_path / "clip.mp4", seconds=1.0)
    p = dms("bench", "--video", str(clip), "--frames", "20", "--warmup", "0", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["frames"] == 20 and out["size"] == [640, 480]
    assert out["detector"] == "blazeface" and out["pose_model"] == "student_tddfa"
    assert out["detector_input"] == [256, 256]
    assert out["fps_p50"] > 0 and out["face_found_fraction"] > 0.9
    assert out["stages"]["detect"]["calls"] >= 1 and out["stages"]["total"]["calls"] == 20
    # without tracking the detector runs on every frame
    p = dms("bench", "--video", str(clip), "--frames", "10", "--warmup", "0", "--json",
            "--no-tracking")
    assert json.loads(p.stdout)["detector_runs_per_frame"] == 1.0
    # more frames than the clip holds: it plays forward and back until the count is reached
    p = dms("bench", "--video", str(clip), "--frames", "45", "--warmup", "5", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["clip_frames"] == 30 and out["frames"] == 45
    assert out["stages"]["total"]["calls"] == 45 and out["face_found_fraction"] > 0.9


def test_bench_head_only_runs_no_landmark_model_unless_the_config_says_so(tmp_path):
    """--no-eyes: the CNN tracks on its own landmarks (no landmark stage); a config's
    [vision.tracking] cnn_landmarks = "never" puts the landmark pass back (dms bench honours
    the config's tracking table)."""
    from dms.benchclip import render_clip

    clip = render_clip(tmp_path / "clip.mp4", seconds=1.0)
    args = ("bench", "--video", str(clip), "--frames", "10", "--warmup", "2", "--json",
            "--no-eyes")
    out = json.loads(dms(*args).stdout)
    assert out["stages"]["landmarks"] == {"calls": 0} and out["face_found_fraction"] > 0.9
    cfg = tmp_path / "dms.toml"
    cfg.write_text('[vision.tracking]\ncnn_landmarks = "never"\n')
    out = json.loads(dms(*args, "--config", str(cfg)).stdout)
    assert out["stages"]["landmarks"]["calls"] == 10
