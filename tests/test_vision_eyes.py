"""The eye measurement on real model runs: the embedded iris model, openness on rendered open
and closed eyes, GRAY8 frames end to end, the mirror symmetry of gaze, occluded eyes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest

from dms.paths import load_photo, models_dir
from dms.types import FaceBox
from dms.vision.detect import DetectorSettings, create_detector, select_driver
from dms.vision.eyes import EyeMeasurer, IrisLandmarker, eye_roi
from dms.vision.headpose import PoseModelSettings, create_pose_estimator
from dms.vision.registry import find_entry
from dms.vision.runtime import CPU_ONLY, create_session


@pytest.fixture(scope="module")
def models():
    """The landmark path's FaceMesh landmarks feed the iris model in these tests."""
    return (create_detector(DetectorSettings()),
            create_pose_estimator(PoseModelSettings(model="facemesh")),
            EyeMeasurer.from_settings())


def _measure(models, img):
    det, est, eyes = models
    box = select_driver(det.detect(img), img.shape)
    assert box is not None, "the detector must find the face"
    pose, lm = est.estimate_with_landmarks(img, box)
    return eyes.measure(img, pose, lm.points_px, box), lm.points_px


def test_iris_model_is_the_manifests_and_runs_offline():
    entry = find_entry("iris")
    path = models_dir() / entry.file
    assert hashlib.sha256(path.read_bytes()).hexdigest() == entry.sha256
    iris = IrisLandmarker(create_session(path, CPU_ONLY))
    assert iris.input_size == 64
    img = load_photo("astronaut")
    _, est, _ = (None, create_pose_estimator(PoseModelSettings(model="facemesh")), None)
    det = create_detector(DetectorSettings())
    box = select_driver(det.detect(img), img.shape)
    _, lm = est.estimate_with_landmarks(img, box)
    contour, irises = iris.run(img, eye_roi(lm.points_px[33, :2], lm.points_px[133, :2], 2.3),
                               mirror=False)
    assert contour.shape == (71, 2) and irises.shape == (5, 2)
    # the iris centre lies between the eye corners the crop was made from
    lo, hi = np.minimum(lm.points_px[33, :2], lm.points_px[133, :2]), np.maximum(
        lm.points_px[33, :2], lm.points_px[133, :2])
    assert lo[0] < irises[0, 0] < hi[0]
    assert abs(irises[0, 1] - 0.5 * (lo[1] + hi[1])) < 0.5 * (hi[0] - lo[0])


def test_open_photo_reads_open_with_mouth_closed(models):
    eyes, _ = _measure(models, load_photo("grace_hopper"))
    assert 0.2 < eyes.openness_right < 0.5 and 0.2 < eyes.openness_left < 0.5
    assert eyes.confidence > 0.5
    assert eyes.mouth_open is not None and eyes.mouth_open < 0.2


def test_mirrored_face_flips_gaze_yaw_and_keeps_pitch(models):
    img = load_photo("astronaut")
    a, _ = _measure(models, img)
    b, _ = _measure(models, np.ascontiguousarray(img[:, ::-1]))
    assert a.gaze_yaw_deg is not None and b.gaze_yaw_deg is not None
    assert abs(a.gaze_yaw_deg + b.gaze_yaw_deg) < 3.0
    assert abs(a.gaze_pitch_deg - b.gaze_pitch_deg) < 3.0
    # and eyes turned in the image turn the gaze: shift both irises toward image left
    # by warping only the eye regions is not possible on a photo, so check the sign on the
    # model directly: an iris left of the corner midpoint reads yaw > 0 (toward image left)
    _, _, measurer = models
    from dms.vision.eyes import EyeReading

    R = np.eye(3)
    centre = np.array([100.0, 100.0])
    reading = EyeReading(centre - [15, 0], centre + [15, 0], centre - [6, 0], 0.3, 30.0, 1.0)
    yaw, pitch = measurer.gaze(reading, "right", R)
    assert yaw > 10.0 and abs(pitch) < 15.0
    up = EyeReading(centre - [15, 0], centre + [15, 0], centre - [0, 8], 0.3, 30.0, 1.0)
    assert measurer.gaze(up, "right", R)[1] > 10.0


