"""Render a lifted face along a trajectory into an in-cabin-like scene.

Camera: a pinhole of horizontal field of view ``hfov_deg`` looking at the driver; camera frame
of :mod:`dms.geometry` (x right, y up, z toward the camera, so the scene has z < 0). The head
turns about a neck pivot (``PIVOT_CM`` in the head frame) placed ``distance_m`` in front of the
camera, so a nod moves the face down as well as tilting it, as a real one does. The rotation
written to the ground truth is the rotation applied to the mesh: nothing else turns the head.

Per frame:

1. vertices -> camera -> pixels; back faces culled (counter-clockwise in the head frame =
   front); triangles painted far to near (painter's algorithm) into a triangle-id buffer
   with ``cv2.fillConvexPoly``;
2. one ``cv2.remap`` textures every face pixel from the photo through its triangle's affine
   map (vectorised); the same per-triangle affine maps interpolate a Lambert shading factor
   (relative to the frontal pose, so the photo looks as taken when the head faces the
   camera);
3. motion blur along the on-screen motion of the nose over the exposure time, on the head
   layer and its alpha;
4. composited over a drawn cabin (seat, headrest, side window, pillar, seat belt, torso);
5. eyes and mouth (the script's ``eye_open``, gaze and ``mouth_open``): a yawn opens the jaw
   by moving the lower face's vertices down (``JAW_DROP_CM`` at a full yawn) before step 1,
   and a dark cavity fills the inner lips; moved irises are drawn on a sclera-toned eye
   opening (iris and pupil on an eyeball of ``EYEBALL_RADIUS_CM`` turned by the gaze);
   closing lids are skin-toned, from the upper lid down to the openness, with a dark lash
   line at the edge. All on the projected mesh, clipped to the pixels of the eye's (mouth's)
   own triangles, so they follow the head and hide behind the nose;
6. occluders: sunglasses (two dark ellipses on the projected eye landmarks, only where the
   eye faces the camera), a hand crossing the face, a hand covering it, a blocked camera;
7. lighting: scripted gain x slow seeded drift x a sun patch through the window x vignette;
   optional near-infrared look (grayscale weighted to red, stronger falloff); Gaussian
   sensor noise from a seeded bank.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from dms.errors import InputError
from dms.paths import models_dir, photo_path
from dms.sim import script as grammar
from dms.synth.lift import LiftedFace, lift_photo
from dms.synth.script import (
    FrameTruth,
    RenderOptions,
    Scenario,
    Trajectory,
    events_json,
    load_scenario,
    poses_csv_text,
)

log = logging.getLogger(__name__)

PIVOT_CM = np.array([0.0, -6.0, -3.0])  # neck pivot in the head frame (below, behind)
LIGHT_DIR = np.array([-0.45, 0.55, 0.70])  # toward the light, camera frame (upper left, front)
AMBIENT, DIFFUSE = 0.45, 0.65
RIGHT_EYE_IDS = (33, 133, 159, 145)  # outer corner, inner corner, upper lid, lower lid
LEFT_EYE_IDS = (263, 362, 386, 374)
NOSE_TIP = 1
# FaceMesh eye contours: the lower lid from the outer corner to the inner one, then the upper
# lid back; the lower and the upper lid taken inner -> outer pair up index by index
RIGHT_EYE_CONTOUR = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161,
                     246)
LEFT_EYE_CONTOUR = (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388,
                    466)
LIPS_INNER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 415, 310, 311, 312, 13, 82, 81,
              80, 191)  # lower inner lip from the right corner, then the upper one back
EYEBALL_RADIUS_CM = 1.2
IRIS_RADIUS_CM, PUPIL_RADIUS_CM = 0.58, 0.22
LID_COVER_ABOVE = 1.0  # a closing lid's skin reaches this many lid apertures above the lid
JAW_DROP_CM = 3.0  # how far the lower lip and chin move down at a full yawn


@dataclass(frozen=True, slots=True)
class SceneSettings:
    """Camera and scene of a render (sizes in pixels, distances in metres)."""

    width_px: int = 640
    height_px: int = 480
    fps: float = 15.0
    hfov_deg: float = 60.0
    distance_m: float = 0.65
    head_offset_m: tuple[float, float] = (0.0, -0.05)  # pivot x, y in the camera frame
    ir: bool = False
    noise_sigma: float = 3.0
    exposure_s: float = 1.0 / 60.0
    light_drift: float = 0.12
    vignette: float = 0.35
    seed: int = 0

    @property
    def focal_px(self) -> float:
        return 0.5 * self.width_px / math.tan(math.radians(0.5 * self.hfov_deg))


def _vertex_normals(V: np.ndarray, T: np.ndarray) -> np.ndarray:
    a, b, c = V[T[:, 0]], V[T[:, 1]], V[T[:, 2]]
    fn = np.cross(b - a, c - a)
    n = np.zeros_like(V)
    for i in range(3):
        np.add.at(n, T[:, i], fn)
    return n / np.maximum(np.linalg.norm(n, axis=1, keepdims=True), 1e-9)


class FaceRenderer:
    """Renders frames of one lifted face in one scene (see the module doc)."""

    def __init__(self, face: LiftedFace, scene: SceneSettings = SceneSettings()) -> None:
        self.face = face
        self.scene = scene
        self._V_m = (face.vertices_cm.astype(np.float64) - PIVOT_CM) / 100.0
        self._T = face.triangles.astype(np.int64)
        self._uv = face.uv_px.astype(np.float64)
        self._normals = _vertex_normals(face.vertices_cm.astype(np.float64), self._T)
        light = LIGHT_DIR / np.linalg.norm(LIGHT_DIR)
        self._light = light
        self._shade0 = AMBIENT + DIFFUSE * np.maximum(self._normals @ light, 0.0)
        w, h = scene.width_px, scene.height_px
        self._pivot = np.array([scene.head_offset_m[0], scene.head_offset_m[1],
                                -scene.distance_m])
        self._f = scene.focal_px
        self._c = np.array([(w - 1) / 2.0, (h - 1) / 2.0])
        rng = np.random.default_rng(scene.seed)
        self._drift_f = rng.uniform(0.02, 0.12, 3)
        self._drift_p = rng.uniform(0, 2 * np.pi, 3)
        self._noise = [rng.normal(0.0, 1.0, (h, w + 32, 3)).astype(np.float32)
                       for _ in range(3)]
        self._rng = np.random.default_rng(scene.seed + 1)
        self._background, self._window_mask = self._draw_cabin()
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        r2 = ((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2
        strength = scene.vignette * (1.6 if scene.ir else 1.0)
        self._vignette = np.clip(1.0 - strength * r2 / 2.0, 0.2, 1.0).astype(np.float32)
        tex = face.texture
        skin = tex[int(np.clip(self._uv[50, 1], 0, tex.shape[0] - 1)),
                   int(np.clip(self._uv[50, 0], 0, tex.shape[1] - 1))].astype(np.float64)
        self._skin = tuple(float(c) for c in 0.85 * skin)
        self._init_eyes_and_mouth()

    # ------------------------------------------------------------ geometry

    def project(self, R: np.ndarray, V_m: np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
        """Pixels (V, 2) and camera-frame points (V, 3) of the mesh (``V_m``: pivot-relative
        metres, default the lifted face's) under head rotation R."""
        P = (self._V_m if V_m is None else V_m) @ np.asarray(R).T + self._pivot
        depth = np.maximum(-P[:, 2], 1e-3)  # the scene is at z < 0
        px = np.empty((len(P), 2))
        px[:, 0] = self._c[0] + self._f * P[:, 0] / depth
        px[:, 1] = self._c[1] - self._f * P[:, 1] / depth
        return px, P

    def landmarks_px(self, R: np.ndarray) -> np.ndarray:
        """The 468 FaceMesh landmarks projected under R (x, y pixels)."""
        return self.project(R)[0][:468]

    # ------------------------------------------------------------ scene

    def _draw_cabin(self) -> tuple[np.ndarray, np.ndarray]:
        s = self.scene
        w, h = s.width_px, s.height_px
        k = w / 640.0
        img = np.full((h, w, 3), (58, 54, 52), np.uint8)
        # side window behind the driver's left shoulder: the image right
        win = np.array([[0.70 * w, 0.0], [w, 0.0], [w, 0.62 * h], [0.83 * w, 0.55 * h]],
                       np.int32)
        cv2.fillConvexPoly(img, win, (205, 190, 170))
        cv2.rectangle(img, (0, int(0.9 * h)), (w, h), (40, 38, 36), -1)
        mask = np.zeros((h, w), np.float32)
        cv2.fillConvexPoly(mask, win, 1.0)
        # B-pillar and roof lining
        cv2.line(img, (int(0.70 * w), 0), (int(0.83 * w), int(0.55 * h)), (45, 42, 40),
                 max(2, int(18 * k)))
        cv2.rectangle(img, (0, 0), (w, int(0.06 * h)), (92, 90, 88), -1)
        # seat back and headrest, centred behind the head
        cx = int(self._c[0] + self._f * self._pivot[0] / -self._pivot[2])
        cy = int(self._c[1] - self._f * self._pivot[1] / -self._pivot[2])
        u = self._f * 0.01 / -self._pivot[2] * 1.2  # pixels per cm, a little behind the head
        cv2.rectangle(img, (int(cx - 17 * u), int(cy + 14 * u)), (int(cx + 17 * u), h),
                      (34, 32, 32), -1)
        cv2.ellipse(img, (cx, int(cy - 2 * u)), (int(12 * u), int(10 * u)), 0, 0, 360,
                    (30, 29, 29), -1)
        # torso in the photo's shirt colour, and a seat belt
        shirt = tuple(int(c) for c in self.face.shirt_bgr)
        neck_y = int(cy + 9 * u)
        body = np.array([[cx - 24 * u, h], [cx - 21 * u, neck_y + 7 * u], [cx - 7 * u, neck_y],
                         [cx + 7 * u, neck_y], [cx + 21 * u, neck_y + 7 * u], [cx + 24 * u, h]],
                        np.int32)
        cv2.fillPoly(img, [body], shirt)
        cv2.line(img, (int(cx + 18 * u), neck_y + int(5 * u)), (int(cx - 14 * u), h),
                 (25, 25, 28), max(2, int(4.5 * u)))
        tex = self._rng.normal(0, 4, (h, w, 1)).astype(np.float32)
        img = np.clip(img + cv2.GaussianBlur(tex, (0, 0), 3)[..., None], 0, 255).astype(np.uint8)
        return img, cv2.GaussianBlur(mask, (0, 0), 6)

    # ------------------------------------------------------------ head layer

    def _head_layer(self, R: np.ndarray, R_prev: np.ndarray | None,
                    V_m: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray, tuple[int, int], np.ndarray, np.ndarray]:
        """(bgr float32, alpha float32, top-left (x, y), projected points, triangle ids) of
        the head (``V_m``: the mesh of this frame, default the lifted face's)."""
        s = self.scene
        px, P = self.project(R, V_m)
        T = self._T
        a, b, c = px[T[:, 0]], px[T[:, 1]], px[T[:, 2]]
        # front faces: counter-clockwise with y up = clockwise in pixels (y down)
        area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (
            c[:, 0] - a[:, 0])
        vis = np.nonzero(area < -0.05)[0]
        lo = np.floor(px.min(axis=0)).astype(int) - 2
        hi = np.ceil(px.max(axis=0)).astype(int) + 3
        lo = np.maximum(lo, 0)
        hi = np.minimum(hi, [s.width_px, s.height_px])
        if len(vis) == 0 or np.any(hi - lo < 2):
            return (np.zeros((1, 1, 3), np.float32), np.zeros((1, 1), np.float32), (0, 0), px,
                    np.full((1, 1), -1, np.int32))
        order = vis[np.argsort(P[T[vis]].mean(axis=1)[:, 2])]  # far (most negative z) first
        local = px - lo
        wr, hr = int(hi[0] - lo[0]), int(hi[1] - lo[1])
        ids = np.full((hr, wr), -1, np.int32)
        fixed = np.round(local * 16).astype(np.int32)
        tri_pts = fixed[T[order]]
        for k, tri in zip(order.tolist(), tri_pts, strict=True):
            cv2.fillConvexPoly(ids, tri, k, lineType=cv2.LINE_8, shift=4)
        ys, xs = np.nonzero(ids >= 0)
        if len(xs) == 0:
            return (np.zeros((1, 1, 3), np.float32), np.zeros((1, 1), np.float32), (0, 0), px,
                    np.full((1, 1), -1, np.int32))
        # per-triangle affine maps pixel (x, y, 1) -> texture (u, v) and shading
        D = np.concatenate([local[T[vis]], np.ones((len(vis), 3, 1))], axis=2)
        normals = self._normals @ np.asarray(R).T
        shade = AMBIENT + DIFFUSE * np.maximum(normals @ self._light, 0.0)
        shade = np.clip(shade / np.maximum(self._shade0, 0.2), 0.35, 1.35)
        rhs = np.concatenate([self._uv[T[vis]], shade[T[vis]][..., None]], axis=2)
        coef = np.zeros((len(T), 3, 3))
        coef[vis] = np.linalg.solve(D, rhs)
        k = ids[ys, xs]
        C = coef[k]
        out = C[:, 0, :] * xs[:, None] + C[:, 1, :] * ys[:, None] + C[:, 2, :]
        map_x = np.full((hr, wr), -1.0, np.float32)
        map_y = np.full((hr, wr), -1.0, np.float32)
        map_x[ys, xs] = out[:, 0]
        map_y[ys, xs] = out[:, 1]
        layer: np.ndarray = cv2.remap(self.face.texture, map_x, map_y, cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE).astype(np.float32)
        shade_img = np.ones((hr, wr), np.float32)
        shade_img[ys, xs] = out[:, 2]
        layer *= shade_img[..., None]
        alpha: np.ndarray = (ids >= 0).astype(np.float32)
        # soften the silhouette by one pixel (anti-aliasing) and the neck's lower end
        alpha = cv2.GaussianBlur(alpha, (3, 3), 0.8)
        if R_prev is not None and s.exposure_s > 0:
            p0 = self.project(R_prev)[0][NOSE_TIP]
            d = (px[NOSE_TIP] - p0) * s.exposure_s * s.fps
            length = float(np.hypot(*d))
            if length >= 1.0:
                n = int(math.ceil(length)) | 1
                kern = np.zeros((n, n), np.float32)
                cv2.line(kern, (int(n / 2 - d[0] / 2), int(n / 2 - d[1] / 2)),
                         (int(n / 2 + d[0] / 2), int(n / 2 + d[1] / 2)), 1.0, 1)
                kern /= max(float(kern.sum()), 1e-6)
                layer = cv2.filter2D(layer * alpha[..., None], -1, kern)
                alpha = cv2.filter2D(alpha, -1, kern)
                layer = layer / np.maximum(alpha, 1e-3)[..., None]
        return layer, alpha, (int(lo[0]), int(lo[1])), px, ids

    # ------------------------------------------------------------ eyes and mouth

    def _init_eyes_and_mouth(self) -> None:
        V = self.face.vertices_cm.astype(np.float64)
        T = self._T
        # the eyes: the opening and two rings of lid skin around it
        self._region_tris = []
        for contour in (RIGHT_EYE_CONTOUR, LEFT_EYE_CONTOUR):
            ring = np.unique(T[np.isin(T, contour).any(axis=1)])
            self._region_tris.append(np.nonzero(np.isin(T, ring).any(axis=1))[0])
        # the mouth: the whole face (its inner triangles are slivers on a closed-mouth photo and
        # may be culled once stretched open; the cavity's own polygon bounds it)
        self._region_tris.append(np.arange(len(T)))
        # eyeball centres: behind the opening's centre, the cornea a little proud of the lids
        self._eyeball = [V[list(c)].mean(axis=0) + np.array([0.0, 0.0, 0.3 - EYEBALL_RADIUS_CM])
                         for c in (RIGHT_EYE_CONTOUR, LEFT_EYE_CONTOUR)]
        # the jaw: below the lips' parting line, fading out toward the cheeks; the lower inner
        # lip moves with it and the upper one stays even where a closed mouth's lips meet
        corners = V[[LIPS_INNER[0], LIPS_INNER[10]]]
        y0 = 0.5 * float(V[13, 1] + V[14, 1])
        half_w = 0.5 * float(abs(corners[1, 0] - corners[0, 0]))
        cx = float(corners[:, 0].mean())
        below = np.clip((y0 - V[:, 1]) / 0.6 + 0.2, 0.0, 1.0)
        below = below * below * (3.0 - 2.0 * below)
        below[list(LIPS_INNER[1:10])] = 1.0
        below[[LIPS_INNER[0], LIPS_INNER[10], *LIPS_INNER[11:]]] = 0.0
        side = np.exp(-((V[:, 0] - cx) / (1.5 * half_w)) ** 2)
        self._jaw_weight = below * side

    def _jaw(self, mouth_open: float) -> np.ndarray | None:
        """The mesh (pivot-relative metres) with the jaw dropped for ``mouth_open``; None when
        closed (the lifted face as is)."""
        if mouth_open <= 0.02:
            return None
        V_m = self._V_m.copy()
        drop = mouth_open * JAW_DROP_CM / 100.0
        V_m[:, 1] -= drop * self._jaw_weight
        V_m[:, 2] -= 0.25 * drop * self._jaw_weight  # the jaw swings back a little
        return V_m

    def _region_mask(self, ids: np.ndarray, offset: tuple[int, int], region: int,
                     box: tuple[int, int, int, int]) -> np.ndarray:
        """float32 mask over ``box`` (x0, y0, x1, y1, frame pixels) of the pixels the head
        layer painted with the region's own triangles (an eye's opening and the lid skin
        around it / the face), grown by one pixel for the anti-aliased edges."""
        x0, y0, x1, y1 = box
        ox, oy = offset
        sub = np.full((y1 - y0, x1 - x0), -1, np.int32)
        lx0, ly0 = max(x0 - ox, 0), max(y0 - oy, 0)
        lx1, ly1 = min(x1 - ox, ids.shape[1]), min(y1 - oy, ids.shape[0])
        if lx1 > lx0 and ly1 > ly0:
            sub[ly0 + oy - y0:ly1 + oy - y0, lx0 + ox - x0:lx1 + ox - x0] = ids[ly0:ly1,
                                                                                 lx0:lx1]
        mask = np.isin(sub, self._region_tris[region]).astype(np.uint8)
        return cv2.dilate(mask, np.ones((3, 3), np.uint8)).astype(np.float32)

    def _box(self, pts: np.ndarray, margin: float) -> tuple[int, int, int, int] | None:
        h, w = self.scene.height_px, self.scene.width_px
        x0, y0 = np.floor(pts.min(axis=0) - margin).astype(int)
        x1, y1 = np.ceil(pts.max(axis=0) + margin).astype(int)
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, w), min(y1, h)
        return (int(x0), int(y0), int(x1), int(y1)) if x1 - x0 > 2 and y1 - y0 > 2 else None

    def _normals_facing(self, R: np.ndarray, ids: tuple[int, ...]) -> float:
        """Cosine between the mean normal at landmarks ``ids`` and the way to the camera."""
        normal = self._normals[list(ids)].mean(axis=0) @ np.asarray(R).T
        P = self.project(R)[1][list(ids)].mean(axis=0)
        return float(normal @ (-P / np.linalg.norm(P)) / max(np.linalg.norm(normal), 1e-9))

    def _mouth(self, img: np.ndarray, px: np.ndarray, ids: np.ndarray,
               offset: tuple[int, int], mouth_open: float, R: np.ndarray) -> None:
        """The dark cavity between the (moved) inner lips, an upper row of teeth."""
        lips = px[list(LIPS_INNER)]
        width = float(np.hypot(*(lips[10] - lips[0])))
        box = self._box(lips, 3.0)
        if box is None or width < 2.0:
            return
        x0, y0, x1, y1 = box
        if self._normals_facing(R, (13, 14)) < 0.0:
            return  # the mouth faces away
        mask = self._region_mask(ids, offset, 2, box)
        if not mask.any():
            return
        patch = img[y0:y1, x0:x1]
        local = lips - (x0, y0)
        canvas = np.zeros_like(patch)
        cv2.fillPoly(canvas, [np.round(local * 16).astype(np.int32)], (28, 24, 48),
                     cv2.LINE_AA, shift=4)
        # the tongue's glow low in the cavity, the upper teeth under the upper lip
        lower_mid, upper_mid = local[5], local[15]
        gap = float(np.hypot(*(lower_mid - upper_mid)))
        cv2.ellipse(canvas, (int(lower_mid[0]), int(lower_mid[1] - 0.15 * gap)),
                    (max(1, int(0.3 * width)), max(1, int(0.18 * gap))), 0, 180, 360,
                    (50, 45, 95), -1, cv2.LINE_AA)
        upper = local[10:]
        teeth = np.concatenate([upper, upper[::-1] + (0.0, max(1.0, 0.12 * gap))])
        cv2.fillPoly(canvas, [np.round(teeth * 16).astype(np.int32)], (185, 190, 195),
                     cv2.LINE_AA, shift=4)
        inside = np.zeros(patch.shape[:2], np.float32)
        cv2.fillPoly(inside, [np.round(local * 16).astype(np.int32)], 1.0, cv2.LINE_AA, shift=4)
        m = (inside * mask)[..., None] * min(1.0, mouth_open / 0.15)
        patch *= 1.0 - m
        patch += canvas * m

    def _eye(self, img: np.ndarray, px: np.ndarray, ids: np.ndarray, offset: tuple[int, int],
             e: int, R: np.ndarray, truth: FrameTruth) -> None:
        """Eye ``e`` (0: the driver's right, image left): the gaze's iris, the lids."""
        gazing = abs(truth.gaze_yaw_deg) > 0.3 or abs(truth.gaze_pitch_deg) > 0.3
        if truth.eye_open >= 0.995 and not gazing:
            return  # the photo's own open eye, looking straight ahead
        contour = RIGHT_EYE_CONTOUR if e == 0 else LEFT_EYE_CONTOUR
        pts = px[list(contour)]
        lower = pts[8::-1]  # inner corner -> outer corner
        upper = np.concatenate([pts[8:], pts[:1]])  # inner corner -> outer corner
        width = float(np.hypot(*(pts[8] - pts[0])))
        box = self._box(pts, 0.6 * width + 2.0)
        if box is None or width < 2.0:
            return
        x0, y0, x1, y1 = box
        mask = self._region_mask(ids, offset, e, box)
        if not mask.any():
            return  # turned away or hidden behind the nose
        patch = img[y0:y1, x0:x1]
        lo, up = lower - (x0, y0), upper - (x0, y0)
        opening = np.concatenate([up, lo[::-1]])
        if gazing:
            self._iris(patch, opening, mask, e, R, (x0, y0), truth)
        if truth.eye_open < 0.995:
            self._lid(patch, lo, up, mask, width, truth.eye_open)

    def _iris(self, patch: np.ndarray, opening: np.ndarray, mask: np.ndarray, e: int,
              R: np.ndarray, origin: tuple[int, int], truth: FrameTruth) -> None:
        """Paint the photo's iris over with sclera, draw the iris and pupil where the gaze
        turns them, clipped to the eye opening."""
        inside = np.zeros(patch.shape[:2], np.float32)
        cv2.fillPoly(inside, [np.round(opening * 16).astype(np.int32)], 1.0, cv2.LINE_AA,
                     shift=4)
        m = inside * mask
        sel = m > 0.5
        if sel.sum() < 4:
            return
        pixels = patch[sel]
        order = np.argsort(pixels.mean(axis=1))
        n = len(order)
        iris_bgr = pixels[order[:max(1, n // 6)]].mean(axis=0)
        sclera_bgr = pixels[order[-max(1, n // 10):]].mean(axis=0)
        canvas = np.empty_like(patch)
        canvas[:] = sclera_bgr
        # the iris: a circle on the eyeball turned by the gaze (yaw > 0 toward -x, pitch up)
        yaw, pitch = math.radians(truth.gaze_yaw_deg), math.radians(truth.gaze_pitch_deg)
        d = np.array([-math.sin(yaw) * math.cos(pitch), math.sin(pitch),
                      math.cos(yaw) * math.cos(pitch)])
        a = np.cross([0.0, 1.0, 0.0], d)
        a /= np.linalg.norm(a)
        b = np.cross(d, a)
        ring = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        centre = self._eyeball[e] + d * math.sqrt(EYEBALL_RADIUS_CM ** 2 - IRIS_RADIUS_CM ** 2)
        origin_px = np.asarray(origin, np.float64)
        for radius, colour in ((IRIS_RADIUS_CM, iris_bgr), (PUPIL_RADIUS_CM, 0.3 * iris_bgr)):
            circle = centre + radius * (np.cos(ring)[:, None] * a + np.sin(ring)[:, None] * b)
            poly = np.round((self.project(R, (circle - PIVOT_CM) / 100.0)[0] - origin_px)
                            * 16).astype(np.int32)
            cv2.fillPoly(canvas, [poly], colour.tolist(), cv2.LINE_AA, shift=4)
            if radius == IRIS_RADIUS_CM:  # the darker limbal ring
                cv2.polylines(canvas, [poly], True, (0.55 * iris_bgr).tolist(), 1, cv2.LINE_AA,
                              shift=4)
        canvas = cv2.GaussianBlur(canvas, (0, 0), 0.6)
        m3 = m[..., None]
        patch *= 1.0 - m3
        patch += canvas * m3

    def _lid(self, patch: np.ndarray, lower: np.ndarray, upper: np.ndarray, mask: np.ndarray,
             width: float, eye_open: float) -> None:
        """The upper lid down to ``eye_open`` of the way (0: on the lower lid): skin from a
        little above the upper lid (covering the photo's own lash line, feathered into the
        skin there) down to the edge, a dark lash line on the edge."""
        o = max(0.0, eye_open)
        edge = lower + o * (upper - lower)
        raised = upper + LID_COVER_ABOVE * (upper - lower)
        raised[[0, -1]] = upper[[0, -1]]
        # skin above the upper lid (beyond the photo's lashes) and below the lower one; the
        # brighter half, so a spectacle rim or a shadow does not colour the lid
        gap = upper[2:7] - lower[2:7]
        probes = np.concatenate([upper[2:7] + (LID_COVER_ABOVE + 0.5) * gap,
                                 upper[2:7] + (LID_COVER_ABOVE + 0.9) * gap,
                                 lower[2:7] - 0.8 * gap])
        h, w = patch.shape[:2]
        xy = np.clip(np.round(probes).astype(int), 0, [w - 1, h - 1])
        samples = patch[xy[:, 1], xy[:, 0]]
        bright = samples[np.argsort(samples.mean(axis=1))[len(samples) // 2:]]
        skin = np.median(bright, axis=0)
        canvas = np.empty_like(patch)
        canvas[:] = skin
        crease = edge + 0.4 * (raised - edge)
        cv2.polylines(canvas, [np.round(crease * 16).astype(np.int32)], False,
                      (0.85 * skin).tolist(), max(1, int(0.05 * width)), cv2.LINE_AA, shift=4)
        cover = np.zeros((h, w), np.float32)
        lid = np.round(np.concatenate([raised, edge[::-1]]) * 16).astype(np.int32)
        cv2.fillPoly(cover, [lid], 1.0, cv2.LINE_AA, shift=4)
        cover = np.maximum(cv2.GaussianBlur(cover, (0, 0), max(0.6, 0.1 * width)), 0.0)
        # the edge stays sharp: fill the lower half of the lid again, unblurred
        cv2.fillPoly(cover, [np.round(np.concatenate([crease, edge[::-1]]) * 16).astype(
            np.int32)], 1.0, cv2.LINE_AA, shift=4)
        lash = max(1, int(round(0.08 * width)))
        cv2.polylines(canvas, [np.round(edge * 16).astype(np.int32)], False,
                      (0.28 * skin).tolist(), lash, cv2.LINE_AA, shift=4)
        cv2.polylines(cover, [np.round(edge * 16).astype(np.int32)], False, 1.0, lash,
                      cv2.LINE_AA, shift=4)
        canvas = cv2.GaussianBlur(canvas, (0, 0), 0.5)
        m3 = (np.clip(cover, 0.0, 1.0) * mask)[..., None]
        patch *= 1.0 - m3
        patch += canvas * m3

    # ------------------------------------------------------------ occluders

    def _sunglasses(self, img: np.ndarray, px: np.ndarray, R: np.ndarray) -> None:
        normals = self._normals @ np.asarray(R).T
        P = self.project(R)[1]
        for ids in (RIGHT_EYE_IDS, LEFT_EYE_IDS):
            centre_3d = P[list(ids)].mean(axis=0)
            view = -centre_3d / np.linalg.norm(centre_3d)
            if float(normals[ids[2]] @ view) < -0.1:
                continue
            outer, inner = px[ids[0]], px[ids[1]]
            centre = 0.5 * (outer + inner) + np.array([0.0, 0.05 * np.hypot(*(outer - inner))])
            width = float(np.hypot(*(outer - inner)))
            angle = math.degrees(math.atan2(inner[1] - outer[1], inner[0] - outer[0]))
            axes = (max(1, int(0.75 * width)), max(1, int(0.55 * width)))
            cv2.ellipse(img, (int(centre[0]), int(centre[1])), axes, angle, 0, 360,
                        (18, 18, 22), -1, cv2.LINE_AA)
            cv2.ellipse(img, (int(centre[0] - 0.2 * width), int(centre[1] - 0.2 * width)),
                        (max(1, axes[0] // 4), max(1, axes[1] // 5)), angle, 0, 360,
                        (70, 70, 75), -1, cv2.LINE_AA)
        a, b = px[168], px[6]  # bridge of the nose
        cv2.line(img, (int(a[0]), int(a[1])), (int(b[0]), int(b[1])), (18, 18, 22), 2)

    def _hand(self, img: np.ndarray, centre: np.ndarray, size_px: float, angle_deg: float
              ) -> None:
        colour = self._skin
        cx, cy = float(centre[0]), float(centre[1])
        a = math.radians(angle_deg)
        ux, uy = np.array([math.cos(a), math.sin(a)]), np.array([-math.sin(a), math.cos(a)])
        palm = (int(0.42 * size_px), int(0.5 * size_px))
        cv2.ellipse(img, (int(cx), int(cy)), palm, angle_deg, 0, 360, colour, -1, cv2.LINE_AA)
        for i, off in enumerate((-0.3, -0.1, 0.1, 0.3)):
            base = np.array([cx, cy]) + off * size_px * ux - 0.45 * size_px * uy
            tip = base - (0.45 - 0.06 * abs(i - 1.5)) * size_px * uy
            mid = 0.5 * (base + tip)
            cv2.ellipse(img, (int(mid[0]), int(mid[1])),
                        (max(1, int(0.08 * size_px)), max(1, int(0.26 * size_px))),
                        angle_deg, 0, 360, colour, -1, cv2.LINE_AA)
        thumb = np.array([cx, cy]) + 0.45 * size_px * ux + 0.05 * size_px * uy
        cv2.ellipse(img, (int(thumb[0]), int(thumb[1])),
                    (max(1, int(0.25 * size_px)), max(1, int(0.09 * size_px))),
                    angle_deg - 30, 0, 360, colour, -1, cv2.LINE_AA)
        shade = tuple(0.7 * c for c in colour)
        cv2.line(img, (int(cx - 0.3 * size_px), int(cy + 0.5 * size_px)),
                 (int(cx - 0.3 * size_px), int(img.shape[0])), shade, max(2, int(0.5 * size_px)))

    # ------------------------------------------------------------ frame

    def render(self, truth: FrameTruth, previous: FrameTruth | None = None) -> np.ndarray:
        """One BGR uint8 frame for ``truth`` (``previous`` frame for the motion blur)."""
        s = self.scene
        img: np.ndarray = self._background.astype(np.float32)
        R = truth.rotation
        V_m = self._jaw(truth.mouth_open)
        layer, alpha, (x0, y0), px, ids = self._head_layer(
            R, None if previous is None else previous.rotation, V_m)
        h, w = alpha.shape
        roi = img[y0:y0 + h, x0:x0 + w]
        a = alpha[..., None]
        roi *= 1.0 - a
        roi += layer * a
        face_w = float(np.hypot(*(px[454] - px[234])))
        if truth.mouth_open > 0.02:
            self._mouth(img, px, ids, (x0, y0), truth.mouth_open, R)
        for e in range(2):
            self._eye(img, px, ids, (x0, y0), e, R, truth)
        if truth.sunglasses:
            self._sunglasses(img, px, R)
        if truth.hand is not None:  # a hand crossing from the image right to the left
            u = truth.hand
            centre = px[5] + np.array([(1.4 - 2.8 * u) * face_w, 0.15 * face_w])
            self._hand(img, centre, 1.1 * face_w, -15.0)
        if truth.cover > 0:
            u = truth.cover
            middle = px[:468].mean(axis=0)
            centre = middle + np.array([(1.0 - u) * 2.0 * face_w, (1.0 - u) * 1.0 * face_w
                                        + 0.25 * face_w])
            self._hand(img, centre, 2.2 * face_w, -10.0)
        t = truth.t_s
        drift = 1.0 + s.light_drift * float(np.mean(np.sin(
            2 * np.pi * self._drift_f * t + self._drift_p)))
        sun = 0.35 * (0.5 + 0.5 * math.sin(2 * np.pi * 0.03 * t + self._drift_p[0]))
        gain = truth.light_gain * drift
        light = self._vignette * (gain + sun * self._window_mask)
        if truth.blocked:
            # a hand or tape over the lens: no structure left, only a dim, smooth glow
            # (dimming alone leaves a face the detector rightly still finds)
            sigma = 0.12 * s.width_px
            img = cv2.GaussianBlur(img, (0, 0), sigmaX=sigma, sigmaY=sigma)
            light = light * 0.25
        if s.ir:
            gray = img[..., 0] * 0.15 + img[..., 1] * 0.3 + img[..., 2] * 0.55
            gray = gray * light * 1.1
            img = np.repeat(gray[..., None], 3, axis=2)
        else:
            img *= light[..., None]
        if s.noise_sigma > 0:
            bank = self._noise[int(self._rng.integers(len(self._noise)))]
            dx = int(self._rng.integers(32))
            n = bank[:, dx:dx + s.width_px]
            if s.ir:
                n = n[..., :1]
            img += n * s.noise_sigma
        return np.clip(img, 0, 255).astype(np.uint8)


# ----------------------------------------------------------------- whole clips


SYNTH_VERSION = "3"  # bump when the renderer's output changes: invalidates cached clips


@dataclass(frozen=True, slots=True)
class RenderResult:
    """Files of a rendered scenario (all in ``out_dir``) and whether they came from cache."""

    out_dir: Path
    video: Path
    poses_csv: Path
    expected_events: Path
    frames: int
    fps: float
    cached: bool


def default_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """``$XDG_CACHE_HOME/dms/synth`` (default ``~/.cache/dms/synth``); read at call time."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dms" / "synth"


def _options(scenario: Scenario, photo: str | None, fps: float | None, size: str | None,
             ir: bool | None, seed: int | None) -> RenderOptions:
    o = scenario.options
    changes: dict[str, object] = {}
    for name, value in (("photo", photo), ("fps", fps), ("size", size), ("ir", ir),
                        ("seed", seed)):
        if value is not None:
            changes[name] = value
    o = replace(o, **changes)  # type: ignore[arg-type]
    try:
        o.validate()
    except ValueError as exc:
        raise InputError(f"scenario {scenario.name}: render options: {exc}") from None
    return o


def render_key(scenario: Scenario, options: RenderOptions) -> str:
    """Hash of everything the clip depends on: script, options, photo bytes, renderer and
    model versions."""
    h = hashlib.sha256()
    h.update(SYNTH_VERSION.encode())
    for module in ("lift.py", "render.py", "script.py"):  # the renderer's own code
        h.update((Path(__file__).parent / module).read_bytes())
    h.update(Path(grammar.__file__).read_bytes())  # the scenario language it reads
    h.update(scenario.script.text.encode())
    h.update(json.dumps(dataclasses.asdict(options), sort_keys=True).encode())
    h.update(photo_path(options.photo).read_bytes())
    for name in ("face_landmark.onnx", "face_detection_back.onnx", "canonical_face_mesh.npz"):
        p = models_dir() / name
        h.update(f"{name}:{p.stat().st_size if p.is_file() else 0}".encode())
    return h.hexdigest()


def render_scenario(
    name_or_path: str | Path,
    out_dir: str | Path | None = None,
    *,
    photo: str | None = None,
    fps: float | None = None,
    size: str | None = None,
    ir: bool | None = None,
    seed: int | None = None,
    use_cache: bool = True,
    cache_dir: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> RenderResult:
    """Render a scenario (shipped name, TOML path or inline script) to
    ``out_dir/video.mp4``, ``poses.csv`` and ``expected_events.json``.

    Options left None come from the scenario's ``[render]`` table. With ``out_dir`` None the
    clip goes to ``cache_dir or default_cache_dir()`` / ``NAME-KEY``. When ``use_cache`` and
    ``out_dir/render.json`` records the same key, the files are reused without rendering.
    ``progress(done, total)`` is called after each rendered frame (not for a cached clip).
    """
    scenario = load_scenario(name_or_path)
    options = _options(scenario, photo, fps, size, ir, seed)
    key = render_key(scenario, options)
    if out_dir is None:
        out_dir = (cache_dir or default_cache_dir()) / f"{scenario.name}-{key[:12]}"
    out = Path(out_dir)
    files = (out / "video.mp4", out / "poses.csv", out / "expected_events.json")
    meta_path = out / "render.json"
    if use_cache and meta_path.is_file() and all(f.is_file() for f in files):
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            meta = {}
        if meta.get("key") == key:
            log.info("%s: reusing the cached render in %s", scenario.name, out)
            return RenderResult(out, *files, int(meta["frames"]), float(meta["fps"]), True)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"{out}: cannot create the output folder: {exc}") from None
    traj = Trajectory(scenario.script, seed=options.seed)
    truths = traj.frames(options.fps)
    face = lift_photo(options.photo)
    scene = SceneSettings(width_px=options.width_px, height_px=options.height_px,
                          fps=options.fps, hfov_deg=options.hfov_deg,
                          distance_m=options.distance_m, ir=options.ir,
                          noise_sigma=options.noise_sigma, seed=options.seed)
    renderer = FaceRenderer(face, scene)
    tmp_video = out / "video.partial.mp4"
    writer = cv2.VideoWriter(str(tmp_video), cv2.VideoWriter.fourcc(*"mp4v"), options.fps,
                             (options.width_px, options.height_px))
    if not writer.isOpened():
        raise InputError(f"{tmp_video}: OpenCV cannot write an mp4v video here")
    t0 = time.perf_counter()
    try:
        prev = None
        for i, truth in enumerate(truths):
            writer.write(renderer.render(truth, prev))
            prev = truth
            if progress is not None:
                progress(i + 1, len(truths))
    finally:
        writer.release()
    elapsed = time.perf_counter() - t0
    os.replace(tmp_video, files[0])
    files[1].write_text(poses_csv_text(truths), encoding="utf-8")
    events = events_json(scenario.script)
    events["scenario"] = scenario.name
    files[2].write_text(json.dumps(events, indent=2) + "\n", encoding="utf-8")
    meta = {"key": key, "scenario": scenario.name, "frames": len(truths), "fps": options.fps,
            "options": dataclasses.asdict(options), "render_s": round(elapsed, 2),
            "synth_version": SYNTH_VERSION}
    meta_path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    log.info("%s: %d frames in %.1f s -> %s", scenario.name, len(truths), elapsed, out)
    return RenderResult(out, *files, len(truths), options.fps, False)
