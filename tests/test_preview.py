"""The installer's preview (issue 15): ``dms run`` with ``[preview]`` on a rendered clip, a real
HTTP server on 127.0.0.1, real HTTP clients, and the page driven in headless Chromium (Debian's
``chromium`` and ``chromium-driver``; the browser test skips when they are absent)."""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dms.config import ConfigError, parse_config
from dms.errors import DmsError
from dms.preview.settings import MIN_TOKEN_BYTES, PreviewSettings, preview_token

from broker import free_port

TOKEN = "preview-token-0123456789abcdef"
# the neutral pose is learned on the road first; the long glance is an L1 distraction
SCRIPT = "road 6s; glance infotainment 4s; road 4s"
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from dms.synth.render import render_scenario

    out = tmp_path_factory.mktemp("clip")
    return Path(render_scenario(SCRIPT, out, fps=10, size="320x240").video)


@dataclass
class Running:
    """A ``dms run`` process with the preview on ``port``; ``raised`` holds (monotonic time
    the record was printed, record) for each alert raised."""

    proc: subprocess.Popen[str]
    port: int
    raised: list[tuple[float, dict]] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)
    ready: threading.Event = field(default_factory=threading.Event)
    alert: threading.Event = field(default_factory=threading.Event)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def log_text(self) -> str:
        return "".join(self.stderr)

    def wait_log(self, needle: str, timeout_s: float = 10.0) -> bool:
        """The service's log (read by a thread) contains ``needle`` within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while needle not in self.log_text():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True


def write_config(path: Path, state: Path, port: int, extra: str = "") -> Path:
    path.write_text(f'[camera]\nloop = true\n[service]\nstate_dir = "{state}"\n'
                    f'[mqtt]\nenabled = false\n[preview]\nenabled = true\nport = {port}\n'
                    + extra)
    return path


@contextmanager
def running_service(tmp_path: Path, clip: Path, env_token: str | None = TOKEN,
                    extra: str = "", nofile: int | None = None) -> Iterator[Running]:
    """``nofile``: the process's descriptor limit (RLIMIT_NOFILE), as systemd's LimitNOFILE."""
    port = free_port()
    cfg = write_config(tmp_path / "dms.toml", tmp_path / "state", port, extra)
    env = {k: v for k, v in os.environ.items() if k != "DMS_PREVIEW_TOKEN"}
    if env_token is not None:
        env["DMS_PREVIEW_TOKEN"] = env_token

    def limit() -> None:
        if nofile is not None:
            import resource

            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    proc = subprocess.Popen([sys.executable, "-m", "dms", "-v", "run", "--config", str(cfg),
                             "--source", str(clip), "--print-events"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=limit)
    run = Running(proc, port)

    def read_stdout() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            rec = json.loads(line)
            if rec.get("phase") == "raised":
                run.raised.append((time.monotonic(), rec))
                run.alert.set()

    def read_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            run.stderr.append(line)
            if "ready: camera and models warm" in line:
                run.ready.set()

    threads = [threading.Thread(target=f, daemon=True) for f in (read_stdout, read_stderr)]
    for t in threads:
        t.start()
    try:
        assert run.ready.wait(120), run.log_text()
        yield run
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        for t in threads:
            t.join(5)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, clip: Path) -> Iterator[Running]:
    with running_service(tmp_path_factory.mktemp("svc"), clip) as run:
        yield run


BEARER = {"Authorization": f"Bearer {TOKEN}"}


# -- settings --------------------------------------------------------------------------------


def test_preview_is_off_by_default_on_loopback_with_a_token() -> None:
    s = parse_config("").preview
    assert s == PreviewSettings()
    assert not s.enabled and s.host == "127.0.0.1" and s.token_env == "DMS_PREVIEW_TOKEN"


@pytest.mark.parametrize("body, message", [
    ("max_fps = 0.0", "preview: max_fps 0.0 must be in [0.5, 15]"),
    ("port = 70000", "port 70000 must be in [1, 65535]"),
    ('token_env = ""', "token_env must name an environment variable"),
    ("max_viewers = 0", "max_viewers 0 must be in [1, 8]"),
    ("record = true", "preview.record: unknown setting"),
])
def test_bad_preview_settings_name_the_key(body: str, message: str) -> None:
    with pytest.raises(ConfigError, match=r".*" + message.replace("[", r"\[")
                       .replace("(", r"\(").replace(".", r"\.")):
        parse_config(f"[preview]\n{body}\n")


def test_the_token_comes_from_the_environment_and_must_be_long() -> None:
    assert preview_token({"T": TOKEN}, "T") == TOKEN.encode()
    with pytest.raises(DmsError, match="environment variable T is not set"):
        preview_token({}, "T")
    with pytest.raises(DmsError, match=f"has 5 bytes; use at least {MIN_TOKEN_BYTES}"):
        preview_token({"T": "short"}, "T")


# -- the server behind dms run ---------------------------------------------------------------


@pytest.mark.parametrize("method, path", [
    ("GET", "/"), ("GET", "/stream.mjpg"), ("GET", "/api/status"), ("GET", "/?token=wrong"),
    ("POST", "/api/command/calibrate"), ("POST", "/api/command/mute"), ("GET", "/nothing"),
])
def test_requests_without_the_token_get_401(service: Running, method: str, path: str) -> None:
    status, headers, _ = service.request(method, path, b"{}" if method == "POST" else None)
    assert status == 401
    assert headers["www-authenticate"].startswith("Bearer")
    wrong = {"Authorization": "Bearer " + TOKEN[:-1] + "x"}
    assert service.request(method, path, b"{}" if method == "POST" else None, wrong)[0] == 401


def test_the_token_link_sets_a_cookie_that_opens_the_page_but_presses_no_button(
        service: Running) -> None:
    status, headers, _ = service.request("GET", f"/?token={TOKEN}")
    assert status == 303 and headers["location"] == f"/#token={TOKEN}"
    cookie = headers["set-cookie"].split(";")[0]
    assert TOKEN not in cookie and "HttpOnly" in headers["set-cookie"]
    assert "SameSite=Strict" in headers["set-cookie"]
    status, headers, body = service.request("GET", "/", headers={"Cookie": cookie})
    assert status == 200 and b'id="btn_calibrate"' in body
    assert service.request("GET", "/api/status", headers={"Cookie": cookie})[0] == 200
    # a button needs the token itself: a page on another site cannot press it with the cookie
    assert service.request("POST", "/api/command/calibrate", b"{}",
                           {"Cookie": cookie})[0] == 401


def test_status_has_what_an_installer_needs(service: Running) -> None:
    status, _, body = service.request("GET", "/api/status", headers=BEARER)
    assert status == 200
    st = json.loads(body)
    for key in ("driver_state", "active_alerts", "calibration", "fps", "camera", "mqtt",
                "outbox", "model_licences", "preview_viewers", "buzzer"):
        assert key in st, key
    assert st["camera"] == "ok" and st["mqtt"] == "off"
    # the default: the detector, the student CNN and the one landmark pass in front of it
    # (the attention mesh also reads the eyes, so the iris model is not loaded)
    lic = {m["task"]: m for m in st["model_licences"]}
    assert set(lic) == {"detector", "pose", "landmarks"}
    assert lic["pose"]["name"] == "student_tddfa"
    assert all("Apache-2.0" in lic[t]["licence"] for t in ("detector", "landmarks"))
    # the default pose model's weights are for research only, and the installer is told so
    assert "non-commercial" in lic["pose"]["licence"].lower()
    # issue 22: no buzzer fitted ([buzzer] backend "none") is said, not "buzzer: on"
    assert st["buzzer"].startswith("no buzzer"), st["buzzer"]


def read_mjpeg_frames(port: int, n: int, timeout_s: float = 20.0) -> list[bytes]:
    """``n`` JPEG parts of the stream, read as a browser does."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    conn.request("GET", "/stream.mjpg", headers=BEARER)
    r = conn.getresponse()
    assert r.status == 200, r.status
    assert r.getheader("Content-Type") == "multipart/x-mixed-replace; boundary=dmsframe"
    frames = []
    try:
        while len(frames) < n:
            line = r.fp.readline()
            if line.startswith(b"Content-Length:"):
                size = int(line.split(b":")[1])
                r.fp.readline()
                frames.append(r.fp.read(size))
    finally:
        conn.close()
    return frames


