"""``dms fleet serve``: a real process on 127.0.0.1 over a real store, real HTTP clients, and
the page in headless Chromium (Debian's chromium and chromium-driver; skips without them)."""

from __future__ import annotations

import http.client
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dms.fleet.payloads import classify
from dms.fleet.store import Store

from broker import free_port
from fleet_db import ROOT

TOKEN = "fleet-token-0123456789abcdef"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
TYPES = ("distraction", "drowsiness", "slump")


def make_store(path: Path, now: float) -> dict[str, int]:
    """Three devices, alerts over the last 5 hours; returns alerts per type."""
    store = Store(f"sqlite:///{path}").open()
    messages = []
    per_type = dict.fromkeys(TYPES, 0)
    for d, device in enumerate(("cab-1", "cab-2", "cab-3")):
        for n in range(1, 11 + 3 * d):
            kind = TYPES[(n + d) % 3]
            per_type[kind] += 1
            doc = {"schema": 1, "device": device, "stream": "s1", "seq": n,
                   "queued_wall_s": now - 5 * 3600 + n * 1000 + d * 37,
                   "event": {"type": kind, "reason": "r", "level": 1 + n % 3,
                             "phase": "raised"}}
            messages.append(classify(f"dms/{device}/alert", json.dumps(doc).encode(), "dms",
                                     65_536))
    messages.append(classify("dms/cab-1/status", b"online", "dms", 99))
    messages.append(classify("dms/cab-2/status", b"offline", "dms", 99))
    state = {"schema": 1, "device": "cab-1", "wall_s": now - 60,
             "state": {"driver_state": "drowsy"}}
    messages.append(classify("dms/cab-1/state", json.dumps(state).encode(), "dms", 65_536))
    store.write(messages, "w1", now)
    store.close()
    return per_type


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[int, dict[str, int]]]:
    per_type = make_store(tmp_path / "fleet.sqlite3", time.time())
    port = free_port()
    env = {**os.environ, "DMS_FLEET_TOKEN": TOKEN}
    proc = subprocess.Popen([sys.executable, "-m", "dms", "fleet", "serve", "--db",
                             str(tmp_path / "fleet.sqlite3"), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=ROOT)
    deadline = time.monotonic() + 240  # start-up on a loaded 2-core machine: a liveness bound
    while True:
        try:
            http.client.HTTPConnection("127.0.0.1", port, timeout=1).connect()
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr
            time.sleep(0.05)
    yield port, per_type
    proc.terminate()
    proc.wait(timeout=10)
    assert proc.returncode == 0


def get(port: int, path: str, headers: dict[str, str] | None = None
        ) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        conn.close()


def test_every_request_needs_the_token(served: tuple[int, dict[str, int]]) -> None:
    port, per_type = served
    for path in ("/", "/api/fleet", "/?token=wrong-token-0123456789"):
        status, _, _ = get(port, path)
        assert status == 401, path
    status, headers, _ = get(port, f"/?token={TOKEN}")
    assert status == 303 and headers["location"] == "/"
    cookie = headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
    status, _, body = get(port, "/", {"Cookie": cookie.split(";")[0]})
    assert status == 200 and b"dms fleet" in body
    status, _, body = get(port, "/api/fleet?hours=24", {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200
    view = json.loads(body)
    assert [d["device"] for d in view["devices"]] == ["cab-1", "cab-2", "cab-3"]
    assert [d["status"] for d in view["devices"]] == ["online", "offline", "unknown"]
    assert view["devices"][0]["driver_state"] == "drowsy"
    assert {k: sum(v) for k, v in view["hourly"]["types"].items()} == per_type
    assert sum(len(v) for v in view["timeline"].values()) == sum(per_type.values())
    status, _, _ = get(port, "/api/fleet?hours=-1", {"Authorization": f"Bearer {TOKEN}"})
    assert status == 400


@pytest.mark.slow
def test_the_page_in_chromium(served: tuple[int, dict[str, int]], tmp_path: Path) -> None:
    """The devices with their status and state, one bar segment per (hour, type) with a
    count, one dot per alert, the legend's totals; screenshots for a person to look at."""
    if not (Path(CHROMIUM).is_file() and Path(CHROMEDRIVER).is_file()):
        pytest.skip(f"needs Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER}; "
                    "scripts/bootstrap --dev installs them)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (dev extra)")
    from selenium.webdriver.chrome.service import Service as DriverService
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    port, per_type = served
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--window-size=1100,1200",
                 f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=DriverService(CHROMEDRIVER))
    try:
        browser.get(f"http://127.0.0.1:{port}/")
        assert "401" in browser.page_source  # no token, no page
        browser.get(f"http://127.0.0.1:{port}/?token={TOKEN}")
        wait = WebDriverWait(browser, 30, poll_frequency=0.05)
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#devices tbody tr")) == 3)
        assert browser.current_url == f"http://127.0.0.1:{port}/"  # the token left the bar
        row = browser.find_element(By.ID, "dev-cab-1").text
        assert "online" in row and "drowsy" in row
        assert "offline" in browser.find_element(By.ID, "dev-cab-2").text
        cls = browser.find_element(By.CSS_SELECTOR, "#dev-cab-1 td.online")
        assert cls.value_of_css_property("color") == "rgba(26, 127, 55, 1)"  # green
        dots = browser.find_elements(By.CSS_SELECTOR, "#timeline circle.dot")
        assert len(dots) == sum(per_type.values())
        bars = browser.find_elements(By.CSS_SELECTOR, "#hourly rect.bar")
        shown = {t: 0 for t in TYPES}
        for bar in bars:
            title = bar.find_element(By.TAG_NAME, "title").get_attribute("textContent")
            count, kind = title.split(": ")[1].split(" ", 1)
            shown[kind] += int(count)
            assert float(bar.get_attribute("height")) > 0
        assert shown == per_type
        legend = browser.find_element(By.ID, "legend").text
        for kind, n in per_type.items():
            assert f"{kind} ({n})" in legend
        assert browser.find_element(By.ID, "error").text == ""
        browser.save_screenshot(str(tmp_path / "fleet-page.png"))
    finally:
        browser.quit()
    assert (tmp_path / "fleet-page.png").stat().st_size > 10_000
