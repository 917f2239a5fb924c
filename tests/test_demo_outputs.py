"""``dms demo`` as a person runs it, on a short scenario: progress bars that reach their
totals (the render and the pipeline), no codec noise on the console, and an annotated video
in H.264 MP4 that headless Chromium plays (a ``<video>`` element reaches readyState >= 2)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import pytest

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"

SCENARIO = '''[scenario]
name = "short_demo"
description = "calibration, one long glance at the screen, back on the road"
script = """
road 5s
glance infotainment 4s
expect distraction/long_glance L1 7.5..9.5
road 3s
"""
'''


@dataclass
class Demo:
    out: Path
    proc: subprocess.CompletedProcess
    frames: int


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    tmp = tmp_path_factory.mktemp("demo")
    scenario = tmp / "short.toml"
    scenario.write_text(SCENARIO)
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp / "cache")}  # a fresh render
    out = tmp / "out"
    proc = subprocess.run([sys.executable, "-m", "dms", "demo", "--scenario", str(scenario),
                           "--out", str(out)], capture_output=True, text=True, timeout=300,
                          env=env)
    assert proc.returncode == 0, proc.stderr
    frames = int(re.search(r"(\d+) frames, face found", proc.stdout).group(1))  # type: ignore[union-attr]
    return Demo(out, proc, frames)


@pytest.mark.slow
def test_both_progress_bars_reach_their_totals(demo: Demo) -> None:
    err = demo.proc.stderr.replace("\r", "\n")
    n = demo.frames
    assert n == 12 * 15  # 12 s at the scenario's 15 fps
    assert f"rendering the synthetic drive ({n} frames, once)" in err
    assert re.search(rf"render: 100%.*\| {n}/{n} ", err), err[-2000:]
    assert re.search(rf"demo: pipeline \+ video: 100%.*\| {n}/{n} ", err), err[-2000:]


@pytest.mark.slow
def test_no_codec_noise_on_the_console(demo: Demo) -> None:
    for noise in ("OpenCV:", "[ERROR", "h264_v4l2m2m", "MPEG-4 Part 2", "Traceback"):
        assert noise not in demo.proc.stderr, demo.proc.stderr


@pytest.mark.slow
def test_the_outputs_are_written(demo: Demo) -> None:
    for name in ("annotated.mp4", "timeline.png", "events.jsonl", "expected.json"):
        assert (demo.out / name).is_file(), name
    png = cv2.imread(str(demo.out / "timeline.png"))
    assert png is not None and png.shape[0] > 800


@pytest.mark.slow
def test_the_annotated_video_is_h264_with_its_index_first(demo: Demo) -> None:
    path = demo.out / "annotated.mp4"
    cap = cv2.VideoCapture(str(path))
    fourcc = int(cap.get(cv2.CAP_PROP_FOURCC)).to_bytes(4, "little").decode().lower()
    assert fourcc in ("avc1", "h264")
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == demo.frames
    ok, first = cap.read()
    assert ok and first.shape == (480, 640 + 400, 3)  # the camera image and the text panel
    data = path.read_bytes()
    assert 0 < data.find(b"moov") < data.find(b"mdat")  # a browser can start at once


def chromium(profile: Path):  # type: ignore[no-untyped-def]
    for exe in (CHROMIUM, CHROMEDRIVER):
        if not Path(exe).is_file():
            pytest.skip(f"needs Debian's chromium and chromium-driver ({exe} is missing; "
                        "scripts/bootstrap --dev installs them)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (dev extra)")
    from selenium.webdriver.chrome.service import Service as DriverService

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--autoplay-policy=no-user-gesture-required",
                 f"--user-data-dir={profile}"):
        options.add_argument(flag)
    return webdriver.Chrome(options=options, service=DriverService(CHROMEDRIVER))


@pytest.mark.slow
def test_the_demo_video_plays_in_headless_chromium(demo: Demo, tmp_path: Path) -> None:
    if not shutil.which(CHROMEDRIVER):
        pytest.skip(f"needs Debian's chromium and chromium-driver ({CHROMEDRIVER})")
    from selenium.webdriver.support.ui import WebDriverWait

    page = demo.out / "play.html"
    page.write_text('<!doctype html><video id="v" src="annotated.mp4" muted autoplay '
                    'preload="auto"></video>')
    browser = chromium(tmp_path / "profile")
    try:
        browser.get(page.as_uri())
        state = "const v = document.getElementById('v'); "
        WebDriverWait(browser, 30, poll_frequency=0.1).until(lambda b: b.execute_script(
            "const v = document.getElementById('v'); return v.readyState >= 2 || !!v.error"))
        error = browser.execute_script(state + "return v.error && v.error.message")
        assert not error, error
        size = browser.execute_script(state + "return [v.videoWidth, v.videoHeight, "
                                      "v.duration, v.readyState]")
        assert size[:2] == [1040, 480] and size[3] >= 2, size
        assert size[2] == pytest.approx(demo.frames / 15.0, abs=0.2)
        WebDriverWait(browser, 30, poll_frequency=0.1).until(  # it plays: time moves on
            lambda b: b.execute_script(state + "return v.currentTime") > 0.3)
    finally:
        browser.quit()
