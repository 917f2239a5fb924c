"""The annotated video's writer: H.264 MP4 through imageio-ffmpeg's ffmpeg, odd sizes padded,
one warning and MPEG-4 Part 2 without any ffmpeg, one clear error when ffmpeg fails."""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest

from dms.videofile import VideoFileWriter, ffmpeg_exe


def test_odd_sized_frames_make_an_h264_file(tmp_path: Path) -> None:
    import numpy as np

    if ffmpeg_exe() is None:
        pytest.skip("no ffmpeg (imageio-ffmpeg is a dependency: pip install -e .)")
    path = tmp_path / "odd.mp4"
    with VideoFileWriter(path, 10.0, (161, 121)) as w:
        for i in range(12):
            w.write(np.full((121, 161, 3), 20 * i, np.uint8))
    assert w.codec == "h264"
    cap = cv2.VideoCapture(str(path))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 12
    ok, img = cap.read()
    assert ok and img.shape[:2] == (122, 162)  # padded to even for yuv420p


def test_without_any_ffmpeg_it_says_so_once_and_writes_mpeg4(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    import numpy as np

    with VideoFileWriter(tmp_path / "v.mp4", 10.0, (64, 48), ffmpeg=None) as w:
        for _ in range(5):
            w.write(np.zeros((48, 64, 3), np.uint8))
    assert w.codec == "mp4v"
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "browsers do not play" in caplog.text
    assert int(cv2.VideoCapture(str(tmp_path / "v.mp4")).get(cv2.CAP_PROP_FRAME_COUNT)) == 5


def test_an_ffmpeg_that_fails_is_one_clear_error(tmp_path: Path) -> None:
    import numpy as np

    from dms.errors import InputError

    if ffmpeg_exe() is None:
        pytest.skip("no ffmpeg")
    target = tmp_path / "v.mp4"
    target.mkdir()  # a folder where the file should go: ffmpeg cannot write it
    w = VideoFileWriter(target, 10.0, (64, 48))
    with pytest.raises(InputError, match=r"v\.mp4: ffmpeg (stopped|failed)") as err:
        for _ in range(200):
            w.write(np.zeros((48, 64, 3), np.uint8))
        w.close()
    assert "\n" not in str(err.value)
