"""Rotation maths shared by the vision backends, the engine and training.

Conventions (one place, used everywhere):

* Camera frame: x to the image right, y up, z toward the camera (out of the screen).
* A head rotation ``R`` turns head-frame vectors into the camera frame; the frontal head
  looking straight into the camera is the identity.
* Euler angles are AFLW2000 / 300W-LP ``Pose_Para`` (pitch, yaw, roll): they are the angles of
  ``M = R.T = Rz(roll) @ Ry(yaw) @ Rx(pitch)`` with right-handed elementary rotations.
  The public 6D head-pose networks (6DRepNet family) output ``M`` itself as their
  ``rotation_matrix``. With this convention pitch < 0 is head down, and a horizontal mirror of
  the image negates yaw and roll and keeps pitch.
"""

from __future__ import annotations

import numpy as np


def _rx(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def _ry(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rz(a: float) -> np.ndarray:
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def aflw_matrix_from_euler(pitch_deg: float, yaw_deg: float, roll_deg: float) -> np.ndarray:
    """``M = Rz(roll) Ry(yaw) Rx(pitch)``: the matrix the 6D networks output."""
    p, y, r = np.deg2rad([pitch_deg, yaw_deg, roll_deg])
    M: np.ndarray = _rz(r) @ _ry(y) @ _rx(p)
    return M


def euler_from_aflw_matrix(M: np.ndarray) -> tuple[float, float, float]:
    """(pitch, yaw, roll) in degrees from ``M = Rz(roll) Ry(yaw) Rx(pitch)``."""
    M = np.asarray(M, dtype=np.float64)
    sy = float(np.hypot(M[0, 0], M[1, 0]))
    if sy > 1e-6:
        pitch = np.arctan2(M[2, 1], M[2, 2])
        yaw = np.arctan2(-M[2, 0], sy)
        roll = np.arctan2(M[1, 0], M[0, 0])
    else:  # gimbal lock at |yaw| = 90 deg: put everything into pitch
        pitch = np.arctan2(-M[1, 2], M[1, 1])
        yaw = np.arctan2(-M[2, 0], sy)
        roll = 0.0
    return (float(np.rad2deg(pitch)), float(np.rad2deg(yaw)), float(np.rad2deg(roll)))


def rotation_from_euler(pitch_deg: float, yaw_deg: float, roll_deg: float) -> np.ndarray:
    """Head rotation R (head -> camera) from AFLW2000 angles."""
    return aflw_matrix_from_euler(pitch_deg, yaw_deg, roll_deg).T


def euler_from_rotation(R: np.ndarray) -> tuple[float, float, float]:
    """AFLW2000 (pitch, yaw, roll) in degrees of a head rotation R (head -> camera)."""
    return euler_from_aflw_matrix(np.asarray(R).T)


def rotation_from_6d(v: np.ndarray) -> np.ndarray:
    """Gram-Schmidt of a 6-vector (two columns a1, a2) into a rotation matrix [b1 b2 b3].

    This is the 6DRepNet construction; the result is the network's ``M`` (not R).
    Works on shape (6,) or (N, 6) and returns (3, 3) or (N, 3, 3).
    """
    v = np.asarray(v, dtype=np.float64)
    single = v.ndim == 1
    v = v.reshape(-1, 6)
    a1, a2 = v[:, 0:3], v[:, 3:6]
    b1 = a1 / np.maximum(np.linalg.norm(a1, axis=1, keepdims=True), 1e-8)
    b2 = a2 - np.sum(b1 * a2, axis=1, keepdims=True) * b1
    b2 = b2 / np.maximum(np.linalg.norm(b2, axis=1, keepdims=True), 1e-8)
    b3 = np.cross(b1, b2)
    out = np.stack([b1, b2, b3], axis=2)
    return out[0] if single else out


def nearest_rotation(A: np.ndarray) -> np.ndarray:
    """The rotation closest to a 3x3 matrix in the Frobenius sense (SVD, det = +1)."""
    U, _, Vt = np.linalg.svd(np.asarray(A, dtype=np.float64))
    d = np.sign(np.linalg.det(U @ Vt)) or 1.0
    R: np.ndarray = U @ np.diag([1.0, 1.0, d]) @ Vt
    return R


def relative_rotation(R_neutral: np.ndarray, R: np.ndarray) -> np.ndarray:
    """The head's rotation relative to its neutral pose: ``R_neutral.T @ R``.

    Composing rotations (not subtracting Euler angles) keeps yaw and pitch honest when the
    neutral pose itself is turned, e.g. a camera mounted on the A-pillar.
    """
    rel: np.ndarray = np.asarray(R_neutral).T @ np.asarray(R)
    return rel


def geodesic_deg(R1: np.ndarray, R2: np.ndarray) -> float:
    """Angle in degrees of the rotation that takes R1 to R2.

    atan2 of the sine (from the skew part) and the cosine (from the trace): accurate for tiny
    angles too, where arccos of the trace alone loses half the digits (1e-6 deg of noise)."""
    M = np.asarray(R1).T @ np.asarray(R2)
    c = (np.trace(M) - 1.0) / 2.0
    s = 0.5 * np.linalg.norm([M[2, 1] - M[1, 2], M[0, 2] - M[2, 0], M[1, 0] - M[0, 1]])
    return float(np.rad2deg(np.arctan2(s, c)))


def mirror_rotation(R: np.ndarray) -> np.ndarray:
    """The head rotation seen in a horizontally mirrored image (x -> -x on both sides)."""
    F = np.diag([-1.0, 1.0, 1.0])
    mirrored: np.ndarray = F @ np.asarray(R) @ F
    return mirrored


def mean_rotation(rotations: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Chordal L2 mean of rotations (N, 3, 3): the SVD projection of their weighted mean."""
    Rs = np.asarray(rotations, dtype=np.float64).reshape(-1, 3, 3)
    w = np.ones(len(Rs)) if weights is None else np.asarray(weights, dtype=np.float64)
    A = np.einsum("n,nij->ij", w / max(float(w.sum()), 1e-12), Rs)
    return nearest_rotation(A)


def weighted_procrustes(
    src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None
) -> tuple[float, np.ndarray, np.ndarray]:
    """Similarity transform with ``dst ~= s * R @ src + t`` minimising weighted squared error.

    ``src`` and ``dst`` are (N, 3). Returns (s, R, t). Umeyama's closed form with weights.
    """
    src = np.asarray(src, dtype=np.float64)
    dst = np.asarray(dst, dtype=np.float64)
    w = np.ones(len(src)) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    mu_s = w @ src
    mu_d = w @ dst
    xs = src - mu_s
    xd = dst - mu_d
    cov = (xd * w[:, None]).T @ xs
    U, S, Vt = np.linalg.svd(cov)
    d = np.sign(np.linalg.det(U @ Vt)) or 1.0
    D = np.diag([1.0, 1.0, d])
    R = U @ D @ Vt
    var_s = float(w @ np.sum(xs * xs, axis=1))
    s = float(np.trace(np.diag(S) @ D) / max(var_s, 1e-12))
    t = mu_d - s * R @ mu_s
    return s, R, t
