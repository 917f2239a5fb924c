"""SCRFD through insightface on real faces (the ../shared models, never committed)."""

import pytest

from dms.evaluation import read_aflw2000, read_image
from dms.vision.detect import ScrfdDetector, select_driver


def _iou(a, b):
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


@pytest.mark.parametrize("name", ["scrfd_500m_bnkps", "scrfd_2.5g_bnkps"])
def test_scrfd_finds_the_labelled_face(scrfd_models, aflw_dir, name):
    det = ScrfdDetector(scrfd_models[name], input_size=320)
    faces = [f for f in read_aflw2000(aflw_dir) if f.usable and abs(f.yaw_deg) < 30][:8]
    for lf in faces:
        img = read_image(lf.image_path)
        found = det.detect(img)
        driver = select_driver(found, img.shape)
        assert driver is not None, lf.image_path
        assert driver.keypoints is not None and driver.keypoints.shape == (5, 2)
        # the landmark box (eyebrows to chin) lies mostly inside the detector's face box
        assert _iou(driver.as_list(), lf.box) > 0.4, lf.image_path


def test_select_driver_prefers_large_central_face():
    from dms.types import FaceBox

    small_centre = FaceBox(300, 220, 340, 260, 0.9)
    large_edge = FaceBox(0, 0, 200, 200, 0.9)
    assert select_driver([small_centre, large_edge], (480, 640), "largest") is large_edge
    assert select_driver([small_centre, large_edge], (480, 640), "central") is small_centre
    assert select_driver([], (480, 640)) is None
