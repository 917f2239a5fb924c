"""BlazeFace face detector (MediaPipe weights converted to ONNX, see ``models/MODELS.md``).

The network is an SSD: for every anchor it outputs one face score logit and 16 regressors
(box centre x, y, width, height, then 6 keypoints x, y), in pixels of the network input and
relative to the anchor centre. Post-processing follows MediaPipe's face detection graphs:

* anchors from ``SsdAnchorsCalculator`` options per variant (fixed anchor size, offset 0.5;
  layers with the same stride share one feature map, 2 anchors per layer with the interpolated
  scale, 1 without):

  ========================= ===== =================== ===============
  variant                   input strides              anchors
  ========================= ===== =================== ===============
  short range ("front")     128   8, 16, 16, 16        16x16x2 + 8x8x6 = 896
  back camera               256   16, 32, 32, 32       16x16x2 + 8x8x6 = 896
  full range                192   4 (no interpolated)  48x48x1 = 2304
  ========================= ===== =================== ===============

* scores: sigmoid of the logit clipped to [-100, 100];
* weighted non-maximum suppression (MediaPipe's ``WEIGHTED`` overlap mode): each kept face
  is the score-weighted mean of the boxes and keypoints it suppresses;
* the image is letterboxed (aspect kept, centred, black padding) into the square input.

The six BlazeFace keypoints are, in the subject's terms: 0 right eye, 1 left eye, 2 nose tip,
3 mouth centre, 4 right ear tragion, 5 left ear tragion (the subject's right eye is on the
viewer's left). :class:`dms.types.FaceBox` carries five points in the SCRFD/insightface order
(right eye, left eye, nose, right mouth corner, left mouth corner); BlazeFace has no mouth
corners, so they are estimated from the mouth centre along the eye line:
``mouth +- 0.415 * (left_eye - right_eye)`` (the ratio of mouth width to eye distance in the
usual 5-point ArcFace template, 29.2 / 35.2 px). The eyes and nose are the network's own; use
:meth:`BlazeFaceDetector.detect_raw` for all six points.

Coordinates returned are image pixels with OpenCV's convention (pixel centres at integers).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from dms.errors import InputError, ModelError
from dms.types import FaceBox

log = logging.getLogger(__name__)

NUM_KEYPOINTS = 6
MOUTH_HALF_WIDTH_PER_EYE_DISTANCE = 0.415
SCORE_CLIP = 100.0


@dataclass(frozen=True, slots=True)
class AnchorOptions:
    """The ``SsdAnchorsCalculator`` options that matter with fixed-size anchors."""

    strides: tuple[int, ...]
    interpolated_scale: bool
    offset: float = 0.5


# By square input side; the variant is read from the graph's input size.
ANCHOR_OPTIONS: dict[int, AnchorOptions] = {
    128: AnchorOptions(strides=(8, 16, 16, 16), interpolated_scale=True),  # short range
    256: AnchorOptions(strides=(16, 32, 32, 32), interpolated_scale=True),  # back camera
    192: AnchorOptions(strides=(4,), interpolated_scale=False),  # full range
}


def ssd_anchors(input_size: int, options: AnchorOptions) -> np.ndarray:
    """Anchor centres (N, 2) as (x, y) fractions of the input, in the network's output order.

    Consecutive layers with the same stride are one feature map; each location carries the
    anchors of all of them (2 per layer with the interpolated scale, else 1), row by row.
    """
    centres = []
    strides = options.strides
    i = 0
    while i < len(strides):
        j = i
        while j < len(strides) and strides[j] == strides[i]:
            j += 1
        per_cell = (j - i) * (2 if options.interpolated_scale else 1)
        side = int(np.ceil(input_size / strides[i]))
        grid = (np.arange(side, dtype=np.float64) + options.offset) / side
        ys, xs = np.meshgrid(grid, grid, indexing="ij")
        cell = np.stack([xs.ravel(), ys.ravel()], axis=1)
        centres.append(np.repeat(cell, per_cell, axis=0))
        i = j
    return np.concatenate(centres, axis=0).astype(np.float32)


def weighted_nms(
    boxes: np.ndarray, scores: np.ndarray, keypoints: np.ndarray, iou_threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MediaPipe's weighted NMS on (N, 4) x1 y1 x2 y2 boxes, (N,) scores, (N, K, 2) points.

    Highest score first: the candidates overlapping it by IoU > ``iou_threshold`` (itself
    included) are merged into their score-weighted mean box and keypoints, keeping its score.
    """
    order = np.argsort(-scores, kind="stable")
    boxes, scores, keypoints = boxes[order], scores[order], keypoints[order]
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(
        boxes[:, 3] - boxes[:, 1], 0, None
    )
    alive = np.ones(len(scores), dtype=bool)
    out_b, out_s, out_k = [], [], []
    for i in range(len(scores)):
        if not alive[i]:
            continue
        idx = np.flatnonzero(alive)
        ix1 = np.maximum(boxes[i, 0], boxes[idx, 0])
        iy1 = np.maximum(boxes[i, 1], boxes[idx, 1])
        ix2 = np.minimum(boxes[i, 2], boxes[idx, 2])
        iy2 = np.minimum(boxes[i, 3], boxes[idx, 3])
        inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
        iou = inter / np.maximum(areas[i] + areas[idx] - inter, 1e-12)
        group = idx[iou > iou_threshold]
        group = np.union1d(group, [i])
        w = scores[group] / scores[group].sum()
        out_b.append(w @ boxes[group])
        out_k.append(np.tensordot(w, keypoints[group], axes=1))
        out_s.append(scores[i])
        alive[group] = False
    if not out_s:
        return boxes[:0], scores[:0], keypoints[:0]
    return np.array(out_b), np.array(out_s), np.array(out_k)


