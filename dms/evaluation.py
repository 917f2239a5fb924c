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
from typing import Any

import numpy as np

from dms.errors import InputError
from dms.images import read_image
from dms.types import FaceBox
from dms.vision.detect import FaceDetector, select_driver
from dms.vision.eyes import EyeMeasurer
from dms.vision.headpose import HeadPoseEstimator
from dms.vision.runtime import CPU_ONLY, RuntimeSettings

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


def face_box(face: LabelledFace, img: np.ndarray, detector: FaceDetector | None
             ) -> FaceBox | None:
    """The box a face is read from: the label's, or with ``detector`` the driver the detector
    picks (None: not found)."""
    if detector is None:
        x1, y1, x2, y2 = face.box
        return FaceBox(x1, y1, x2, y2, score=1.0)
    return select_driver(detector.detect(img), img.shape)


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
        box = face_box(face, img, detector)
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


# ----------------------------------------------------------------- eyes


CLOSED_RATIO = 0.1  # EyeObservation's contract: a closed eye reads below 0.1
EYES_CONFIDENT = 0.5


@dataclass(frozen=True, slots=True)
class EyeStillsResult:
    """Eye openness on still faces whose eyes are (almost all) open in the photo.

    ``closed_rate``: share of the faces with a measured eye whose mean openness reads below
    ``closed_ratio`` (a false "eyes closed" wherever the eyes are open);
    ``closed_rate_confident`` the same over faces read with confidence >= ``EYES_CONFIDENT``
    (what the engine acts on). ``closed_files`` lists the faces read closed, to look at.
    """

    n: int
    measured: int
    confident: int
    closed_ratio: float
    closed: int
    closed_confident: int
    openness_median: float
    openness_p05: float
    closed_files: tuple[str, ...] = ()
    not_found: int = 0  # detector boxes: faces the detector did not find

    @property
    def closed_rate(self) -> float:
        return self.closed / self.measured if self.measured else float("nan")

    @property
    def closed_rate_confident(self) -> float:
        return self.closed_confident / self.confident if self.confident else float("nan")

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {k: getattr(self, k) for k in self.__slots__}  # type: ignore[attr-defined]
        out["closed_files"] = list(self.closed_files)
        return out | {"closed_rate": self.closed_rate,
                      "closed_rate_confident": self.closed_rate_confident}


def evaluate_eyes_stills(faces: Iterable[LabelledFace], estimator: HeadPoseEstimator,
                         measurer: EyeMeasurer, closed_ratio: float = CLOSED_RATIO,
                         progress: bool = True, detector: FaceDetector | None = None,
                         runtime: RuntimeSettings = CPU_ONLY) -> EyeStillsResult:
    """Eye openness on the usable faces (see :class:`EyeStillsResult`), from the labels' boxes
    or, with ``detector``, from the detector's (the pipeline's first ROI; a face it does not
    find is counted in ``not_found``). AFLW2000's box is the extent of the visible labelled
    points: where the brows are not labelled its top sits at the eyes, and a landmark ROI
    from it starts lower than any detector box.

    Landmarks come from the estimator when it has them (FaceMesh), or from the pipeline's
    one landmark pass in front of a CNN (:func:`dms.perception.with_landmark_pass`); with the
    attention mesh its refined eyes are read as in the pipeline."""
    from tqdm import tqdm

    from dms.perception import with_landmark_pass
    from dms.vision.settings import TrackingSettings

    # a CNN reads the face through the one landmark pass, as in the pipeline
    estimator = with_landmark_pass(estimator, TrackingSettings(), runtime)
    usable = [f for f in faces if f.usable]
    values, confs, closed_files = [], [], []
    not_found = 0
    for face in tqdm(usable, desc="eyes", unit="img", disable=not progress, leave=False):
        img = read_image(face.image_path)
        box = face_box(face, img, detector)
        if box is None:
            not_found += 1
            continue
        with_lm = getattr(estimator, "estimate_with_landmarks", None)
        if with_lm is not None:
            pose, lm = with_lm(img, box)
            eyes = measurer.measure(img, pose, lm.points_px, box, eyes_px=lm.eyes_px,
                                    irises_px=lm.irises_px)
        else:
            pose = estimator.estimate(img, box)
            eyes = None if pose is None else measurer.measure(img, pose, None, box)
        if eyes is None or eyes.openness is None:
            continue
        values.append(eyes.openness)
        confs.append(eyes.confidence)
        if eyes.openness < closed_ratio:
            closed_files.append(face.image_path.name)
    v, c = np.asarray(values, np.float64), np.asarray(confs, np.float64)
    sure = c >= EYES_CONFIDENT
    return EyeStillsResult(
        n=len(usable), measured=len(v), confident=int(sure.sum()), closed_ratio=closed_ratio,
        closed=int((v < closed_ratio).sum()), closed_confident=int((v[sure] < closed_ratio).sum()),
        openness_median=float(np.median(v)) if len(v) else float("nan"),
        openness_p05=float(np.percentile(v, 5)) if len(v) else float("nan"),
        closed_files=tuple(closed_files), not_found=not_found,
    )


