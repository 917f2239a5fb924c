"""Eye openness, eye-in-head gaze and mouth opening, measured in the image every frame.

Inputs: the frame (3-channel BGR; GRAY8 IR frames arrive as gray BGR from
:func:`dms.capture.as_bgr`), the head pose, and the face's FaceMesh landmarks when the pose
estimator has them (otherwise the detector's eye keypoints). Output:
:class:`dms.types.EyeObservation` - raw ratios, not decisions; the engine learns each
driver's open-eye baseline.

1. **Eye crops.** Each eye is cropped square around its two corners (FaceMesh 33/133 for the
   driver's right eye, image left; 263/362 for the left eye), turned with the corner line,
   side ``crop_scale`` x the corner distance (MediaPipe's iris graph: 2.3). The driver's left
   eye is mirrored, as the iris model was trained on right eyes with the outer corner on the
   left. Without landmarks (a CNN pose model) the crop is centred on the detector's eye
   keypoint, its width ``keypoint_eye_width`` x the distance between the eye keypoints.
   **With the attention mesh** (``source = "mesh"``, the default, when the frame's landmarks
   carry its refined eyes: :attr:`dms.vision.facemesh.FaceLandmarks.refined`) steps 1-2 are
   skipped: its refined eye contours and irises, from the same run as the mesh, are used as
   they are, and the iris model does not run at all (it is loaded only for a frame whose
   landmarks lack them, e.g. ``source = "iris"`` or a FaceMesh-only model).
2. **Iris model** (``models/iris_landmark.onnx``, MediaPipe, see models/MODELS.md): 71 eye
   contour/brow points and 5 iris points (centre, then 4 on the limbus) in crop pixels.
   Contour points 0..8 are the lower lid from the outer to the inner corner, 9..15 the upper
   lid between them (the order of FaceMesh's 33, 7, 163, 144, 145, 153, 154, 155, 133 and
   246, 161, 160, 159, 158, 157, 173).
3. **Openness** = mean lid gap at three places across the eye (upper 160/159/158 against
   lower 144/145/153) over the corner distance: the classic eye aspect ratio, ~0.3 open and
   < 0.1 closed. From the iris model's contour (``openness_source = "iris"``) or from
   FaceMesh's own lid landmarks (``"facemesh"``); the choice is measured in MODELS.md.
4. **Gaze** (eye-in-head). An eyeball model in the canonical face mesh's frame (cm; x to the
   subject's left as seen by the camera = image right for a frontal face, y up, z out of the
   face): the eyeball centre lies ``eyeball_depth_cm`` behind and ``eyeball_height_cm`` above
   the midpoint of the eye corners, and the iris centre sits on a sphere of radius
   sqrt(r^2 - iris_r^2) around it
   (r = ``eyeball_radius_cm``, iris_r = 0.59 cm: MediaPipe's 11.8 mm iris). The corners are
   projected with the known head rotation under weak perspective (scale and shift fitted to
   the two observed corners), and the gaze direction g is the one whose projected iris centre
   lands on the observed one (in closed form: the projection is linear). yaw > 0 toward image
   left (the driver's right), pitch > 0 up, as the head pose. The two eyes' angles are
   averaged over the eyes that are measured and open.
5. **Mouth** = mean inner-lip gap (82/87, 13/14, 312/317) over the inner mouth width (78/308),
   from FaceMesh only (None without landmarks).
6. **Confidence** = the product of: the face's pose confidence (FaceMesh presence); a head-yaw
   factor (1 up to ``confidence_yaw_full_deg``, 0 from ``confidence_yaw_zero_deg``); an eye
   size factor (eyes narrower than ``min_eye_width_px`` are not measured); and a darkness
   factor: the median brightness of an ellipse over the eye against the median brightness of
   the cheeks and nose. IR-opaque sunglasses make the eye region far darker than the skin
   (renders: 0.10), open eyes rarely do (real faces: median 0.52, 5th percentile 0.14, the
   eye socket's shadow); the factor ramps from 0 at
   ``dark_ratio_zero`` to 1 at ``dark_ratio_full``. An eye turned away past
   ``max_eye_yaw_deg`` (the far eye of a turned head) is not measured (None).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from dms.errors import ModelError
from dms.types import EyeObservation, FaceBox, HeadPose
from dms.vision.facemesh import FaceRoi, roi_transform
from dms.vision.plausible import ramp
from dms.vision.runtime import (
    CPU_ONLY,
    PairRunner,
    RuntimeSettings,
    create_session,
    output_sizes,
    square_image_input,
)
from dms.vision.settings import EyeSettings

NUM_CONTOUR = 71
NUM_IRIS = 5
IRIS_RADIUS_CM = 0.59  # MediaPipe's average iris: 11.8 mm across
DEFAULT_SETTINGS = EyeSettings()

# FaceMesh ids: (outer corner, inner corner, upper lid x3, lower lid x3), driver's right eye
# (image left) first. Upper 160/159/158 face lower 144/145/153 across the eye.
RIGHT_EYE = (33, 133, (160, 159, 158), (144, 145, 153))
LEFT_EYE = (263, 362, (387, 386, 385), (373, 374, 380))
# The same places in the iris model's contour (see the module doc).
CONTOUR_CORNERS = (0, 8)
CONTOUR_UPPER = (11, 12, 13)
CONTOUR_LOWER = (3, 4, 5)
MOUTH_PAIRS = ((82, 87), (13, 14), (312, 317))
MOUTH_CORNERS = (78, 308)
SKIN_IDS = (50, 280, 4)  # cheeks below the eyes, the nose: outside sunglasses


@dataclass(frozen=True, slots=True)
class EyeReading:
    """One eye, in image pixels: corners (outer, inner), iris centre, openness, crop size."""

    outer_px: np.ndarray
    inner_px: np.ndarray
    iris_px: np.ndarray
    openness: float
    width_px: float
    darkness_ratio: float


class IrisLandmarker:
    """MediaPipe's iris model on an injected onnxruntime session (``InferenceSession``-like).

    The input size is read from the graph (64 for MediaPipe's model, NCHW or NHWC); the
    outputs are told apart by size (213 = 71 x 3 contour, 15 = 5 x 3 iris).
    """

    def __init__(self, session: Any, *, name: str = "iris") -> None:
        self.name = name
        self._session = session
        self._input_name, self._nchw, self.input_size = square_image_input(session, name,
                                                                           "iris")
        sizes = output_sizes(session)
        if NUM_CONTOUR * 3 not in sizes or NUM_IRIS * 3 not in sizes:
            raise ModelError(
                f"{name}: expected a {NUM_CONTOUR * 3}-value contour output and a "
                f"{NUM_IRIS * 3}-value iris output, got sizes {sizes}"
            )
        self._contour_index = sizes.index(NUM_CONTOUR * 3)
        self._iris_index = sizes.index(NUM_IRIS * 3)

    @classmethod
    def from_file(cls, path: str | Path, runtime: RuntimeSettings = CPU_ONLY,
                  name: str = "iris") -> IrisLandmarker:
        return cls(create_session(path, runtime), name=name)

    def crop(self, image_bgr: np.ndarray, roi: FaceRoi, mirror: bool
             ) -> tuple[np.ndarray, np.ndarray]:
        """The network input (float32 RGB in [0, 1], mirrored when asked) and the
        image->crop matrix (of the unmirrored crop)."""
        size = self.input_size
        A = roi_transform(roi, size)
        crop = cv2.warpAffine(image_bgr, A, (size, size), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE)
        if mirror:
            crop = crop[:, ::-1]
        x = cv2.cvtColor(crop, cv2.COLOR_BGR2RGB).astype(np.float32) * (1.0 / 255.0)
        x = x.transpose(2, 0, 1)[None] if self._nchw else x[None]
        return np.ascontiguousarray(x), A

    def run(self, image_bgr: np.ndarray, roi: FaceRoi, mirror: bool
            ) -> tuple[np.ndarray, np.ndarray]:
        """(contour (71, 2), iris (5, 2)) in image pixels for the eye in ``roi``."""
        x, A = self.crop(image_bgr, roi, mirror)
        outs = self._session.run(None, {self._input_name: x})
        pts = np.concatenate([
            np.asarray(outs[self._contour_index], np.float64).reshape(NUM_CONTOUR, 3),
            np.asarray(outs[self._iris_index], np.float64).reshape(NUM_IRIS, 3),
        ])[:, :2]
        if mirror:  # edge coordinates: x -> size - x
            pts[:, 0] = self.input_size - pts[:, 0]
        lin, t = A[:, :2], A[:, 2]
        img = np.linalg.solve(lin, (pts - 0.5 - t).T).T
        return img[:NUM_CONTOUR], img[NUM_CONTOUR:]


def eye_roi(a_px: np.ndarray, b_px: np.ndarray, scale: float) -> FaceRoi:
    """The square eye crop around corners ``a`` -> ``b`` (the crop's x axis points a -> b)."""
    d = np.asarray(b_px, np.float64) - np.asarray(a_px, np.float64)
    c = 0.5 * (np.asarray(a_px, np.float64) + np.asarray(b_px, np.float64))
    side = scale * float(np.hypot(*d))
    return FaceRoi(float(c[0]), float(c[1]), max(side, 2.0), math.degrees(math.atan2(d[1], d[0])))


def aspect_ratio(outer: np.ndarray, inner: np.ndarray, upper: np.ndarray, lower: np.ndarray
                 ) -> float:
    """Mean gap between matched upper/lower lid points over the corner distance."""
    width = float(np.hypot(*(np.asarray(inner) - np.asarray(outer))))
    gaps = np.hypot(*(np.asarray(upper) - np.asarray(lower)).T)
    return float(gaps.mean() / max(width, 1e-6))


def _median_in_ellipse(image_bgr: np.ndarray, centre: np.ndarray, axes: tuple[float, float],
                       angle_deg: float) -> float | None:
    h, w = image_bgr.shape[:2]
    ax = max(axes)
    x0, y0 = int(max(0, centre[0] - ax - 1)), int(max(0, centre[1] - ax - 1))
    x1, y1 = int(min(w, centre[0] + ax + 2)), int(min(h, centre[1] + ax + 2))
    if x1 - x0 < 2 or y1 - y0 < 2:
        return None
    # only the patch is converted to gray: a full frame per measurement is wasted work
    patch = cv2.cvtColor(image_bgr[y0:y1, x0:x1], cv2.COLOR_BGR2GRAY)
    mask = np.zeros(patch.shape, np.uint8)
    cv2.ellipse(mask, (int(round(centre[0] - x0)), int(round(centre[1] - y0))),
                (max(1, int(axes[0])), max(1, int(axes[1]))), angle_deg, 0, 360, 255, -1)
    vals = patch[mask > 0]
    return float(np.median(vals)) if vals.size else None


class EyeMeasurer:
    """Per-frame eye and mouth measurement (see the module doc). Stateless between frames."""

    def __init__(self, iris: IrisLandmarker | Callable[[], IrisLandmarker],
                 mesh_vertices_cm: np.ndarray, settings: EyeSettings = DEFAULT_SETTINGS, *,
                 parallel: bool = False) -> None:
        """``iris``: the iris model, or a function that loads it on first use (frames whose
        landmarks carry refined eyes never need it)."""
        self._iris = iris if isinstance(iris, IrisLandmarker) else None
        self._iris_loader = None if isinstance(iris, IrisLandmarker) else iris
        self.settings = settings
        self._pairs = PairRunner(parallel)  # the two eyes at once
        v = np.asarray(mesh_vertices_cm, np.float64)
        self._corners_cm = {
            "right": (v[RIGHT_EYE[0]], v[RIGHT_EYE[1]]),
            "left": (v[LEFT_EYE[0]], v[LEFT_EYE[1]]),
        }
        settings.validate()
        r, ir = settings.eyeball_radius_cm, IRIS_RADIUS_CM
        self._iris_arm_cm = math.sqrt(max(r * r - ir * ir, 1e-6))

    @classmethod
    def from_settings(cls, settings: EyeSettings = DEFAULT_SETTINGS,
                      runtime: RuntimeSettings = CPU_ONLY) -> EyeMeasurer:
        from dms.vision.canonical import load_canonical_mesh
        from dms.vision.registry import resolve_model

        def load() -> IrisLandmarker:
            path, entry = resolve_model(settings.model, task="eye_landmarks")
            name = entry.name if entry is not None else Path(path).stem
            return IrisLandmarker.from_file(path, runtime, name)

        iris: IrisLandmarker | Callable[[], IrisLandmarker] = (
            load() if settings.source == "iris" else load)
        return cls(iris, load_canonical_mesh().vertices_cm, settings,
                   parallel=runtime.parallel_pairs)

    @property
    def iris(self) -> IrisLandmarker:
        """The iris model (loaded now if it was deferred)."""
        if self._iris is None:
            assert self._iris_loader is not None
            self._iris = self._iris_loader()
        return self._iris

    @property
    def iris_loaded(self) -> bool:
        return self._iris is not None

    # ------------------------------------------------------------------ per eye
    def _eye(self, image: np.ndarray, outer: np.ndarray, inner: np.ndarray,
             mirror: bool, lids: tuple[np.ndarray, np.ndarray] | None, skin: float | None,
             refined: tuple[np.ndarray, np.ndarray] | None = None) -> EyeReading | None:
        s = self.settings
        if refined is not None:  # the attention mesh's own eye contour and iris
            contour, iris = refined
        else:
            # The crop's x axis runs outer -> inner for the right eye (image left, outer corner
            # on the left); for the left eye inner -> outer, then mirrored so its outer corner
            # is left.
            a, b = (inner, outer) if mirror else (outer, inner)
            contour, iris = self.iris.run(image, eye_roi(a, b, s.crop_scale), mirror)
        c_outer, c_inner = contour[CONTOUR_CORNERS[0]], contour[CONTOUR_CORNERS[1]]
        width = float(np.hypot(*(c_inner - c_outer)))
        if width < s.min_eye_width_px:
            return None
        if s.openness_source == "facemesh" and lids is not None:
            openness = aspect_ratio(outer, inner, lids[0], lids[1])
        else:
            openness = aspect_ratio(c_outer, c_inner, contour[list(CONTOUR_UPPER)],
                                    contour[list(CONTOUR_LOWER)])
        centre = 0.5 * (c_outer + c_inner)
        d = c_inner - c_outer
        eye_med = _median_in_ellipse(image, centre, (0.6 * width, 0.4 * width),
                                     math.degrees(math.atan2(d[1], d[0])))
        ratio = 1.0 if eye_med is None or not skin else eye_med / skin
        return EyeReading(c_outer, c_inner, iris[0], openness, width, float(ratio))

    def _skin_brightness(self, image: np.ndarray, points: list[np.ndarray], size_px: float
                         ) -> float | None:
        vals = [m for p in points
                if (m := _median_in_ellipse(image, p, (size_px, size_px), 0.0)) is not None]
        return float(np.median(vals)) if vals else None

    # ------------------------------------------------------------------ gaze
    def gaze(self, reading: EyeReading, which: str, R: np.ndarray) -> tuple[float, float]:
        """Eye-in-head (yaw, pitch) in degrees of one eye (see the module doc, step 4).

        Closed form: under weak perspective the projection is linear, so the iris centre
        fixes the image-plane part of the gaze direction in camera axes, (R g)_x and (R g)_y;
        the depth part is the root of a unit vector, the one that points out of the face.
        (It replaced a 6-step Gauss-Newton on the same equations: on the 816 eye readings of
        every 3rd frame of the demo render the same yaw to 1e-6 deg, and the same pitch but
        for two readings where Gauss-Newton had stopped short or the iris lay off the
        modelled eyeball; about a fifth of the time.)
        """
        A, B = self._corners_cm[which]
        E = 0.5 * (A + B) + np.array([0.0, self.settings.eyeball_height_cm,
                                      -self.settings.eyeball_depth_cm])
        # camera (x right, y up) -> image (x right, y down): proj(X) = P @ X
        P = R[:2] * np.array([[1.0], [-1.0]])
        pa, pb = P @ A, P @ B
        obs = reading.outer_px, reading.inner_px
        dp, do = pb - pa, obs[1] - obs[0]
        k = float(dp @ do / max(dp @ dp, 1e-9))
        t = 0.5 * (obs[0] + obs[1]) - k * 0.5 * (pa + pb)
        q = ((reading.iris_px - t) / max(k, 1e-9) - P @ E) / self._iris_arm_cm  # = P @ g
        hx, hy = float(q[0]), -float(q[1])  # (R g)_x, (R g)_y
        n = math.hypot(hx, hy)
        if n > 1.0:  # the iris off the modelled eyeball: the nearest reachable direction
            hx, hy = hx / n, hy / n
        hz = math.sqrt(max(0.0, 1.0 - hx * hx - hy * hy))
        front, back = R.T @ np.array([hx, hy, hz]), R.T @ np.array([hx, hy, -hz])
        g = front if front[2] >= back[2] else back  # out of the face (head z)
        yaw = float(np.clip(math.atan2(-g[0], g[2]), -1.2, 1.2))
        pitch = float(np.clip(math.asin(max(-1.0, min(1.0, float(g[1])))), -1.2, 1.2))
        return math.degrees(yaw), math.degrees(pitch)

    # ------------------------------------------------------------------ the frame
    def measure(self, image_bgr: np.ndarray, pose: HeadPose, landmarks_px: np.ndarray | None,
                face: FaceBox | None = None, *, eyes_px: np.ndarray | None = None,
                irises_px: np.ndarray | None = None) -> EyeObservation | None:
        """Eyes and mouth of one face; None when there is nothing to measure them from
        (no landmarks and no detector eye keypoints). ``eyes_px``/``irises_px``: the attention
        mesh's refined eyes (:class:`dms.vision.facemesh.FaceLandmarks`), used instead of the
        iris model when ``source = "mesh"``."""
        s = self.settings
        refined: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if s.source == "mesh" and eyes_px is not None and irises_px is not None:
            ev, iv = np.asarray(eyes_px, np.float64), np.asarray(irises_px, np.float64)
            refined = {"right": (ev[0], iv[0]), "left": (ev[1], iv[1])}
        lm = None if landmarks_px is None else np.asarray(landmarks_px, np.float64)[:, :2]
        mouth: float | None = None
        if lm is not None:
            corners = {"right": (lm[RIGHT_EYE[0]], lm[RIGHT_EYE[1]]),
                       "left": (lm[LEFT_EYE[0]], lm[LEFT_EYE[1]])}
            lids = {"right": (lm[list(RIGHT_EYE[2])], lm[list(RIGHT_EYE[3])]),
                    "left": (lm[list(LEFT_EYE[2])], lm[list(LEFT_EYE[3])])}
            eye_w = float(np.hypot(*(corners["right"][1] - corners["right"][0])))
            eye_w = max(eye_w, float(np.hypot(*(corners["left"][1] - corners["left"][0]))))
            skin = self._skin_brightness(image_bgr, [lm[i] for i in SKIN_IDS], 0.25 * eye_w)
            mouth = aspect_ratio(lm[MOUTH_CORNERS[0]], lm[MOUTH_CORNERS[1]],
                                 lm[[p[0] for p in MOUTH_PAIRS]], lm[[p[1] for p in MOUTH_PAIRS]])
        elif face is not None and face.keypoints is not None and len(face.keypoints) >= 3:
            kp = np.asarray(face.keypoints, np.float64)
            axis = kp[1] - kp[0]  # image-left eye -> image-right eye
            half = 0.5 * s.keypoint_eye_width * axis
            corners = {"right": (kp[0] - half, kp[0] + half), "left": (kp[1] + half, kp[1] - half)}
            lids = {}
            skin = self._skin_brightness(image_bgr, [kp[2]], 0.12 * float(np.hypot(*axis)))
        else:
            return None

        def read(which: str, mirror: bool, sign: float) -> EyeReading | None:
            # yaw > 0 turns the nose toward image left: the driver's right eye turns away
            if sign * pose.yaw_deg > s.max_eye_yaw_deg:
                return None
            outer, inner = corners[which]
            return self._eye(image_bgr, outer, inner, mirror, lids.get(which), skin,
                             refined.get(which))

        if refined:  # no model runs: nothing to overlap
            right, left = read("right", False, 1.0), read("left", True, -1.0)
        else:
            right, left = self._pairs.both(lambda: read("right", False, 1.0),
                                           lambda: read("left", True, -1.0))
        readings: dict[str, EyeReading | None] = {"right": right, "left": left}
        measured = [r for r in readings.values() if r is not None]
        conf = pose.confidence * ramp(abs(pose.yaw_deg), s.confidence_yaw_zero_deg,
                                       s.confidence_yaw_full_deg)
        if measured:
            dark = min(r.darkness_ratio for r in measured)
            conf *= ramp(dark, s.dark_ratio_zero, s.dark_ratio_full)
        else:
            conf = 0.0
        gazes = [self.gaze(r, w, pose.rotation) for w, r in readings.items()
                 if r is not None and r.openness >= s.gaze_min_openness]
        gyaw = s.gaze_yaw_gain * float(np.mean([g[0] for g in gazes])) if gazes else None
        gpitch = s.gaze_pitch_gain * float(np.mean([g[1] for g in gazes])) if gazes else None
        r_right, r_left = readings["right"], readings["left"]
        return EyeObservation(
            openness_right=None if r_right is None else r_right.openness,
            openness_left=None if r_left is None else r_left.openness,
            confidence=float(min(1.0, max(0.0, conf))),
            gaze_yaw_deg=gyaw,
            gaze_pitch_deg=gpitch,
            mouth_open=mouth,
        )
