"""Real unlabelled face photos as training data: landmark-teacher pseudo-labels and the
near-frontal photos that are lifted and rendered turned ("face profiling").

The folder holds face crops (e.g. ``../shared/data/faces-aflw``: 120 x 120, the face filling
about 100 px). For each photo the embedded landmark teacher
(:class:`dms.vision.landmark_pose.LandmarkHeadPose`: FaceMesh, flip-averaged, Procrustes, with
the shipped settings) is run from a box of ``face_fraction`` of the crop; its landmarks give

* the **face box the evaluation uses**: the extent of AFLW's 21 landmarks as FaceMesh points
  (:data:`dms.vision.facemesh.AFLW21_FACEMESH_IDS`, ear lobes pushed out and down from the
  cheek contour as the renderer does in 3-D), so the training crop frames a real face the way
  ``dms eval --boxes gt`` frames an AFLW2000 face;
* the **pseudo-label**: the teacher's rotation (AFLW matrix ``M``) with FaceMesh's presence as
  the confidence, and the spread between the fit on the photo and on its mirror image.

Rows are JSON lines in the format of :func:`dms.train.datasets.write_pseudo` plus ``spread_deg``
and ``split``. The split is by file name hash (``holdout_mod``): one photo in ``holdout_mod``
goes to ``val``, the rest to ``train`` (no identity labels exist, so the same person may be
on both sides). The file is built once and reused while its key (file list, teacher settings,
this module) is unchanged.

The teacher is reliable only on near-frontal faces (docs/training.md): sources filter on the
teacher's own angles (``max_teacher_deg``) and confidence.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dms.errors import InputError
from dms.train.datasets import IMAGE_SUFFIXES, FaceRecord, load_image

log = logging.getLogger(__name__)

LABELS_VERSION = "1"


def list_images(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: not a directory of face images")
    files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def split_of(name: str, holdout_mod: int = 10) -> str:
    """``val`` for one name in ``holdout_mod`` (stable hash of the file name), else ``train``."""
    return "val" if zlib.crc32(name.encode()) % holdout_mod == 0 else "train"


def aflw_box_from_landmarks(points_px: np.ndarray) -> tuple[float, float, float, float]:
    """Extent of AFLW's 21 landmarks taken as FaceMesh points (2-D, all visible): the
    runtime's :func:`dms.vision.facemesh.aflw_box`, as a tuple."""
    from dms.vision.facemesh import aflw_box

    return tuple(aflw_box(points_px).as_list())  # type: ignore[return-value]


def _teacher() -> object:
    from dms.paths import models_dir
    from dms.vision.landmark_pose import LandmarkHeadPose
    from dms.vision.runtime import RuntimeSettings

    return LandmarkHeadPose.from_files(
        models_dir() / "face_landmark.onnx",
        runtime=RuntimeSettings(providers=("cpu",), intra_op_threads=1, inter_op_threads=1),
    )


def labels_key(files: Sequence[Path], face_fraction: float, holdout_mod: int) -> str:
    from dms.vision.landmark_pose import LandmarkPoseSettings

    h = hashlib.sha256(LABELS_VERSION.encode())  # bump LABELS_VERSION when label_one changes
    h.update(repr((LandmarkPoseSettings(), face_fraction, holdout_mod)).encode())
    for f in files:
        h.update(f.name.encode())
    return h.hexdigest()[:16]


def label_one(teacher: object, path: Path, face_fraction: float = 0.85) -> dict:
    """One pseudo-label row for a face crop (see the module doc)."""
    from dms import geometry
    from dms.types import FaceBox

    img = load_image(str(path))
    h, w = img.shape[:2]
    side = face_fraction * min(h, w)
    box0 = FaceBox((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2, score=1.0)
    pose, lm = teacher.estimate_with_landmarks(img, box0)  # type: ignore[attr-defined]
    # flip spread: the fit on the photo against the fit on its mirror image
    R = teacher.rotation_from_landmarks(lm.points_px)  # type: ignore[attr-defined]
    spread = 2.0 * float(geometry.geodesic_deg(R, pose.rotation))
    M = np.asarray(pose.rotation, np.float64).T
    return {
        "image": str(path),
        "box": list(aflw_box_from_landmarks(lm.points_px)),
        "teacher": M.reshape(-1).tolist(),
        "teacher_conf": float(pose.confidence),
        "pitch_yaw_roll_deg": [float(pose.pitch_deg), float(pose.yaw_deg), float(pose.roll_deg)],
        "spread_deg": spread,
    }


def build_labels(
    images: str | Path,
    path: str | Path,
    *,
    face_fraction: float = 0.85,
    holdout_mod: int = 10,
    limit: int = 0,
    progress: bool = True,
) -> Path:
    """Pseudo-label every image of ``images`` into ``path`` (JSON lines) unless up to date."""
    from tqdm import tqdm

    files = list_images(images)
    if limit:
        files = files[:limit]
    path = Path(path)
    key = labels_key(files, face_fraction, holdout_mod)
    meta = path.with_name(path.name + ".key")
    if path.is_file() and meta.is_file() and meta.read_text().strip() == key:
        log.info("%s: reusing %d pseudo-labels", path, len(files))
        return path
    teacher = _teacher()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "w", encoding="utf-8") as f:
        for p in tqdm(files, desc="pseudo-label", disable=not progress):
            try:
                row = label_one(teacher, p, face_fraction)
            except InputError as exc:
                log.warning("%s", exc)
                continue
            row["split"] = split_of(p.name, holdout_mod)
            f.write(json.dumps(row) + "\n")
    tmp.replace(path)
    meta.write_text(key + "\n")
    return path


def read_labels(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such pseudo-label file")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def select(
    rows: Sequence[dict],
    *,
    split: str = "train",
    min_conf: float = 0.0,
    max_teacher_deg: tuple[float, float, float] = (90.0, 90.0, 90.0),
    max_spread_deg: float = 180.0,
) -> list[dict]:
    """Rows of ``split`` (``all`` for both) whose teacher is confident and within range."""
    out = []
    for r in rows:
        if split != "all" and r.get("split", "train") != split:
            continue
        angles = np.abs(np.asarray(r["pitch_yaw_roll_deg"], float))
        if r["teacher_conf"] < min_conf or r.get("spread_deg", 0.0) > max_spread_deg:
            continue
        if np.any(angles > np.asarray(max_teacher_deg, float)):
            continue
        out.append(r)
    return out


def records(rows: Sequence[dict], source: str = "realfaces", teacher_as_gt: bool = False
            ) -> list[FaceRecord]:
    """Training records with the teacher as a soft target (no ground truth); with
    ``teacher_as_gt`` the teacher is put in ``gt`` instead (held-out agreement figures)."""
    out = []
    for r in rows:
        M = np.asarray(r["teacher"], np.float64).reshape(3, 3)
        out.append(FaceRecord(
            r["image"],
            tuple(float(v) for v in r["box"]),  # type: ignore[arg-type]
            gt=M if teacher_as_gt else None,
            teacher=None if teacher_as_gt else M,
            teacher_conf=0.0 if teacher_as_gt else float(r["teacher_conf"]),
            source=source,
        ))
    return out
