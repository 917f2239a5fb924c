"""Photo -> textured 3-D face, using the embedded FaceMesh and the canonical face mesh.

1. BlazeFace finds the face; FaceMesh returns 468 landmarks with depth on the detector's ROI,
   then twice more on the ROI from its own landmarks (the tracker's refinement).
2. The landmarks move into camera axes (x right, y up, z toward the camera: ``(x, -y, -z)``
   since FaceMesh's y points down and its z grows away from the camera) and a similarity fit
   to the canonical mesh (:func:`dms.geometry.weighted_procrustes`, all 468 points) gives the
   photo's own head rotation, scale and position. Undoing them puts this person's face shape
   into the head frame of :mod:`dms.geometry` (frontal, centimetres, x toward the viewer's
   right, y up, z toward the camera) - so rendering it with a rotation R *is* a head pose R.
3. The texture is the photo itself: every vertex keeps the pixel it came from, and every
   triangle carries its source triangle.
4. A "head" is grown around the face so the silhouette is not a floating mask: rings of extra
   vertices outside the mesh boundary, pushed back in depth (cheeks, ears, hair, neck),
   textured from wherever they land in the photo under the photo's own pose.

The lift is deterministic: the same photo and models give the same face.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dms import geometry
from dms.errors import InputError
from dms.paths import load_photo, models_dir, photo_path
from dms.vision.canonical import CanonicalFaceMesh, load_canonical_mesh

log = logging.getLogger(__name__)

_TO_CAMERA = np.array([1.0, -1.0, -1.0])

# Rings grown outside the face boundary: (radial scale from the face centre, depth pushed back
# in cm, extra downward stretch below the face centre for the neck and jaw).
HEAD_RINGS: tuple[tuple[float, float, float], ...] = (
    (1.12, 2.5, 0.05),
    (1.30, 6.5, 0.25),
    (1.42, 11.0, 0.55),
)


@dataclass(frozen=True, slots=True)
class LiftedFace:
    """A textured 3-D head built from one photo.

    ``vertices_cm`` (V, 3) in the head frame of :mod:`dms.geometry` (centimetres, frontal,
    origin at the canonical mesh origin); ``uv_px`` (V, 2) the source pixel of each vertex in
    ``texture``; ``triangles`` (K, 3) with a consistent winding (counter-clockwise on screen
    when the face is frontal, i.e. seen from +z); the first 468 vertices are the FaceMesh
    landmarks (so landmark ids such as 33/263 for the eye corners keep their meaning).
    ``photo_rotation`` is the head rotation R the photo was taken at (removed from the
    vertices). ``shirt_bgr`` is a colour sampled below the chin for the torso.
    """

    vertices_cm: np.ndarray = field(repr=False)
    uv_px: np.ndarray = field(repr=False)
    triangles: np.ndarray = field(repr=False)
    texture: np.ndarray = field(repr=False)
    photo_rotation: np.ndarray = field(repr=False)
    shirt_bgr: tuple[int, int, int] = (60, 60, 60)
    source: str = ""

    @property
    def num_face_vertices(self) -> int:
        return 468


def _boundary_loop(triangles: np.ndarray) -> np.ndarray:
    """The longest closed loop of boundary edges (edges used by one triangle), ordered so the
    mesh lies to the left of each edge (the loop follows the triangles' own winding)."""
    directed: dict[tuple[int, int], int] = {}
    for a, b, c in triangles.tolist():
        for e in ((a, b), (b, c), (c, a)):
            directed[e] = directed.get(e, 0) + 1
    nxt = {a: b for (a, b) in directed if (b, a) not in directed}
    best: list[int] = []
    seen: set[int] = set()
    for start in nxt:
        if start in seen:
            continue
        loop, v = [start], nxt[start]
        while v != start and v in nxt and v not in seen and len(loop) <= len(nxt):
            loop.append(v)
            v = nxt[v]
        seen.update(loop)
        if len(loop) > len(best):
            best = loop
    return np.asarray(best, dtype=np.int64)


def _winding_sign(xy: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    a, b, c = xy[triangles[:, 0]], xy[triangles[:, 1]], xy[triangles[:, 2]]
    return np.sign((b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1])
                   - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0]))


