"""MediaPipe FaceMesh landmarks (468 points with depth) on a rotated square region of interest.

The model (``models/face_landmark.onnx``, see ``models/MODELS.md``) sees a 192x192 RGB crop in
[0, 1] and returns 468 x, y, z in crop pixels (z: relative depth in the same scale, smaller is
nearer the camera) and a face-presence logit.

The region of interest (:class:`FaceRoi`) is a square of side ``side_px`` centred on
(``cx_px``, ``cy_px``), turned by ``angle_deg``: its x axis points along
(cos angle, sin angle) in image pixels (y down, so a positive angle turns it clockwise on
screen). The crop maps that square upright onto the network input, so a face whose eye line
is along the ROI's x axis appears level to the network. Tracking follows MediaPipe's
face-landmark graph:

* first ROI from a detector box (:func:`roi_from_face_box`): the box centre, angle from the
  right eye to the left eye (keypoints 0 -> 1), side 1.5 x the box's longer side;
* next ROI from the landmarks (:func:`roi_from_landmarks`): angle from landmark 33 (right eye
  outer corner) to 263 (left eye outer corner), centre and side from the landmarks' extent
  measured along the ROI's own axes (MediaPipe measures it along the image axes, which
  inflates the ROI of a rolled head; this keeps the crop the same when the head rolls),
  side 1.5 x the longer extent.

Re-running the landmark model on the ROI from its own landmarks converges in one or two steps,
which is what lets the pipeline track a face without running the detector every frame.
Coordinates are image pixels, OpenCV convention (pixel centres at integers).

MediaPipe's attention mesh (``models/face_landmark_attention.onnx``) also returns refined
eyes, irises and lips from the same run: per eye 71 contour points in the iris model's order
(0..8 the lower lid from the outer to the inner corner, 9..15 the upper lid, then the brow;
the subject's right eye follows mesh ids 33, 7, 163, ..., the left 263, 249, 390, ...), per
iris 5 points (centre first), and 80 lip points (the shipped file is built without the lips'
branch: nothing reads them). :class:`FaceLandmarks` carries them when the model has them
(``eyes_px``, ``irises_px``, ``lips_px``), so one landmark run a frame gives the
tracking ROI, the eye measurements (:mod:`dms.vision.eyes`) and the box a CNN head-pose model
crops from (:func:`aflw_box`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from dms.errors import InputError, ModelError
from dms.types import FaceBox
from dms.vision.runtime import PairRunner, output_sizes, square_image_input

NUM_LANDMARKS = 468
RIGHT_EYE_OUTER = 33  # the subject's right eye, on the viewer's left
LEFT_EYE_OUTER = 263
ROI_SCALE = 1.5
# The attention mesh's refinement outputs (names written by models/build_embedded.py, from
# MediaPipe's graph): "left" is the eye on the crop's left, i.e. the subject's right eye.
REFINED_OUTPUTS = {"eye_image_left": ("output_left_eye", 71),
                   "eye_image_right": ("output_right_eye", 71),
                   "iris_image_left": ("output_left_iris", 5),
                   "iris_image_right": ("output_right_iris", 5),
                   "lips": ("output_lips", 80)}
# The refined eyes and irises must all be there for a model to count as refined; the lips
# are optional: nothing in dms reads them, so the shipped attention mesh is built without
# that branch (a fifth of a run; models/build_embedded.py), and they are read when present.
OPTIONAL_REFINED = frozenset({"lips"})

# AFLW's 21 landmarks (the ``pt2d`` of AFLW2000-3D, whose extent is the box of ``dms eval
# --boxes gt``) as FaceMesh ids, in AFLW order (image-left first): brows outer / centre /
# inner, eye corners and centres (upper-lid point), ear lobe, nose left / tip / right, mouth
# left / centre / right, chin. The ear lobes are built from the contour points 93 / 323,
# pushed out and down (:func:`aflw_box`). Training uses the same box (dms.train.realfaces,
# dms.train.rendered), so a CNN reads the face here as it was trained to.
AFLW21_FACEMESH_IDS: tuple[int, ...] = (
    70, 105, 107, 336, 334, 300,
    33, 159, 133, 362, 386, 263,
    93, 129, 1, 358, 323,
    61, 13, 291, 152,
)  # fmt: skip
EAR_LOBE_SLOTS = (12, 16)
EAR_OUT, EAR_DOWN = 0.09, 0.06  # ear lobe: outward / down, as fractions of the cheek width


@dataclass(frozen=True, slots=True)
class FaceRoi:
    """A rotated square in image pixels (see the module doc for the angle convention)."""

    cx_px: float
    cy_px: float
    side_px: float
    angle_deg: float = 0.0

    def corners(self) -> np.ndarray:
        """The 4 corners (4, 2): top-left, top-right, bottom-right, bottom-left of the crop."""
        a = math.radians(self.angle_deg)
        ux = np.array([math.cos(a), math.sin(a)]) * 0.5 * self.side_px
        uy = np.array([-math.sin(a), math.cos(a)]) * 0.5 * self.side_px
        c = np.array([self.cx_px, self.cy_px])
        return np.stack([c - ux - uy, c + ux - uy, c + ux + uy, c - ux + uy])


@dataclass(frozen=True, slots=True)
class FaceLandmarks:
    """FaceMesh output for one ROI.

    ``points_px`` (468, 3) float32: x, y in image pixels, z relative depth in the same pixel
    scale (smaller is nearer the camera). ``presence`` is the model's face probability [0, 1].

    From the attention mesh only (None from FaceMesh), x, y in image pixels: ``eyes_px``
    (2, 71, 2) the refined eye contours, the subject's right eye (image left) first, in the
    iris model's contour order; ``irises_px`` (2, 5, 2) the irises, same eye order, centre
    first; ``lips_px`` (80, 2) only from a model built with its lips branch (the shipped one
    is not: nothing reads them).
    """

    points_px: np.ndarray
    presence: float
    roi: FaceRoi
    eyes_px: np.ndarray | None = None
    irises_px: np.ndarray | None = None
    lips_px: np.ndarray | None = None

    @property
    def refined(self) -> bool:
        """Whether the refined eyes and irises are there (the attention mesh)."""
        return self.eyes_px is not None and self.irises_px is not None


def aflw_box(points_px: np.ndarray, score: float = 1.0) -> FaceBox:
    """The face box of the AFLW2000 convention from FaceMesh landmarks (468 x 2 or 3, image
    pixels): the extent of AFLW's 21 landmarks taken as mesh points
    (:data:`AFLW21_FACEMESH_IDS`, the ear lobes pushed out and down from the cheek contour by
    ``EAR_OUT`` / ``EAR_DOWN`` of the cheek width). It is the box ``dms eval --boxes gt``
    gives the CNN head-pose models and the box their training crops were cut from; the one
    place the pipeline turns a mesh into a CNN crop box."""
    pts = np.asarray(points_px, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[0] < NUM_LANDMARKS or pts.shape[1] < 2:
        raise InputError(f"aflw_box: expected {NUM_LANDMARKS} x 2 or more landmarks, got "
                         f"{pts.shape}")
    pts = pts[list(AFLW21_FACEMESH_IDS), :2].copy()
    a, b = pts[EAR_LOBE_SLOTS[0]], pts[EAR_LOBE_SLOTS[1]]
    width = float(np.linalg.norm(b - a))
    across = (b - a) / max(width, 1e-6)
    down = np.array([-across[1], across[0]])  # image y grows downward
    if down[1] < 0:
        down = -down
    pts[EAR_LOBE_SLOTS[0]] = a - EAR_OUT * width * across + EAR_DOWN * width * down
    pts[EAR_LOBE_SLOTS[1]] = b + EAR_OUT * width * across + EAR_DOWN * width * down
    return FaceBox.around(pts, score)


def roi_transform(roi: FaceRoi, size: int) -> np.ndarray:
    """The 2x3 affine matrix mapping image pixel centres to crop pixel centres."""
    a = math.radians(roi.angle_deg)
    k = size / max(roi.side_px, 1e-6)
    c, s = math.cos(a) * k, math.sin(a) * k
    # crop = k * R(-a) (p - centre) + size / 2, in edge coordinates; centres are edges - 0.5.
    half = 0.5 * size - 0.5
    return np.array(
        [
            [c, s, half - c * roi.cx_px - s * roi.cy_px],
            [-s, c, half + s * roi.cx_px - c * roi.cy_px],
        ],
        dtype=np.float64,
    )


def _angle_deg(start: np.ndarray, end: np.ndarray) -> float:
    return math.degrees(math.atan2(float(end[1] - start[1]), float(end[0] - start[0])))


def roi_from_face_box(box: FaceBox, scale: float = ROI_SCALE) -> FaceRoi:
    """The first ROI from a detector box (MediaPipe's detection-to-ROI step).

    With keypoints the ROI turns with the eye line (keypoint 0 right eye -> 1 left eye);
    without, it is upright.
    """
    angle = 0.0
    if box.keypoints is not None and len(box.keypoints) >= 2:
        kp = np.asarray(box.keypoints, dtype=np.float64)
        angle = _angle_deg(kp[0], kp[1])
    cx, cy = box.center
    return FaceRoi(cx, cy, scale * max(box.width, box.height), angle)


def roi_from_landmarks(points_px: np.ndarray, scale: float = ROI_SCALE) -> FaceRoi:
    """The next ROI from FaceMesh landmarks (468, 2 or 3) in image pixels."""
    pts = np.asarray(points_px, dtype=np.float64)[:, :2]
    angle = _angle_deg(pts[RIGHT_EYE_OUTER], pts[LEFT_EYE_OUTER])
    a = math.radians(angle)
    ux, uy = np.array([math.cos(a), math.sin(a)]), np.array([-math.sin(a), math.cos(a)])
    u, v = pts @ ux, pts @ uy
    cu, cv = 0.5 * (u.min() + u.max()), 0.5 * (v.min() + v.max())
    side = scale * max(u.max() - u.min(), v.max() - v.min())
    centre = cu * ux + cv * uy
    return FaceRoi(float(centre[0]), float(centre[1]), float(side), angle)


class FaceMeshLandmarker:
    """FaceMesh on an injected onnxruntime session (``InferenceSession``-like).

    The input size is read from the graph (192 for MediaPipe's model; NCHW or NHWC); the
    outputs are told apart by size (1404 = 468 x 3 landmarks, 1 presence logit).
    """

    def __init__(self, session: Any, *, name: str = "facemesh", parallel: bool = False) -> None:
        self.name = name
        self._session = session
        self._pairs = PairRunner(parallel)  # the mirrored pass beside the plain one
        self._input_name, self._nchw, self.input_size = square_image_input(
            session, name, "FaceMesh")
        sizes = output_sizes(session)
        if NUM_LANDMARKS * 3 not in sizes or 1 not in sizes:
            raise ModelError(
                f"{name}: expected a {NUM_LANDMARKS * 3}-value landmark output and a 1-value "
                f"presence output, got sizes {sizes}"
            )
        self._lm_index, self._flag_index = sizes.index(NUM_LANDMARKS * 3), sizes.index(1)
        names = [o.name for o in session.get_outputs()]
        found = {key: names.index(nm) for key, (nm, n) in REFINED_OUTPUTS.items()
                 if nm in names and sizes[names.index(nm)] == 2 * n}
        # the refined eyes and irises when the model has all of them (the attention mesh)
        required = REFINED_OUTPUTS.keys() - OPTIONAL_REFINED
        self._refined_index = found if required <= found.keys() else None
        self.runs = 0  # session runs so far (the pipeline's one-pass-a-frame test reads it)

    @property
    def refined(self) -> bool:
        """Whether this model also gives refined eyes and irises."""
        return self._refined_index is not None

    def crop(self, image_bgr: np.ndarray, roi: FaceRoi) -> tuple[np.ndarray, np.ndarray]:
        """The network input for ``roi`` (float32 RGB in [0, 1]) and the image->crop matrix."""
        if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.size == 0:
            raise InputError(f"{self.name}: expected an HxWx3 BGR image, got {image_bgr.shape}")
        if not roi.side_px > 1.0:
            raise InputError(f"{self.name}: ROI side must be > 1 px, got {roi.side_px}")
        size = self.input_size
        A = roi_transform(roi, size)
        crop = cv2.warpAffine(
            image_bgr, A, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )
        x = cv2.cvtColor(crop, cv2.COLOR_BGR2RGB).astype(np.float32) * (1.0 / 255.0)
        x = x.transpose(2, 0, 1)[None] if self._nchw else x[None]
        return np.ascontiguousarray(x), A

    def landmarks(self, image_bgr: np.ndarray, roi: FaceRoi) -> FaceLandmarks:
        """The 468 landmarks in image pixels and the face-presence probability for ``roi``."""
        x, A = self.crop(image_bgr, roi)
        return self._run(x, A, roi, mirrored=False)

    def landmarks_and_mirrored(self, image_bgr: np.ndarray, roi: FaceRoi,
                               mirror: FaceMeshLandmarker | None = None,
                               ) -> tuple[FaceLandmarks, FaceLandmarks]:
        """:meth:`landmarks`, and FaceMesh (``mirror``'s model when given: another mesh of the
        same topology and input) on the horizontally mirrored crop with its points mapped
        back into the image, both from one crop of ``roi``.

        In the mirrored result point i sits where the mirror partner of landmark i is (the
        subject's left and right swap), so it matches the canonical mesh mirrored in x;
        averaging the two fits cancels the model's small left/right asymmetry (test-time flip
        augmentation).
        """
        x, A = self.crop(image_bgr, roi)
        x_mirrored = self._mirror(x)
        other = mirror or self
        if other.input_size != self.input_size or other._nchw != self._nchw:
            raise ModelError(f"{other.name}: its input differs from {self.name}'s; it cannot "
                             "take the mirrored pass")
        return self._pairs.both(lambda: self._run(x, A, roi, mirrored=False),
                                lambda: other._run(x_mirrored, A, roi, mirrored=True))

    def _mirror(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x[..., ::-1] if self._nchw else x[:, :, ::-1])

    def _run(self, x: np.ndarray, A: np.ndarray, roi: FaceRoi, mirrored: bool) -> FaceLandmarks:
        outs = self._session.run(None, {self._input_name: x})
        self.runs += 1
        raw = np.asarray(outs[self._lm_index], dtype=np.float64).reshape(NUM_LANDMARKS, 3)
        logit = float(np.asarray(outs[self._flag_index]).reshape(-1)[0])
        presence = 1.0 / (1.0 + math.exp(-max(-100.0, min(100.0, logit))))
        lin, t = A[:, :2], A[:, 2]

        def to_image(crop_xy: np.ndarray) -> np.ndarray:
            # crop edge coordinates (mirrored: x -> size - x) -> crop pixel centres -> image
            xy = np.array(crop_xy, dtype=np.float64)
            if mirrored:
                xy[:, 0] = self.input_size - xy[:, 0]
            return np.linalg.solve(lin, (xy - 0.5 - t).T).T

        z = raw[:, 2] * (roi.side_px / self.input_size)
        points = np.column_stack([to_image(raw[:, :2]), z]).astype(np.float32)
        if self._refined_index is None:
            return FaceLandmarks(points, presence, roi)
        ref = {key: to_image(np.asarray(outs[i], np.float64).reshape(-1, 2)).astype(np.float32)
               for key, i in self._refined_index.items()}
        # on the mirrored crop the eye on the crop's left is the subject's left eye
        first, second = ("image_right", "image_left") if mirrored else ("image_left",
                                                                          "image_right")
        eyes = np.stack([ref["eye_" + first], ref["eye_" + second]])
        irises = np.stack([ref["iris_" + first], ref["iris_" + second]])
        return FaceLandmarks(points, presence, roi, eyes, irises, ref.get("lips"))

    def track(self, image_bgr: np.ndarray, roi: FaceRoi) -> tuple[FaceLandmarks, FaceRoi]:
        """Landmarks for ``roi`` and the ROI to use on the next frame."""
        result = self.landmarks(image_bgr, roi)
        return result, roi_from_landmarks(result.points_px)
