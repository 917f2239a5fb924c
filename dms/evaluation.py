"""Head-pose accuracy on labelled faces (AFLW2000-3D format).

Protocol (the one published numbers use): AFLW2000 ``.jpg`` + ``.mat`` pairs, ground truth
``Pose_Para[0][:3]`` = pitch, yaw, roll in radians; samples with any |angle| > 99 deg are
skipped; the error per axis is the absolute difference of Euler angles in degrees. The face
box for ``--boxes gt`` is the extent of the ``pt2d`` landmarks. ``yaw_mae_large`` is the yaw
MAE over evaluated faces with |yaw| > 45 deg (where off-road glances live).

Every face that gets a pose counts in the MAE. Poses the estimator itself flags as uncertain
(confidence < ``CONFIDENT``; FaceMesh does so on near-profile faces) are also counted in
``low_confidence``, and ``mean_mae_confident`` is the mean MAE without them - the figure
comparable with pipelines that drop such faces as "not found".

``bins`` breaks the MAE down by the ground-truth |yaw| (``YAW_BINS_DEG``: 0-30, 30-60,
60-99 deg, lower edge included): the overall mean is dominated by near-frontal faces, while
off-road glances live at 30-90 deg.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dms.errors import InputError
from dms.images import read_image
from dms.types import FaceBox
from dms.vision.detect import FaceDetector, select_driver
from dms.vision.headpose import HeadPoseEstimator

log = logging.getLogger(__name__)

MAX_ABS_ANGLE_DEG = 99.0
LARGE_YAW_DEG = 45.0
CONFIDENT = 0.5
YAW_BINS_DEG: tuple[tuple[float, float], ...] = ((0.0, 30.0), (30.0, 60.0), (60.0, 99.0))


@dataclass(frozen=True, slots=True)
class LabelledFace:
    image_path: Path
    pitch_deg: float
    yaw_deg: float
    roll_deg: float
    box: tuple[float, float, float, float]

    @property
    def usable(self) -> bool:
        angles = (self.pitch_deg, self.yaw_deg, self.roll_deg)
        return all(abs(a) <= MAX_ABS_ANGLE_DEG for a in angles)


def read_aflw2000(directory: str | Path) -> list[LabelledFace]:
    """All labelled faces in an AFLW2000-format directory (usable or not), sorted by name."""
    import scipy.io

    d = Path(directory)
    if not d.is_dir():
        raise InputError(f"{d}: not a directory")
    mats = sorted(d.glob("*.mat"))
    if not mats:
        raise InputError(f"{d}: no AFLW2000 labels (*.mat files) found")
    faces = []
    for mat in mats:
        jpg = mat.with_suffix(".jpg")
        if not jpg.is_file():
            raise InputError(f"{mat}: no image {jpg.name} beside it")
        try:
            m = scipy.io.loadmat(str(mat))
            pitch, yaw, roll = np.rad2deg(np.asarray(m["Pose_Para"]).ravel()[:3])
            pts = np.asarray(m["pt2d"], dtype=np.float64)
        except (KeyError, ValueError, OSError) as exc:
            raise InputError(f"{mat}: not an AFLW2000 label file ({exc})") from None
        pts = pts[:, (pts[0] > 0) & (pts[1] > 0)] if pts.shape[0] == 2 else pts.T
        box = (float(pts[0].min()), float(pts[1].min()), float(pts[0].max()), float(pts[1].max()))
        faces.append(LabelledFace(jpg, float(pitch), float(yaw), float(roll), box))
    return faces


@dataclass(frozen=True, slots=True)
class BinResult:
    """MAE over the evaluated faces whose ground-truth |yaw| is in [lo_deg, hi_deg)."""

    lo_deg: float
    hi_deg: float
    n: int
    pitch_mae: float
    yaw_mae: float
    roll_mae: float
    mean_mae: float

    @property
    def label(self) -> str:
        return f"{self.lo_deg:g}-{self.hi_deg:g}"

    def as_dict(self) -> dict[str, float | int | str]:
        return {"bin": self.label} | {k: getattr(self, k) for k in self.__slots__}  # type: ignore[attr-defined]


def yaw_bins(
    errors_deg: np.ndarray,
    gt_yaw_deg: np.ndarray,
    edges: tuple[tuple[float, float], ...] = YAW_BINS_DEG,
) -> tuple[BinResult, ...]:
    """Per-|yaw|-bin MAE of ``errors_deg`` (N x 3 absolute pitch/yaw/roll errors).

    A face belongs to the bin with ``lo <= |yaw| < hi``; the last bin also takes ``|yaw| ==
    hi`` (99 deg is the protocol's own limit). Empty bins report NaN with n = 0.
    """
    err = np.asarray(errors_deg, dtype=np.float64).reshape(-1, 3)
    ay = np.abs(np.asarray(gt_yaw_deg, dtype=np.float64).reshape(-1))
    if len(ay) != len(err):
        raise ValueError(f"{len(err)} error rows but {len(ay)} yaw labels")
    out = []
    for i, (lo, hi) in enumerate(edges):
        last = i == len(edges) - 1
        sel = (ay >= lo) & ((ay <= hi) if last else (ay < hi))
        mae = err[sel].mean(axis=0) if sel.any() else np.full(3, np.nan)
        out.append(BinResult(lo, hi, int(sel.sum()), float(mae[0]), float(mae[1]),
                             float(mae[2]), float(mae.mean())))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class EvalResult:
    n: int
    not_found: int
    pitch_mae: float
    yaw_mae: float
    roll_mae: float
    mean_mae: float
    yaw_mae_large: float
    n_large: int
    skipped: int
    low_confidence: int
    mean_mae_confident: float
    bins: tuple[BinResult, ...] = ()

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            k: getattr(self, k) for k in self.__slots__ if k != "bins"  # type: ignore[attr-defined]
        }
        out["bins"] = [b.as_dict() for b in self.bins]
        return out


def evaluate(
    faces: Iterable[LabelledFace],
    estimator: HeadPoseEstimator,
    detector: FaceDetector | None = None,
    progress: bool = True,
) -> EvalResult:
    """MAE of ``estimator`` on the usable faces; ``detector`` None means ground-truth boxes."""
    from tqdm import tqdm

    all_faces = list(faces)
    usable = [f for f in all_faces if f.usable]
    errors = []
    gt_yaw = []
    confident = []
    not_found = 0
    for face in tqdm(usable, desc="eval", unit="img", disable=not progress, leave=False):
        img = read_image(face.image_path)
        if detector is None:
            x1, y1, x2, y2 = face.box
            box: FaceBox | None = FaceBox(x1, y1, x2, y2, score=1.0)
        else:
            box = select_driver(detector.detect(img), img.shape)
        pose = estimator.estimate(img, box) if box is not None else None
        if pose is None:
            not_found += 1
            continue
        errors.append(
            [
                abs(pose.pitch_deg - face.pitch_deg),
                abs(pose.yaw_deg - face.yaw_deg),
                abs(pose.roll_deg - face.roll_deg),
            ]
        )
        gt_yaw.append(face.yaw_deg)
        confident.append(pose.confidence >= CONFIDENT)
    err = np.asarray(errors, dtype=np.float64).reshape(-1, 3)
    large = np.abs(np.asarray(gt_yaw)) > LARGE_YAW_DEG
    mae = err.mean(axis=0) if len(err) else np.full(3, np.nan)
    return EvalResult(
        n=len(usable),
        not_found=not_found,
        pitch_mae=float(mae[0]),
        yaw_mae=float(mae[1]),
        roll_mae=float(mae[2]),
        mean_mae=float(mae.mean()),
        yaw_mae_large=float(err[large, 1].mean()) if large.any() else float("nan"),
        n_large=int(large.sum()),
        skipped=len(all_faces) - len(usable),
        low_confidence=int(len(confident) - sum(confident)),
        mean_mae_confident=float(err[np.asarray(confident, bool)].mean())
        if any(confident)
        else float("nan"),
        bins=yaw_bins(err, np.asarray(gt_yaw, dtype=np.float64)),
    )
