"""Head-pose estimators behind one interface.

Every estimator returns :class:`dms.types.HeadPose`: the head rotation R (head -> camera),
AFLW2000 Euler angles in degrees and a confidence (see :mod:`dms.geometry`).

Backends:

* :class:`CnnHeadPose`: any head-pose ONNX on a face crop made by
  :func:`dms.vision.crop.face_crop` (input ``1x3xSxS`` RGB, ImageNet mean/std, S read from the
  graph). Outputs understood, by shape and name:

  - ``rotation_matrix`` (N, 3, 3): the AFLW matrix M = Rz(roll) Ry(yaw) Rx(pitch) (the public
    ResNet/MobileNet 6D models and our own students);
  - (N, 6): a 6D rotation, Gram-Schmidt to M;
  - (N, 9): a 3x3 matrix, projected to the nearest rotation;
  - (N, 3): Euler angles in degrees; the order comes from the manifest ``output`` field
    (``euler:yaw,pitch,roll``), or from the output name if it spells the order;
  - three outputs of B bins each (Hopenet style: 66 bins of 3 deg from -99): soft-argmax.

  With ``[vision.pose.cnn] flip_average`` (the default, "auto": not where the CNN tracks on
  its own landmarks, :class:`dms.perception.CnnTrackedPose`) the model also reads the mirrored
  crop; the two rotations are averaged and their disagreement is the confidence, which also
  falls with |yaw| past the model's range (:class:`dms.vision.settings.CnnPoseSettings`): such
  a network has no confidence output, and past its range it answers confidently wrong.

* :class:`dms.vision.landmark_pose.LandmarkHeadPose`: FaceMesh landmarks + weighted
  Procrustes to the canonical face mesh (the embedded default).
"""

from __future__ import annotations

import logging
import re
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from dms import geometry
from dms.errors import ModelError
from dms.types import FaceBox, HeadPose
from dms.vision.crop import CROP_RULES, CropRule, face_crop, to_nchw_imagenet
from dms.vision.plausible import DEFAULT_LIMITS, PoseLimits, limit_confidence, ramp
from dms.vision.runtime import CPU_ONLY, PairRunner, RuntimeSettings, create_session
from dms.vision.settings import CnnPoseSettings, PoseModelSettings

log = logging.getLogger(__name__)


class HeadPoseEstimator(Protocol):
    name: str

    def estimate(self, image_bgr: np.ndarray, face: FaceBox) -> HeadPose | None:
        """Head pose of the face in ``face`` (None when the estimator sees no face there)."""
        ...



def pose_from_aflw_matrix(M: np.ndarray, confidence: float = 1.0) -> HeadPose:
    pitch, yaw, roll = geometry.euler_from_aflw_matrix(M)
    return HeadPose(np.asarray(M, dtype=np.float64).T, pitch, yaw, roll, confidence)


_AXES = ("pitch", "yaw", "roll")


def _parse_order(spec: str) -> tuple[str, str, str]:
    order = tuple(s.strip() for s in spec.split(","))
    if sorted(order) != sorted(_AXES):
        raise ModelError(f"output order {spec!r} must name pitch, yaw and roll once each")
    return order  # type: ignore[return-value]


def _order_from_name(name: str) -> tuple[str, str, str] | None:
    hits = sorted((m.start(), m.group(0)) for m in re.finditer("pitch|yaw|roll", name.lower()))
    names = tuple(h[1] for h in hits)
    return names if sorted(names) == sorted(_AXES) else None  # type: ignore[return-value]


def detect_output_format(session: Any, override: str = "") -> str:
    """The output format of a head-pose ONNX (see the module doc), or ModelError."""
    if override:
        return override
    outs = session.get_outputs()
    if len(outs) == 3 and all(o.shape and isinstance(o.shape[-1], int) for o in outs):
        bins = {o.shape[-1] for o in outs}
        if len(bins) == 1 and bins.pop() > 3:
            names = [o.name.lower() for o in outs]
            axes = [next((a for a in _AXES if a in n), "") for n in names]
            if sorted(axes) == sorted(_AXES):
                return "bins:" + ",".join(axes)
            return "bins:yaw,pitch,roll"  # Hopenet's output order
    if len(outs) >= 1:
        o = outs[0]
        shape = list(o.shape)
        if o.name == "rotation_matrix" or shape[-2:] == [3, 3]:
            return "rotation_matrix"
        last = shape[-1] if shape else None
        if last == 6:
            return "6d"
        if last == 9:
            return "matrix9"
        if last == 3:
            order = _order_from_name(o.name)
            if order is None:
                raise ModelError(
                    f"output {o.name!r} has 3 angles but no known order; give it with "
                    "--pose-output euler:yaw,pitch,roll (or the manifest's output field)"
                )
            return "euler:" + ",".join(order)
    shapes = ", ".join(f"{o.name}{list(o.shape)}" for o in outs)
    raise ModelError(f"unexpected head-pose outputs {shapes}: expected rotation_matrix (N,3,3), "
                     "6D (N,6), 9 values, 3 Euler angles or 3 bin vectors")


