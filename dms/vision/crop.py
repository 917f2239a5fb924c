"""The face crop: one function shared by inference, evaluation and training.

A head-pose network is only as good as the agreement between the crops it was trained on and
the crops it sees. Every user of a face crop in dms calls :func:`face_crop`.

The crop, from a face box (x1, y1, x2, y2) of width w and height h:

1. expand the box by ``margins``: ``left``/``right`` times w on each side, ``top`` times h
   above (the forehead) and ``bottom`` times h below;
2. make it square about its centre, side = the larger of the expanded width and height;
3. resample it to ``size`` x ``size`` with one affine warp (bilinear); pixels outside the
   image are filled with the replicated border, so faces at the frame edge still crop.

Defaults follow the usual head-pose test-time crop (REFERENCE section 1: 0.4 w each side,
0.4 h on top, 0.12 h at the bottom). Training draws the side margins at random in [0.2, 0.4].

A network trained on another crop keeps its own: :class:`ScaledCrop` is 3DDFA_V2's rule (a
square of 1.58 x the mean box side, its centre 0.14 of that side below the box centre, zero
outside the image), used by ``tddfa_mb05`` and the students trained from it. An ONNX names its
rule in the metadata prop ``dms_crop`` (:data:`CROP_RULES`; absent = ``margins``).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

IMAGENET_MEAN_RGB = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD_RGB = np.array([0.229, 0.224, 0.225], dtype=np.float32)


@dataclass(frozen=True, slots=True)
class CropMargins:
    """Box expansion as fractions of the box size (see module doc)."""

    left: float = 0.4
    right: float = 0.4
    top: float = 0.4
    bottom: float = 0.12


TEST_MARGINS = CropMargins()


@dataclass(frozen=True, slots=True)
class ScaledCrop:
    """A square of ``scale`` x the mean of the box's width and height, centred on the box centre
    moved down by ``down`` x that mean; pixels outside the image are zero (3DDFA_V2's crop)."""

    scale: float = 1.58
    down: float = 0.14


TDDFA_RULE = ScaledCrop()
CropRule = CropMargins | ScaledCrop
CROP_RULES: dict[str, CropRule] = {"margins": TEST_MARGINS, "tddfa": TDDFA_RULE}


def crop_square(
    box: tuple[float, float, float, float] | list[float], margins: CropRule = TEST_MARGINS
) -> tuple[float, float, float]:
    """Centre x, centre y and side of the square crop region for a box (steps 1 and 2)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = x2 - x1, y2 - y1
    if isinstance(margins, ScaledCrop):
        mean_side = 0.5 * (w + h)
        return 0.5 * (x1 + x2), 0.5 * (y1 + y2) + margins.down * mean_side, (
            margins.scale * mean_side)
    ex1, ex2 = x1 - margins.left * w, x2 + margins.right * w
    ey1, ey2 = y1 - margins.top * h, y2 + margins.bottom * h
    side = max(ex2 - ex1, ey2 - ey1)
    return 0.5 * (ex1 + ex2), 0.5 * (ey1 + ey2), side


def crop_transform(
    box: tuple[float, float, float, float] | list[float],
    size: int,
    margins: CropRule = TEST_MARGINS,
) -> np.ndarray:
    """The 2x3 affine matrix mapping image pixels to crop pixels."""
    cx, cy, side = crop_square(box, margins)
    scale = size / max(side, 1e-6)
    return np.array(
        [[scale, 0.0, size / 2.0 - scale * cx], [0.0, scale, size / 2.0 - scale * cy]],
        dtype=np.float64,
    )


def face_crop(
    image: np.ndarray,
    box: tuple[float, float, float, float] | list[float],
    size: int,
    margins: CropRule = TEST_MARGINS,
) -> tuple[np.ndarray, np.ndarray]:
    """Crop ``image`` (H x W x C, any dtype OpenCV warps) around ``box`` by the rule
    ``margins``.

    Returns the ``size`` x ``size`` crop and the 2x3 image->crop affine matrix.
    """
    A = crop_transform(box, size, margins)
    border = cv2.BORDER_CONSTANT if isinstance(margins, ScaledCrop) else cv2.BORDER_REPLICATE
    crop = cv2.warpAffine(image, A, (size, size), flags=cv2.INTER_LINEAR, borderMode=border)
    return crop, A


# (v / 255 - mean) / std of every uint8 value v, one row per RGB channel: a lookup a plane
# is a quarter of the float arithmetic's cost on a 120 px crop (0.06 against 0.24 ms)
_IMAGENET_LUT_RGB = ((np.arange(256, dtype=np.float32)[None, :] * np.float32(1.0 / 255.0)
                      - IMAGENET_MEAN_RGB[:, None]) / IMAGENET_STD_RGB[:, None]).astype(np.float32)


def to_nchw_imagenet(crop_bgr: np.ndarray) -> np.ndarray:
    """BGR uint8 crop (H x W x 3) -> 1 x 3 x H x W float32 RGB, ImageNet mean/std (another
    dtype is converted with the same arithmetic, not looked up)."""
    if crop_bgr.dtype != np.uint8:
        rgb = crop_bgr[:, :, ::-1].astype(np.float32) * (1.0 / 255.0)
        rgb = (rgb - IMAGENET_MEAN_RGB) / IMAGENET_STD_RGB
        return np.ascontiguousarray(rgb.transpose(2, 0, 1)[None])
    h, w = crop_bgr.shape[:2]
    out = np.empty((1, 3, h, w), np.float32)
    for c in range(3):  # RGB plane c from BGR channel 2 - c
        out[0, c] = _IMAGENET_LUT_RGB[c][crop_bgr[:, :, 2 - c]]
    return out
