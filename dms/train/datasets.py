"""Training and evaluation data: readers that turn datasets into face records, a synthetic
head renderer, and the torch dataset that crops exactly like inference.

A :class:`FaceRecord` is one face: an image (path or array), its face box in image pixels and
up to two labels, all as AFLW matrices ``M`` (see :mod:`dms.geometry`): ground truth ``gt`` and
a teacher soft target ``teacher`` with its confidence. :class:`FaceDataset` crops with
:func:`dms.vision.crop.face_crop` (test margins for evaluation, random side margins in
[0.2, 0.4] for training), augments (:mod:`dms.train.augment`) and normalises with
:func:`dms.vision.crop.to_nchw_imagenet`, the runtime's pre-processing.

Readers:

* :func:`read_aflw` - AFLW2000-3D and 300W-LP (``.jpg`` + ``.mat`` with ``Pose_Para`` and
  ``pt2d``; the face box is the landmarks' bounding box). Faces with an angle beyond 99 deg are
  dropped, as in the published protocol. AFLW2000 is for evaluation only.
* :func:`read_biwi` - BIWI Kinect Head Pose (``frame_*_rgb.png`` + ``frame_*_pose.txt``).
* :func:`read_folder` - unlabelled face images (boxes from a ``boxes.json`` sidecar, or each
  image taken as a face crop made with the test margins).
* :func:`read_pseudo` - a JSON-lines file of pseudo-labels written by
  :func:`dms.train.teachers.pseudolabel`.
* :class:`SyntheticHeads` - faces rendered at known rotations (see its doc).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from dms.errors import InputError
from dms.geometry import aflw_matrix_from_euler, euler_from_aflw_matrix
from dms.train.augment import NO_AUGMENT, AugmentSettings, augment
from dms.vision.crop import TEST_MARGINS, CropMargins, face_crop, to_nchw_imagenet

log = logging.getLogger(__name__)

Box = tuple[float, float, float, float]
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
MAX_ABS_DEG = 99.0


@dataclass(frozen=True, slots=True)
class FaceRecord:
    """One face. ``image`` is a file path or a BGR uint8 array."""

    image: str | np.ndarray = field(compare=False)
    box: Box
    gt: np.ndarray | None = field(default=None, compare=False)
    teacher: np.ndarray | None = field(default=None, compare=False)
    teacher_conf: float = 0.0
    source: str = ""


def load_image(image: str | np.ndarray) -> np.ndarray:
    if isinstance(image, np.ndarray):
        return image
    img = cv2.imread(str(image), cv2.IMREAD_COLOR)
    if img is None:
        raise InputError(f"{image}: not a readable image")
    return img


# ----------------------------------------------------------------------------- readers


def read_aflw_mat(mat_path: str | Path) -> tuple[np.ndarray, Box, tuple[float, float, float]]:
    """(M, box, (pitch, yaw, roll) deg) from one AFLW2000 / 300W-LP ``.mat`` file."""
    from scipy.io import loadmat

    try:
        mat = loadmat(str(mat_path))
        pitch, yaw, roll = (float(np.rad2deg(v)) for v in mat["Pose_Para"][0][:3])
        pts = np.asarray(mat["pt2d"], dtype=np.float64)
    except (OSError, KeyError, ValueError) as exc:
        msg = f"{mat_path}: not an AFLW/300W-LP .mat with Pose_Para and pt2d ({exc})"
        raise InputError(msg) from None
    if pts.shape[0] != 2:
        pts = pts.T
    pts = pts[:, np.all(pts > 0, axis=0)]  # AFLW2000 marks missing points with -1
    if pts.shape[1] < 2:
        raise InputError(f"{mat_path}: pt2d has no usable landmarks")
    box = (float(pts[0].min()), float(pts[1].min()), float(pts[0].max()), float(pts[1].max()))
    return aflw_matrix_from_euler(pitch, yaw, roll), box, (pitch, yaw, roll)


def read_aflw(
    root: str | Path, max_abs_deg: float = MAX_ABS_DEG, limit: int = 0
) -> list[FaceRecord]:
    """Records for every ``*.mat`` with a sibling ``.jpg`` under ``root`` (recursive)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: not a directory (expected AFLW2000 / 300W-LP .jpg + .mat)")
    out = []
    skipped = 0
    for mat in sorted(root.rglob("*.mat")):
        jpg = mat.with_suffix(".jpg")
        if not jpg.is_file():
            continue
        M, box, angles = read_aflw_mat(mat)
        if max(abs(a) for a in angles) > max_abs_deg:
            skipped += 1
            continue
        out.append(FaceRecord(str(jpg), box, gt=M, source=f"aflw:{root.name}"))
        if limit and len(out) >= limit:
            break
    if not out:
        raise InputError(f"{root}: no .jpg + .mat pairs found")
    log.info("%s: %d faces (%d beyond %.0f deg skipped)", root, len(out), skipped, max_abs_deg)
    return out


