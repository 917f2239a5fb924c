import numpy as np
import pytest

from dms import geometry as g
from dms.errors import ModelError
from dms.types import FaceBox
from dms.vision.headpose import CnnHeadPose
from dms.vision.runtime import check_onnx_file, create_session

from onnx_builders import head_pose_onnx

pytest.importorskip("onnx", reason="the dev extra provides onnx to build test graphs")

PITCH, YAW, ROLL = -12.0, 37.0, 8.0
M = g.aflw_matrix_from_euler(PITCH, YAW, ROLL)
IMG = np.full((120, 160, 3), 90, np.uint8)
BOX = FaceBox(50, 30, 110, 100, 0.9)


def _estimate(path, **kw):
    est = CnnHeadPose(create_session(path), **kw)
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
    _check(CnnHeadPose(create_session(q), output_format="euler:pitch,yaw,roll").estimate(IMG, BOX))


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