def test_gray8_frame_runs_end_to_end_with_eyes(models):
    from dms.engine.engine import Engine
    from dms.monitor import DriverMonitor
    from dms.perception import Perception

    det, est, eyes = models
    gray = cv2.cvtColor(load_photo("astronaut"), cv2.COLOR_BGR2GRAY)  # GRAY8, 2-D
    monitor = DriverMonitor(Perception(det, est, eyes=eyes), Engine())
    step = monitor.step(gray, 0.0)
    assert step.error == ""
    obs = step.frame.observation()
    assert obs.eyes is not None and obs.eyes.openness is not None and obs.eyes.openness > 0.2
    assert obs.eyes.confidence > 0.5 and obs.eyes.gaze_yaw_deg is not None
    step = monitor.step(gray[:, :, None], 1.0 / 30)  # HxWx1 as well, now tracking
    assert step.frame.eyes is not None and step.frame.eyes.openness > 0.2


@pytest.fixture(scope="module")
def closing_render(tmp_path_factory):
    """A short render (real lifted face, C's renderer): open, shut, open again; ``--ir`` too."""
    from dms.synth.render import render_scenario

    out = {}
    for ir in (False, True):
        d = tmp_path_factory.mktemp("ir" if ir else "rgb")
        render_scenario("road 1s; close 1.2s; road 0.6s", d, ir=ir, use_cache=False)
        out[ir] = d
    return out


@pytest.mark.parametrize("ir", [False, True])
def test_closed_eye_reads_lower_than_open(models, closing_render, ir):
    from dms.capture import video_frames
    from dms.evaluation import read_eye_truth
    from dms.perception import Perception

    det, est, eyes = models
    d = closing_render[ir]
    truth = read_eye_truth(d / "poses.csv")
    perception = Perception(det, est, eyes=eyes)
    opened, shut = [], []
    for k, frame in enumerate(video_frames(str(d / "video.mp4"))):
        img = frame.image if frame.image.ndim == 3 else cv2.cvtColor(frame.image,
                                                                      cv2.COLOR_GRAY2BGR)
        e = perception.process(img, truth[k].t_s).eyes
        assert e is not None and e.openness is not None
        if truth[k].eye_open >= 0.99:
            opened.append(e.openness)
        elif truth[k].eye_open <= 0.01:
            shut.append(e.openness)
    assert len(opened) >= 10 and len(shut) >= 5
    assert max(shut) < 0.5 * min(opened)
    assert min(opened) > 0.2 and float(np.median(shut)) < 0.12


def test_sunglasses_give_low_confidence(models):
    img = load_photo("astronaut")
    open_eyes, lm = _measure(models, img)
    shaded = img.copy()
    for outer, inner in ((33, 133), (263, 362)):  # as the renderer draws them
        a, b = lm[outer, :2], lm[inner, :2]
        w = float(np.hypot(*(a - b)))
        c = 0.5 * (a + b) + [0, 0.05 * w]
        cv2.ellipse(shaded, (int(c[0]), int(c[1])), (int(0.75 * w), int(0.55 * w)), 0, 0, 360,
                    (18, 18, 22), -1, cv2.LINE_AA)
    covered, _ = _measure(models, shaded)
    assert open_eyes.confidence > 0.8
    assert covered.confidence < 0.3


def test_far_eye_of_a_turned_head_is_not_measured(models):
    _, est, measurer = models
    from dataclasses import replace

    img = load_photo("astronaut")
    det = create_detector(DetectorSettings())
    box = select_driver(det.detect(img), img.shape)
    pose, lm = est.estimate_with_landmarks(img, box)
    turned = replace(pose, yaw_deg=60.0)  # nose toward image left: the right eye turns away
    eyes = measurer.measure(img, turned, lm.points_px, box)
    assert eyes.openness_right is None and eyes.openness_left is not None
    assert eyes.confidence < 0.5


def test_without_landmarks_eyes_come_from_detector_keypoints(models):
    det, est, measurer = models
    img = load_photo("grace_hopper")
    box = select_driver(det.detect(img), img.shape)
    assert box.keypoints is not None
    pose = est.estimate(img, box)
    eyes = measurer.measure(img, pose, None, box)
    assert eyes is not None and 0.2 < eyes.openness < 0.5 and eyes.mouth_open is None
    assert measurer.measure(img, pose, None, FaceBox(box.x1, box.y1, box.x2, box.y2, 1.0)) is None


def test_model_path_that_is_not_an_iris_model_is_refused(tmp_path: Path):
    from dms.errors import ModelError

    with pytest.raises(ModelError, match="iris"):
        IrisLandmarker(create_session(models_dir() / "face_landmark.onnx", CPU_ONLY))
