"""A CNN's own 68 landmarks (the iBUG 68-point layout of the tddfa students' landmark head):
the face box the next frame's crop is cut from, and the head rotation they show by themselves.

The constants are fitted by ``scripts/fit_landmarks68.py --write`` on the train split of the
ensemble pseudo-labels of ``faces-aflw`` (the 3DDFA_V2 teacher's landmarks and the ensemble's
rotations; research / non-commercial data, like the students these functions serve), never on
the evaluation set:

* ``BOX_RULE``: the box the students' crop rule expects is a square of ``scale`` x the mean
  side of the landmarks' extent, its centre ``(shift x, shift y)`` x that side from the
  extent's centre, each ``c0 + c2 sin(yaw)^2`` (rows scale, shift x, shift y; columns c0,
  c2): AFLW's box keeps its ear lobes as the head turns, the 68 points' jaw line narrows;
* ``MEAN_SHAPE``: the 68 points in 3-D (head axes of :mod:`dms.geometry`, unit RMS radius).
"""

from __future__ import annotations

import math

import numpy as np

from dms import geometry
from dms.types import FaceBox

# <fitted>
BOX_RULE = np.array([
    ( 1.0808, -0.1003),
    ( 0.0014, -0.0289),
    (-0.0177, -0.0188),
])
MEAN_SHAPE = np.array([
    (-1.1466,  0.4934, -1.1756),
    (-1.1169,  0.1768, -1.1366),
    (-1.0553, -0.1131, -1.1086),
    (-0.9956, -0.3768, -1.0517),
    (-0.9123, -0.6642, -0.9109),
    (-0.7633, -0.8935, -0.6530),
    (-0.5854, -1.0396, -0.3357),
    (-0.3501, -1.1700, -0.0424),
    (-0.0028, -1.2429,  0.0775),
    ( 0.3461, -1.1640, -0.0378),
    ( 0.5838, -1.0379, -0.3266),
    ( 0.7627, -0.8915, -0.6389),
    ( 0.9108, -0.6624, -0.8936),
    ( 0.9942, -0.3742, -1.0314),
    ( 1.0523, -0.1083, -1.0898),
    ( 1.1099,  0.1800, -1.1197),
    ( 1.1403,  0.4972, -1.1561),
    (-0.8967,  0.8531, -0.1563),
    (-0.7657,  0.9645,  0.0390),
    (-0.6004,  1.0000,  0.1774),
    (-0.4417,  0.9887,  0.2616),
    (-0.2979,  0.9504,  0.3006),
    ( 0.3025,  0.9535,  0.3027),
    ( 0.4461,  0.9954,  0.2644),
    ( 0.6041,  1.0092,  0.1824),
    ( 0.7718,  0.9747,  0.0487),
    ( 0.9013,  0.8589, -0.1427),
    ( 0.0058,  0.6191,  0.3587),
    ( 0.0067,  0.4228,  0.5110),
    ( 0.0071,  0.2345,  0.6669),
    ( 0.0069,  0.0706,  0.7021),
    (-0.1907, -0.0856,  0.3383),
    (-0.1086, -0.0980,  0.4115),
    ( 0.0021, -0.1165,  0.4462),
    ( 0.1126, -0.0974,  0.4139),
    ( 0.1933, -0.0834,  0.3421),
    (-0.6849,  0.6178, -0.0377),
    (-0.5835,  0.6869,  0.0987),
    (-0.4388,  0.6863,  0.1045),
    (-0.3059,  0.6105,  0.0675),
    (-0.4278,  0.5762,  0.1017),
    (-0.5785,  0.5704,  0.0613),
    ( 0.3024,  0.6110,  0.0671),
    ( 0.4371,  0.6890,  0.1052),
    ( 0.5851,  0.6880,  0.1040),
    ( 0.6893,  0.6176, -0.0271),
    ( 0.5802,  0.5737,  0.0698),
    ( 0.4276,  0.5777,  0.1054),
    (-0.4281, -0.4775,  0.1158),
    (-0.2775, -0.3807,  0.3269),
    (-0.0930, -0.3126,  0.4415),
    ( 0.0026, -0.3287,  0.4542),
    ( 0.0977, -0.3130,  0.4451),
    ( 0.2811, -0.3795,  0.3356),
    ( 0.4199, -0.4807,  0.1268),
    ( 0.2658, -0.5826,  0.2881),
    ( 0.1342, -0.6415,  0.3651),
    (-0.0055, -0.6537,  0.3819),
    (-0.1422, -0.6407,  0.3633),
    (-0.2679, -0.5811,  0.2813),
    (-0.3897, -0.4726,  0.1267),
    (-0.1265, -0.4210,  0.3554),
    (-0.0015, -0.4152,  0.3911),
    ( 0.1244, -0.4216,  0.3607),
    ( 0.3941, -0.4759,  0.1357),
    ( 0.1169, -0.5150,  0.3470),
    (-0.0078, -0.5234,  0.3621),
    (-0.1294, -0.5117,  0.3378),
])
# </fitted>

