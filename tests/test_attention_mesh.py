"""The attention mesh with all its outputs, and the one landmark pass a frame (issue 23, item 4):
the converted graph against MediaPipe's own outputs on a real crop, the refined eyes and
irises, the 68-point map behind the CNN's face box, and the pipeline running one landmark
model a frame with a CNN head pose (real models, session runs counted)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dms.types import FaceBox
from dms.vision.canonical import load_canonical_mesh
from dms.vision.facemesh import (
    AFLW21_FACEMESH_IDS,
    NUM_LANDMARKS,
    FaceMeshLandmarker,
    aflw_box,
    roi_from_face_box,
    roi_from_landmarks,
)

from conftest import CountingSession, model_session

HERE = Path(__file__).resolve().parent
REFERENCE = HERE / "data" / "attention_mesh_reference.npz"
# max |onnx - mediapipe|, as models/build_embedded.py checks them (ATTENTION_TOLERANCE)
TOLERANCE = {"mesh": 5e-4, "refined": 1e-3, "flag": 1e-3}
# what the shipped file gives (the reference also has output_lips, whose branch is left out)
OUTPUTS = ("output_mesh_identity", "output_left_eye", "output_right_eye",
           "output_left_iris", "output_right_iris", "conv_faceflag")


@pytest.fixture(scope="module")
def attention() -> FaceMeshLandmarker:
    return FaceMeshLandmarker(model_session("face_landmark_attention.onnx"),
                              name="facemesh_attention")


# ----------------------------------------------------------------- the converted graph


def test_converted_graph_reproduces_mediapipe_on_a_real_crop() -> None:
    """The shipped ONNX against the outputs of MediaPipe's own runtime (its custom ops
    included) on a crop of Grace Hopper's portrait, recorded by models/build_embedded.py."""
    ref = np.load(REFERENCE)
    session = model_session("face_landmark_attention.onnx")
    names = [o.name for o in session.get_outputs()]
    assert sorted(names) == sorted(OUTPUTS)
    x = (ref["crop"].astype(np.float32) / 255.0).transpose(2, 0, 1)[None]
    got = dict(zip(names, session.run(None, {session.get_inputs()[0].name: x}), strict=True))
    for name in OUTPUTS:
        group = ("mesh" if name == "output_mesh_identity" else
                 "flag" if name == "conv_faceflag" else "refined")
        diff = float(np.abs(got[name].ravel() - ref[name]).max())
        assert diff <= TOLERANCE[group], f"{name}: max |onnx - mediapipe| = {diff}"
    # the crop is a face: the flag says so, and the refined eyes sit where the mesh's are
    assert float(ref["conv_faceflag"][0]) > 5.0
    mesh = ref["output_mesh_identity"].reshape(NUM_LANDMARKS, 3)[:, :2]
    left_eye = ref["output_left_eye"].reshape(71, 2)
    assert np.abs(left_eye[0] - mesh[33]).max() < 3.0  # outer corner, crop pixels
    assert np.abs(left_eye[8] - mesh[133]).max() < 3.0  # inner corner


def test_landmarker_reads_the_refined_outputs(attention, astronaut, detector) -> None:
    plain = FaceMeshLandmarker(model_session("face_landmark.onnx"))
    assert attention.refined and not plain.refined
    box = detector.detect(astronaut)[0]
    lm = attention.landmarks(astronaut, roi_from_face_box(box))
    lm = attention.landmarks(astronaut, roi_from_landmarks(lm.points_px))
    assert lm.refined and lm.eyes_px.shape == (2, 71, 2) and lm.irises_px.shape == (2, 5, 2)
    assert lm.lips_px is None  # the shipped file is built without the lips branch
    assert not plain.landmarks(astronaut, lm.roi).refined
    p = lm.points_px[:, :2]
    for k, (outer, inner) in enumerate(((33, 133), (263, 362))):  # subject's right eye first
        eye = lm.eyes_px[k]
        width = float(np.hypot(*(p[inner] - p[outer])))
        assert np.hypot(*(eye[0] - p[outer])) < 0.15 * width
        assert np.hypot(*(eye[8] - p[inner])) < 0.15 * width
        # the iris centre lies between the corners, on the eye line
        centre = lm.irises_px[k][0]
        lo, hi = np.minimum(p[outer], p[inner]), np.maximum(p[outer], p[inner])
        assert lo[0] < centre[0] < hi[0]
        assert abs(centre[1] - 0.5 * (p[outer][1] + p[inner][1])) < 0.3 * width


