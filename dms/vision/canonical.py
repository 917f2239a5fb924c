"""MediaPipe's canonical face mesh: the 3-D face the FaceMesh landmarks are fitted to.

``models/canonical_face_mesh.npz`` is extracted by ``models/build_embedded.py`` from the npm
package ``@mediapipe/face_mesh`` (Apache-2.0, ``geometry_pipeline_metadata_landmarks.binarypb``).
The mesh is in centimetres in its own model frame: x toward the viewer's right when the face
looks at the camera (landmark 33, the subject's right eye corner, has x < 0), y up, z toward
the camera (the nose tip, landmark 1, has the largest z) - the head frame of
:mod:`dms.geometry`. The 33 Procrustes ids and weights are the landmarks (and their weights)
MediaPipe uses to fit the head pose: rigid points around the eyes, nose bridge and forehead.
"""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dms.errors import ModelError
from dms.paths import models_dir

CANONICAL_MESH_FILE = "canonical_face_mesh.npz"
NUM_VERTICES = 468


@dataclass(frozen=True, slots=True)
class CanonicalFaceMesh:
    """The canonical face mesh (arrays are read-only).

    ``vertices_cm`` (468, 3) float32 in centimetres; ``uv`` (468, 2) texture coordinates;
    ``triangles`` (K, 3) int32 vertex indices; ``procrustes_ids`` (33,) int32 landmark ids with
    ``procrustes_weights`` (33,) float32.
    """

    vertices_cm: np.ndarray = field(repr=False)
    uv: np.ndarray = field(repr=False)
    triangles: np.ndarray = field(repr=False)
    procrustes_ids: np.ndarray = field(repr=False)
    procrustes_weights: np.ndarray = field(repr=False)

    @property
    def num_vertices(self) -> int:
        return int(self.vertices_cm.shape[0])


def load_canonical_mesh(path: str | Path | None = None) -> CanonicalFaceMesh:
    """Load the mesh from ``path`` (default: ``models_dir() / canonical_face_mesh.npz``)."""
    path = Path(path) if path is not None else models_dir() / CANONICAL_MESH_FILE
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: np.array(data[k]) for k in data.files}
    except FileNotFoundError:
        raise ModelError(f"{path}: canonical face mesh not found") from None
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ModelError(f"{path}: not a canonical face mesh .npz ({exc})") from None
    needed = ("vertices_cm", "uv", "triangles", "procrustes_ids", "procrustes_weights")
    missing = [k for k in needed if k not in arrays]
    if missing:
        raise ModelError(f"{path}: canonical face mesh lacks {', '.join(missing)}")
    mesh = CanonicalFaceMesh(
        vertices_cm=arrays["vertices_cm"].astype(np.float32),
        uv=arrays["uv"].astype(np.float32),
        triangles=arrays["triangles"].astype(np.int32),
        procrustes_ids=arrays["procrustes_ids"].astype(np.int32),
        procrustes_weights=arrays["procrustes_weights"].astype(np.float32),
    )
    n = mesh.num_vertices
    if (
        mesh.vertices_cm.shape != (NUM_VERTICES, 3)
        or mesh.uv.shape != (n, 2)
        or mesh.triangles.ndim != 2
        or mesh.triangles.shape[1] != 3
        or mesh.triangles.min() < 0
        or mesh.triangles.max() >= n
        or mesh.procrustes_ids.shape != mesh.procrustes_weights.shape
        or mesh.procrustes_ids.min() < 0
        or mesh.procrustes_ids.max() >= n
    ):
        raise ModelError(f"{path}: canonical face mesh arrays have unexpected shapes or indices")
    for a in (
        mesh.vertices_cm,
        mesh.uv,
        mesh.triangles,
        mesh.procrustes_ids,
        mesh.procrustes_weights,
    ):
        a.setflags(write=False)
    return mesh