DEFAULT_CNN = CnnPoseSettings()
_MIRROR = np.diag([-1.0, 1.0, 1.0])  # F M F: the AFLW matrix of the mirror image


def mirrored_matrix(M: np.ndarray) -> np.ndarray:
    """The AFLW matrix of the horizontally mirrored face: yaw and roll negated, pitch kept
    (an involution: applying it twice gives ``M`` back)."""
    return _MIRROR @ np.asarray(M, np.float64) @ _MIRROR


def flip_confidence(disagreement_deg: float, settings: CnnPoseSettings) -> float:
    """1 up to ``flip_agree_deg`` of disagreement, 0 from ``flip_zero_deg``, linear between."""
    return ramp(disagreement_deg, settings.flip_zero_deg, settings.flip_agree_deg)


def range_confidence(yaw_deg: float, settings: CnnPoseSettings) -> float:
    """1 up to ``range_full_yaw_deg`` of |yaw|, 0 from ``range_zero_yaw_deg``, linear between."""
    return ramp(abs(yaw_deg), settings.range_zero_yaw_deg, settings.range_full_yaw_deg)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def crop_rule_of(session: Any, name: str = "model") -> CropRule:
    """The crop rule an ONNX names in its ``dms_crop`` metadata prop (the test margins when it
    names none, as public models do)."""
    try:
        props = dict(session.get_modelmeta().custom_metadata_map)
    except AttributeError:  # a session double without metadata
        props = {}
    key = props.get("dms_crop", "margins")
    if key not in CROP_RULES:
        raise ModelError(f"{name}: unknown crop rule dms_crop={key!r} "
                         f"(known: {', '.join(sorted(CROP_RULES))})")
    return CROP_RULES[key]


