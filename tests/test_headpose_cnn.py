import numpy as np
import pytest

from dms import geometry as g
from dms.config import ConfigError, parse_config
from dms.errors import ModelError
from dms.types import FaceBox
from dms.vision.headpose import CnnHeadPose, flip_confidence, mirrored_matrix
from dms.vision.runtime import check_onnx_file, create_session
from dms.vision.settings import CnnPoseSettings

from onnx_builders import head_pose_onnx

pytest.importorskip("onnx", reason="the dev extra provides onnx to build test graphs")

PITCH, YAW, ROLL = -12.0, 37.0, 8.0
M = g.aflw_matrix_from_euler(PITCH, YAW, ROLL)
IMG = np.full((120, 160, 3), 90, np.uint8)
BOX = FaceBox(50, 30, 110, 100, 0.9)


ONE_PASS = CnnPoseSettings(flip_average=False)  # the test graphs answer the same whatever the crop


def _estimate(path, **kw):
    est = CnnHeadPose(create_session(path), settings=ONE_PASS, **kw)
    return est, est.estimate(IMG, BOX)


def _check(pose):
    assert (pose.pitch_deg, pose.yaw_deg, pose.roll_deg) == pytest.approx(
        (PITCH, YAW, ROLL), abs=1e-3
    )
    assert g.geodesic_deg(pose.rotation, g.rotation_from_euler(PITCH, YAW, ROLL)) < 1e-3


def test_rotation_matrix_output(tmp_path):
    p = head_pose_onnx(tmp_path / "m.onnx", {"rotation_matrix": M}, size=64,
                       reshape_3x3="rotation_matrix")
    est, pose = _estimate(p)
    assert est.format == "rotation_matrix" and est.size == 64  # size read from the graph
    _check(pose)


def test_6d_output(tmp_path):
    six = np.concatenate([M[:, 0] * 2.0, M[:, 1] + 0.3 * M[:, 0]])
    est, pose = _estimate(head_pose_onnx(tmp_path / "m.onnx", {"out": six}, size=96))
    assert est.format == "6d" and est.size == 96
    _check(pose)


def test_euler_output_order_from_name_or_override(tmp_path):
    p = head_pose_onnx(tmp_path / "m.onnx", {"yaw_pitch_roll": np.array([YAW, PITCH, ROLL])})
    est, pose = _estimate(p)
    assert est.format == "euler:yaw,pitch,roll"
    _check(pose)
    q = head_pose_onnx(tmp_path / "n.onnx", {"angles": np.array([PITCH, YAW, ROLL])})
    with pytest.raises(ModelError, match="no known order"):
        CnnHeadPose(create_session(q))
    _check(CnnHeadPose(create_session(q), output_format="euler:pitch,yaw,roll",
                       settings=ONE_PASS).estimate(IMG, BOX))