def grow_head(
    vertices_cm: np.ndarray, triangles: np.ndarray, rings: tuple[tuple[float, float, float], ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Add rings of vertices outside the boundary loop of a frontal face mesh.

    Returns (vertices, triangles) with the new vertices appended and the new triangles wound
    like the face's (counter-clockwise seen from +z, x right, y up)."""
    loop = _boundary_loop(triangles)
    if len(loop) < 8:
        return vertices_cm, triangles
    centre = vertices_cm[:468, :2].mean(axis=0)
    verts = [vertices_cm]
    tris = [triangles]
    prev = loop
    n = len(vertices_cm)
    base = vertices_cm[loop]
    for scale, back_cm, neck in rings:
        d = base[:, :2] - centre
        ring = np.empty((len(loop), 3))
        ring[:, :2] = centre + d * scale
        below = np.clip(-d[:, 1] / max(float(np.abs(d[:, 1]).max()), 1e-6), 0.0, 1.0)
        ring[:, 1] -= neck * below * np.abs(d[:, 1]).max()
        ring[:, 2] = base[:, 2] - back_cm
        ids = np.arange(n, n + len(loop))
        i0, i1 = prev, np.roll(prev, -1)
        o0, o1 = ids, np.roll(ids, -1)
        tris.append(np.stack([np.column_stack([i0, o0, i1]),
                              np.column_stack([i1, o0, o1])], axis=1).reshape(-1, 3))
        verts.append(ring)
        prev = ids
        n += len(loop)
    V = np.concatenate(verts).astype(np.float64)
    T = np.concatenate(tris).astype(np.int32)
    # Make every triangle counter-clockwise seen from +z (x right, y up): the face's winding.
    s = _winding_sign(V[:, :2], T)
    flip = s < 0
    T[flip] = T[flip][:, [0, 2, 1]]
    return V, T


def lift_face(
    image_bgr: np.ndarray,
    *,
    mesh: CanonicalFaceMesh | None = None,
    detector: object | None = None,
    landmarker: object | None = None,
    source: str = "",
    rings: tuple[tuple[float, float, float], ...] = HEAD_RINGS,
) -> LiftedFace:
    """Lift the largest face of a photo to a textured 3-D head (see the module doc).

    ``detector`` (:class:`dms.vision.blazeface.BlazeFaceDetector`) and ``landmarker``
    (:class:`dms.vision.facemesh.FaceMeshLandmarker`) default to the embedded models.
    """
    from dms.vision.blazeface import BlazeFaceDetector
    from dms.vision.facemesh import FaceMeshLandmarker, roi_from_face_box, roi_from_landmarks
    from dms.vision.runtime import create_session

    mesh = mesh or load_canonical_mesh()
    if detector is None:
        detector = BlazeFaceDetector(create_session(models_dir() / "face_detection_back.onnx"))
    if landmarker is None:
        landmarker = FaceMeshLandmarker(create_session(models_dir() / "face_landmark.onnx"))
    where = source or "photo"
    faces = detector.detect(image_bgr)  # type: ignore[attr-defined]
    if not faces:
        raise InputError(f"{where}: no face found to lift")
    box = max(faces, key=lambda f: f.area)
    roi = roi_from_face_box(box)
    for _ in range(3):
        lm = landmarker.landmarks(image_bgr, roi)  # type: ignore[attr-defined]
        roi = roi_from_landmarks(lm.points_px)
    if lm.presence < 0.5:
        raise InputError(f"{where}: FaceMesh is unsure there is a face ({lm.presence:.2f})")
    pts = np.asarray(lm.points_px, dtype=np.float64)
    P = pts * _TO_CAMERA
    src = mesh.vertices_cm.astype(np.float64)
    s, R, t = geometry.weighted_procrustes(src, P)
    face_cm = ((P - t) @ R) / s  # R.T @ (P - t) / s, row-wise
    log.info("lifted %s: photo pose pitch/yaw/roll %s, %.1f px/cm", where,
             np.round(geometry.euler_from_rotation(R), 1), s)
    tri = mesh.triangles.astype(np.int64)
    if (_winding_sign(face_cm[:, :2], tri) < 0).mean() > 0.5:
        tri = tri[:, [0, 2, 1]]
    V, T = grow_head(face_cm, tri, rings)
    # Texture coordinates: every vertex put back into the photo under the photo's own pose.
    # The outer rings take their texture from just outside the face (hair, skin, ears), not
    # from where they land in the photo, which is often the photo's background.
    V_tex, _ = grow_head(face_cm, tri, tuple((1.0 + 0.6 * (sc - 1.0), b, nk * 0.3)
                                             for sc, b, nk in rings))
    back = (s * V_tex @ R.T + t) * _TO_CAMERA
    h, w = image_bgr.shape[:2]
    uv = np.column_stack([np.clip(back[:, 0], 0, w - 1), np.clip(back[:, 1], 0, h - 1)])
    uv[:468] = pts[:, :2]
    chin = pts[152, :2]
    half = max(2, int(0.2 * s))
    y0 = int(min(h - 1, chin[1] + 1.3 * (chin[1] - pts[1, 1])))
    x0 = int(np.clip(chin[0], 0, w - 1))
    patch = image_bgr[max(0, y0 - half):y0 + half + 1, max(0, x0 - half):x0 + half + 1]
    shirt = tuple(int(c) for c in np.median(patch.reshape(-1, 3), axis=0)) if patch.size else (
        60, 60, 60)
    return LiftedFace(
        vertices_cm=V.astype(np.float32),
        uv_px=uv.astype(np.float32),
        triangles=T.astype(np.int32),
        texture=np.ascontiguousarray(image_bgr),
        photo_rotation=R,
        shirt_bgr=shirt,  # type: ignore[arg-type]
        source=where,
    )


def lift_photo(name_or_path: str | Path) -> LiftedFace:
    """:func:`lift_face` on a built-in photo name or a file, with the embedded models."""
    path = photo_path(name_or_path)
    return lift_face(load_photo(path), source=str(name_or_path))