class CnnHeadPose:
    """Head pose from a CNN on a square face crop (session injected). The crop rule is the
    model's own (:func:`crop_rule_of`) unless ``margins`` names one."""

    def __init__(
        self,
        session: Any,
        *,
        name: str = "cnn",
        output_format: str = "",
        margins: CropRule | None = None,
        bin_width_deg: float = 3.0,
        bin_start_deg: float = -99.0,
        limits: PoseLimits = DEFAULT_LIMITS,
        settings: CnnPoseSettings = DEFAULT_CNN,
        parallel: bool = False,
    ) -> None:
        self.session = session
        self.limits = limits
        self.settings = settings
        self._pairs = PairRunner(parallel)  # the mirrored crop beside the plain one
        self.name = name
        inp = session.get_inputs()[0]
        self.input_name = inp.name
        shape = list(inp.shape)
        if len(shape) != 4 or shape[1] not in (3, "3"):
            raise ModelError(f"{name}: input {inp.name}{shape} is not N x 3 x H x W")
        h, w = shape[2], shape[3]
        self.size = h if isinstance(h, int) else (w if isinstance(w, int) else 224)
        if isinstance(h, int) and isinstance(w, int) and h != w:
            raise ModelError(f"{name}: input {h}x{w} is not square")
        self.format = detect_output_format(session, output_format)
        kind = self.format.split(":")[0]
        if kind not in ("rotation_matrix", "6d", "matrix9", "euler", "bins"):
            raise ModelError(f"{name}: unknown output format {self.format!r}")
        self.order = _parse_order(self.format.split(":", 1)[1]) if ":" in self.format else None
        outputs = [o.name for o in session.get_outputs()]
        # a rotation is one output; a further one may be a 68-landmark head (read only by
        # estimate_with_landmarks, for tracking)
        self.output_names = outputs if kind in ("euler", "bins") else outputs[:1]
        self.landmark_output: str | None = next(
            (o.name for o in session.get_outputs()
             if o.name == "landmarks" and list(o.shape)[-2:] == [68, 2]), None)
        self.margins = margins if margins is not None else crop_rule_of(session, name)
        self.bin_width_deg = bin_width_deg
        self.bin_start_deg = bin_start_deg

    def preprocess(self, image_bgr: np.ndarray, face: FaceBox) -> np.ndarray:
        crop, _ = face_crop(image_bgr, face.as_list(), self.size, self.margins)
        return to_nchw_imagenet(crop)

    def _run(self, blob: np.ndarray, names: list[str] | None = None) -> list[np.ndarray]:
        return list(self.session.run(names or self.output_names, {self.input_name: blob}))

    def estimate(self, image_bgr: np.ndarray, face: FaceBox) -> HeadPose:
        return self._estimate(self.preprocess(image_bgr, face), self.output_names)[0]

    def estimate_with_landmarks(self, image_bgr: np.ndarray, face: FaceBox, *,
                                flip: bool | None = None) -> tuple[HeadPose, np.ndarray]:
        """:meth:`estimate` and the model's 68 landmarks on the same (plain) crop, in image
        pixels (x, y); ``flip`` overrides ``flip_average`` (with the mirrored crop or not).
        ModelError when the model has no landmark output."""
        if self.landmark_output is None:
            raise ModelError(f"{self.name}: no 68-landmark output to track with")
        crop, A = face_crop(image_bgr, face.as_list(), self.size, self.margins)
        names = [n for n in self.output_names if n != self.landmark_output]
        pose, outs = self._estimate(to_nchw_imagenet(crop), [*names, self.landmark_output],
                                    flip)
        lm = np.asarray(outs[-1], np.float64).reshape(68, 2)
        # the crop is a scale and a shift of the image (crop_transform): undo them
        return pose, (lm - A[:, 2]) / A[0, 0]

    def _estimate(self, blob: np.ndarray, names: list[str], flip: bool | None = None
                  ) -> tuple[HeadPose, list[np.ndarray]]:
        """The pose and the outputs ``names`` of the plain crop (and of the mirrored one
        unless ``flip`` or else ``flip_average`` says no)."""
        if not (self.settings.flip_average if flip is None else flip):
            outs = self._run(blob, names)
            return self.decode(outs), outs
        # the crop is centred on the face, so its mirror image is the mirrored face
        mirrored = np.ascontiguousarray(blob[..., ::-1])
        outs, outs_m = self._pairs.both(lambda: self._run(blob, names),
                                        lambda: self._run(mirrored))
        return self.decode_pair(outs, outs_m), outs

    def decode_pair(self, outs: list[np.ndarray], outs_mirrored: list[np.ndarray]) -> HeadPose:
        """The pose from the outputs on a crop and on its mirror image: the mean of the two
        rotations, confidence from their disagreement (see the module doc)."""
        M = self.matrix(outs)
        M_m = mirrored_matrix(self.matrix(outs_mirrored))
        confidence = flip_confidence(geometry.geodesic_deg(M, M_m), self.settings)
        return self._limited(geometry.mean_rotation(np.stack([M, M_m])), confidence)

    def decode(self, outs: list[np.ndarray]) -> HeadPose:
        """The pose from the outputs on one crop (confidence from the yaw range and the
        plausibility limits only)."""
        return self._limited(self.matrix(outs), 1.0)

    def _limited(self, M: np.ndarray, confidence: float) -> HeadPose:
        pose = pose_from_aflw_matrix(M, confidence)
        pose = replace(pose, confidence=confidence * range_confidence(pose.yaw_deg,
                                                                      self.settings))
        return limit_confidence(pose, self.limits)

    def matrix(self, outs: list[np.ndarray]) -> np.ndarray:
        """The AFLW rotation matrix M the model's outputs encode."""
        kind = self.format.split(":")[0]
        first = np.asarray(outs[0], dtype=np.float64)
        if kind == "rotation_matrix":
            M = geometry.nearest_rotation(first.reshape(-1, 3, 3)[0])
        elif kind == "6d":
            M = geometry.rotation_from_6d(first.reshape(-1, 6)[0])
        elif kind == "matrix9":
            M = geometry.nearest_rotation(first.reshape(-1, 9)[0].reshape(3, 3))
        else:
            assert self.order is not None
            if kind == "euler":
                vals = first.reshape(-1, 3)[0]
            else:
                vals = []
                for out in outs[:3]:
                    p = _softmax(np.asarray(out, np.float64).reshape(1, -1))[0]
                    centres = self.bin_start_deg + self.bin_width_deg * (np.arange(p.size) + 0.5)
                    vals.append(float(p @ centres))
            angles = dict(zip(self.order, (float(v) for v in vals), strict=True))
            M = geometry.aflw_matrix_from_euler(angles["pitch"], angles["yaw"], angles["roll"])
        return np.asarray(M, np.float64)


def create_pose_estimator(
    settings: PoseModelSettings = PoseModelSettings(), runtime: RuntimeSettings = CPU_ONLY
) -> HeadPoseEstimator:
    """A head-pose estimator from a manifest name or an ONNX path."""
    from dms.vision.registry import resolve_model

    path, entry = resolve_model(settings.model, task="head_pose")
    family = entry.family if entry is not None else None
    if family == "facemesh":
        from dms.vision.landmark_pose import LandmarkHeadPose

        return LandmarkHeadPose.from_files(
            path, runtime=runtime, settings=settings.landmarks, name=entry.name,  # type: ignore[union-attr]
            limits=settings.limits,
        )
    session = create_session(path, runtime)
    output = settings.output or (entry.output if entry is not None else "")
    name = entry.name if entry is not None else Path(path).stem
    return CnnHeadPose(session, name=name, output_format=output, limits=settings.limits,
                       settings=settings.cnn, parallel=runtime.parallel_pairs)