def biwi_matrix(pose_rows: np.ndarray) -> np.ndarray:
    """AFLW ``M`` from the 3x3 matrix of a BIWI ``frame_*_pose.txt``.

    Follows the Euler extraction of the public BIWI loaders (Hopenet / 6DRepNet): with
    ``P = rows.T``, pitch = atan2(P21, P22), yaw = -atan2(-P20, hypot(P21, P22)),
    roll = -atan2(P10, P00). (No BIWI data is available offline to re-verify the signs.)
    """
    P = np.asarray(pose_rows, dtype=np.float64).reshape(3, 3).T
    pitch = np.rad2deg(np.arctan2(P[2, 1], P[2, 2]))
    yaw = -np.rad2deg(np.arctan2(-P[2, 0], np.hypot(P[2, 1], P[2, 2])))
    roll = -np.rad2deg(np.arctan2(P[1, 0], P[0, 0]))
    return aflw_matrix_from_euler(float(pitch), float(yaw), float(roll))


def read_biwi(
    root: str | Path, face_half_size_mm: float = 80.0, limit: int = 0
) -> list[FaceRecord]:
    """BIWI Kinect Head Pose: ``NN/frame_XXXXX_rgb.png`` + ``_pose.txt``, ``NN/rgb.cal``.

    The pose file holds the 3x3 head rotation and the head centre (mm, depth camera). The
    face box is the head centre projected into the RGB camera (``rgb.cal``: intrinsics,
    distortion, R, T) with a half side of ``face_half_size_mm``. A ``boxes.json`` in ``root``
    (``{"NN/frame_XXXXX_rgb.png": [x1, y1, x2, y2]}``, e.g. from a detector) overrides that.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: not a directory (expected BIWI NN/frame_*_rgb.png)")
    sidecar = root / "boxes.json"
    boxes = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    out = []
    for pose_file in sorted(root.rglob("frame_*_pose.txt")):
        img = pose_file.with_name(pose_file.name.replace("_pose.txt", "_rgb.png"))
        if not img.is_file():
            continue
        vals = np.loadtxt(pose_file).reshape(-1)
        M = biwi_matrix(vals[:9])
        key = str(img.relative_to(root))
        if key in boxes:
            box = tuple(float(v) for v in boxes[key])
        else:
            cal = np.array(pose_file.parent.joinpath("rgb.cal").read_text().split(), float)
            K, Rc, Tc = cal[:9].reshape(3, 3), cal[13:22].reshape(3, 3), cal[22:25]
            c = Rc @ vals[9:12] + Tc
            u, v = K[0, 0] * c[0] / c[2] + K[0, 2], K[1, 1] * c[1] / c[2] + K[1, 2]
            half = K[0, 0] * face_half_size_mm / c[2]
            box = (u - half, v - half, u + half, v + half)
        out.append(FaceRecord(str(img), box, gt=M, source="biwi"))  # type: ignore[arg-type]
        if limit and len(out) >= limit:
            break
    if not out:
        raise InputError(f"{root}: no BIWI frame_*_pose.txt with a matching _rgb.png")
    return out


def box_for_crop_image(width: int, height: int, margins: CropMargins = TEST_MARGINS) -> Box:
    """The square face box whose test-margin crop is the whole (square) image."""
    side = float(min(width, height))
    w = side / max(1.0 + margins.left + margins.right, 1.0 + margins.top + margins.bottom)
    cx = width / 2.0
    # crop centre y = box centre y + (bottom - top) * h / 2
    cy = height / 2.0 - (margins.bottom - margins.top) * w / 2.0
    return (cx - w / 2.0, cy - w / 2.0, cx + w / 2.0, cy + w / 2.0)


def read_folder(root: str | Path, limit: int = 0) -> list[FaceRecord]:
    """Unlabelled faces. ``boxes.json`` (``{"file.jpg": [x1, y1, x2, y2]}``) gives boxes; images
    without an entry are taken as face crops made with the test margins."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: not a directory of face images")
    sidecar = root / "boxes.json"
    boxes = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    out = []
    for p in sorted(root.rglob("*")):
        if p.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        key = str(p.relative_to(root))
        if key in boxes:
            box = tuple(float(v) for v in boxes[key])
        else:
            h, w = load_image(str(p)).shape[:2]
            box = box_for_crop_image(w, h)
        out.append(FaceRecord(str(p), box, source=f"folder:{root.name}"))  # type: ignore[arg-type]
        if limit and len(out) >= limit:
            break
    if not out:
        raise InputError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return out