def test_mirrored_pass_maps_the_refined_eyes_back(attention, astronaut, detector) -> None:
    """On the mirrored crop the eye on the crop's left is the subject's left eye: mapped back,
    both passes give the same eyes in the same order."""
    box = detector.detect(astronaut)[0]
    lm = attention.landmarks(astronaut, roi_from_face_box(box))
    roi = roi_from_landmarks(lm.points_px)
    plain, mirrored = attention.landmarks_and_mirrored(astronaut, roi)
    width = float(np.hypot(*(plain.points_px[133, :2] - plain.points_px[33, :2])))
    assert np.abs(mirrored.eyes_px[:, :16] - plain.eyes_px[:, :16]).max() < 0.1 * width
    assert np.abs(mirrored.irises_px[:, 0] - plain.irises_px[:, 0]).max() < 0.05 * width


# ----------------------------------------------------------------- the AFLW 21-point map

# AFLW's 21 points (image-left first): mirror partners and the points on the midline
MIRROR_PAIRS = [(0, 5), (1, 4), (2, 3), (6, 11), (7, 10), (8, 9), (12, 16), (13, 15),
                (17, 19)]
MIDLINE = (14, 18, 20)


def test_aflw21_map_is_its_own_mirror_image() -> None:
    """On MediaPipe's canonical mesh (x = the subject's left, cm) each pair of mirror partners
    is one point and its mirror image, and the midline points have x = 0."""
    ids = np.asarray(AFLW21_FACEMESH_IDS)
    assert ids.shape == (21,) and len(set(ids.tolist())) == 21
    assert ids.min() >= 0 and ids.max() < NUM_LANDMARKS
    v = load_canonical_mesh().vertices_cm
    for a, b in MIRROR_PAIRS:
        np.testing.assert_allclose(v[ids[a]] * [-1.0, 1.0, 1.0], v[ids[b]], atol=0.05,
                                   err_msg=f"points {a} and {b}")
    np.testing.assert_allclose(v[ids[list(MIDLINE)], 0], 0.0, atol=0.05)


def test_aflw_box_is_the_extent_of_the_21_points_with_the_ear_lobes_pushed_out() -> None:
    """On the canonical face seen from the front (image x = mesh x mirrored, y down): the box
    is bounded by the ear lobes left and right (pushed out beyond the cheek points), the brows
    above and the chin below."""
    ids = np.asarray(AFLW21_FACEMESH_IDS)
    v = load_canonical_mesh().vertices_cm
    x, y = v[ids, 0], -v[ids, 1]
    box = aflw_box(_scatter(ids, x, y))
    assert box.x1 < x[12] and box.x2 > x[16]  # the lobes, pushed outwards
    assert box.y2 == pytest.approx(y[20])  # the chin
    assert box.y1 == pytest.approx(y[0:6].min())  # the brows


