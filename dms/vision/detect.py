"""Face detectors behind one small interface, and the choice of "the driver".

A detector returns :class:`dms.types.FaceBox` records (pixel box, score, 5 keypoints).
Backends: the embedded BlazeFace (:mod:`dms.vision.blazeface`) and SCRFD through insightface's
model zoo (any SCRFD ONNX file, e.g. ``scrfd_500m_bnkps.onnx``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from dms.errors import ModelError
from dms.types import FaceBox
from dms.vision.runtime import CPU_ONLY, RuntimeSettings, create_session
from dms.vision.settings import DetectorSettings, DriverChoice

log = logging.getLogger(__name__)


class FaceDetector(Protocol):
    name: str

    def detect(self, image_bgr: np.ndarray) -> list[FaceBox]:
        """All faces in a BGR uint8 image, in image pixels, highest score first."""
        ...





def select_driver(
    faces: list[FaceBox], image_shape: tuple[int, ...], choice: DriverChoice = "largest_central"
) -> FaceBox | None:
    """The face taken as the driver's, or None when there is none."""
    if not faces:
        return None
    h, w = image_shape[:2]
    cx, cy = w / 2.0, h / 2.0

    def dist2(f: FaceBox) -> float:
        fx, fy = f.center
        return (fx - cx) ** 2 + (fy - cy) ** 2

    if choice == "largest":
        return max(faces, key=lambda f: f.area)
    if choice == "central":
        return min(faces, key=dist2)
    # insightface's rule: area minus twice the squared distance from the centre
    return max(faces, key=lambda f: f.area - 2.0 * dist2(f))


class ScrfdDetector:
    """SCRFD (insightface) on an injected onnxruntime session.

    ``input_size`` is used for models with a dynamic input; a model with a fixed input size
    runs at that size. Keypoints are insightface's: right eye, left eye (viewer's left to
    right), nose, mouth corners.
    """

    def __init__(
        self,
        model_path: str | Path,
        session: Any | None = None,
        *,
        score_threshold: float = 0.5,
        input_size: int = 320,
        nms_iou: float = 0.4,
    ) -> None:
        from insightface.model_zoo.scrfd import SCRFD

        self.model_path = Path(model_path)
        self.name = self.model_path.stem
        session = session or create_session(self.model_path)
        n_out = len(session.get_outputs())
        if n_out not in (6, 9, 10, 15):
            raise ModelError(
                f"{self.model_path}: not an SCRFD detector ({n_out} outputs; SCRFD has 6/9/10/15)"
            )
        try:
            self._model = SCRFD(model_file=str(self.model_path), session=session)
        except Exception as exc:
            msg = f"{self.model_path}: insightface cannot use it as SCRFD: {exc}"
            raise ModelError(msg) from None
        self._model.det_thresh = score_threshold
        self._model.nms_thresh = nms_iou
        self.input_size = (input_size, input_size)
        fixed = self._model.static_input_size
        if fixed is not None and tuple(fixed) != self.input_size:
            # exports with a fixed input (e.g. the 640x640 *_bnkps files) bake size-specific
            # constants into the graph: they only run at their own size
            log.info("%s has a fixed %dx%d input; input_size %d is not used",
                     self.model_path.name, fixed[0], fixed[1], input_size)
            self.input_size = (int(fixed[0]), int(fixed[1]))

    def detect(self, image_bgr: np.ndarray) -> list[FaceBox]:
        det, kps = self._model.detect(image_bgr, input_size=self.input_size)
        out = []
        for i in range(det.shape[0]):
            x1, y1, x2, y2, s = (float(v) for v in det[i])
            out.append(
                FaceBox(x1, y1, x2, y2, s, None if kps is None else np.asarray(kps[i], np.float32))
            )
        out.sort(key=lambda f: -f.score)
        return out


def _looks_like_blazeface(session: Any) -> bool:
    shapes = [tuple(o.shape) for o in session.get_outputs()]
    return len(shapes) == 2 and any(s and s[-1] == 16 for s in shapes)


def create_detector(
    settings: DetectorSettings = DetectorSettings(), runtime: RuntimeSettings = CPU_ONLY
) -> FaceDetector:
    """A detector from a manifest name or an ONNX path (the family is read from the graph)."""
    from dms.vision.blazeface import BlazeFaceDetector
    from dms.vision.registry import resolve_model

    path, entry = resolve_model(settings.model, task="face_detector")
    session = create_session(path, runtime)
    family = entry.family if entry is not None else None
    if family == "blazeface" or (family is None and _looks_like_blazeface(session)):
        det: FaceDetector = BlazeFaceDetector(session, score_threshold=settings.score_threshold)
        det.name = entry.name if entry is not None else Path(path).stem
        return det
    return ScrfdDetector(
        path, session, score_threshold=settings.score_threshold, input_size=settings.input_size
    )