def write_pseudo(path: str | Path, records: Sequence[FaceRecord]) -> None:
    """JSON lines: image path, box, teacher M (row-major), confidence, gt M when known."""
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            if not isinstance(r.image, str):
                raise InputError("pseudo-labels can only be written for images on disk")
            row = {"image": r.image, "box": list(r.box), "teacher_conf": r.teacher_conf}
            if r.teacher is not None:
                row["teacher"] = np.asarray(r.teacher).reshape(-1).tolist()
                row["pitch_yaw_roll_deg"] = list(euler_from_aflw_matrix(r.teacher))
            if r.gt is not None:
                row["gt"] = np.asarray(r.gt).reshape(-1).tolist()
            f.write(json.dumps(row) + "\n")


def read_pseudo(path: str | Path, min_conf: float = 0.0, limit: int = 0) -> list[FaceRecord]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such pseudo-label file")
    out = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            teacher = np.array(row["teacher"], float).reshape(3, 3) if "teacher" in row else None
            gt = np.array(row["gt"], float).reshape(3, 3) if "gt" in row else None
            x1, y1, x2, y2 = (float(v) for v in row["box"])
            conf = float(row.get("teacher_conf", 0.0))
            rec = FaceRecord(row["image"], (x1, y1, x2, y2), gt, teacher, conf,
                             f"pseudo:{path.name}")
        except (KeyError, ValueError, TypeError) as exc:
            raise InputError(f"{path}:{n}: not a pseudo-label row ({exc})") from None
        if rec.gt is None and rec.teacher_conf < min_conf:
            continue
        out.append(rec)
        if limit and len(out) >= limit:
            break
    if not out:
        raise InputError(f"{path}: no pseudo-labels (at confidence >= {min_conf})")
    return out


# ----------------------------------------------------------------------------- synthetic


def astronaut_texture() -> tuple[np.ndarray, Box]:
    """scikit-image's public-domain astronaut photo (Eileen Collins) and her face box.

    The box was found once with SCRFD; she faces the camera within a few degrees, which is
    the label noise this texture brings.
    """
    from dms.paths import load_photo

    img = load_photo("astronaut")
    return img, (180.0, 57.0, 271.0, 177.0)


