"""A CNN tracking on its own 68 landmarks (head pose without eyes, [vision.tracking]
cnn_landmarks): the landmark geometry (:mod:`dms.vision.landmarks68`), its fit script, and the
pipeline running one CNN run a frame and no landmark model (real models, runs counted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from dms import geometry
from dms.types import FaceBox
from dms.vision import landmarks68
from dms.vision.landmarks68 import MEAN_SHAPE, box_from_landmarks68, rotation_from_landmarks68

from conftest import CountingSession, model_session

ROOT = Path(__file__).resolve().parent.parent


def _project(shape: np.ndarray, R: np.ndarray, scale: float, shift: tuple[float, float]
             ) -> np.ndarray:
    """Image points of ``shape`` under a scaled orthographic camera (camera y up, image y
    down)."""
    cam = shape @ R.T
    return np.stack([scale * cam[:, 0] + shift[0], -scale * cam[:, 1] + shift[1]], axis=1)


@pytest.mark.parametrize("pitch,yaw,roll", [(0, 0, 0), (10, 35, -5), (-20, -60, 12),
                                            (5, 80, 0)])
def test_rotation_from_landmarks_recovers_the_rotation_of_a_projection(pitch, yaw, roll):
    R = geometry.rotation_from_euler(pitch, yaw, roll)
    pts = _project(MEAN_SHAPE, R, 90.0, (320.0, 240.0))
    assert geometry.geodesic_deg(rotation_from_landmarks68(pts), R) < 1e-6
    # and the angles read back the same way HeadPose reads them
    got = geometry.euler_from_rotation(rotation_from_landmarks68(pts))
    assert np.allclose(got, (pitch, yaw, roll), atol=1e-6)


@pytest.mark.parametrize("yaw", [0.0, 35.0, -70.0])
def test_box_from_landmarks_follows_its_rule_and_orders_the_keypoints(yaw):
    R = geometry.rotation_from_euler(0.0, yaw, 0.0)
    pts = _project(MEAN_SHAPE, R, 100.0, (300.0, 200.0))
    box = box_from_landmarks68(pts, 0.8, yaw)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    side = 0.5 * float((hi - lo).sum())
    scale, dx, dy = landmarks68.BOX_RULE @ (1.0, np.sin(np.radians(yaw)) ** 2)
    assert box.width == pytest.approx(scale * side)
    assert box.width == pytest.approx(box.height)
    assert np.allclose(box.center, 0.5 * (lo + hi) + np.array([dx, dy]) * side)
    assert box.score == 0.8
    kp = box.keypoints
    assert kp is not None and kp.shape == (5, 2)
    # the subject's right eye and mouth corner are on the image's left, eyes above the mouth
    assert kp[0, 0] < kp[1, 0] and kp[3, 0] < kp[4, 0]
    assert kp[0, 1] < kp[3, 1] and kp[1, 1] < kp[4, 1]
    if yaw == 0.0:
        assert kp[0, 0] < kp[2, 0] < kp[1, 0] and kp[0, 1] < kp[2, 1] < kp[3, 1]


def test_a_turned_head_gets_a_smaller_box_for_its_landmark_extent():
    """AFLW's box keeps its ear lobes as the head turns while the 68 points' jaw line
    narrows: the rule's size falls with sin(yaw)^2 (fitted, not assumed: c2 < 0)."""
    assert landmarks68.BOX_RULE[0, 1] < 0.0
    pts = _project(MEAN_SHAPE, np.eye(3), 100.0, (300.0, 200.0))
    assert box_from_landmarks68(pts, 1.0, 60.0).width < box_from_landmarks68(pts).width


