"""A head-pose estimator on a rendered clip against its ground truth.

Every ``stride``-th frame of ``video.mp4`` goes through the detector (the driver's face as
:func:`dms.vision.detect.select_driver` picks it) and the estimator; frame ``k`` is compared
with row ``k`` of ``poses.csv`` (``t,yaw,pitch,roll,face``, AFLW2000 degrees, camera frame).
Errors are absolute differences of Euler angles per axis, over frames where the ground truth
says the face is visible and the estimator returned a pose. ``*_small`` is the same over
frames whose true |yaw| and |pitch| are both within ``SMALL_DEG``.
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from dms.errors import InputError
from dms.vision.detect import FaceDetector, select_driver
from dms.vision.headpose import HeadPoseEstimator

log = logging.getLogger(__name__)

SMALL_DEG = 30.0


@dataclass(frozen=True, slots=True)
class TruthRow:
    t_s: float
    yaw_deg: float
    pitch_deg: float
    roll_deg: float
    face: bool


def read_truth_csv(path: str | Path) -> list[TruthRow]:
    """Rows of a ground-truth poses CSV written by ``dms synth render``."""
    from dms.settings import read_text_file

    p = Path(path)
    text = read_text_file(p, "ground-truth poses", InputError)
    rows = list(csv.reader(text.splitlines()))
    if not rows or [c.strip() for c in rows[0][:5]] != ["t", "yaw", "pitch", "roll", "face"]:
        raise InputError(f"{p}:1: expected the header t,yaw,pitch,roll,face")
    out = []
    for n, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        try:
            t, y, pi, r = (float(v) for v in row[:4])
            face = row[4].strip() == "1"
        except (ValueError, IndexError):
            raise InputError(f"{p}:{n}: expected 5 values t,yaw,pitch,roll,face") from None
        out.append(TruthRow(t, y, pi, r, face))
    return out


@dataclass(frozen=True, slots=True)
class SynthEvalResult:
    """MAE in degrees per axis; ``face_found_rate`` = share of visible-face frames where the
    detector found a face and the estimator gave a pose; ``false_face_rate`` = share of
    no-face frames (face hidden or out of view) where it still gave one."""

    estimator: str
    frames: int
    visible: int
    found: int
    hidden: int
    false_found: int
    yaw_mae: float
    pitch_mae: float
    roll_mae: float
    mean_mae: float
    small_n: int
    yaw_mae_small: float
    pitch_mae_small: float
    roll_mae_small: float
    yaw_bias: float
    pitch_bias: float
    roll_bias: float

    @property
    def face_found_rate(self) -> float:
        return self.found / self.visible if self.visible else math.nan

    @property
    def false_face_rate(self) -> float:
        return self.false_found / self.hidden if self.hidden else math.nan

    def to_dict(self) -> dict[str, object]:
        d: dict[str, object] = {}
        for k, v in asdict(self).items():
            d[k] = round(v, 3) if isinstance(v, float) and math.isfinite(v) else (
                None if isinstance(v, float) else v)
        d["face_found_rate"] = round(self.face_found_rate, 4) if self.visible else None
        d["false_face_rate"] = round(self.false_face_rate, 4) if self.hidden else None
        return d


def _mae(x: np.ndarray) -> float:
    return float(np.mean(np.abs(x))) if len(x) else math.nan


def evaluate_clip(
    video: str | Path,
    poses_csv: str | Path,
    detector: FaceDetector,
    estimator: HeadPoseEstimator,
    *,
    stride: int = 1,
    max_frames: int | None = None,
) -> SynthEvalResult:
    """Run ``detector`` + ``estimator`` over ``video`` and compare with ``poses_csv``."""
    if stride < 1:
        raise InputError(f"stride must be >= 1, got {stride}")
    truth = read_truth_csv(poses_csv)
    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise InputError(f"{video}: cannot open the video")
    errors: list[tuple[float, float, float, bool]] = []
    frames = visible = found = hidden = false_found = 0
    k = 0
    try:
        while True:
            ok, image = cap.read()
            if not ok:
                break
            if max_frames is not None and frames >= max_frames:
                break
            if k >= len(truth):
                raise InputError(f"{video}: more frames than rows in {poses_csv}")
            row = truth[k]
            k += 1
            if (k - 1) % stride:
                continue
            frames += 1
            face = select_driver(detector.detect(image), image.shape)
            pose = estimator.estimate(image, face) if face is not None else None
            if row.face:
                visible += 1
                if pose is not None:
                    found += 1
                    errors.append((pose.yaw_deg - row.yaw_deg, pose.pitch_deg - row.pitch_deg,
                                   pose.roll_deg - row.roll_deg,
                                   abs(row.yaw_deg) <= SMALL_DEG
                                   and abs(row.pitch_deg) <= SMALL_DEG))
            else:
                hidden += 1
                false_found += pose is not None
    finally:
        cap.release()
    if frames == 0:
        raise InputError(f"{video}: no frames could be read")
    e = np.array([x[:3] for x in errors]).reshape(-1, 3)
    small = np.array([x[3] for x in errors], dtype=bool)
    es = e[small]
    maes = [_mae(e[:, i]) for i in range(3)]
    return SynthEvalResult(
        estimator=getattr(estimator, "name", type(estimator).__name__),
        frames=frames, visible=visible, found=found, hidden=hidden, false_found=false_found,
        yaw_mae=maes[0], pitch_mae=maes[1], roll_mae=maes[2],
        mean_mae=float(np.mean(maes)) if len(e) else math.nan,
        small_n=int(small.sum()),
        yaw_mae_small=_mae(es[:, 0]), pitch_mae_small=_mae(es[:, 1]),
        roll_mae_small=_mae(es[:, 2]),
        yaw_bias=float(e[:, 0].mean()) if len(e) else math.nan,
        pitch_bias=float(e[:, 1].mean()) if len(e) else math.nan,
        roll_bias=float(e[:, 2].mean()) if len(e) else math.nan,
    )


def evaluate_dir(directory: str | Path, detector: FaceDetector, estimator: HeadPoseEstimator,
                 *, stride: int = 1, max_frames: int | None = None) -> SynthEvalResult:
    """:func:`evaluate_clip` on ``DIR/video.mp4`` and ``DIR/poses.csv``."""
    d = Path(directory)
    if not d.is_dir():
        raise InputError(f"{d}: not a directory (expected the output of dms synth render)")
    return evaluate_clip(d / "video.mp4", d / "poses.csv", detector, estimator, stride=stride,
                         max_frames=max_frames)
