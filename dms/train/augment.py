"""Training augmentation on face crops (numpy / OpenCV), with the label kept consistent.

Every function takes a BGR uint8 crop, the AFLW matrix ``M`` of the head in it (or None when
the sample has no label of that kind) and a ``numpy.random.Generator``. Geometric changes
update ``M``:

* horizontal flip: ``M -> F M F`` with ``F = diag(-1, 1, 1)`` (:func:`dms.geometry.mirror_rotation`
  on ``R = M.T`` is the same formula): pitch kept, yaw and roll negated;
* in-plane rotation of the image by ``phi`` counter-clockwise (OpenCV's positive angle) is a
  rotation of the head about the camera's z axis, ``R -> Rz(phi) R``, hence ``M -> M Rz(-phi)``;
* random resized crop (scale and shift) leaves the rotation unchanged.

Photometric changes cover the in-cabin case: strong side light, near-infrared-like grayscale
with a flat, high-contrast look, sensor noise, motion/defocus blur and occluders (hands,
sunglasses, a microphone).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import cv2
import numpy as np

from dms.geometry import mirror_rotation

if TYPE_CHECKING:
    from typing_extensions import Unpack

    # the crop, then each label (None stays None)
    CropAndLabels = tuple[np.ndarray, Unpack[tuple[np.ndarray | None, ...]]]

_F = np.diag([-1.0, 1.0, 1.0])


@dataclass(frozen=True, slots=True)
class AugmentSettings:
    """The ``[augment]`` table of a training config. Probabilities are per sample."""

    flip_p: float = field(default=0.5, metadata={"doc": "horizontal flip (yaw, roll negated)"})
    rotate_max_deg: float = field(
        default=15.0, metadata={"doc": "in-plane rotation range +- deg (label updated); 0 = off"}
    )
    rotate_p: float = field(default=0.3, metadata={"doc": "probability of an in-plane rotation"})
    resized_crop_min_scale: float = field(
        default=0.8, metadata={"doc": "random resized crop keeps a square of this..1.0 side"}
    )
    blur_p: float = field(default=0.3, metadata={"doc": "Gaussian or motion blur"})
    color_p: float = field(default=0.8, metadata={"doc": "brightness / contrast / gamma"})
    side_light_p: float = field(default=0.3, metadata={"doc": "directional in-cabin light ramp"})
    ir_p: float = field(default=0.25, metadata={"doc": "near-infrared-like grayscale"})
    noise_p: float = field(default=0.3, metadata={"doc": "Gaussian sensor noise"})
    occlusion_p: float = field(default=0.2, metadata={"doc": "random occluding rectangle"})

    def validate(self) -> None:
        for name in ("flip_p", "rotate_p", "blur_p", "color_p", "side_light_p", "ir_p",
                     "noise_p", "occlusion_p"):  # fmt: skip
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1]")
        if not 0.1 <= self.resized_crop_min_scale <= 1.0:
            raise ValueError("resized_crop_min_scale must be in [0.1, 1]")


NO_AUGMENT = AugmentSettings(0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


def _mirror_m(M: np.ndarray | None) -> np.ndarray | None:
    # M = R.T and F is symmetric, so mirroring M is the same formula as mirroring R.
    return None if M is None else mirror_rotation(M)


def hflip(crop: np.ndarray, *Ms: np.ndarray | None) -> CropAndLabels:
    return (np.ascontiguousarray(crop[:, ::-1]), *(_mirror_m(M) for M in Ms))


def rotate_in_plane(
    crop: np.ndarray, angle_deg: float, *Ms: np.ndarray | None
) -> CropAndLabels:
    h, w = crop.shape[:2]
    A = cv2.getRotationMatrix2D((w / 2.0 - 0.5, h / 2.0 - 0.5), angle_deg, 1.0)
    out = cv2.warpAffine(crop, A, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    c, s = np.cos(np.deg2rad(angle_deg)), np.sin(np.deg2rad(angle_deg))
    rz_inv = np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])  # Rz(-phi)
    return (out, *(None if M is None else M @ rz_inv for M in Ms))


def random_resized_crop(crop: np.ndarray, min_scale: float, rng: np.random.Generator) -> np.ndarray:
    if min_scale >= 1.0:
        return crop
    h, w = crop.shape[:2]
    s = rng.uniform(min_scale, 1.0)
    cw, ch = max(2, round(w * s)), max(2, round(h * s))
    x0 = int(rng.integers(0, w - cw + 1))
    y0 = int(rng.integers(0, h - ch + 1))
    return cv2.resize(crop[y0 : y0 + ch, x0 : x0 + cw], (w, h), interpolation=cv2.INTER_LINEAR)


def blur(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.5:
        sigma = rng.uniform(0.5, 1.5) * crop.shape[0] / 112.0
        return cv2.GaussianBlur(crop, (0, 0), sigma)
    k = int(rng.integers(3, max(4, crop.shape[0] // 16) + 1))
    line = np.zeros((k, k), np.float32)
    line[k // 2, :] = 1.0 / k
    A = cv2.getRotationMatrix2D(((k - 1) / 2.0, (k - 1) / 2.0), float(rng.uniform(0, 180)), 1.0)
    kernel: np.ndarray = cv2.warpAffine(line, A, (k, k))
    return cv2.filter2D(crop, -1, kernel / max(float(kernel.sum()), 1e-6))


def color(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x = crop.astype(np.float32) / 255.0
    x = x * rng.uniform(0.6, 1.4) + rng.uniform(-0.15, 0.15)  # contrast, brightness
    x = np.clip(x, 0.0, 1.0) ** rng.uniform(0.7, 1.5)  # gamma
    x = x * rng.uniform(0.85, 1.15, size=3).astype(np.float32)  # white balance
    return np.clip(x * 255.0, 0, 255).astype(np.uint8)


def side_light(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = crop.shape[:2]
    a = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = ((xx / w - 0.5) * np.cos(a) + (yy / h - 0.5) * np.sin(a)) * 2.0  # -1..1
    gain = 1.0 + rng.uniform(0.3, 0.8) * ramp
    out = crop.astype(np.float32) * gain[:, :, None]
    return np.clip(out, 0, 255).astype(np.uint8)


def ir_like(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Near-infrared look: grayscale, flattened skin texture, bright skin, dark pupils/hair."""
    g: np.ndarray = cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY).astype(np.float32) / 255.0
    if rng.random() < 0.5:  # NIR skin looks smooth: a light bilateral-like smoothing
        g = cv2.GaussianBlur(g, (0, 0), 0.8)
    g = np.clip((g - 0.5) * rng.uniform(1.0, 1.6) + 0.5 + rng.uniform(-0.1, 0.2), 0, 1)
    g = g ** rng.uniform(0.6, 1.2)
    g8 = (g * 255.0).astype(np.uint8)
    return cv2.cvtColor(g8, cv2.COLOR_GRAY2BGR)