def test_the_fit_script_recovers_a_known_shape_and_box_rule(tmp_path):
    """scripts/fit_landmarks68.py on synthetic labels: projections of a known shape at known
    rotations, boxes made by a known rule; the train split is fitted, val reported."""
    rng = np.random.default_rng(3)
    shape = MEAN_SHAPE + rng.normal(0.0, 0.05, MEAN_SHAPE.shape)
    rows = []
    for i in range(400):
        R = geometry.rotation_from_euler(*rng.uniform([-20, -70, -15], [20, 70, 15]))
        pts = _project(shape, R, rng.uniform(40, 120), tuple(rng.uniform(100, 400, 2)))
        lo, hi = pts.min(axis=0), pts.max(axis=0)
        side = 0.5 * float((hi - lo).sum())
        s2 = np.sin(np.radians(geometry.euler_from_rotation(R)[1])) ** 2
        c = 0.5 * (lo + hi) + np.array([0.02, -0.05 + 0.03 * s2]) * side
        half = 0.5 * (1.2 - 0.1 * s2) * side
        M = R.T  # the labels hold the AFLW matrix M; HeadPose.rotation is M.T
        rows.append({"split": "val" if i % 10 == 0 else "train", "landmarks68": pts.tolist(),
                     "M": M.reshape(-1).tolist(),
                     "box": [c[0] - half, c[1] - half, c[0] + half, c[1] + half]})
    labels = tmp_path / "labels.jsonl"
    labels.write_text("".join(json.dumps(r) + "\n" for r in rows))
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "fit_landmarks68.py"),
                        str(labels)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    ns: dict = {"np": np}
    exec(p.stdout, ns)  # the printed constants block
    assert np.allclose(ns["BOX_RULE"], [[1.2, -0.1], [0.02, 0.0], [-0.05, 0.03]], atol=1e-3)
    fitted = ns["MEAN_SHAPE"]
    truth = (shape - shape.mean(axis=0)) / np.sqrt(((shape - shape.mean(axis=0)) ** 2)
                                                   .sum(axis=1).mean())
    assert np.abs(fitted - truth).max() < 2e-3  # printed to 4 decimals
    assert "val: 40 photos" in p.stderr


def test_the_fit_script_names_a_missing_labels_file(tmp_path):
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "fit_landmarks68.py"),
                        str(tmp_path / "none.jsonl")], capture_output=True, text=True,
                       timeout=60)
    assert p.returncode == 2 and "none.jsonl" in p.stderr and "Traceback" not in p.stderr


# ----------------------------------------------------------------- the pipeline


def _perception(count, tracking=None, eyes=None):  # type: ignore[no-untyped-def]
    from dms.perception import Perception
    from dms.vision.blazeface import BlazeFaceDetector
    from dms.vision.headpose import CnnHeadPose
    from dms.vision.settings import TrackingSettings

    def session(file: str) -> CountingSession:
        count[file] = CountingSession(model_session(file))
        return count[file]

    cnn = CnnHeadPose(session("head_pose_student_tddfa.onnx"), name="student_tddfa")
    return Perception(BlazeFaceDetector(session("face_detection_back.onnx")), cnn,
                      tracking or TrackingSettings(), eyes=eyes)


def _drift(image: np.ndarray, k: int) -> np.ndarray:
    h, w = image.shape[:2]
    shift = np.float32([[1, 0, 2.0 * k], [0, 1, 1.0 * k]])
    return cv2.warpAffine(image, shift, (w, h), borderMode=cv2.BORDER_REPLICATE)


def test_without_eyes_the_cnn_tracks_on_its_own_landmarks_one_run_a_frame(astronaut):
    from dms.perception import CnnTrack, CnnTrackedPose

    count: dict[str, CountingSession] = {}
    perception = _perception(count)
    assert isinstance(perception.estimator, CnnTrackedPose)
    assert perception.models_in_use() == [("detector", "blazeface"), ("pose", "student_tddfa")]
    frames = 8
    for k in range(frames):
        r = perception.process(_drift(astronaut, k), k / 30.0)
        assert r.pose is not None and r.pose.confidence > 0.9 and r.eyes is None
        assert r.detected == (k == 0)
        state = perception._track_state  # noqa: SLF001
        assert isinstance(state, CnnTrack) and state.landmarks_px.shape == (68, 2)
    # flip_average "auto": the mirrored crop is not read; no landmark model was made at all
    assert count["head_pose_student_tddfa.onnx"].runs == frames
    assert count["face_detection_back.onnx"].runs == 1
    assert set(count) == {"head_pose_student_tddfa.onnx", "face_detection_back.onnx"}


def test_own_landmark_tracking_reads_the_pose_the_landmark_pass_reads(astronaut):
    """The same face, tracked by the CNN on its own landmarks and behind the attention mesh:
    the two pipelines' poses agree within a few degrees, and the box follows the face."""
    from dms.vision.settings import TrackingSettings

    own = _perception({})
    mesh = _perception({}, TrackingSettings(cnn_landmarks="never"))
    for k in range(4):
        a = own.process(_drift(astronaut, k), k / 30.0)
        b = mesh.process(_drift(astronaut, k), k / 30.0)
    assert a.pose is not None and b.pose is not None
    assert geometry.geodesic_deg(a.pose.rotation, b.pose.rotation) < 4.0
    assert a.face is not None and b.face is not None
    ix = max(0.0, min(a.face.x2, b.face.x2) - max(a.face.x1, b.face.x1))
    iy = max(0.0, min(a.face.y2, b.face.y2) - max(a.face.y1, b.face.y1))
    assert ix * iy / (a.face.area + b.face.area - ix * iy) > 0.6


