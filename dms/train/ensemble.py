"""Ensemble pseudo-labels for real face photos: 3DDFA_V2 and the landmark path together.

Two teachers label every photo of a folder of face crops (``../shared/data/faces-aflw``):

* **3DDFA_V2** (``tddfa_mb05``, :mod:`dms.train.tddfa_net`) on its own crop of the face box,
  and on the mirror image of that crop (mirrored back): the mean of the two is its answer,
  their angle its *flip spread*. Its 68 landmarks (from the plain crop, in photo pixels) are
  kept too: the students learn them as a second task, and they give a face box;
* the **landmark path** (FaceMesh + the attention mesh on the mirrored crop + Procrustes, the
  embedded default of dms; :mod:`dms.train.realfaces` labels each photo once and gives the
  face box, the extent of AFLW's 21 landmarks as ``dms eval --boxes gt`` frames a face).

The label is the chordal mean of the two rotations with weights ``1 - w`` and ``w`` (``w`` =
:data:`LANDMARK_WEIGHT`, the landmark path's share). ``w`` was chosen on exact labels, never on
AFLW2000: renders of held-out (``val``) photos lifted to 3-D and turned
(``scripts/choose_ensemble.py``; docs/training.md, "Third round"). Photos the landmark path
could not label take the 3DDFA answer alone.

Rows are JSON lines (one per photo, cached under a key of the inputs):
``image``, ``box``, ``split``, ``M`` (the ensemble's AFLW matrix, row-major), ``tddfa``,
``tddfa_spread_deg``, ``landmark`` (or null), ``landmark_conf``, ``teacher_spread_deg`` (angle
between the two teachers) and ``landmarks68`` (68 x 2, photo pixels).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dms.errors import InputError
from dms.geometry import geodesic_deg, mean_rotation, mirror_rotation
from dms.train.datasets import load_image
from dms.vision.crop import CROP_RULES, face_crop, to_nchw_imagenet

log = logging.getLogger(__name__)

LABELS_VERSION = "1"
LANDMARK_WEIGHT = 0.2  # the landmark path's share of the mean (chosen on renders, module doc)


@dataclass(frozen=True, slots=True)
class TddfaAnswer:
    M: np.ndarray  # flip-averaged AFLW matrix
    spread_deg: float  # angle between the plain and the mirrored reading
    landmarks_px: np.ndarray  # (68, 2) in image pixels, from the plain crop


class TddfaTeacher:
    """``tddfa_mb05`` (or any ONNX with its outputs) on its own crop and the mirrored crop."""

    def __init__(self, model: str | Path, session: Any = None) -> None:
        import onnxruntime as ort

        from dms.vision.headpose import crop_rule_of

        self.path = Path(model)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        self.session = session or ort.InferenceSession(
            str(self.path), sess_options=opts, providers=["CPUExecutionProvider"])
        names = [o.name for o in self.session.get_outputs()]
        if names[:1] != ["rotation_matrix"] or "landmarks" not in names:
            raise InputError(f"{self.path}: expected outputs rotation_matrix and landmarks, "
                             f"got {names}")
        self.size = int(self.session.get_inputs()[0].shape[2])
        self.rule = crop_rule_of(self.session, self.path.name)

    def answer(self, image_bgr: np.ndarray, box: Sequence[float]) -> TddfaAnswer:
        crop, A = face_crop(image_bgr, list(box), self.size, self.rule)
        x = to_nchw_imagenet(crop)
        names = ["rotation_matrix", "landmarks"]
        M, lm = self.session.run(names, {"input": x})
        (Mm,) = self.session.run(names[:1], {"input": np.ascontiguousarray(x[..., ::-1])})
        plain = np.asarray(M[0], np.float64)
        mirrored = mirror_rotation(np.asarray(Mm[0], np.float64))
        pts = np.asarray(lm[0], np.float64)
        # crop pixels -> image pixels (A maps image to crop: a scale and a shift)
        pts = (pts - A[:, 2]) / A[0, 0]
        return TddfaAnswer(mean_rotation(np.stack([plain, mirrored])),
                           float(geodesic_deg(plain, mirrored)), pts)


def labels_key(files: Sequence[str], model: Path, weight: float) -> str:
    h = hashlib.sha256(LABELS_VERSION.encode())
    h.update(model.read_bytes())
    h.update(repr((weight, CROP_RULES["tddfa"])).encode())
    for f in files:
        h.update(f.encode())
    return h.hexdigest()[:16]


def build_ensemble_labels(
    images: str | Path,
    landmark_labels: str | Path,
    out: str | Path,
    *,
    model: str | Path,
    weight: float = LANDMARK_WEIGHT,
    progress: bool = True,
) -> Path:
    """Label every photo of ``images`` into ``out`` (JSON lines) unless it is up to date.
    ``landmark_labels`` is the landmark path's label file (:mod:`dms.train.realfaces`), built
    first when missing."""
    from tqdm import tqdm

    from dms.train import realfaces

    lm_path = realfaces.build_labels(images, landmark_labels, progress=progress)
    lm_rows = {Path(r["image"]).name: r for r in realfaces.read_labels(lm_path)}
    files = realfaces.list_images(images)
    model = Path(model)
    out = Path(out)
    key = labels_key([f.name for f in files], model, weight)
    meta = out.with_name(out.name + ".key")
    if out.is_file() and meta.is_file() and meta.read_text().strip() == key:
        log.info("%s: reusing the ensemble labels", out)
        return out
    teacher = TddfaTeacher(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    with open(tmp, "w", encoding="utf-8") as f:
        for p in tqdm(files, desc="ensemble labels", disable=not progress):
            lm = lm_rows.get(p.name)
            if lm is None:
                continue  # no face box for it (the landmark path found no face)
            img = load_image(str(p))
            a = teacher.answer(img, lm["box"])
            B = np.asarray(lm["teacher"], np.float64).reshape(3, 3)
            M = mean_rotation(np.stack([a.M, B]), np.array([1.0 - weight, weight]))
            row = {
                "image": str(p), "box": lm["box"], "split": lm["split"],
                "M": M.reshape(-1).tolist(), "tddfa": a.M.reshape(-1).tolist(),
                "tddfa_spread_deg": a.spread_deg, "landmark": B.reshape(-1).tolist(),
                "landmark_conf": float(lm["teacher_conf"]),
                "teacher_spread_deg": float(geodesic_deg(a.M, B)),
                "landmarks68": np.round(a.landmarks_px, 2).tolist(),
            }
            f.write(json.dumps(row) + "\n")
    tmp.replace(out)
    meta.write_text(key + "\n")
    return out


def read_ensemble_labels(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such ensemble label file")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
