"""Issue 10: the shipped head-pose student (``student_fm192``, models/MODELS.md) loads by its
manifest name and runs offline, passes the mirror test, is confident on a frontal face, and
reports a turn past its range as unsure; the landmark path stays the default."""

from __future__ import annotations

import numpy as np
import pytest

from dms.types import FaceBox
from dms.vision.headpose import CnnHeadPose, PoseModelSettings, create_pose_estimator
from dms.vision.settings import CnnPoseSettings


def _face(detector, image: np.ndarray) -> FaceBox:  # type: ignore[no-untyped-def]
    faces = detector.detect(image)
    assert faces, "the detector found no face"
    return max(faces, key=lambda f: f.width * f.height)


def _mirrored(image: np.ndarray, box: FaceBox) -> tuple[np.ndarray, FaceBox]:
    w = image.shape[1]  # box edges: x -> w - x
    return (np.ascontiguousarray(image[:, ::-1]),
            FaceBox(w - box.x2, box.y1, w - box.x1, box.y2, box.score))


def test_the_student_is_shipped_with_its_licence_and_is_not_the_default():  # noqa: D103
    from dms.vision.registry import resolve_model

    path, entry = resolve_model("student_fm192", task="head_pose")
    assert entry is not None and entry.embedded and path.is_file()
    assert "non-commercial" in entry.licence
    assert PoseModelSettings().model == "student_tddfa"  # issue 23's student is the default


def test_the_student_runs_offline_and_passes_the_mirror_test(astronaut, detector):
    est = create_pose_estimator(PoseModelSettings(model="student_fm192"))
    assert isinstance(est, CnnHeadPose) and est.size == 192
    box = _face(detector, astronaut)
    pose = est.estimate(astronaut, box)
    # the astronaut photo: a near-frontal face, slightly turned and tilted
    assert abs(pose.yaw_deg) < 30 and abs(pose.pitch_deg) < 30 and abs(pose.roll_deg) < 30
    assert pose.confidence > 0.9
    # the model alone (one pass) on the mirror image: yaw and roll change sign, pitch is kept
    one = CnnHeadPose(est.session, settings=CnnPoseSettings(flip_average=False))
    a = one.estimate(astronaut, box)
    b = one.estimate(*_mirrored(astronaut, box))
    assert b.yaw_deg == pytest.approx(-a.yaw_deg, abs=3.0)
    assert b.roll_deg == pytest.approx(-a.roll_deg, abs=3.0)
    assert b.pitch_deg == pytest.approx(a.pitch_deg, abs=3.0)
    assert abs(a.yaw_deg) > 1.0 or abs(a.roll_deg) > 1.0  # the signs are there to change
    # flip averaging makes the mirror test exact
    m = est.estimate(*_mirrored(astronaut, box))
    assert (m.pitch_deg, m.yaw_deg, m.roll_deg) == pytest.approx(
        (pose.pitch_deg, -pose.yaw_deg, -pose.roll_deg), abs=0.05)


def test_a_turn_past_the_students_range_is_reported_unsure():
    """Rendered full-range turns (public-domain photo lifted to 3-D): facing the camera the
    student reads a frontal yaw, confident; at 85 deg it still reads a large turn but reports
    itself unsure, which the engine takes as looking away. (Renders are not its home ground:
    8 deg mean error on its held-out renders, so only the yaw is held to a bound here.)"""
    from dms.train.rendered import RenderedHeads

    est = create_pose_estimator(PoseModelSettings(model="student_fm192"))
    heads = RenderedHeads(("astronaut",), mirror=False, seed=3)
    front = heads.render(0, pose_deg=(0.0, 0.0, 0.0), face_index=0)
    side = heads.render(1, pose_deg=(0.0, 85.0, 0.0), face_index=0)
    p0 = est.estimate(front.image, FaceBox(*front.box, score=1.0))
    assert p0.confidence > 0.9 and abs(p0.yaw_deg) < 10.0
    p1 = est.estimate(side.image, FaceBox(*side.box, score=1.0))
    assert p1.yaw_deg > 60.0 and p1.confidence < 0.5