@dataclass(frozen=True, slots=True)
class EyeTruthRow:
    t_s: float
    face: bool
    eye_open: float
    gaze_yaw_deg: float
    gaze_pitch_deg: float
    mouth_open: float


EYE_TRUTH_COLUMNS = ("t", "yaw", "pitch", "roll", "face", "eye_open", "gaze_yaw_deg",
                     "gaze_pitch_deg", "mouth_open")


def read_eye_truth(path: str | Path) -> list[EyeTruthRow]:
    """The eye columns of a ``dms synth render`` ground truth (``poses.csv``)."""
    import csv

    from dms.settings import read_text_file

    p = Path(path)
    rows = list(csv.reader(read_text_file(p, "ground-truth poses", InputError).splitlines()))
    if not rows or tuple(c.strip() for c in rows[0][:len(EYE_TRUTH_COLUMNS)]) != EYE_TRUTH_COLUMNS:
        raise InputError(f"{p}:1: expected the header {','.join(EYE_TRUTH_COLUMNS)} "
                         "(a render with eye ground truth)")
    out = []
    for n, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        try:
            out.append(EyeTruthRow(float(row[0]), row[4].strip() == "1", float(row[5]),
                                   float(row[6]), float(row[7]), float(row[8])))
        except (ValueError, IndexError):
            raise InputError(f"{p}:{n}: expected {len(EYE_TRUTH_COLUMNS)} values") from None
    return out


OPEN_TRUTH = 0.8  # eye_open at or above this is an open eye for the accuracy
CLOSED_TRUTH = 0.2  # at or below: a closed eye
CLOSED_FRACTION = 0.5  # read closed: openness below this fraction of the clip's open baseline


@dataclass(frozen=True, slots=True)
class EyeRenderResult:
    """Eye measurement on a rendered clip against its truth (frames with a face).

    ``open_baseline``: the median openness read on frames whose truth is fully open (the
    engine learns the same per driver); ``openness_mae``: mean |openness / baseline -
    eye_open| (a fraction of the open eye); ``accuracy``: closed/open right over frames whose
    truth is clearly closed (<= CLOSED_TRUTH) or open (>= OPEN_TRUTH), read closed below
    ``CLOSED_FRACTION`` x baseline; ``gaze_*_mae_deg`` over open-eyed frames where a gaze
    was read (``gaze_*_bias_deg`` its mean signed error); ``mouth_mae``: |mouth_open -
    truth| in the measurement's own units is not comparable, so the correlation is given."""

    frames: int
    measured: int
    open_baseline: float
    openness_mae: float
    n_open: int
    n_closed: int
    accuracy: float
    open_read_closed: int
    closed_read_open: int
    gaze_n: int
    gaze_yaw_mae_deg: float
    gaze_pitch_mae_deg: float
    gaze_yaw_bias_deg: float
    gaze_pitch_bias_deg: float
    mouth_corr: float
    confidence_median: float

    def as_dict(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in self.__slots__}  # type: ignore[attr-defined]