class SyntheticHeads:
    """Faces rendered at known rotations: a frontal face photo mapped onto a 3-D head.

    The head is an ellipsoid with a nose, in head coordinates (x right in the image of the
    frontal face, y up, z toward the camera); the photo is projected onto its front
    orthographically (the face box spans x in [-0.7, 0.7]). A rotation ``R = M.T`` is drawn
    (yaw, pitch, roll uniform in the configured ranges), the head is ray-marched under
    orthographic projection with Lambert shading and a random light, over a random
    background. The face box is the box of the face points that face the camera, as a
    detector would see them. This is "face profiling" with a generic head instead of a fitted
    3-D face; with the FaceMesh landmark model a per-face depth replaces the generic one
    (docs/training.md, next steps).

    ``render(i)`` is deterministic in (seed, i).
    """

    def __init__(
        self,
        textures: Sequence[tuple[np.ndarray, Box]] | None = None,
        canvas_px: int = 160,
        yaw_range_deg: tuple[float, float] = (-90.0, 90.0),
        pitch_range_deg: tuple[float, float] = (-50.0, 40.0),
        roll_range_deg: tuple[float, float] = (-40.0, 40.0),
        seed: int = 0,
    ) -> None:
        self.textures = list(textures) if textures else [astronaut_texture()]
        self.canvas_px = canvas_px
        self.ranges = (pitch_range_deg, yaw_range_deg, roll_range_deg)
        self.seed = seed
        # head shape (face-box half-width = 0.7)
        self.axes = np.array([0.85, 1.25, 0.95])
        self.center_y = 0.2
        self.nose = (0.0, -0.15, 0.28, 0.13, 0.28)  # x, y, height, sigma x, sigma y

    def _sdf(self, p: np.ndarray) -> np.ndarray:
        x, y, z = p[..., 0], p[..., 1], p[..., 2]
        nx, ny, nh, sx, sy = self.nose
        bump = nh * np.exp(-(((x - nx) / sx) ** 2) - ((y - ny) / sy) ** 2) * (z > 0)
        a, b, c = self.axes
        return (x / a) ** 2 + ((y - self.center_y) / b) ** 2 + (z / (c + bump)) ** 2 - 1.0

    def render(self, index: int) -> FaceRecord:
        rng = np.random.default_rng([self.seed, index])
        angles = [float(rng.uniform(lo, hi)) for lo, hi in self.ranges]
        M = aflw_matrix_from_euler(*angles)
        image, box = self.render_pose(M, rng)
        return FaceRecord(image, box, gt=M, source="synthetic")

    def render_pose(self, M: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, Box]:
        R = np.asarray(M, dtype=np.float64).T
        tex, tbox = self.textures[int(rng.integers(len(self.textures)))]
        n = self.canvas_px
        scale_px = n * rng.uniform(0.22, 0.3)  # pixels per head unit
        centre = n / 2.0 + rng.uniform(-0.06, 0.06, size=2) * n
        # camera-frame ray origins for every pixel (y up), rays along -z, into head frame
        v, u = np.mgrid[0:n, 0:n].astype(np.float64)
        xc = (u + 0.5 - centre[0]) / scale_px
        yc = -(v + 0.5 - centre[1]) / scale_px
        o = np.stack([xc, yc, np.full_like(xc, 3.0)], axis=-1).reshape(-1, 3) @ R  # R.T @ o
        d = R.T @ np.array([0.0, 0.0, -1.0])
        ts = np.linspace(0.0, 6.0, 121)
        f = self._sdf(o[None] + ts[:, None, None] * d)  # (T, P)
        inside = f < 0
        hit = np.asarray(inside.any(axis=0))  # (P,): did each ray hit the head
        k = np.argmax(inside, axis=0)
        k0 = np.maximum(k - 1, 0)
        idx = np.arange(len(k))
        f0, f1 = f[k0, idx], f[k, idx]
        t = ts[k0] + (ts[k] - ts[k0]) * f0 / np.where(f0 - f1 == 0, 1.0, f0 - f1)
        p = o + t[:, None] * d  # hit points, head frame
        # texture: orthographic frontal projection of the photo
        x1, y1, x2, y2 = tbox
        s = (x2 - x1) / 2.0 / 0.7
        tu = ((x1 + x2) / 2.0 + s * p[:, 0]).astype(np.float32)
        tv = ((y1 + y2) / 2.0 - s * p[:, 1]).astype(np.float32)
        col = cv2.remap(
            tex, tu.reshape(n, n), tv.reshape(n, n), cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
        )
        col = col.reshape(-1, 3).astype(np.float64)
        # sides and back of the head: fade to a hair colour
        hair = rng.uniform(10, 90) * np.array([1.0, 1.05, 1.1])
        w_front = np.clip((p[:, 2] / self.axes[2] - 0.05) / 0.35, 0.0, 1.0)[:, None]
        col = w_front * col + (1 - w_front) * hair
        # Lambert shading from numerical normals (camera frame)
        e = 1e-3
        grad = np.stack(
            [(self._sdf(p + e * np.eye(3)[i]) - self._sdf(p - e * np.eye(3)[i])) for i in range(3)],
            axis=-1,
        )
        normal = (grad / np.maximum(np.linalg.norm(grad, axis=1, keepdims=True), 1e-9)) @ R.T
        light = np.array([rng.uniform(-0.7, 0.7), rng.uniform(-0.5, 0.7), 1.0])
        light /= np.linalg.norm(light)
        shade = 0.55 + 0.45 * np.clip(normal @ light, 0.0, 1.0)
        col = col * shade[:, None]
        # background
        bg = rng.uniform(0, 255, size=3) + rng.normal(0, 12, size=(n * n, 3))
        ramp = (u.reshape(-1, 1) / n - 0.5) * rng.uniform(-80, 80)
        img = np.where(hit[:, None], col, bg + ramp)
        image = np.clip(img, 0, 255).astype(np.uint8).reshape(n, n, 3)
        return image, self._face_box(R, scale_px, centre)

    def _face_box(self, R: np.ndarray, scale_px: float, centre: np.ndarray) -> Box:
        """Box of the face-region surface points (|x| <= 0.7, chin to brows) facing the camera."""
        gx, gy = np.meshgrid(np.linspace(-0.7, 0.7, 15), np.linspace(-0.9, 0.75, 15))
        a, b, c = self.axes
        r2 = 1.0 - (gx / a) ** 2 - ((gy - self.center_y) / b) ** 2
        gz = c * np.sqrt(np.clip(r2, 0.0, None))
        pts = np.stack([gx, gy, gz], axis=-1).reshape(-1, 3)
        normals = pts / np.array([a, b, c]) ** 2
        cam = pts @ R.T
        facing = (normals @ R.T)[:, 2] > 0.05
        if facing.sum() < 3:
            facing[:] = True
        cam = cam[facing]
        u = centre[0] + scale_px * cam[:, 0]
        v = centre[1] - scale_px * cam[:, 1]
        return (float(u.min()), float(v.min()), float(u.max()), float(v.max()))


