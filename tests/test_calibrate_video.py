"""`dms calibrate --source VIDEO`: the full pipeline feeding the explicit calibration."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np


def _video(path, frame, n=60, fps=20):
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, frame.shape[1::-1])
    rng = np.random.default_rng(0)
    for _ in range(n):
        noisy = np.clip(frame.astype(np.int16) + rng.integers(-3, 4, frame.shape), 0, 255)
        w.write(noisy.astype(np.uint8))
    w.release()
    return path


def _calibrate(*args):
    return subprocess.run([sys.executable, "-m", "dms", "calibrate", *args],
                          capture_output=True, text=True, timeout=120)


def test_still_driver_is_calibrated_and_stored(tmp_path, astronaut):
    frame = cv2.copyMakeBorder(astronaut[0:300, 100:400], 90, 90, 170, 170,
                               cv2.BORDER_CONSTANT, value=(35, 35, 35))
    video = _video(tmp_path / "still.mp4", frame)
    p = _calibrate("--source", str(video), "--duration-s", "2.5", "--profile", "alice",
                   "--state-dir", str(tmp_path / "state"))
    assert p.returncode == 0, p.stderr
    stored = json.loads((tmp_path / "state" / "calibration" / "alice.json").read_text())
    assert stored["profile"] == "alice" and stored["sample_count"] >= 30
    assert abs(stored["neutral"]["yaw_deg"]) < 10  # she faces the camera
    assert stored["spread_deg"] < 2.0


def test_empty_cabin_is_refused_with_a_reason(tmp_path):
    video = _video(tmp_path / "empty.mp4", np.full((480, 640, 3), 35, np.uint8))
    p = _calibrate("--source", str(video), "--duration-s", "2.5", "--profile", "bob",
                   "--state-dir", str(tmp_path / "state"))
    assert p.returncode != 0
    assert "face missing" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "state" / "calibration" / "bob.json").exists()