def _scatter(ids: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """A 468-point mesh holding (x, y) at the mapped ids and the mean elsewhere (inside)."""
    pts = np.tile([[float(x.mean()), float(y.mean()), 0.0]], (NUM_LANDMARKS, 1))
    pts[ids, 0], pts[ids, 1] = x, y
    return pts


def test_aflw_box_refuses_a_short_landmark_array() -> None:
    from dms.errors import InputError

    with pytest.raises(InputError, match="468"):
        aflw_box(np.zeros((68, 2)))


@pytest.mark.shared
def test_aflw_box_matches_the_labelled_boxes(aflw_dir: Path, attention) -> None:
    """Evaluation only (nothing is chosen on these faces): on AFLW2000-64's near-frontal
    faces the box from the mesh overlaps the extent of the labelled 21 points."""
    import cv2
    import scipy.io

    ious = []
    for mat in sorted(aflw_dir.glob("*.mat"))[:40]:
        m = scipy.io.loadmat(str(mat))
        if abs(float(np.degrees(m["Pose_Para"][0][1]))) > 30:
            continue
        img = cv2.imread(str(mat.with_suffix(".jpg")))
        pt = np.asarray(m["pt2d"], np.float64)
        pt = pt[:, (pt[0] > 0) & (pt[1] > 0)]  # -1 marks a hidden point (as dms eval reads)
        gt = FaceBox(pt[0].min(), pt[1].min(), pt[0].max(), pt[1].max(), 1.0)
        lm = attention.landmarks(img, roi_from_face_box(gt))
        lm = attention.landmarks(img, roi_from_landmarks(lm.points_px))
        b = aflw_box(lm.points_px)
        ix = max(0.0, min(b.x2, gt.x2) - max(b.x1, gt.x1))
        iy = max(0.0, min(b.y2, gt.y2) - max(b.y1, gt.y1))
        ious.append(ix * iy / (b.area + gt.area - ix * iy))
    assert len(ious) >= 10
    assert float(np.median(ious)) > 0.75  # measured 0.80 (40 faces, |yaw| <= 30)


# ----------------------------------------------------------------- one landmark pass a frame


def _cnn_perception(count: dict[str, CountingSession]):  # type: ignore[no-untyped-def]
    from dms.perception import MeshTrackedPose, Perception
    from dms.vision.blazeface import BlazeFaceDetector
    from dms.vision.eyes import EyeMeasurer
    from dms.vision.headpose import CnnHeadPose
    from dms.vision.settings import TrackingSettings

    def session(file: str) -> CountingSession:
        count[file] = CountingSession(model_session(file))
        return count[file]

    loaded: list[str] = []

    def iris_loader():  # type: ignore[no-untyped-def]
        from dms.vision.eyes import IrisLandmarker

        loaded.append("iris")
        return IrisLandmarker(session("iris_landmark.onnx"))

    cnn = CnnHeadPose(session("head_pose_student_fm192.onnx"), name="student_fm192")
    landmarker = FaceMeshLandmarker(session("face_landmark_attention.onnx"))
    perception = Perception(
        BlazeFaceDetector(session("face_detection_back.onnx")),
        MeshTrackedPose(landmarker, cnn), TrackingSettings(),
        eyes=EyeMeasurer(iris_loader, load_canonical_mesh().vertices_cm))
    return perception, loaded


def test_cnn_pose_runs_one_landmark_model_a_frame(astronaut) -> None:
    """With a CNN head pose: per frame one run of the attention mesh (tracking, the CNN's box,
    the eyes), the CNN's own runs, no FaceMesh and no iris model; the detector only on the
    first frame."""
    import cv2

    count: dict[str, CountingSession] = {}
    perception, iris_loaded = _cnn_perception(count)
    frames = 8
    h, w = astronaut.shape[:2]
    for k in range(frames):  # the face drifts a little, as in a video
        shift = np.float32([[1, 0, 2.0 * k], [0, 1, 1.0 * k]])
        img = cv2.warpAffine(astronaut, shift, (w, h), borderMode=cv2.BORDER_REPLICATE)
        r = perception.process(img, k / 30.0)
        assert r.pose is not None and r.eyes is not None and r.eyes.openness is not None
        assert r.detected == (k == 0)
    assert count["face_landmark_attention.onnx"].runs == frames
    assert count["face_detection_back.onnx"].runs == 1
    assert count["head_pose_student_fm192.onnx"].runs == 2 * frames  # the crop and its mirror
    assert "iris_landmark.onnx" not in count and not iris_loaded
    assert perception.detections == 1


def test_cnn_face_box_is_the_meshs_aflw_box(astronaut) -> None:
    """The CNN reads the face in the aflw_box of the same frame's mesh, and the eyes come
    from that mesh's refined eyes: the box the frame reports is that box."""
    count: dict[str, CountingSession] = {}
    perception, _ = _cnn_perception(count)
    r = perception.process(astronaut, 0.0)
    r = perception.process(astronaut, 1 / 30.0)
    lm = perception._track_state.landmarks  # the state the next frame tracks from
    assert r.face == aflw_box(lm.points_px, lm.presence)
    assert lm.refined


def test_default_perception_puts_a_cnn_behind_the_landmark_pass() -> None:
    from dms.perception import MeshTrackedPose, Perception
    from dms.vision.blazeface import BlazeFaceDetector
    from dms.vision.headpose import CnnHeadPose
    from dms.vision.settings import TrackingSettings

    det = BlazeFaceDetector(model_session("face_detection_back.onnx"))
    cnn = CnnHeadPose(model_session("head_pose_student_fm192.onnx"), name="student_fm192")
    p = Perception(det, cnn, eyes=None)
    assert isinstance(p.estimator, MeshTrackedPose) and p.estimator.pose is cnn
    assert p.estimator.landmarker.refined
    off = Perception(det, cnn, TrackingSettings(landmark_model=""), eyes=None)
    assert off.estimator is cnn


@pytest.fixture(scope="module")
def closing_render(tmp_path_factory):  # type: ignore[no-untyped-def]
    """A short render (the real lifted face): open, shut, open again."""
    from dms.synth.render import render_scenario

    d = tmp_path_factory.mktemp("closing")
    render_scenario("road 1s; close 1.2s; road 0.6s", d, use_cache=False)
    return d


def test_eye_readings_from_the_refined_outputs_on_a_render(closing_render) -> None:
    """Through the one pass (CNN head pose, no iris model): open eyes read open, shut eyes
    read shut, on a render with exact eye truth."""
    import cv2

    from dms.capture import video_frames
    from dms.evaluation import read_eye_truth

    count: dict[str, CountingSession] = {}
    perception, iris_loaded = _cnn_perception(count)
    truth = read_eye_truth(closing_render / "poses.csv")
    opened, shut = [], []
    for k, frame in enumerate(video_frames(str(closing_render / "video.mp4"))):
        img = frame.image if frame.image.ndim == 3 else cv2.cvtColor(frame.image,
                                                                      cv2.COLOR_GRAY2BGR)
        e = perception.process(img, truth[k].t_s).eyes
        assert e is not None and e.openness is not None
        if truth[k].eye_open >= 0.99:
            opened.append(e.openness)
        elif truth[k].eye_open <= 0.01:
            shut.append(e.openness)
    assert not iris_loaded and "iris_landmark.onnx" not in count
    assert len(opened) >= 10 and len(shut) >= 5
    assert max(shut) < 0.5 * min(opened)
    assert min(opened) > 0.2 and float(np.median(shut)) < 0.12


def test_iris_model_is_loaded_only_where_the_landmarks_lack_refined_eyes() -> None:
    """The landmark head pose reads the refined eyes of its mirrored attention pass; with
    FaceMesh on both passes it has none, and the iris model is loaded up front (not on the
    first frame, in the frame loop)."""
    from dataclasses import replace

    from dms.perception import Perception, gives_refined_eyes
    from dms.vision.blazeface import BlazeFaceDetector
    from dms.vision.eyes import EyeMeasurer
    from dms.vision.headpose import PoseModelSettings, create_pose_estimator

    det = BlazeFaceDetector(model_session("face_detection_back.onnx"))
    landmark = create_pose_estimator(PoseModelSettings(model="facemesh"))
    assert gives_refined_eyes(landmark)
    p = Perception(det, landmark, eyes=EyeMeasurer.from_settings())
    assert p.eyes is not None and not p.eyes.iris_loaded
    # the default CNN gets the one landmark pass, whose refined eyes the eye stage reads
    p = Perception(det, create_pose_estimator(PoseModelSettings()),
                   eyes=EyeMeasurer.from_settings())
    assert gives_refined_eyes(p.estimator) and p.eyes is not None and not p.eyes.iris_loaded
    settings = PoseModelSettings(model="facemesh")
    twice = create_pose_estimator(replace(settings, landmarks=replace(
        settings.landmarks, mirror_model="")))
    assert not gives_refined_eyes(twice)
    p = Perception(det, twice, eyes=EyeMeasurer.from_settings())
    assert p.eyes is not None and p.eyes.iris_loaded


def test_models_in_use_name_the_landmark_pass_and_not_an_unloaded_iris_model() -> None:
    from dms.perception import Perception
    from dms.vision.blazeface import BlazeFaceDetector
    from dms.vision.eyes import EyeMeasurer
    from dms.vision.headpose import CnnHeadPose, PoseModelSettings, create_pose_estimator

    det = BlazeFaceDetector(model_session("face_detection_back.onnx"))
    cnn = CnnHeadPose(model_session("head_pose_student_fm192.onnx"), name="student_fm192")
    p = Perception(det, cnn, eyes=EyeMeasurer.from_settings())
    assert dict(p.models_in_use()) == {"detector": det.name, "pose": "student_fm192",
                                       "landmarks": "facemesh_attention"}
    p = Perception(det, create_pose_estimator(PoseModelSettings(model="facemesh")), eyes=None)
    assert dict(p.models_in_use()) == {"detector": det.name, "pose": "facemesh",
                                       "pose_mirror": "facemesh_attention"}


def test_the_cnn_is_confident_only_where_it_agrees_with_the_meshs_own_fit(astronaut) -> None:
    """Behind the landmark pass the CNN's confidence is scaled by its agreement with the
    mesh's Procrustes fit: on the astronaut photo the two agree within [vision.tracking]
    mesh_agree_deg (confident); demanding agreement within a fraction of a degree, which two
    independent readings never reach, takes the confidence to 0. (The face_loss end-to-end
    scenario is the real case: a hand over half the face.)"""
    from dms import geometry
    from dms.perception import with_landmark_pass
    from dms.vision.blazeface import BlazeFaceDetector
    from dms.vision.headpose import PoseModelSettings, create_pose_estimator
    from dms.vision.settings import TrackingSettings

    det = BlazeFaceDetector(model_session("face_detection_back.onnx"))
    box = det.detect(astronaut)[0]
    cnn = create_pose_estimator(PoseModelSettings())
    tracked = with_landmark_pass(cnn, TrackingSettings())
    _, pose, state = tracked.start(astronaut, box)
    apart = geometry.geodesic_deg(tracked.fit.rotation_from_landmarks(state.landmarks.points_px),
                                  pose.rotation)
    assert 0.2 < apart < TrackingSettings().mesh_agree_deg and pose.confidence > 0.9
    strict = with_landmark_pass(cnn, TrackingSettings(mesh_agree_deg=0.1, mesh_zero_deg=0.2))
    assert strict.start(astronaut, box)[1].confidence == 0.0


def test_perception_runs_its_landmark_pass_with_the_runtime_it_is_given() -> None:
    """The landmark pass that Perception puts in front of a CNN is made with the caller's
    runtime settings (dms bench and dms eval pass --provider / --threads / --config), not
    the CPU defaults."""
    from dms.perception import MeshTrackedPose, Perception
    from dms.vision.blazeface import BlazeFaceDetector
    from dms.vision.headpose import CnnHeadPose
    from dms.vision.runtime import RuntimeSettings
    from dms.vision.settings import TrackingSettings

    cnn = CnnHeadPose(model_session("head_pose_student_tddfa.onnx"), name="student_tddfa")
    detector = BlazeFaceDetector(model_session("face_detection_back.onnx"))
    for threads in (1, 2):
        rt = RuntimeSettings(providers=("cpu",), intra_op_threads=threads)
        # without eyes this CNN would track on its own landmarks: keep the landmark pass
        perception = Perception(detector, cnn, TrackingSettings(cnn_landmarks="never"),
                                eyes=None, runtime=rt)
        est = perception.estimator
        assert isinstance(est, MeshTrackedPose)
        options = est.landmarker._session.get_session_options()  # noqa: SLF001
        assert options.intra_op_num_threads == threads