# ----------------------------------------------------------------------------- torch dataset


class FaceDataset:
    """Map-style dataset of crops and labels for torch's DataLoader.

    Items are dicts: ``image`` (3 x S x S float32, RGB ImageNet-normalised), ``gt`` and
    ``teacher`` (3 x 3; identity where missing), ``gt_mask`` (bool), ``teacher_conf`` (float).
    ``records`` may be a sequence of :class:`FaceRecord` or a :class:`SyntheticHeads` with a
    length (``synthetic_count``).
    """

    def __init__(
        self,
        records: Sequence[FaceRecord] | SyntheticHeads,
        size_px: int,
        train: bool,
        augment_settings: AugmentSettings = NO_AUGMENT,
        margin_range: tuple[float, float] = (0.2, 0.4),
        synthetic_count: int = 0,
    ) -> None:
        self.records = records
        self.size_px = size_px
        self.train = train
        self.augment = augment_settings if train else NO_AUGMENT
        self.margin_range = margin_range
        self.synthetic_count = synthetic_count

    def __len__(self) -> int:
        if isinstance(self.records, SyntheticHeads):
            return self.synthetic_count
        return len(self.records)

    def record(self, i: int) -> FaceRecord:
        if isinstance(self.records, SyntheticHeads):
            return self.records.render(i)
        return self.records[i]

    def crop(self, rec: FaceRecord, rng: np.random.Generator | None) -> np.ndarray:
        margins = TEST_MARGINS
        if self.train and rng is not None:
            lo, hi = self.margin_range
            margins = CropMargins(left=float(rng.uniform(lo, hi)), right=float(rng.uniform(lo, hi)))
        crop, _ = face_crop(load_image(rec.image), rec.box, self.size_px, margins)
        return crop

    def __getitem__(self, i: int) -> dict:
        import torch

        rec = self.record(i)
        rng = (
            np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item())) if self.train else None
        )
        crop = self.crop(rec, rng)
        gt, teacher = rec.gt, rec.teacher
        if rng is not None:
            crop, gt, teacher = augment(crop, gt, teacher, self.augment, rng)
        eye = np.eye(3)
        return {
            "image": torch.from_numpy(to_nchw_imagenet(crop)[0]),
            "gt": torch.from_numpy(np.asarray(eye if gt is None else gt, np.float32)),
            "gt_mask": torch.tensor(gt is not None),
            "teacher": torch.from_numpy(
                np.asarray(eye if teacher is None else teacher, np.float32)
            ),
            "teacher_conf": torch.tensor(float(rec.teacher_conf if teacher is not None else 0.0)),
        }