def test_with_eyes_the_default_keeps_the_landmark_pass_and_always_drops_it(astronaut):
    from dms.perception import CnnTrackedPose, MeshTrackedPose
    from dms.vision.eyes import EyeMeasurer
    from dms.vision.settings import EyeSettings, TrackingSettings

    eyes = EyeMeasurer.from_settings(EyeSettings())
    assert isinstance(_perception({}, eyes=eyes).estimator, MeshTrackedPose)
    count: dict[str, CountingSession] = {}
    always = _perception(count, TrackingSettings(cnn_landmarks="always"), eyes=eyes)
    assert isinstance(always.estimator, CnnTrackedPose)
    r = always.process(astronaut, 0.0)
    r = always.process(astronaut, 1 / 30.0)
    # the eyes from the iris model at the eye keypoints of the CNN's own box
    assert r.eyes is not None and r.eyes.openness is not None and r.eyes.openness > 0.2
    assert r.face is not None and r.face.keypoints is not None


def test_the_pose_is_unsure_where_the_cnns_rotation_and_landmarks_disagree(astronaut):
    from dms.perception import CnnTrackedPose
    from dms.vision.headpose import CnnHeadPose

    cnn = CnnHeadPose(model_session("head_pose_student_tddfa.onnx"), name="student_tddfa")
    box = FaceBox(172.0, 74.0, 276.0, 178.0, 1.0)  # the detector's box of the astronaut
    pose, lm = cnn.estimate_with_landmarks(astronaut, box, flip=False)
    apart = geometry.geodesic_deg(rotation_from_landmarks68(lm), pose.rotation)
    assert apart < 10.0  # a frontal face: the two heads agree
    assert CnnTrackedPose(cnn).estimate(astronaut, box).confidence > 0.9
    strict = CnnTrackedPose(cnn, agree_deg=apart / 4, zero_deg=apart / 2)
    assert strict.estimate(astronaut, box).confidence == 0.0


def test_a_covered_lens_is_no_face_on_that_very_frame(astronaut):
    """No face-presence output: a box without a face's contrast (cnn_min_contrast) is not
    tracked from; the detector runs on that frame and finds nothing."""
    perception = _perception({})
    for k in range(3):
        assert perception.process(astronaut, k / 30.0).pose is not None
    r = perception.process(np.full_like(astronaut, 90), 3 / 30.0)
    assert r.detected and r.pose is None


def test_a_jump_no_head_can_make_runs_the_detector(astronaut):
    """A pose that turned faster than cnn_max_turn_dps since the last frame (here the
    picture turned 90 deg in a frame) is checked by the detector on that frame; the same
    turn over a second is followed."""
    import cv2

    from dms.vision.settings import TrackingSettings

    h, w = astronaut.shape[:2]

    def rolled(deg: float) -> np.ndarray:
        A = cv2.getRotationMatrix2D((w / 2, h / 2), deg, 1.0)
        return cv2.warpAffine(astronaut, A, (w, h), borderMode=cv2.BORDER_REPLICATE)

    tracking = TrackingSettings(redetect_interval_frames=1000)
    perception = _perception({}, tracking)
    perception.process(astronaut, 0.0)
    assert not perception.process(astronaut, 1 / 30.0).detected
    assert perception.process(rolled(40.0), 2 / 30.0).detected  # 40 deg in 33 ms
    slow = _perception({}, tracking)
    slow.process(astronaut, 0.0)
    for k in range(1, 31):  # 1.3 deg a frame: 40 deg/s
        r = slow.process(rolled(40.0 * k / 30), k / 30.0)
        assert not r.detected and r.pose is not None


def test_anything_else_is_dropped_by_the_next_detection_at_the_latest(astronaut):
    """A textured frame without a face: the detector's re-run bounds how long the tracker
    can follow it."""
    from dms.vision.settings import TrackingSettings

    interval = 4
    perception = _perception({}, TrackingSettings(redetect_interval_frames=interval))
    assert perception.process(astronaut, 0.0).pose is not None
    rng = np.random.default_rng(0)
    texture = cv2.resize(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8),
                         astronaut.shape[1::-1], interpolation=cv2.INTER_LINEAR)
    lost = None
    for k in range(1, 2 * interval):
        if perception.process(texture, k / 30.0).pose is None:
            lost = k
            break
    assert lost is not None and lost <= interval


