"""The embedded head-pose estimator on real faces (AFLW2000-64 from ../shared)."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest

from dms import geometry as g
from dms.evaluation import read_aflw2000, read_image
from dms.paths import models_dir
from dms.types import FaceBox
from dms.vision.landmark_pose import LandmarkHeadPose


@pytest.fixture(scope="module")
def estimator() -> LandmarkHeadPose:
    return LandmarkHeadPose.from_files(models_dir() / "face_landmark.onnx")


def _moderate(aflw_dir, max_yaw=40.0):
    return [f for f in read_aflw2000(aflw_dir) if f.usable and abs(f.yaw_deg) <= max_yaw]


def test_mirrored_image_flips_yaw_and_roll_keeps_pitch(estimator, aflw_dir):
    asym = []
    for lf in _moderate(aflw_dir):
        img = read_image(lf.image_path)
        w = img.shape[1]
        x1, y1, x2, y2 = lf.box
        p = estimator.estimate(img, FaceBox(x1, y1, x2, y2, 1.0))
        q = estimator.estimate(cv2.flip(img, 1), FaceBox(w - 1 - x2, y1, w - 1 - x1, y2, 1.0))
        asym.append([p.yaw_deg + q.yaw_deg, p.roll_deg + q.roll_deg, p.pitch_deg - q.pitch_deg])
        if abs(lf.yaw_deg) > 15:  # turned faces: the sign agrees with the AFLW label, and flips
            assert np.sign(p.yaw_deg) == np.sign(lf.yaw_deg) == -np.sign(q.yaw_deg)
        if abs(lf.roll_deg) > 10:
            assert np.sign(p.roll_deg) == np.sign(lf.roll_deg) == -np.sign(q.roll_deg)
    asym = np.abs(np.asarray(asym))
    assert len(asym) >= 40
    # FaceMesh is nearly, not exactly, mirror-symmetric: measured median 0.9 / 0.5 / 0.9 deg,
    # max 4.3 deg (yaw). A sign error would show as twice the angle (tens of degrees).
    assert asym.max() < 6.0, asym.max(axis=0)
    assert np.all(np.median(asym, axis=0) < 1.5), np.median(asym, axis=0)


def test_accuracy_on_moderate_poses(estimator, aflw_dir):
    errs = []
    for lf in _moderate(aflw_dir, 30.0):
        pose = estimator.estimate(read_image(lf.image_path), FaceBox(*lf.box, 1.0))
        errs.append([abs(pose.pitch_deg - lf.pitch_deg), abs(pose.yaw_deg - lf.yaw_deg),
                     abs(pose.roll_deg - lf.roll_deg)])
        assert pose.confidence > 0.5
        assert g.geodesic_deg(pose.rotation, g.rotation_from_euler(
            pose.pitch_deg, pose.yaw_deg, pose.roll_deg)) < 1e-4
    mae = np.mean(errs, axis=0)
    # measured 3.4 / 1.5 / 0.8 on these 53 faces (docs/benchmarks.md); bounds leave room for
    # numeric differences across onnxruntime builds, not for a broken convention.
    assert mae[0] < 5.0 and mae[1] < 3.0 and mae[2] < 2.0, mae


def test_large_yaw_is_reported_with_the_right_sign_and_low_confidence(estimator, aflw_dir):
    large = [f for f in read_aflw2000(aflw_dir) if f.usable and abs(f.yaw_deg) > 60]
    assert large
    for lf in large:
        pose = estimator.estimate(read_image(lf.image_path), FaceBox(*lf.box, 1.0))
        assert np.sign(pose.yaw_deg) == np.sign(lf.yaw_deg)
        assert abs(pose.yaw_deg) > 35  # underestimated, but far outside any road zone


def test_tracking_follows_a_moving_face_with_few_detections(aflw_dir):
    from dms.perception import Perception
    from dms.vision.detect import create_detector
    from dms.vision.headpose import create_pose_estimator

    img = read_image(aflw_dir / "image00002.jpg")
    perception = Perception(create_detector(), create_pose_estimator())
    yaws = []
    for i in range(40):  # slide the face across a larger canvas, 4 px per frame
        canvas = np.full((600, 700, 3), 40, np.uint8)
        canvas[60:510, 20 + 4 * i: 470 + 4 * i] = img
        r = perception.process(canvas, i / 30.0)
        assert r.pose is not None and r.face is not None
        assert r.face.x1 > 4 * i  # the tracked box moves with the face
        yaws.append(r.pose.yaw_deg)
    assert perception.detections <= 3  # detector on the first frame (+ scheduled re-detects)
    assert np.ptp(yaws) < 4.0  # same face, same pose: tracking does not add jitter


def test_eval_cli_reports_the_protocol_fields(aflw_dir):
    p = subprocess.run([sys.executable, "-m", "dms", "eval", "--format", "aflw2000",
                        str(aflw_dir), "--boxes", "detector", "--json"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["n"] == 61 and out["skipped"] == 3
    assert out["n"] - out["not_found"] >= 59  # acceptance: faces found in >= 59 of 61
    for k in ("pitch_mae", "yaw_mae", "roll_mae", "mean_mae", "yaw_mae_large"):
        assert 0.0 < out[k] < 90.0
    assert out["mean_mae"] == pytest.approx(
        (out["pitch_mae"] + out["yaw_mae"] + out["roll_mae"]) / 3, abs=1e-9)


def test_eval_with_gt_boxes_meets_the_target_and_config_switches_the_yaw_correction(
    aflw_dir, tmp_path
):
    """On these 61 faces the landmark path (no yaw correction, issue 10: it hurts real faces below
    60 deg on aflw2000-dev) measures 3.27 deg mean MAE with ground-truth boxes; the
    render-fitted correction (knee 18, gain 0.46), one config away, measures 2.87 (issue 2's
    <= 3.0) because this subset has few faces at 30-60 deg and six beyond 60, where it helps
    (yaw MAE there 18.5 -> 6.5)."""
    def run(*extra: str) -> dict:
        p = subprocess.run([sys.executable, "-m", "dms", "eval", str(aflw_dir), "--boxes",
                            "gt", "--json", "--pose-model", "facemesh", *extra],
                           capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr
        return json.loads(p.stdout)

    off = run()
    assert off["n"] == 61 and off["not_found"] == 0
    assert off["mean_mae"] <= 3.4
    on_cfg = tmp_path / "on.toml"
    on_cfg.write_text("[vision.pose.landmarks]\nyaw_knee_deg = 18.0\nyaw_gain = 0.46\n")
    on = run("--config", str(on_cfg))
    assert on["mean_mae"] <= 3.0
    assert off["yaw_mae_large"] > on["yaw_mae_large"] + 5.0
    assert off["pitch_mae"] == pytest.approx(on["pitch_mae"], abs=1e-6)
    bad = subprocess.run([sys.executable, "-m", "dms", "eval", str(aflw_dir), "--config",
                          str(tmp_path / "missing.toml")], capture_output=True, text=True)
    assert bad.returncode != 0 and "missing.toml" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_mirrored_pass_runs_the_attention_mesh(estimator, astronaut) -> None:
    """Default flip averaging: FaceMesh on the crop, MediaPipe's attention mesh on its mirror
    image, the lower presence as confidence; ``mirror_model = ""`` runs FaceMesh twice."""
    from dms.vision.detect import create_detector, select_driver
    from dms.vision.settings import LandmarkPoseSettings

    assert estimator.mirror_landmarker is not None
    assert estimator.mirror_landmarker.name == "facemesh_attention"
    box = select_driver(create_detector().detect(astronaut), astronaut.shape)
    _, pose, track = estimator.start(astronaut, box)
    assert 0.9 < pose.confidence <= track.landmarks.presence
    twice = LandmarkHeadPose.from_files(models_dir() / "face_landmark.onnx",
                                        settings=LandmarkPoseSettings(mirror_model=""))
    assert twice.mirror_landmarker is None
    _, pose2, _ = twice.start(astronaut, box)
    # two different mirrored passes: close, not equal
    assert 0.0 < g.geodesic_deg(pose.rotation, pose2.rotation) < 3.0


def test_attention_mesh_is_not_offered_as_a_head_pose_model() -> None:
    from dms.errors import ModelError
    from dms.vision.headpose import PoseModelSettings, create_pose_estimator

    with pytest.raises(ModelError, match="is a face_landmarks, not a head_pose"):
        create_pose_estimator(PoseModelSettings(model="facemesh_attention"))
