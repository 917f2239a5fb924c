import numpy as np
import pytest

from dms.vision.crop import CropMargins, crop_square, face_crop, to_nchw_imagenet


def test_crop_square_applies_documented_margins():
    cx, cy, side = crop_square((100, 100, 200, 300))  # w 100, h 200
    # x: 100-40 .. 200+40 -> width 180; y: 100-80 .. 300+24 -> height 304
    assert side == pytest.approx(304)
    assert cx == pytest.approx(150)
    assert cy == pytest.approx((20 + 324) / 2)


def test_face_crop_maps_box_centre_to_crop_centre_and_pads_edges():
    img = np.zeros((100, 100, 3), np.uint8)
    img[40:60, 40:60] = 255
    crop, A = face_crop(img, (40, 40, 60, 60), 64, CropMargins(0, 0, 0, 0))
    assert crop.shape == (64, 64, 3)
    centre = A @ np.array([50.0, 50.0, 1.0])
    assert np.allclose(centre, [32, 32])
    assert crop[32, 32].tolist() == [255, 255, 255]
    # a face at the image corner still crops (border replicated, no exception)
    crop2, _ = face_crop(img, (-10, -10, 20, 20), 32)
    assert crop2.shape == (32, 32, 3)


def test_imagenet_normalisation_layout():
    crop = np.zeros((8, 8, 3), np.uint8)
    crop[..., 2] = 255  # red in BGR
    x = to_nchw_imagenet(crop)
    assert x.shape == (1, 3, 8, 8) and x.dtype == np.float32
    assert x[0, 0, 0, 0] == pytest.approx((1.0 - 0.485) / 0.229, rel=1e-5)  # R channel first
    assert x[0, 2, 0, 0] == pytest.approx((0.0 - 0.406) / 0.225, rel=1e-5)


def test_imagenet_lookup_matches_the_arithmetic_on_every_byte_value():
    """to_nchw_imagenet looks uint8 values up; any other dtype takes the float arithmetic:
    the two agree on all 256 values of each channel, RGB order and NCHW layout included."""
    from dms.vision.crop import IMAGENET_MEAN_RGB, IMAGENET_STD_RGB

    values = np.arange(256, dtype=np.uint8)
    bgr = np.stack([values, values[::-1], np.roll(values, 7)], axis=-1).reshape(16, 16, 3)
    looked_up = to_nchw_imagenet(bgr)
    computed = to_nchw_imagenet(bgr.astype(np.float32))
    assert looked_up.shape == (1, 3, 16, 16) and looked_up.dtype == np.float32
    assert np.abs(looked_up - computed).max() < 1e-6
    rgb = bgr[:, :, ::-1].astype(np.float64) / 255.0
    expected = ((rgb - IMAGENET_MEAN_RGB) / IMAGENET_STD_RGB).transpose(2, 0, 1)
    assert np.abs(looked_up[0] - expected).max() < 1e-5