def noise(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    sigma = rng.uniform(2.0, 12.0)
    out = crop.astype(np.float32) + rng.normal(0.0, sigma, size=crop.shape).astype(np.float32)
    return np.clip(out, 0, 255).astype(np.uint8)


def occlude(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = crop.shape[:2]
    ow, oh = int(w * rng.uniform(0.15, 0.45)), int(h * rng.uniform(0.1, 0.35))
    x0, y0 = int(rng.integers(0, w - ow + 1)), int(rng.integers(0, h - oh + 1))
    out = crop.copy()
    if rng.random() < 0.5:
        out[y0 : y0 + oh, x0 : x0 + ow] = rng.integers(0, 256, size=3, dtype=np.uint8)
    else:
        out[y0 : y0 + oh, x0 : x0 + ow] = rng.integers(0, 256, size=(oh, ow, 3), dtype=np.uint8)
    return out


def augment(
    crop: np.ndarray,
    gt: np.ndarray | None,
    teacher: np.ndarray | None,
    settings: AugmentSettings,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Apply the configured augmentations; both labels follow the geometric changes."""
    if rng.random() < settings.flip_p:
        crop, *labels = hflip(crop, gt, teacher)
        gt, teacher = labels
    if settings.rotate_max_deg > 0 and rng.random() < settings.rotate_p:
        phi = float(rng.uniform(-settings.rotate_max_deg, settings.rotate_max_deg))
        crop, *labels = rotate_in_plane(crop, phi, gt, teacher)
        gt, teacher = labels
    crop = random_resized_crop(crop, settings.resized_crop_min_scale, rng)
    if rng.random() < settings.color_p:
        crop = color(crop, rng)
    if rng.random() < settings.side_light_p:
        crop = side_light(crop, rng)
    if rng.random() < settings.ir_p:
        crop = ir_like(crop, rng)
    if rng.random() < settings.occlusion_p:
        crop = occlude(crop, rng)
    if rng.random() < settings.blur_p:
        crop = blur(crop, rng)
    if rng.random() < settings.noise_p:
        crop = noise(crop, rng)
    return crop, gt, teacher