def test_grey_contrast_tells_a_face_from_a_covered_lens(astronaut):
    from dms.perception import grey_contrast

    face = FaceBox(172.0, 74.0, 276.0, 178.0, 1.0)
    assert grey_contrast(astronaut, face) > 20.0
    noisy_cover = np.clip(np.random.default_rng(1).normal(60, 6, astronaut.shape), 0, 255)
    assert grey_contrast(noisy_cover.astype(np.uint8), face) < 4.0  # noise averages out


def test_a_box_outside_the_image_is_not_tracked_from():
    from dms.perception import CnnTrackedPose

    shape = (480, 640, 3)
    assert CnnTrackedPose.usable(FaceBox(100, 100, 200, 200, 1.0), shape)
    assert not CnnTrackedPose.usable(FaceBox(700, 100, 800, 200, 1.0), shape)
    assert not CnnTrackedPose.usable(FaceBox(100, 100, 110, 110, 1.0), shape)  # too small


def test_a_model_without_a_landmark_output_cannot_track_on_its_own():
    from dms.errors import ModelError
    from dms.perception import CnnTrackedPose, MeshTrackedPose, with_landmark_pass
    from dms.vision.headpose import CnnHeadPose
    from dms.vision.settings import TrackingSettings

    cnn = CnnHeadPose(model_session("head_pose_student_fm192.onnx"), name="student_fm192")
    assert cnn.landmark_output is None
    with pytest.raises(ModelError, match="student_fm192"):
        CnnTrackedPose(cnn)
    # the setting asks for it, the model cannot: the landmark pass tracks instead
    est = with_landmark_pass(cnn, TrackingSettings(cnn_landmarks="always"), eyes=False)
    assert isinstance(est, MeshTrackedPose)


def test_tracking_settings_refuse_an_unknown_choice_and_crossed_thresholds():
    from dms.settings import SettingsError, load_settings
    from dms.vision.settings import CnnPoseSettings, TrackingSettings

    with pytest.raises(SettingsError, match="cnn_landmarks"):
        load_settings(TrackingSettings, {"cnn_landmarks": "sometimes"}, "vision.tracking")
    with pytest.raises(ValueError, match="cnn_landmarks_agree_deg"):
        TrackingSettings(cnn_landmarks_agree_deg=20.0, cnn_landmarks_zero_deg=10.0).validate()
    with pytest.raises(ValueError, match="cnn_min_contrast"):
        TrackingSettings(cnn_min_contrast=-1.0).validate()
    with pytest.raises(ValueError, match="cnn_max_turn_dps"):
        TrackingSettings(cnn_max_turn_dps=0.0).validate()
    for value in (True, False, "auto"):
        got = load_settings(CnnPoseSettings, {"flip_average": value}, "vision.pose.cnn")
        assert got.flip_average == value
    with pytest.raises(SettingsError):
        load_settings(CnnPoseSettings, {"flip_average": "yes"}, "vision.pose.cnn")


def test_eval_own_landmarks_reads_the_faces_and_refuses_a_model_without_landmarks(aflw_dir):
    def run(*extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "dms", "eval", str(aflw_dir), "--boxes",
                               "gt", "--own-landmarks", "--json", *extra],
                              capture_output=True, text=True, timeout=300)

    p = run()
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["own_landmarks"] is True and out["not_found"] == 0
    assert out["mean_mae"] < 4.0  # the 64-face subset is mostly near-frontal
    bad = run("--pose-model", "student_fm192")
    assert bad.returncode != 0 and "no 68-landmark output" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_the_service_tracks_on_the_cnns_own_landmarks_when_its_eyes_are_off():
    """DriverMonitor.from_settings (dms run, dms replay) picks the tracker the same way:
    the landmark pass with eyes, the CNN's own landmarks without, on the configured runtime."""
    from dataclasses import replace

    from dms.config import Config
    from dms.monitor import DriverMonitor
    from dms.perception import CnnTrackedPose, MeshTrackedPose
    from dms.vision.runtime import RuntimeSettings

    cfg = Config()
    vision = replace(cfg.vision, runtime=RuntimeSettings(providers=("cpu",)))
    with_eyes = DriverMonitor.from_settings(vision, cfg.engine)
    assert isinstance(with_eyes.perception.estimator, MeshTrackedPose)
    no_eyes = replace(vision, eyes=replace(vision.eyes, enabled=False))
    head_only = DriverMonitor.from_settings(no_eyes, cfg.engine)
    assert isinstance(head_only.perception.estimator, CnnTrackedPose)
    assert head_only.perception.eyes is None
    assert [task for task, _ in head_only.perception.models_in_use()] == ["detector", "pose"]
