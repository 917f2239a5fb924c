"""Training faces from the realistic renderer of :mod:`dms.synth` ("face profiling").

Each public-domain photo is lifted once to a textured 3-D head (:func:`dms.synth.lift.lift_face`:
its own FaceMesh landmarks with depth, fitted to the canonical mesh) and then rendered by
:class:`dms.synth.render.FaceRenderer` at random head rotations, in a random cabin-like scene
(camera field of view, distance and position of the head, RGB or near-infrared look, sensor
noise, vignette, light level, sunglasses, a hand crossing the face). The label is exact: the
rotation applied to the mesh, written as the AFLW matrix ``M = R.T`` of :mod:`dms.geometry`.

**The face box** follows the AFLW2000 ground-truth box that ``dms eval --boxes gt`` uses: the
extent of AFLW's 21 landmarks (brows, eyes, ear lobes, nose, mouth, chin) that are visible.
Each one is a FaceMesh landmark of the lifted head (the ear lobes are points placed just
outside and behind the cheek contour); a point counts as visible when its surface faces the
camera (nose tip, mouth centre and chin always: they stay on the outline up to a profile), as
AFLW's annotators marked hidden points missing. The box is then jittered a little
(annotators are not exact either). Crops are made from that box by
:func:`dms.vision.crop.face_crop`, the one crop function of inference.

Optionally each render also gets the embedded landmark teacher's answer (FaceMesh + Procrustes,
:class:`dms.vision.landmark_pose.LandmarkHeadPose`) as a soft target with FaceMesh's presence as
its confidence. Ground truth exists for every render, so the teacher acts only as a regulariser
(``gt_weight`` sets the balance); its error against the exact labels is also a check of how
real the renders look to a model trained on real faces.

A cache (``.npz``) keeps, per face, a small cut-out around the box (enough for the training
crop margins and the random resized crop) rather than the full frame.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from dms.errors import InputError
from dms.geometry import aflw_matrix_from_euler, euler_from_aflw_matrix
from dms.train.datasets import Box, FaceRecord
from dms.vision.crop import CropMargins, face_crop
from dms.vision.facemesh import AFLW21_FACEMESH_IDS, EAR_LOBE_SLOTS

log = logging.getLogger(__name__)

CACHE_VERSION = "2"  # bump when this module's renders change

# Midline points (nose tip, mouth centre, chin) stay on the silhouette up to a full profile,
# where AFLW's annotators still mark them; the others count when their surface faces the
# camera (a little beyond the tangent: the outline of a turned face shows them).
MIDLINE_SLOTS = (14, 18, 20)
VISIBLE_MIN_COS = -0.1
EAR_LOBE_OFFSET_CM = (1.2, -0.8, -1.8)  # outward (|x|), down, back from the contour point
CUTOUT_MARGINS = CropMargins(left=0.8, right=0.8, top=0.8, bottom=0.5)


@dataclass(frozen=True, slots=True)
class RenderSettings:
    """Ranges of the random scene and pose (uniform unless said otherwise)."""

    yaw_range_deg: tuple[float, float] = (-90.0, 90.0)
    pitch_range_deg: tuple[float, float] = (-60.0, 40.0)
    roll_range_deg: tuple[float, float] = (-40.0, 40.0)
    frame_px: tuple[int, int] = (320, 240)
    hfov_range_deg: tuple[float, float] = (45.0, 70.0)
    distance_range_m: tuple[float, float] = (0.45, 0.9)
    ir_p: float = 0.3
    noise_sigma_range: tuple[float, float] = (0.0, 6.0)
    light_gain_range: tuple[float, float] = (0.5, 1.3)
    sunglasses_p: float = 0.1
    hand_p: float = 0.1
    box_jitter: float = 0.05  # box sides moved by up to this fraction of the box size
    cutout_px: int = 96  # side of the cached cut-out around the face
    scenes: int = 16  # random scenes (camera, distance, IR, noise) each face is rendered in


@dataclass(frozen=True, slots=True)
class RenderedFace:
    """One render: the cut-out image, its face box (cut-out pixels) and labels."""

    image: np.ndarray = field(repr=False)
    box: Box
    gt: np.ndarray = field(repr=False)
    teacher: np.ndarray | None = field(default=None, repr=False)
    teacher_conf: float = 0.0


SHARED_SCENE_FACES = 8


def _mirror(img: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(img[:, ::-1])


class _CentreBox:
    """A stand-in detector for face crops: the face is the centre 85 % of the image."""

    def __init__(self, shape: tuple[int, ...], fraction: float = 0.85) -> None:
        from dms.types import FaceBox

        h, w = shape[:2]
        side = fraction * min(h, w)
        self.box = FaceBox((w - side) / 2, (h - side) / 2, (w + side) / 2, (h + side) / 2,
                           score=1.0)

    def detect(self, image_bgr: np.ndarray) -> list:
        return [self.box]


def _with_face(base: object, face: object) -> object:
    """A shallow copy of a scene's renderer drawing another lifted face.

    Sets the per-face fields exactly as ``FaceRenderer.__init__`` computes them (the renderer
    has no public call for this; the scene's noise, cabin and vignette are shared)."""
    import copy

    from dms.synth.render import AMBIENT, DIFFUSE, PIVOT_CM, _vertex_normals

    r = copy.copy(base)
    r.face = face  # type: ignore[attr-defined]
    r._V_m = (face.vertices_cm.astype(np.float64) - PIVOT_CM) / 100.0  # type: ignore[attr-defined]
    r._T = face.triangles.astype(np.int64)  # type: ignore[attr-defined]
    r._uv = face.uv_px.astype(np.float64)  # type: ignore[attr-defined]
    r._normals = _vertex_normals(face.vertices_cm.astype(np.float64), r._T)  # type: ignore[attr-defined]
    r._shade0 = AMBIENT + DIFFUSE * np.maximum(r._normals @ r._light, 0.0)  # type: ignore[attr-defined]
    tex = face.texture  # type: ignore[attr-defined]
    skin = tex[int(np.clip(r._uv[50, 1], 0, tex.shape[0] - 1)),  # type: ignore[attr-defined]
               int(np.clip(r._uv[50, 0], 0, tex.shape[1] - 1))].astype(np.float64)  # type: ignore[attr-defined]
    r._skin = tuple(float(c) for c in 0.85 * skin)  # type: ignore[attr-defined]
    return r


class RenderedHeads:
    """Random renders of lifted public-domain faces with exact labels (see the module doc).

    ``photos``: built-in names (``astronaut``, ``grace_hopper``) or image paths; with
    ``mirror`` each photo is also lifted mirrored (a second, mirror-image identity).
    ``render(i)`` is deterministic in (seed, i). ``teacher`` (a ``LandmarkHeadPose``, or None)
    adds the landmark teacher's soft target to each render.

    ``face_crops``: the photos are face crops (the face fills about ``0.85`` of the image, as
    in ``faces-aflw``) rather than portraits: the face box is the centre of the image instead
    of a BlazeFace detection, and a photo FaceMesh cannot lift is skipped (logged) rather than
    failing the run. With more than :data:`SHARED_SCENE_FACES` faces the ``scenes`` random
    scenes are built once and shared by all faces (the scene's cabin and shirt colour come
    from the first face): a renderer per (face, scene) would hold about 3 MB of sensor noise
    each.
    """

    def __init__(
        self,
        photos: Sequence[str] = ("astronaut", "grace_hopper"),
        *,
        mirror: bool = True,
        settings: RenderSettings = RenderSettings(),
        seed: int = 0,
        teacher: object | None = None,
        face_crops: bool = False,
    ) -> None:
        from dms.paths import load_photo, models_dir
        from dms.synth.lift import lift_face
        from dms.vision.canonical import load_canonical_mesh
        from dms.vision.facemesh import FaceMeshLandmarker
        from dms.vision.runtime import RuntimeSettings, create_session

        mesh = load_canonical_mesh()
        one = RuntimeSettings(providers=("cpu",), intra_op_threads=1, inter_op_threads=1)
        landmarker = FaceMeshLandmarker(create_session(models_dir() / "face_landmark.onnx", one))
        self.faces = []
        for name in photos:
            img = load_photo(name)
            variants = [(img, str(name))] + ([(_mirror(img), f"{name}:mirrored")] if mirror else [])
            for im, source in variants:
                detector = _CentreBox(im.shape) if face_crops else None
                try:
                    self.faces.append(lift_face(im, mesh=mesh, detector=detector,
                                                landmarker=landmarker, source=source))
                except InputError as exc:
                    if not face_crops:
                        raise
                    log.info("skipped: %s", exc)
        if not self.faces:
            raise InputError("no photo could be lifted")
        self.settings = settings
        self.seed = seed
        self.teacher = teacher
        from dms.synth.render import _vertex_normals  # the renderer's own shading normals

        self._points = [self._aflw_points(f.vertices_cm) for f in self.faces]
        ids = list(AFLW21_FACEMESH_IDS)
        self._normals = [
            _vertex_normals(f.vertices_cm.astype(np.float64), f.triangles.astype(np.int64))[ids]
            for f in self.faces
        ]
        self._renderers: dict[tuple[int, int], object] = {}

    @staticmethod
    def _aflw_points(vertices_cm: np.ndarray) -> np.ndarray:
        """(21, 3) head-frame points of AFLW's landmarks (ear lobes pushed out and back)."""
        pts = np.asarray(vertices_cm, np.float64)[list(AFLW21_FACEMESH_IDS)].copy()
        out, down, back = EAR_LOBE_OFFSET_CM
        for slot in EAR_LOBE_SLOTS:
            pts[slot, 0] += math.copysign(out, pts[slot, 0])
            pts[slot, 1] += down
            pts[slot, 2] += back
        return pts

    def _scene(self, rng: np.random.Generator) -> object:
        from dms.synth.render import SceneSettings

        s = self.settings
        return SceneSettings(
            width_px=s.frame_px[0],
            height_px=s.frame_px[1],
            hfov_deg=float(rng.uniform(*s.hfov_range_deg)),
            distance_m=float(rng.uniform(*s.distance_range_m)),
            head_offset_m=(float(rng.uniform(-0.06, 0.06)), float(rng.uniform(-0.08, 0.02))),
            ir=bool(rng.random() < s.ir_p),
            noise_sigma=float(rng.uniform(*s.noise_sigma_range)),
            light_drift=float(rng.uniform(0.0, 0.2)),
            vignette=float(rng.uniform(0.0, 0.5)),
            seed=int(rng.integers(2**31)),
        )

    def _renderer(self, face_index: int, scene_index: int) -> object:
        """The renderer of one face in one of the ``scenes`` random scenes (made once; with
        many faces, one renderer per scene re-pointed at the face, see the class doc)."""
        from dms.synth.render import FaceRenderer

        shared = len(self.faces) > SHARED_SCENE_FACES
        key = (0 if shared else face_index, scene_index)
        if key not in self._renderers:
            rng = np.random.default_rng([self.seed, 7919, scene_index])
            scene = self._scene(rng)
            self._renderers[key] = FaceRenderer(self.faces[key[0]], scene)  # type: ignore[arg-type]
        base = self._renderers[key]
        if not shared or face_index == 0:
            return base
        return _with_face(base, self.faces[face_index])

    def aflw_box(self, renderer: object, face_index: int, R: np.ndarray) -> Box | None:
        """Extent of the visible AFLW landmarks of the render (None: fewer than 3 visible)."""
        from dms.synth.render import PIVOT_CM

        pts, normals = self._points[face_index], self._normals[face_index]
        # project the 21 points the way FaceRenderer.project projects its vertices (the
        # renderer has no public call for points that are not mesh vertices)
        P = ((pts - PIVOT_CM) / 100.0) @ R.T + renderer._pivot  # type: ignore[attr-defined]
        depth = np.maximum(-P[:, 2], 1e-3)
        f, c = renderer._f, renderer._c  # type: ignore[attr-defined]
        u = c[0] + f * P[:, 0] / depth
        v = c[1] - f * P[:, 1] / depth
        view = -P / np.linalg.norm(P, axis=1, keepdims=True)
        visible = np.sum((normals @ R.T) * view, axis=1) > VISIBLE_MIN_COS
        visible[list(MIDLINE_SLOTS)] = True
        if visible.sum() < 3:
            return None
        u, v = u[visible], v[visible]
        return (float(u.min()), float(v.min()), float(u.max()), float(v.max()))

    def render(
        self,
        index: int,
        pose_deg: tuple[float, float, float] | None = None,
        face_index: int | None = None,
    ) -> RenderedFace:
        """One random render: a cut-out around the face, its box, the exact label.

        ``pose_deg`` (pitch, yaw, roll) and ``face_index`` fix what is otherwise drawn."""
        from dms.synth.script import FrameTruth

        s = self.settings
        rng = np.random.default_rng([self.seed, index])
        for _ in range(20):
            pitch = float(rng.uniform(*s.pitch_range_deg))
            yaw = float(rng.uniform(*s.yaw_range_deg))
            roll = float(rng.uniform(*s.roll_range_deg))
            if pose_deg is not None:
                pitch, yaw, roll = (float(a) for a in pose_deg)
            M = aflw_matrix_from_euler(pitch, yaw, roll)
            R = M.T
            k = int(rng.integers(len(self.faces)))
            if face_index is not None:
                k = face_index
            renderer = self._renderer(k, int(rng.integers(s.scenes)))
            box = self.aflw_box(renderer, k, R)
            if box is not None and box[2] - box[0] > 8 and box[3] - box[1] > 8:
                break
        else:  # pragma: no cover - 20 draws without 3 visible landmarks
            raise InputError(f"render {index}: no pose with a visible face")
        hand = float(rng.uniform(0.25, 0.75)) if rng.random() < s.hand_p else None
        truth = FrameTruth(
            t_s=float(rng.uniform(0, 100)), rotation=R, yaw_deg=yaw, pitch_deg=pitch,
            roll_deg=roll, rel_yaw_deg=yaw, rel_pitch_deg=pitch, rel_roll_deg=roll, face=True,
            kind="train", hand=hand, sunglasses=bool(rng.random() < s.sunglasses_p),
            light_gain=float(rng.uniform(*s.light_gain_range)),
        )  # fmt: skip
        # the renderer draws its sensor noise from its own generator: seed it per render so a
        # render depends on (seed, index) only, not on what the shared renderer drew before
        renderer._rng = np.random.default_rng([self.seed, index, 1])  # type: ignore[attr-defined]
        frame = renderer.render(truth)  # type: ignore[attr-defined]
        teacher, conf = None, 0.0
        if self.teacher is not None:
            from dms.types import FaceBox

            pose = self.teacher.estimate(frame, FaceBox(*box, score=1.0))  # type: ignore[attr-defined]
            teacher, conf = np.asarray(pose.rotation, np.float64).T, float(pose.confidence)
        w, h = box[2] - box[0], box[3] - box[1]
        j = rng.uniform(-s.box_jitter, s.box_jitter, size=4) * np.array([w, h, w, h])
        bx1, by1, bx2, by2 = (float(a + b) for a, b in zip(box, j, strict=True))
        box = (bx1, by1, bx2, by2)
        cut, A = face_crop(frame, box, s.cutout_px, CUTOUT_MARGINS)
        x1, y1 = A[:, :2] @ np.array(box[:2]) + A[:, 2]
        x2, y2 = A[:, :2] @ np.array(box[2:]) + A[:, 2]
        return RenderedFace(cut, (float(x1), float(y1), float(x2), float(y2)), M, teacher, conf)


def cache_key(photos: Sequence[str], settings: RenderSettings, seed: int, count: int,
              teacher: bool, mirror: bool = True) -> str:
    """Hash of what a cache depends on (renderer code, photos, settings, seed, count, teacher)."""
    from dms.paths import photo_path

    h = hashlib.sha256(CACHE_VERSION.encode())
    synth = Path(__file__).resolve().parent.parent / "synth"
    for module in ("lift.py", "render.py"):
        h.update((synth / module).read_bytes())
    for p in photos:
        h.update(photo_path(p).read_bytes())
    h.update(repr((settings, seed, count, teacher) + (() if mirror else (False,))).encode())
    return h.hexdigest()[:16]


def build_cache(
    path: str | Path,
    count: int,
    *,
    photos: Sequence[str] = ("astronaut", "grace_hopper"),
    settings: RenderSettings = RenderSettings(),
    seed: int = 0,
    teacher: bool = False,
    mirror: bool = True,
    progress: bool = True,
    face_crops: bool = False,
) -> Path:
    """Render ``count`` faces into ``path`` (.npz) unless a cache with the same key is there."""
    from tqdm import tqdm

    path = Path(path)
    key = cache_key(photos, settings, seed, count, teacher, mirror)
    if face_crops:
        key = hashlib.sha256((key + "face_crops").encode()).hexdigest()[:16]
    if path.is_file():
        try:
            with np.load(path) as z:
                if str(z["key"]) == key:
                    log.info("%s: reusing %d cached renders", path, count)
                    return path
        except (OSError, KeyError, ValueError):
            pass
        log.info("%s: cache is stale or unreadable; re-rendering", path)
    cv2.setNumThreads(1)
    t = None
    if teacher:
        from dms.paths import models_dir
        from dms.vision.landmark_pose import LandmarkHeadPose
        from dms.vision.runtime import RuntimeSettings

        t = LandmarkHeadPose.from_files(
            models_dir() / "face_landmark.onnx",
            runtime=RuntimeSettings(providers=("cpu",), intra_op_threads=1, inter_op_threads=1),
        )
    heads = RenderedHeads(photos, mirror=mirror, settings=settings, seed=seed, teacher=t,
                          face_crops=face_crops)
    log.info("lifted %d faces from %d photos", len(heads.faces), len(photos))
    n = settings.cutout_px
    images = np.zeros((count, n, n, 3), np.uint8)
    boxes = np.zeros((count, 4), np.float32)
    gt = np.zeros((count, 3, 3), np.float32)
    tm = np.tile(np.eye(3, dtype=np.float32), (count, 1, 1))
    conf = np.zeros(count, np.float32)
    for i in tqdm(range(count), desc="render", disable=not progress):
        r = heads.render(i)
        images[i], boxes[i], gt[i] = r.image, r.box, r.gt
        if r.teacher is not None:
            tm[i], conf[i] = r.teacher, r.teacher_conf
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial.npz")
    np.savez(tmp, key=key, images=images, boxes=boxes, gt=gt, teacher=tm, teacher_conf=conf,
             has_teacher=teacher)
    tmp.replace(path)
    if teacher:
        log.info("landmark teacher on the renders: %s", teacher_error(gt, tm, conf))
    return path


def teacher_error(
    gt: np.ndarray, teacher: np.ndarray, conf: np.ndarray
) -> dict[str, float | list[float]]:
    """Teacher MAE (deg) against the exact labels: all, |yaw| > 45 and confident faces."""
    e_gt = np.array([euler_from_aflw_matrix(m) for m in gt])
    e_t = np.array([euler_from_aflw_matrix(m) for m in teacher])
    err = np.abs(e_t - e_gt)
    large = np.abs(e_gt[:, 1]) > 45.0
    ok = conf >= 0.5
    return {
        "faces": int(len(gt)),
        "pitch_yaw_roll_mae_deg": [round(float(v), 2) for v in err.mean(axis=0)],
        "mean_mae_deg": round(float(err.mean()), 2),
        "yaw_mae_large_deg": round(float(err[large, 1].mean()), 2) if large.any() else math.nan,
        "confident_share": round(float(ok.mean()), 3),
        "mean_mae_confident_deg": round(float(err[ok].mean()), 2) if ok.any() else math.nan,
    }


def read_cache(path: str | Path, limit: int = 0, min_conf: float = 0.0) -> list[FaceRecord]:
    """Face records (cut-out arrays, boxes, exact labels, teacher targets) of a cache.

    Teacher targets with a confidence below ``min_conf`` are dropped (the face keeps its
    ground truth)."""
    path = Path(path)
    try:
        z = np.load(path)
        images, boxes, gt = z["images"], z["boxes"], z["gt"]
        teacher, conf = z["teacher"], z["teacher_conf"]
        has_teacher = bool(z["has_teacher"])
    except (OSError, KeyError, ValueError) as exc:
        raise InputError(f"{path}: not a rendered-faces cache ({exc})") from None
    n = len(images) if not limit else min(limit, len(images))
    out = []
    for i in range(n):
        use = has_teacher and conf[i] >= min_conf
        out.append(
            FaceRecord(
                images[i],
                tuple(float(v) for v in boxes[i]),  # type: ignore[arg-type]
                gt=gt[i].astype(np.float64),
                teacher=teacher[i].astype(np.float64) if use else None,
                teacher_conf=float(conf[i]) if use else 0.0,
                source=f"rendered:{path.name}",
            )
        )
    return out


def crop_of(face: RenderedFace, size_px: int) -> np.ndarray:
    """The test-margin crop of a render (what inference would feed the network)."""
    return face_crop(face.image, face.box, size_px)[0]