def test_the_stream_is_jpeg_within_the_caps_and_the_viewer_is_logged(service: Running) -> None:
    import cv2
    import numpy as np

    frames = read_mjpeg_frames(service.port, 3)
    images = [cv2.imdecode(np.frombuffer(f, np.uint8), cv2.IMREAD_COLOR) for f in frames]
    assert all(im is not None and im.shape[1] <= PreviewSettings().max_width for im in images)
    assert not np.array_equal(images[0], images[-1])  # live frames, not one picture
    deadline = time.monotonic() + 10
    while "stopped watching" not in service.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "preview: viewer 127.0.0.1:" in service.log_text()
    assert "stopped watching" in service.log_text()


def test_a_viewer_beyond_max_viewers_is_refused(service: Running) -> None:
    conns = []
    try:
        for _ in range(PreviewSettings().max_viewers):
            c = http.client.HTTPConnection("127.0.0.1", service.port, timeout=10)
            c.request("GET", "/stream.mjpg", headers=BEARER)
            assert c.getresponse().status == 200
            conns.append(c)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            st = json.loads(service.request("GET", "/api/status", headers=BEARER)[2])
            if st["preview_viewers"] == len(conns):
                break
            time.sleep(0.05)
        assert st["preview_viewers"] == len(conns)
        assert service.request("GET", "/stream.mjpg", headers=BEARER)[0] == 503
    finally:
        for c in conns:
            c.close()