RIGHT_EYE = slice(36, 42)  # the subject's right eye: image left on a facing driver
LEFT_EYE = slice(42, 48)
NOSE_TIP = 30
MOUTH_CORNERS = (48, 54)


def box_from_landmarks68(points_px: np.ndarray, score: float = 1.0, yaw_deg: float = 0.0
                         ) -> FaceBox:
    """The face box for the next frame's crop from 68 landmarks (image pixels) of a head at
    ``yaw_deg`` (see ``BOX_RULE``), with the five detector keypoints (eye centres, nose tip,
    mouth corners, in the detectors' image-left to image-right order) for the eye stage."""
    p = np.asarray(points_px, np.float64)[:, :2]
    lo, hi = p.min(axis=0), p.max(axis=0)
    side = 0.5 * float((hi - lo).sum())
    scale, dx, dy = BOX_RULE @ (1.0, math.sin(math.radians(yaw_deg)) ** 2)
    cx, cy = 0.5 * (lo + hi) + np.array([dx, dy]) * side
    half = 0.5 * scale * side
    keypoints = np.stack([p[RIGHT_EYE].mean(axis=0), p[LEFT_EYE].mean(axis=0), p[NOSE_TIP],
                          p[MOUTH_CORNERS[0]], p[MOUTH_CORNERS[1]]])
    return FaceBox(float(cx - half), float(cy - half), float(cx + half), float(cy + half),
                   score, keypoints)


def rotation_from_landmarks68(points_px: np.ndarray, shape: np.ndarray | None = None
                              ) -> np.ndarray:
    """The head rotation (head -> camera, as ``HeadPose.rotation``) that best maps the mean
    shape onto 68 image landmarks under a scaled orthographic camera: the least-squares 2 x 3
    affine map, its rows normalised, the nearest rotation."""
    pinv = _PINV if shape is None else _pinv(np.asarray(shape, np.float64))
    x = np.asarray(points_px, np.float64)[:, :2]
    a = (pinv @ (x - x.mean(axis=0))).T  # 2 x 3
    r0 = a[0] / max(float(np.linalg.norm(a[0])), 1e-9)  # the camera's x axis: image x
    r1 = -a[1] / max(float(np.linalg.norm(a[1])), 1e-9)  # its y axis points up, the image's down
    r2 = np.array([r0[1] * r1[2] - r0[2] * r1[1], r0[2] * r1[0] - r0[0] * r1[2],
                   r0[0] * r1[1] - r0[1] * r1[0]])
    return geometry.nearest_rotation(np.stack([r0, r1, r2]))


def _pinv(shape: np.ndarray) -> np.ndarray:
    """The 3 x 68 least-squares solver of the centred ``shape`` (one matrix product a frame)."""
    return np.linalg.pinv(shape - shape.mean(axis=0))


_PINV = _pinv(MEAN_SHAPE)