def evaluate_eyes_render(directory: str | Path, perception: Any, progress: bool = True
                         ) -> EyeRenderResult:
    """Run the per-frame perception over ``DIR/video.mp4`` (tracking, as the product) and
    compare its eyes with ``DIR/poses.csv``."""
    from tqdm import tqdm

    from dms.capture import as_bgr, video_frames

    d = Path(directory)
    video, truth_csv = d / "video.mp4", d / "poses.csv"
    if not video.is_file() or not truth_csv.is_file():
        raise InputError(f"{d}: expected a render folder with video.mp4 and poses.csv")
    truth = read_eye_truth(truth_csv)
    reads: list[tuple[EyeTruthRow, Any]] = []
    for k, frame in enumerate(tqdm(video_frames(str(video)), total=len(truth), desc="eyes",
                                   disable=not progress, leave=False)):
        if k >= len(truth):
            break
        img, _ = as_bgr(frame.image)
        if img is None:
            continue
        fr = perception.process(img, truth[k].t_s)
        if truth[k].face:
            reads.append((truth[k], fr.eyes))
    seen = [(t, e) for t, e in reads if e is not None and e.openness is not None]
    opn = np.array([e.openness for _, e in seen]) if seen else np.zeros(0)
    tru = np.array([t.eye_open for t, _ in seen]) if seen else np.zeros(0)
    base = float(np.median(opn[tru >= OPEN_TRUTH])) if (tru >= OPEN_TRUTH).any() else float("nan")
    norm = opn / base
    is_open, is_closed = tru >= OPEN_TRUTH, tru <= CLOSED_TRUTH
    read_closed = norm < CLOSED_FRACTION
    right = (is_open & ~read_closed).sum() + (is_closed & read_closed).sum()
    graded = int(is_open.sum() + is_closed.sum())
    gz = [(t, e) for t, e in seen if t.eye_open >= OPEN_TRUTH and e.gaze_yaw_deg is not None]
    dy = np.array([e.gaze_yaw_deg - t.gaze_yaw_deg for t, e in gz]) if gz else np.zeros(0)
    dp = np.array([e.gaze_pitch_deg - t.gaze_pitch_deg for t, e in gz]) if gz else np.zeros(0)
    mo = [(t.mouth_open, e.mouth_open) for t, e in reads
          if e is not None and e.mouth_open is not None]
    m = np.asarray(mo, np.float64).reshape(-1, 2)
    corr = (float(np.corrcoef(m[:, 0], m[:, 1])[0, 1])
            if len(m) > 2 and m[:, 0].std() > 0 and m[:, 1].std() > 0 else float("nan"))

    def mean(a: np.ndarray) -> float:
        return float(a.mean()) if len(a) else float("nan")

    return EyeRenderResult(
        frames=len(reads), measured=len(seen), open_baseline=base,
        openness_mae=mean(np.abs(norm - tru)), n_open=int(is_open.sum()),
        n_closed=int(is_closed.sum()), accuracy=float(right / graded) if graded else float("nan"),
        open_read_closed=int((is_open & read_closed).sum()),
        closed_read_open=int((is_closed & ~read_closed).sum()),
        gaze_n=len(gz), gaze_yaw_mae_deg=mean(np.abs(dy)), gaze_pitch_mae_deg=mean(np.abs(dp)),
        gaze_yaw_bias_deg=mean(dy), gaze_pitch_bias_deg=mean(dp), mouth_corr=corr,
        confidence_median=float(np.median([e.confidence for _, e in reads if e is not None]))
        if any(e is not None for _, e in reads) else float("nan"),
    )