class BlazeFaceDetector:
    """BlazeFace on an injected onnxruntime session (``InferenceSession``-like).

    ``score_threshold``: minimum face probability (default 0.5, MediaPipe's
    ``min_detection_confidence``; the AFLW2000-64 measurement in ``models/MODELS.md`` found the
    same faces from 0.3 to 0.6). ``nms_iou``: IoU above which detections merge (default 0.3,
    MediaPipe's ``min_suppression_threshold``). The input size and so the variant (128, 192 or
    256) are read from the graph; NCHW and NHWC inputs are both accepted.
    """

    def __init__(
        self,
        session: Any,
        *,
        score_threshold: float = 0.5,
        nms_iou: float = 0.3,
        name: str = "blazeface",
    ) -> None:
        if not 0.0 < score_threshold < 1.0:
            raise ValueError("score_threshold must be in (0, 1)")
        if not 0.0 < nms_iou < 1.0:
            raise ValueError("nms_iou must be in (0, 1)")
        self.name = name
        self.score_threshold = float(score_threshold)
        self.nms_iou = float(nms_iou)
        self._session = session
        inp = session.get_inputs()[0]
        self._input_name = inp.name
        shape = list(inp.shape)
        if len(shape) != 4 or not (shape[1] == 3 or shape[3] == 3):
            raise ModelError(f"{name}: BlazeFace input must be 1x3xSxS or 1xSxSx3, got {shape}")
        self._nchw = shape[1] == 3
        h, w = (shape[2], shape[3]) if self._nchw else (shape[1], shape[2])
        if h != w or h not in ANCHOR_OPTIONS:
            raise ModelError(
                f"{name}: BlazeFace input side {h}x{w} is none of {sorted(ANCHOR_OPTIONS)}"
            )
        self.input_size = int(h)
        self._anchors = ssd_anchors(self.input_size, ANCHOR_OPTIONS[self.input_size])
        outputs = session.get_outputs()
        by_last = {int(o.shape[-1]): k for k, o in enumerate(outputs) if len(o.shape) == 3}
        if sorted(by_last) != [1, 16] or len(outputs) != 2:
            shapes = [list(o.shape) for o in outputs]
            raise ModelError(f"{name}: expected outputs 1xNx16 and 1xNx1, got {shapes}")
        self._reg_index, self._cls_index = by_last[16], by_last[1]
        n = outputs[self._reg_index].shape[1]
        if n != len(self._anchors):
            raise ModelError(
                f"{name}: {n} output rows but {len(self._anchors)} anchors for a "
                f"{self.input_size} input"
            )

    def letterbox(self, image_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The network input (1x3xSxS or 1xSxSx3 float32 RGB in [-1, 1]) and the 2x3
        image->input affine matrix (OpenCV pixel-centre convention)."""
        if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.size == 0:
            raise InputError(f"{self.name}: expected an HxWx3 BGR image, got {image_bgr.shape}")
        h, w = image_bgr.shape[:2]
        s = self.input_size
        new_w = max(1, min(s, round(w * s / max(h, w))))
        new_h = max(1, min(s, round(h * s / max(h, w))))
        left, top = (s - new_w) // 2, (s - new_h) // 2
        shrink = new_w < w or new_h < h
        resized = cv2.resize(
            image_bgr, (new_w, new_h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        )
        tensor = cv2.copyMakeBorder(
            resized, top, s - new_h - top, left, s - new_w - left, cv2.BORDER_CONSTANT, value=0
        )
        # cv2.resize maps edges to edges (u' = sx * u); written here for pixel centres.
        sx, sy = new_w / w, new_h / h
        A = np.array(
            [[sx, 0.0, left + 0.5 * sx - 0.5], [0.0, sy, top + 0.5 * sy - 0.5]], dtype=np.float64
        )
        x = cv2.cvtColor(tensor, cv2.COLOR_BGR2RGB).astype(np.float32)
        x = x * (2.0 / 255.0) - 1.0
        x = x.transpose(2, 0, 1)[None] if self._nchw else x[None]
        return np.ascontiguousarray(x), A

    def detect_raw(self, image_bgr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Faces as arrays: boxes (N, 4) x1 y1 x2 y2, scores (N,), keypoints (N, 6, 2), all in
        image pixels, highest score first (the six BlazeFace points, see the module doc)."""
        x, A = self.letterbox(image_bgr)
        outs = self._session.run(None, {self._input_name: x})
        reg = np.asarray(outs[self._reg_index], dtype=np.float32).reshape(-1, 16)
        logit = np.asarray(outs[self._cls_index], dtype=np.float64).reshape(-1)
        scores = 1.0 / (1.0 + np.exp(-np.clip(logit, -SCORE_CLIP, SCORE_CLIP)))
        keep = np.flatnonzero(scores >= self.score_threshold)
        if keep.size == 0:
            return np.zeros((0, 4)), np.zeros(0), np.zeros((0, NUM_KEYPOINTS, 2))
        s = float(self.input_size)
        reg, scores, anchors = reg[keep].astype(np.float64), scores[keep], self._anchors[keep]
        centre = reg[:, 0:2] / s + anchors
        half = 0.5 * reg[:, 2:4] / s
        boxes = np.concatenate([centre - half, centre + half], axis=1)
        kps = reg[:, 4:].reshape(-1, NUM_KEYPOINTS, 2) / s + anchors[:, None, :]
        boxes, scores, kps = weighted_nms(boxes, scores, kps, self.nms_iou)
        # Normalised input (edges at 0 and 1) -> input pixel centres -> image pixel centres.
        sx, sy, tx, ty = A[0, 0], A[1, 1], A[0, 2], A[1, 2]
        boxes_px = boxes * s - 0.5
        boxes_px[:, [0, 2]] = (boxes_px[:, [0, 2]] - tx) / sx
        boxes_px[:, [1, 3]] = (boxes_px[:, [1, 3]] - ty) / sy
        kps_px = kps * s - 0.5
        kps_px[..., 0] = (kps_px[..., 0] - tx) / sx
        kps_px[..., 1] = (kps_px[..., 1] - ty) / sy
        return boxes_px, scores.astype(np.float64), kps_px

    def detect(self, image_bgr: np.ndarray) -> list[FaceBox]:
        """All faces in a BGR uint8 image, in image pixels, highest score first."""
        boxes, scores, kps6 = self.detect_raw(image_bgr)
        faces = []
        for b, sc, k in zip(boxes, scores, kps6, strict=True):
            faces.append(
                FaceBox(
                    float(b[0]),
                    float(b[1]),
                    float(b[2]),
                    float(b[3]),
                    float(sc),
                    five_points(k),
                )
            )
        return faces


def five_points(kps6: np.ndarray) -> np.ndarray:
    """BlazeFace's 6 keypoints -> the 5-point layout of :class:`dms.types.FaceBox` (float32):
    right eye, left eye, nose tip, and mouth corners estimated from the mouth centre."""
    right_eye, left_eye, nose, mouth = kps6[0], kps6[1], kps6[2], kps6[3]
    half = MOUTH_HALF_WIDTH_PER_EYE_DISTANCE * (left_eye - right_eye)
    return np.stack([right_eye, left_eye, nose, mouth - half, mouth + half]).astype(np.float32)
