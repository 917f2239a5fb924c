"""Issue 10, item 3: a pose no driver's head takes (the landmark fit's +-170 deg pitch/roll
flips at a profile, a CNN asked about a face past its range) is reported with confidence 0,
angles kept, for the CNN and the landmark estimators alike; the limits are a setting."""

from __future__ import annotations

import numpy as np
import pytest

from dms import geometry as g
from dms.config import ConfigError, parse_config
from dms.types import FaceBox, HeadPose
from dms.vision.plausible import NO_LIMITS, PoseLimits, limit_confidence


def _pose(pitch: float, yaw: float, roll: float, confidence: float = 0.9) -> HeadPose:
    return HeadPose(g.rotation_from_euler(pitch, yaw, roll), pitch, yaw, roll, confidence)


@pytest.mark.parametrize("angles, plausible", [
    ((-10.0, 45.0, 5.0), True),
    ((-20.0, 88.0, -55.0), True),     # a full turn with a tilt is still a head
    ((170.0, 80.0, 175.0), False),    # the profile flip: pitch and roll near +-180
    ((10.0, 30.0, -65.0), False),     # |roll| > 60
    ((-85.0, 0.0, 0.0), False),       # |pitch| > 80
])
def test_implausible_poses_keep_their_angles_with_confidence_zero(angles, plausible):
    p = _pose(*angles)
    out = limit_confidence(p, PoseLimits())
    assert (out.pitch_deg, out.yaw_deg, out.roll_deg) == angles
    assert out.confidence == (0.9 if plausible else 0.0)
    assert limit_confidence(p, NO_LIMITS).confidence == 0.9


def test_limits_are_a_validated_setting_under_vision_pose_limits():
    cfg = parse_config("[vision.pose.limits]\nmax_abs_roll_deg = 45.0\n")
    assert cfg.vision.pose.limits == PoseLimits(max_abs_pitch_deg=80.0, max_abs_roll_deg=45.0)
    assert parse_config("").vision.pose.limits == PoseLimits()
    with pytest.raises(ConfigError, match="max_abs_roll_deg must be in"):
        parse_config("[vision.pose.limits]\nmax_abs_roll_deg = 200.0\n", "dms.toml")


def test_cnn_estimator_reports_a_flipped_rotation_as_unsure(tmp_path):
    pytest.importorskip("onnx", reason="the dev extra provides onnx to build test graphs")
    from dms.vision.headpose import CnnHeadPose
    from dms.vision.runtime import create_session
    from dms.vision.settings import CnnPoseSettings

    from onnx_builders import head_pose_onnx

    img, box = np.full((120, 160, 3), 90, np.uint8), FaceBox(50, 30, 110, 100, 0.9)
    for angles, conf in (((-12.0, 37.0, 8.0), 1.0), ((172.0, 75.0, -168.0), 0.0)):
        M = g.aflw_matrix_from_euler(*angles)
        path = head_pose_onnx(tmp_path / "m.onnx", {"rotation_matrix": M},
                              reshape_3x3="rotation_matrix")
        one_pass = CnnPoseSettings(flip_average=False)  # the graph ignores its input
        pose = CnnHeadPose(create_session(path), settings=one_pass).estimate(img, box)
        assert pose.confidence == conf
        assert g.geodesic_deg(pose.rotation.T, M) < 1e-3  # the rotation itself is kept
        # without the limits (and with the yaw-range rule opened up) it is confident
        wide = CnnPoseSettings(flip_average=False, range_full_yaw_deg=179.0,
                               range_zero_yaw_deg=180.0)
        lax = CnnHeadPose(create_session(path), limits=NO_LIMITS,
                          settings=wide).estimate(img, box)
        assert lax.confidence == 1.0


def test_landmark_estimator_reports_a_flipped_fit_as_unsure():
    """Landmarks of the canonical mesh turned upside down (roll 175 deg) fit perfectly, with
    FaceMesh fully present: the pose is still reported as unsure."""
    from dms.paths import models_dir
    from dms.vision.facemesh import FaceLandmarks, FaceRoi
    from dms.vision.landmark_pose import LandmarkHeadPose, LandmarkPoseSettings

    est = LandmarkHeadPose.from_files(models_dir() / "face_landmark.onnx",
                                      settings=LandmarkPoseSettings(flip_average=False))

    def landmarks(pitch: float, yaw: float, roll: float) -> FaceLandmarks:
        R = g.rotation_from_euler(pitch, yaw, roll)
        cam = est.mesh.vertices_cm.astype(np.float64) @ R.T * 4.0 + np.array([200, -150, -50])
        return FaceLandmarks(cam * np.array([1.0, -1.0, -1.0]), 0.99, FaceRoi(200, 150, 100))

    upright = est._pose(landmarks(-10.0, 30.0, 5.0), None)
    assert upright.yaw_deg == pytest.approx(30.0, abs=0.1) and upright.confidence == 0.99
    flipped = est._pose(landmarks(-10.0, 30.0, 175.0), None)
    assert abs(flipped.roll_deg) > 170.0 and flipped.confidence == 0.0
