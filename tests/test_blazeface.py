"""BlazeFace (embedded, back-camera variant) on real faces, and its anchors and NMS."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io

from dms.errors import InputError, ModelError
from dms.vision.blazeface import (
    ANCHOR_OPTIONS,
    BlazeFaceDetector,
    five_points,
    ssd_anchors,
    weighted_nms,
)

from conftest import model_session

MODELS = Path(__file__).resolve().parents[1] / "models"
# The astronaut's face in skimage's astronaut.png (512x512, public domain, NASA), by eye:
# forehead to chin and cheek to cheek.
ASTRONAUT_FACE = (170.0, 70.0, 280.0, 180.0)








def iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_anchor_layouts_match_the_graph_outputs() -> None:
    assert len(ssd_anchors(128, ANCHOR_OPTIONS[128])) == 896
    assert len(ssd_anchors(192, ANCHOR_OPTIONS[192])) == 2304
    a = ssd_anchors(256, ANCHOR_OPTIONS[256])
    assert len(a) == 896
    # 16x16 map with 2 anchors per cell first (stride 16), then 8x8 with 6 (three stride-32 layers)
    np.testing.assert_allclose(a[0], a[1])
    np.testing.assert_allclose(a[0], [0.5 / 16, 0.5 / 16])
    np.testing.assert_allclose(a[2], [1.5 / 16, 0.5 / 16])
    np.testing.assert_allclose(a[512:518], np.tile([0.5 / 8, 0.5 / 8], (6, 1)))
    np.testing.assert_allclose(a[-1], [7.5 / 8, 7.5 / 8])


def test_weighted_nms_merges_overlaps_by_score_and_keeps_separate_faces() -> None:
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [50, 50, 60, 60]], float)
    scores = np.array([0.9, 0.3, 0.8])
    kps = boxes[:, None, :2].repeat(6, axis=1)
    b, s, k = weighted_nms(boxes, scores, kps, 0.3)
    assert s.tolist() == [0.9, 0.8]
    np.testing.assert_allclose(b[0], [0.25, 0, 10.25, 10])  # (0.9 * 0 + 0.3 * 1) / 1.2
    np.testing.assert_allclose(k[0, :, 0], 0.25)
    np.testing.assert_allclose(b[1], boxes[2])


def test_five_points_keeps_eyes_and_nose_and_spans_the_mouth() -> None:
    k6 = np.array([[10, 10], [30, 10], [20, 20], [20, 30], [0, 15], [40, 15]], float)
    k5 = five_points(k6)
    np.testing.assert_allclose(k5[:3], k6[:3])
    np.testing.assert_allclose(k5[3:].mean(axis=0), k6[3])
    assert k5[3, 0] < k6[3, 0] < k5[4, 0]  # right corner on the viewer's left


def test_finds_the_astronaut(detector: BlazeFaceDetector, astronaut: np.ndarray) -> None:
    faces = detector.detect(astronaut)
    assert len(faces) == 1
    f = faces[0]
    assert f.score > 0.8
    assert iou(f.as_list(), ASTRONAUT_FACE) > 0.6
    right_eye, left_eye, nose, mouth_r, mouth_l = f.keypoints
    assert right_eye[0] < nose[0] < left_eye[0]
    assert max(right_eye[1], left_eye[1]) < nose[1] < min(mouth_r[1], mouth_l[1])
    assert abs(right_eye[1] - left_eye[1]) < 0.1 * (left_eye[0] - right_eye[0])


@pytest.mark.parametrize("frame_hw, at_yx", [((720, 1280), (100, 600)), ((900, 600), (300, 40))])
def test_letterbox_maps_back_to_the_same_face_at_any_frame_size(
    detector: BlazeFaceDetector, astronaut: np.ndarray, frame_hw, at_yx
) -> None:
    ref = detector.detect(astronaut)[0]
    # Pad the photo into a wide or tall frame: box and keypoints move by the offset only,
    # up to the coarser sampling of the bigger frame (2.5 network pixels).
    frame = np.full((*frame_hw, 3), 80, np.uint8)
    y, x = at_yx
    frame[y : y + 512, x : x + 512] = astronaut
    tol = 2.5 * max(frame_hw) / detector.input_size
    got = detector.detect(frame)[0]
    np.testing.assert_allclose(got.as_list(), np.add(ref.as_list(), [x, y, x, y]), atol=tol)
    np.testing.assert_allclose(got.keypoints, ref.keypoints + [x, y], atol=tol)


def test_small_in_cabin_face_is_found(detector: BlazeFaceDetector, astronaut: np.ndarray) -> None:
    # A driver 1.2 m from a 90 deg camera: the face is ~5% of a 1280-wide frame (64 px).
    k = 64.0 / (ASTRONAUT_FACE[2] - ASTRONAUT_FACE[0])
    small = cv2.resize(astronaut, None, fx=k, fy=k, interpolation=cv2.INTER_AREA)
    frame = np.full((720, 1280, 3), 90, np.uint8)
    frame[200 : 200 + small.shape[0], 700 : 700 + small.shape[1]] = small
    faces = detector.detect(frame)
    assert len(faces) == 1
    x1, y1, x2, y2 = np.array(ASTRONAUT_FACE) * k + [700, 200, 700, 200]
    cx, cy = faces[0].center
    assert x1 < cx < x2 and y1 < cy < y2
    assert 0.4 * (x2 - x1) < faces[0].width < 1.2 * (x2 - x1)


def test_blank_image_has_no_face(detector: BlazeFaceDetector) -> None:
    assert detector.detect(np.full((480, 640, 3), 127, np.uint8)) == []


def test_bad_inputs_and_wrong_model_are_reported(detector: BlazeFaceDetector) -> None:
    with pytest.raises(InputError):
        detector.detect(np.zeros((480, 640), np.uint8))
    with pytest.raises(ModelError, match="outputs"):
        BlazeFaceDetector(model_session("face_landmark.onnx"))
    with pytest.raises(ValueError):
        BlazeFaceDetector(model_session("face_detection_back.onnx"), score_threshold=1.5)


def aflw_usable(aflw_dir: Path):
    for jpg in sorted(aflw_dir.glob("*.jpg")):
        mat = scipy.io.loadmat(str(jpg.with_suffix(".mat")))
        angles_deg = np.degrees(mat["Pose_Para"][0][:3])
        if np.all(np.abs(angles_deg) <= 99.0):
            yield jpg, cv2.imread(str(jpg)), mat["pt3d_68"][:2]


@pytest.mark.shared
def test_aflw2000_64_faces_found(detector: BlazeFaceDetector, aflw_dir: Path) -> None:
    usable = found = 0
    for _, image, pts in aflw_usable(aflw_dir):
        usable += 1
        x1, y1 = pts.min(axis=1)
        x2, y2 = pts.max(axis=1)
        faces = detector.detect(image)
        if faces and x1 <= faces[0].center[0] <= x2 and y1 <= faces[0].center[1] <= y2:
            found += 1
    assert usable == 61
    assert found >= 59  # measured: 61 (models/MODELS.md)
