"""Teachers: anything that gives a head rotation and a confidence for faces in images.

A :class:`Teacher` answers ``predict(images, boxes) -> TeacherOutput`` (AFLW matrices ``M`` and
confidences in [0, 1]). Teachers here:

* :class:`OnnxRotationTeacher` - any ONNX model with the runtime contract (input ``1x3xSxS``
  RGB ImageNet-normalised, output ``rotation_matrix`` N x 3 x 3 = M): a student of an earlier
  round, or a public 6D head-pose model converted by the user.
* :class:`TorchTeacher` - a PyTorch checkpoint of ours.
* :class:`LandmarkTeacher` - 3-D landmarks (e.g. FaceMesh) + weighted Procrustes against a
  canonical mesh. It takes a landmark function, so the embedded FaceMesh wrapper plugs in
  without this module importing it.
* :class:`FlipAveragedTeacher` - test-time augmentation: averages a teacher with its own
  prediction on the mirrored image (mirrored back); disagreement lowers the confidence.
* :class:`EnsembleTeacher` - confidence-weighted chordal mean of several teachers; the
  confidence falls with their spread, so faces the teachers disagree on weigh less.

:func:`pseudolabel` runs a teacher over records and returns them with soft targets.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from dms.errors import ModelError
from dms.geometry import geodesic_deg, mean_rotation, mirror_rotation, weighted_procrustes
from dms.train.datasets import Box, FaceRecord, load_image
from dms.vision.crop import TEST_MARGINS, face_crop, to_nchw_imagenet
from dms.vision.headpose import crop_rule_of

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class TeacherOutput:
    rotations: np.ndarray = field(compare=False)  # (N, 3, 3) AFLW matrices M
    confidence: np.ndarray = field(compare=False)  # (N,) in [0, 1]


class Teacher(Protocol):
    name: str

    def predict(self, images: Sequence[np.ndarray], boxes: Sequence[Box]) -> TeacherOutput:
        """Head rotations ``M`` for one face box per BGR image."""
        ...


def _mirror_box(box: Box, width: int) -> Box:
    x1, y1, x2, y2 = box
    return (width - x2, y1, width - x1, y2)


class OnnxRotationTeacher:
    """A head-pose ONNX with the runtime contract; the input size and the crop rule
    (``dms_crop``, e.g. 3DDFA's for ``tddfa_mb05``) are read from the graph."""

    def __init__(self, path: str | Path, session: Any = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        self.name = self.path.stem
        try:
            # an onnxruntime.InferenceSession (untyped) or a test double with its methods
            self.session: Any = session or ort.InferenceSession(
                str(self.path), providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise ModelError(f"{self.path}: onnxruntime cannot load it ({exc})") from None
        inp = self.session.get_inputs()[0]
        outs = [o.name for o in self.session.get_outputs()]
        if inp.name != "input" or "rotation_matrix" not in outs:
            raise ModelError(
                f"{self.path}: expected input 'input' and output 'rotation_matrix', "
                f"got {inp.name!r} -> {outs}"
            )
        self.size_px = int(inp.shape[2])
        self.rule = crop_rule_of(self.session, self.name)

    def predict(self, images: Sequence[np.ndarray], boxes: Sequence[Box]) -> TeacherOutput:
        Ms = []
        for img, box in zip(images, boxes, strict=True):
            crop, _ = face_crop(img, box, self.size_px, self.rule)
            (M,) = self.session.run(["rotation_matrix"], {"input": to_nchw_imagenet(crop)})
            Ms.append(np.asarray(M, np.float64).reshape(3, 3))
        return TeacherOutput(np.stack(Ms), np.ones(len(Ms)))


class TorchTeacher:
    """A PyTorch student (e.g. from an earlier round) used as a teacher, CPU or GPU."""

    def __init__(self, model: object, size_px: int, name: str = "torch", device: str = "cpu"):
        self.model = model.eval().to(device)  # type: ignore[attr-defined]
        self.size_px = size_px
        self.name = name
        self.device = device

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "cpu") -> TorchTeacher:
        from dms.train.distill import load_checkpoint

        model, meta = load_checkpoint(path)
        return cls(model, int(meta["input_size_px"]), Path(path).stem, device)

    def predict(self, images: Sequence[np.ndarray], boxes: Sequence[Box]) -> TeacherOutput:
        import torch

        crops = [
            to_nchw_imagenet(face_crop(im, b, self.size_px, TEST_MARGINS)[0])
            for im, b in zip(images, boxes, strict=True)
        ]
        with torch.no_grad():
            x = torch.from_numpy(np.concatenate(crops)).to(self.device)
            M = self.model(x).cpu().numpy().astype(np.float64)  # type: ignore[operator]
        return TeacherOutput(M, np.ones(len(M)))


class EstimatorTeacher:
    """A runtime head-pose estimator (``dms.vision.headpose.HeadPoseEstimator``: the landmark
    path, a CNN with its flip averaging) as a teacher: its rotation and confidence."""

    def __init__(self, estimator: Any, name: str = "") -> None:
        self.estimator = estimator
        self.name = name or str(getattr(estimator, "name", "estimator"))

    def predict(self, images: Sequence[np.ndarray], boxes: Sequence[Box]) -> TeacherOutput:
        from dms.types import FaceBox

        Ms, conf = [], []
        for img, box in zip(images, boxes, strict=True):
            x1, y1, x2, y2 = (float(v) for v in box)
            pose = self.estimator.estimate(img, FaceBox(x1, y1, x2, y2, score=1.0))
            if pose is None:
                Ms.append(np.eye(3))
                conf.append(0.0)
                continue
            Ms.append(np.asarray(pose.rotation, np.float64).T)
            conf.append(float(np.clip(pose.confidence, 0.0, 1.0)))
        return TeacherOutput(np.stack(Ms), np.asarray(conf))


LandmarkFn = Callable[[np.ndarray, Box], "tuple[np.ndarray, float] | None"]


class LandmarkTeacher:
    """Rotation from 3-D landmarks by weighted Procrustes against a canonical mesh.

    ``landmarks(image, box)`` returns (points (K, 3) in image pixels with x right, y down and
    z growing away from the camera - FaceMesh's convention - and a confidence), or None when
    no face is found. ``canonical`` is (K, 3) in head coordinates (x right, y up, z toward the
    camera); ``weights`` (K,) the Procrustes weights. The fitted rotation R (head -> camera)
    is turned into ``M = R.T``. Landmark pipelines underestimate yaw beyond ~50 deg
    (REFERENCE section 5): keep this teacher's weight low there, or ensemble it.
    """

    def __init__(
        self,
        landmarks: LandmarkFn,
        canonical: np.ndarray,
        weights: np.ndarray | None = None,
        name: str = "landmarks",
    ) -> None:
        self.landmarks = landmarks
        self.canonical = np.asarray(canonical, np.float64)
        self.weights = weights
        self.name = name

    def predict(self, images: Sequence[np.ndarray], boxes: Sequence[Box]) -> TeacherOutput:
        Ms, conf = [], []
        for img, box in zip(images, boxes, strict=True):
            found = self.landmarks(img, box)
            if found is None:
                Ms.append(np.eye(3))
                conf.append(0.0)
                continue
            pts, c = found
            cam = np.asarray(pts, np.float64)[:, :3] * np.array([1.0, -1.0, -1.0])
            _, R, _ = weighted_procrustes(self.canonical, cam, self.weights)
            Ms.append(R.T)
            conf.append(float(np.clip(c, 0.0, 1.0)))
        return TeacherOutput(np.stack(Ms), np.asarray(conf))


class FlipAveragedTeacher:
    """Average a teacher with its mirrored prediction; confidence falls with disagreement."""

    def __init__(self, base: Teacher, spread_scale_deg: float = 10.0) -> None:
        self.base = base
        self.name = f"{base.name}+flip"
        self.spread_scale_deg = spread_scale_deg

    def predict(self, images: Sequence[np.ndarray], boxes: Sequence[Box]) -> TeacherOutput:
        a = self.base.predict(images, boxes)
        flipped = [np.ascontiguousarray(im[:, ::-1]) for im in images]
        mboxes = [_mirror_box(b, im.shape[1]) for b, im in zip(boxes, images, strict=True)]
        b = self.base.predict(flipped, mboxes)
        Ms, conf = [], []
        for i in range(len(images)):
            pair = np.stack([a.rotations[i], mirror_rotation(b.rotations[i])])
            w = np.array([a.confidence[i], b.confidence[i]]) + 1e-9
            Ms.append(mean_rotation(pair, w))
            d = geodesic_deg(pair[0], pair[1])
            conf.append(float(w.mean() * np.exp(-((d / self.spread_scale_deg) ** 2) / 2)))
        return TeacherOutput(np.stack(Ms), np.asarray(conf))


class EnsembleTeacher:
    """Confidence-weighted chordal mean of teachers (``weights`` scale each teacher).

    Confidence = weighted mean confidence x exp(-spread^2 / (2 s^2)), spread = the weighted
    mean geodesic angle of the members from the mean, s = ``spread_scale_deg``.
    """

    def __init__(
        self,
        teachers: Sequence[Teacher],
        weights: Sequence[float] | None = None,
        spread_scale_deg: float = 10.0,
    ) -> None:
        if not teachers:
            raise ValueError("an ensemble needs at least one teacher")
        self.teachers = list(teachers)
        self.weights = np.ones(len(teachers)) if weights is None else np.asarray(weights, float)
        self.spread_scale_deg = spread_scale_deg
        self.name = "ensemble(" + ",".join(t.name for t in teachers) + ")"

    def predict(self, images: Sequence[np.ndarray], boxes: Sequence[Box]) -> TeacherOutput:
        outs = [t.predict(images, boxes) for t in self.teachers]
        Ms, conf = [], []
        for i in range(len(images)):
            rots = np.stack([o.rotations[i] for o in outs])
            w = self.weights * np.array([o.confidence[i] for o in outs])
            if w.sum() <= 0:
                Ms.append(np.eye(3))
                conf.append(0.0)
                continue
            mean = mean_rotation(rots, w)
            spread = float(np.average([geodesic_deg(mean, r) for r in rots], weights=w))
            Ms.append(mean)
            c = float(w.sum() / self.weights.sum()) * np.exp(
                -((spread / self.spread_scale_deg) ** 2) / 2
            )
            conf.append(c)
        return TeacherOutput(np.stack(Ms), np.asarray(conf))


def pseudolabel(
    teacher: Teacher, records: Sequence[FaceRecord], progress: bool = True
) -> list[FaceRecord]:
    """Records with the teacher's soft target and confidence filled in (one face at a time)."""
    from tqdm import tqdm

    out = []
    for rec in tqdm(records, desc=f"pseudo-labels ({teacher.name})", disable=not progress):
        res = teacher.predict([load_image(rec.image)], [rec.box])
        out.append(replace(rec, teacher=res.rotations[0], teacher_conf=float(res.confidence[0])))
    return out