def test_hopenet_bins_soft_argmax(tmp_path):
    def bins_for(angle):  # logits peaked at the bin holding ``angle``
        logits = np.full(66, -30.0)
        logits[int((angle + 99) // 3)] = 30.0
        return logits

    outs = {"yaw": bins_for(YAW), "pitch": bins_for(PITCH), "roll": bins_for(ROLL)}
    est, pose = _estimate(head_pose_onnx(tmp_path / "m.onnx", outs))
    assert est.format == "bins:yaw,pitch,roll"
    # soft-argmax returns the bin centre: within half a bin (1.5 deg) of the angle
    assert pose.yaw_deg == pytest.approx(YAW, abs=1.5)
    assert pose.pitch_deg == pytest.approx(PITCH, abs=1.5)
    assert pose.roll_deg == pytest.approx(ROLL, abs=1.5)


def test_unexpected_outputs_and_non_onnx_files_are_clear_errors(tmp_path):
    p = head_pose_onnx(tmp_path / "m.onnx", {"features": np.zeros(5)})
    with pytest.raises(ModelError, match=r"unexpected head-pose outputs features\[1, 5\]"):
        CnnHeadPose(create_session(p))
    txt = tmp_path / "notes.onnx"
    txt.write_text("not a model")
    with pytest.raises(ModelError, match="notes.onnx: not an ONNX model"):
        check_onnx_file(txt)
    with pytest.raises(ModelError, match="model file not found"):
        create_session(tmp_path / "missing.onnx")


def test_mirrored_matrix_negates_yaw_and_roll_and_keeps_pitch():
    p, y, r = g.euler_from_aflw_matrix(mirrored_matrix(M))
    assert (p, y, r) == pytest.approx((PITCH, -YAW, -ROLL), abs=1e-9)
    assert np.allclose(mirrored_matrix(mirrored_matrix(M)), M)


@pytest.mark.parametrize("disagreement, confidence", [
    (0.0, 1.0), (10.0, 1.0), (17.5, 0.5), (25.0, 0.0), (90.0, 0.0)])
def test_flip_confidence_ramps_between_the_two_settings(disagreement, confidence):
    s = CnnPoseSettings()
    assert (s.flip_agree_deg, s.flip_zero_deg) == (10.0, 25.0)
    assert flip_confidence(disagreement, s) == pytest.approx(confidence)


def test_flip_average_means_the_two_reads_and_their_disagreement_is_the_confidence(tmp_path):
    p = head_pose_onnx(tmp_path / "m.onnx", {"rotation_matrix": M}, size=64,
                       reshape_3x3="rotation_matrix")
    est = CnnHeadPose(create_session(p))  # flip averaging on: the default
    as_out = lambda R: [np.asarray(R, np.float32).reshape(1, 3, 3)]  # noqa: E731
    # the mirrored crop read as the mirrored head: the same pose, fully confident
    pose = est.decode_pair(as_out(M), as_out(mirrored_matrix(M)))
    assert pose.confidence == pytest.approx(1.0)
    _check(pose)
    # the mirror read 20 deg off in yaw: half-way down the 10..25 deg ramp, the mean between
    off = g.aflw_matrix_from_euler(PITCH, -YAW - 20.0, -ROLL)
    pose = est.decode_pair(as_out(M), as_out(off))
    assert pose.confidence == pytest.approx(1.0 - (20.0 - 10.0) / 15.0, abs=1e-6)
    assert pose.yaw_deg == pytest.approx(YAW + 10.0, abs=0.5)
    # a graph that answers the same whatever the crop (yaw 37, roll 8) disagrees with itself
    # by about 2 x 38 deg once mirrored: unsure
    assert est.estimate(IMG, BOX).confidence == 0.0


def test_cnn_settings_are_validated_under_vision_pose_cnn():
    cfg = parse_config("[vision.pose.cnn]\nflip_average = false\n")
    assert cfg.vision.pose.cnn == CnnPoseSettings(flip_average=False)
    with pytest.raises(ConfigError, match="flip_agree_deg < flip_zero_deg"):
        parse_config("[vision.pose.cnn]\nflip_agree_deg = 30.0\n", "dms.toml")


def test_confidence_falls_with_yaw_past_the_range_in_either_mode(tmp_path):
    s = CnnPoseSettings()
    assert (s.range_full_yaw_deg, s.range_zero_yaw_deg) == (65.0, 75.0)
    for yaw, conf in ((37.0, 1.0), (70.0, 0.5), (-80.0, 0.0)):
        R = g.aflw_matrix_from_euler(PITCH, yaw, ROLL)
        p = head_pose_onnx(tmp_path / "m.onnx", {"rotation_matrix": R}, size=64,
                           reshape_3x3="rotation_matrix")
        est = CnnHeadPose(create_session(p), settings=ONE_PASS)
        assert est.estimate(IMG, BOX).confidence == pytest.approx(conf, abs=1e-6)
        both = CnnHeadPose(create_session(p))
        out = [np.asarray(R, np.float32).reshape(1, 3, 3)]
        mirrored = [np.asarray(mirrored_matrix(R), np.float32).reshape(1, 3, 3)]
        assert both.decode_pair(out, mirrored).confidence == pytest.approx(conf, abs=1e-6)
    with pytest.raises(ConfigError, match="range_full_yaw_deg < range_zero_yaw_deg"):
        parse_config("[vision.pose.cnn]\nrange_zero_yaw_deg = 60.0\n", "dms.toml")
