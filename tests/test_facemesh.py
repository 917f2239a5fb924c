"""FaceMesh landmarks on a rotated ROI: geometry of the ROI, real faces, ROI tracking."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io

from dms.errors import InputError
from dms.types import FaceBox
from dms.vision.blazeface import BlazeFaceDetector
from dms.vision.facemesh import (
    FaceMeshLandmarker,
    FaceRoi,
    roi_from_face_box,
    roi_from_landmarks,
    roi_transform,
)

from conftest import model_session

MODELS = Path(__file__).resolve().parents[1] / "models"
# 68-point (AFLW2000 pt3d_68) -> FaceMesh index: eye corners, mouth corners, nose tip, chin.
PAIRS_68_TO_MESH = [
    (36, 33),
    (45, 263),
    (39, 133),
    (42, 362),
    (48, 61),
    (54, 291),
    (30, 1),
    (8, 152),
]




@pytest.fixture(scope="module")
def mesh() -> FaceMeshLandmarker:
    return FaceMeshLandmarker(model_session("face_landmark.onnx"))






def apply(A: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ A[:, :2].T + A[:, 2]


def test_roi_transform_maps_the_rotated_square_onto_the_crop() -> None:
    roi = FaceRoi(100.0, 50.0, 40.0, angle_deg=30.0)
    A = roi_transform(roi, 192)
    # Corners (pixel-centre coordinates) land on the crop's outer edges, 0.5 px outside centres.
    np.testing.assert_allclose(
        apply(A, roi.corners()),
        [[-0.5, -0.5], [191.5, -0.5], [191.5, 191.5], [-0.5, 191.5]],
        atol=1e-9,
    )
    np.testing.assert_allclose(apply(A, np.array([[100.0, 50.0]])), [[95.5, 95.5]])


def test_roi_from_face_box_follows_the_eye_line() -> None:
    kps = np.array([[40, 60], [60, 80], [50, 75], [45, 90], [55, 90]], np.float32)
    roi = roi_from_face_box(FaceBox(20, 40, 80, 120, 0.9, kps))
    assert roi.angle_deg == pytest.approx(45.0)
    assert (roi.cx_px, roi.cy_px, roi.side_px) == pytest.approx((50.0, 80.0, 120.0))
    assert roi_from_face_box(FaceBox(20, 40, 80, 120, 0.9)).angle_deg == 0.0


def test_roi_from_landmarks_turns_with_the_face() -> None:
    rng = np.random.default_rng(1)
    pts = rng.uniform(-50, 50, size=(468, 2))
    pts[33], pts[263] = (-40.0, 0.0), (40.0, 0.0)
    upright = roi_from_landmarks(pts + 200.0)
    a = math.radians(25.0)
    R = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    turned = roi_from_landmarks(pts @ R.T + 200.0)
    assert upright.angle_deg == pytest.approx(0.0)
    assert turned.angle_deg == pytest.approx(25.0)
    assert turned.side_px == pytest.approx(upright.side_px)
    centre_up = np.array([upright.cx_px, upright.cy_px]) - 200.0
    np.testing.assert_allclose([turned.cx_px - 200.0, turned.cy_px - 200.0], R @ centre_up)


def test_astronaut_landmarks_and_tracking_converge(
    mesh: FaceMeshLandmarker, detector: BlazeFaceDetector, astronaut: np.ndarray
) -> None:
    face = detector.detect(astronaut)[0]
    roi = roi_from_face_box(face)
    rois = [roi]
    for _ in range(3):
        result, roi = mesh.track(astronaut, roi)
        rois.append(roi)
        assert result.presence > 0.9
    pts = result.points_px
    assert pts.shape == (468, 3) and pts.dtype == np.float32
    # Inside the detector's box (grown by 20%), eye corners near the detector's eyes.
    m = 0.2 * face.width
    assert np.all((pts[:, 0] > face.x1 - m) & (pts[:, 0] < face.x2 + m))
    assert np.all((pts[:, 1] > face.y1 - m) & (pts[:, 1] < face.y2 + m))
    eye_dist = np.linalg.norm(face.keypoints[1] - face.keypoints[0])
    assert np.linalg.norm(pts[[33, 263], :2] - face.keypoints[:2], axis=1).max() < 0.4 * eye_dist
    assert pts[1, 2] < pts[234, 2] and pts[1, 2] < pts[454, 2]  # nose tip nearer than cheeks
    # Tracking: applied twice the ROI has settled (moves < 2% of its side per step).
    for a, b in zip(rois[2:], rois[3:], strict=False):
        assert math.hypot(b.cx_px - a.cx_px, b.cy_px - a.cy_px) < 0.02 * a.side_px
        assert abs(b.side_px - a.side_px) < 0.02 * a.side_px
        assert abs(b.angle_deg - a.angle_deg) < 2.0


def test_rotated_face_gives_rotated_landmarks(
    mesh: FaceMeshLandmarker, detector: BlazeFaceDetector, astronaut: np.ndarray
) -> None:
    def settle(image: np.ndarray) -> np.ndarray:
        roi = roi_from_face_box(detector.detect(image)[0])
        for _ in range(3):
            result, roi = mesh.track(image, roi)
        return result.points_px[:, :2]

    upright = settle(astronaut)
    M = cv2.getRotationMatrix2D((256.0, 256.0), 30.0, 1.0)  # 30 deg counter-clockwise
    turned = settle(cv2.warpAffine(astronaut, M, (512, 512)))
    face_size = np.ptp(upright[:, 0])
    err = np.linalg.norm(turned - apply(M, upright.astype(np.float64)), axis=1)
    assert np.median(err) < 0.03 * face_size


def test_bad_roi_is_an_input_error(mesh: FaceMeshLandmarker, astronaut: np.ndarray) -> None:
    with pytest.raises(InputError):
        mesh.landmarks(astronaut, FaceRoi(10, 10, 0.0))


@pytest.mark.shared
def test_aflw2000_64_landmarks_match_the_labels(
    mesh: FaceMeshLandmarker, detector: BlazeFaceDetector, aflw_dir: Path
) -> None:
    usable = tracked = 0
    errors = []
    for jpg in sorted(aflw_dir.glob("*.jpg")):
        mat = scipy.io.loadmat(str(jpg.with_suffix(".mat")))
        if np.any(np.abs(np.degrees(mat["Pose_Para"][0][:3])) > 99.0):
            continue
        usable += 1
        image, pts68 = cv2.imread(str(jpg)), mat["pt3d_68"][:2].T
        faces = detector.detect(image)
        if not faces:
            continue
        result, roi = mesh.track(image, roi_from_face_box(faces[0]))
        result = mesh.landmarks(image, roi)
        if result.presence <= 0.5:
            continue
        tracked += 1
        diag = np.linalg.norm(np.ptp(pts68, axis=0))
        a, b = zip(*PAIRS_68_TO_MESH, strict=False)
        errors.append(
            np.linalg.norm(result.points_px[list(b), :2] - pts68[list(a)], axis=1).mean() / diag
        )
    assert usable == 61
    assert tracked >= 59  # measured: 59 (models/MODELS.md)
    assert np.median(errors) < 0.03  # measured: 0.017 of the landmark-box diagonal
    assert np.percentile(errors, 90) < 0.06