def test_mute_goes_through_the_buzzers_budget(service: Running) -> None:
    status, _, body = service.request("POST", "/api/command/mute",
                                      json.dumps({"duration_s": 5}).encode(), BEARER)
    assert status == 200 and json.loads(body)["result"]["muted_s"] == 5
    # the same argument checks as the MQTT command
    status, _, body = service.request("POST", "/api/command/mute", b'{"duration_s": -1}',
                                      BEARER)
    assert status == 409 and "mute: duration_s -1.0 must be in (0, 600]" in \
        json.loads(body)["error"]
    # and the same bound (the buzzer's max_mute_s)
    status, _, body = service.request("POST", "/api/command/mute", b'{"duration_s": 1e6}',
                                      BEARER)
    assert status == 409 and "mute: duration_s 1000000.0 must be in (0, 600]" in \
        json.loads(body)["error"]
    assert service.wait_log("preview 127.0.0.1:")
    assert service.wait_log("command 'mute' rejected")


def test_a_command_body_over_the_bound_is_refused_unread(service: Running) -> None:
    status, _, body = service.request("POST", "/api/command/mute", b" " * 5000, BEARER)
    assert status == 413 and "Content-Length must be 0-4096" in json.loads(body)["error"]


def outward_address() -> str | None:
    """This machine's address on its default route (None without one)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent
        except OSError:
            return None
        addr = s.getsockname()[0]
    return None if addr.startswith("127.") else str(addr)


def test_not_reachable_on_other_interfaces_by_default(service: Running) -> None:
    addr = outward_address()
    if addr is None:
        pytest.skip("this machine has no non-loopback IPv4 address to try")
    with pytest.raises(ConnectionRefusedError), \
            socket.create_connection((addr, service.port), timeout=5):
        pass
    assert socket.create_connection(("127.0.0.1", service.port), timeout=5).close() is None


def test_without_a_token_in_the_environment_monitoring_goes_on(tmp_path: Path,
                                                               clip: Path) -> None:
    port = free_port()
    cfg = write_config(tmp_path / "dms.toml", tmp_path / "state", port)
    env = {k: v for k, v in os.environ.items() if k != "DMS_PREVIEW_TOKEN"}
    p = subprocess.run([sys.executable, "-m", "dms", "run", "--config", str(cfg), "--source",
                        str(clip), "--max-frames", "20"], env=env, capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "environment variable DMS_PREVIEW_TOKEN is not set" in p.stderr
    assert "the preview is off, monitoring goes on" in p.stderr
    assert "Traceback" not in p.stderr


def test_dms_preview_with_a_port_in_use_is_one_clear_line(clip: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        p = subprocess.run([sys.executable, "-m", "dms", "preview", "--source", str(clip),
                            "--port", str(port)], env=os.environ | {"DMS_PREVIEW_TOKEN": TOKEN},
                           capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    assert f"dms preview: error: preview: cannot listen on 127.0.0.1:{port}" in p.stderr
    assert "Traceback" not in p.stderr


# -- the page in headless Chromium -----------------------------------------------------------


def chromium(download_dir: Path):  # type: ignore[no-untyped-def]
    for exe in (CHROMIUM, CHROMEDRIVER):
        if not Path(exe).is_file():
            pytest.skip(f"needs Debian's chromium and chromium-driver ({exe} is missing; "
                        "scripts/bootstrap --dev installs them)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (dev extra)")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--window-size=1200,800",
                 f"--user-data-dir={download_dir / 'profile'}"):
        options.add_argument(flag)
    from selenium.webdriver.chrome.service import Service as DriverService

    return webdriver.Chrome(options=options, service=DriverService(CHROMEDRIVER))


@pytest.mark.slow
def test_the_page_in_chromium(tmp_path: Path, clip: Path) -> None:
    """The stream shows frames; the status shows the clip's alert within 1 s of its record;
    the calibrate button is refused without the token and starts a calibration with it."""
    if not (Path(CHROMIUM).is_file() and shutil.which(CHROMEDRIVER)):
        pytest.skip(f"needs Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER})")
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    shots = tmp_path / "screenshots"
    shots.mkdir()
    with running_service(tmp_path, clip) as run:
        browser = chromium(tmp_path)
        try:
            browser.get(f"http://127.0.0.1:{run.port}/?token={TOKEN}")
            wait = WebDriverWait(browser, 30, poll_frequency=0.02)
            stream = browser.find_element(By.ID, "stream")
            wait.until(lambda b: b.execute_script(
                "return document.getElementById('stream').naturalWidth") > 0)
            first = stream.screenshot_as_png
            wait.until(lambda b: stream.screenshot_as_png != first)  # frames, not a picture
            assert browser.current_url.endswith("/")  # the token left the address bar
            browser.save_screenshot(str(shots / "1-stream.png"))

            # the long glance: its record is printed, the page shows it within 1 s
            assert run.alert.wait(60), run.log_text()
            printed_at, record = run.raised[0]
            assert record["type"] == "distraction", record
            WebDriverWait(browser, 5, poll_frequency=0.02).until(
                lambda b: "distraction" in b.find_element(By.ID, "alerts").text)
            shown_after_s = time.monotonic() - printed_at
            browser.save_screenshot(str(shots / "2-alert.png"))
            assert shown_after_s <= 1.0, shown_after_s

            # no token: refused, and no calibration starts
            token_box = browser.find_element(By.ID, "token")
            assert token_box.get_attribute("value") == TOKEN  # from the link's fragment
            token_box.clear()
            browser.find_element(By.ID, "btn_calibrate").click()
            result = browser.find_element(By.ID, "cmd_result")
            wait.until(lambda b: "refused" in result.text)
            assert "HTTP 401" in result.text
            browser.save_screenshot(str(shots / "3-refused.png"))
            assert "command 'calibrate' accepted" not in run.log_text()

            # the token: a calibration starts, through the service's command handling
            token_box.send_keys(TOKEN)
            browser.find_element(By.ID, "btn_calibrate").click()
            wait.until(lambda b: "accepted" in result.text)
            assert '"calibration":"started"' in result.text
            wait.until(lambda b: "explicit calibration running" in
                       b.find_element(By.ID, "calibration").text)
            browser.save_screenshot(str(shots / "4-calibrating.png"))
            assert run.wait_log("command 'calibrate' accepted")
            assert run.wait_log("refused: no valid token")
        finally:
            browser.quit()
    assert run.proc.returncode == 0, run.log_text()
    assert sorted(p.name for p in shots.iterdir()) == [
        "1-stream.png", "2-alert.png", "3-refused.png", "4-calibrating.png"]


def test_the_example_configs_preview_block_is_the_defaults() -> None:
    """systemd/dms.example.toml documents [preview] commented out (off by default); uncommented
    it must load and equal the built-in defaults."""
    text = (Path(__file__).resolve().parents[1] / "systemd" / "dms.example.toml").read_text()
    block = text.split("# [preview]\n", 1)[1]
    lines = [line[2:] for line in block.splitlines()
             if line.startswith("# ") and not line.startswith("#  ")]
    assert parse_config("[preview]\n" + "\n".join(lines) + "\n").preview == PreviewSettings()


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_a_flood_of_idle_connections_is_capped_and_timed_out(tmp_path: Path,
                                                             clip: Path) -> None:
    """issue 21, fault 1: 1,100 idle connections without a token held a thread each for ever
    and took the process to its descriptor limit; the buzzer hook then failed with "Too many
    open files" and /api/status stopped answering. Now each connection times out, at most
    ``max_connections`` are served (503 beyond), and the alert path keeps its descriptors."""
    limit = 256
    with running_service(tmp_path, clip, nofile=limit) as run:
        idle: list[socket.socket] = []
        try:
            for _ in range(400):  # more than the process may open
                idle.append(socket.create_connection(("127.0.0.1", run.port), timeout=10))
            most = 0
            for _ in range(20):  # the server accepts what it will within this
                most = max(most, open_fds(run.proc.pid))
                time.sleep(0.1)
            status, _, body = run.request("GET", "/api/status", headers=BEARER)
            closed = 0
            for s in idle:  # each idle connection is answered (503) or closed by the server
                try:
                    s.settimeout(30)  # a liveness bound: before, they were held for ever
                    s.recv(64)
                    closed += 1
                except OSError:
                    pass
        finally:
            for s in idle:
                s.close()
        assert most <= limit - 64, f"{most} descriptors open: the alert path could starve"
        assert status == 200 and json.loads(body)["camera"] == "ok"
        assert closed == len(idle)
        assert run.proc.poll() is None
    assert "Too many open files" not in run.log_text()


def http_request(port: int, method: str, path: str, headers: dict[str, str] | None = None
                 ) -> tuple[int, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, headers=headers or {})
        r = conn.getresponse()
        r.read()
        return r.status, {k.lower(): v for k, v in r.getheaders()}
    finally:
        conn.close()


def test_each_token_link_opens_its_own_viewing_session_which_ends() -> None:
    """issue 21, fault 6: the preview cookie was a fixed hash of the token: it never changed
    and never expired. Now each link makes a random session cookie with a Max-Age."""
    from dms.engine.settings import EngineSettings
    from dms.preview.hub import FrameHub
    from dms.preview.server import PreviewServer

    now = [100.0]
    settings = PreviewSettings(enabled=True, port=free_port(), session_max_age_s=60.0)
    server = PreviewServer(settings, TOKEN.encode(), FrameHub(settings, EngineSettings().zones),
                           lambda: {"driver_state": "starting"}, lambda *_: {"ok": True},
                           clock=lambda: now[0]).start()
    try:
        links = [http_request(settings.port, "GET", f"/?token={TOKEN}")[1]["set-cookie"]
                 for _ in range(2)]
        first, second = (c.split(";")[0] for c in links)
        assert first != second and all("Max-Age=60" in c for c in links)
        assert TOKEN not in first
        assert http_request(settings.port, "GET", "/api/status", {"Cookie": first})[0] == 200
        now[0] += 61.0  # the session has ended
        assert http_request(settings.port, "GET", "/api/status", {"Cookie": first})[0] == 401
        assert http_request(settings.port, "GET", "/api/status", {"Cookie": "dms_preview=x"}
                            )[0] == 401
    finally:
        server.close()
