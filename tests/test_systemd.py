"""The systemd unit, udev rule, example config and installer."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dms.outputs.buzzer import BuzzerSettings
from dms.outputs.mqtt import MqttSettings
from dms.settings import load_settings

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

SYSTEMD = Path(__file__).resolve().parents[1] / "systemd"
UNIT = SYSTEMD / "dms.service"
EXEC_START = "ExecStart=/opt/dms/.venv/bin/dms run --config /etc/dms/dms.toml"


def unit_settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def test_unit_has_the_service_contract() -> None:
    s = unit_settings()
    one = {k: v[-1] for k, v in s.items()}
    assert EXEC_START in UNIT.read_text().splitlines()
    assert one["Type"] == "notify" and one["NotifyAccess"] == "main"
    assert one["WatchdogSec"] == "10" and one["Restart"] == "on-failure" and "RestartSec" in one
    assert one["User"] == "dms" and set(one["SupplementaryGroups"].split()) == {"video", "gpio"}
    assert one["StateDirectory"] == "dms" and one["EnvironmentFile"] == "-/etc/dms/dms.env"
    assert one["ProtectSystem"] == "strict" and one["ProtectHome"] == "yes"
    # issue 21, fault 1: the preview's connections never starve the alert path of descriptors
    assert int(one["LimitNOFILE"]) >= 4096
    assert one["NoNewPrivileges"] == "yes"
    # Jetson: Argus needs the real /tmp; CUDA needs /dev/nvhost*, /dev/nvmap, /dev/nvgpu
    for forbidden in ("PrivateTmp", "DevicePolicy", "PrivateDevices", "MemoryDenyWriteExecute"):
        assert forbidden not in s, forbidden


@pytest.fixture
def systemd_analyze() -> str:
    found = shutil.which("systemd-analyze")
    if found is None:
        pytest.skip("needs systemd-analyze (package systemd)")
    return found


def test_unit_verifies(systemd_analyze: str, tmp_path: Path) -> None:
    # The real ExecStart binary (/opt/dms/.venv/bin/dms) does not exist on a build machine, and
    # verify rightly complains about exactly that; verify a copy whose ExecStart points at an
    # existing executable, and check that the original fails for that reason only.
    for unit in (UNIT, SYSTEMD / "dms-failed.service"):  # with its OnFailure= unit beside it
        (tmp_path / unit.name).write_text(
            unit.read_text().replace("/opt/dms/.venv/bin/dms", sys.executable))
    copy = tmp_path / "dms.service"
    done = subprocess.run([systemd_analyze, "verify", str(copy),
                           str(tmp_path / "dms-failed.service")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "dms.service" not in done.stderr, done.stderr  # no warnings about our unit
    assert "dms-failed.service" not in done.stderr, done.stderr

    original = subprocess.run([systemd_analyze, "verify", str(UNIT)], capture_output=True,
                              text=True)
    if original.returncode != 0 or original.stderr.strip():
        complaints = [x for x in original.stderr.splitlines() if "dms.service" in x]
        assert complaints and all("/opt/dms/.venv/bin/dms" in x for x in complaints), \
            original.stderr


def test_udev_rule_gives_gpiochips_to_the_gpio_group() -> None:
    rule = (SYSTEMD / "99-dms-gpio.rules").read_text()
    active = [x for x in rule.splitlines() if x.strip() and not x.startswith("#")]
    assert active == ['SUBSYSTEM=="gpio", KERNEL=="gpiochip*", GROUP="gpio", MODE="0660"']


def test_example_config_loads() -> None:
    data = tomllib.loads((SYSTEMD / "dms.example.toml").read_text())
    assert list(data) == ["camera", "vision", "engine", "mqtt", "buzzer", "service"]
    assert load_settings(MqttSettings, data["mqtt"], "mqtt") == MqttSettings()
    assert load_settings(BuzzerSettings, data["buzzer"], "buzzer") == BuzzerSettings()
    assert data["service"]["state_dir"] == "/var/lib/dms"


def snapshot(root: Path) -> dict[str, tuple[str, int, bytes]]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = ("link", 0, os.readlink(p).encode())
        elif p.is_file():
            out[rel] = ("file", p.stat().st_mode & 0o7777, p.read_bytes())
    return out


def seed_root(root: Path) -> bool:
    """A minimal /etc with account files, when useradd can edit them under a prefix."""
    (root / "etc").mkdir(parents=True)
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        return False
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\nvideo:x:44:\n")
    (root / "etc/shadow").write_text("root:*:19000:0:99999:7:::\n")
    (root / "etc/gshadow").write_text("root:*::\nvideo:!::\n")
    for name in ("shadow", "gshadow"):
        (root / "etc" / name).chmod(0o600)
    return True


def install(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["bash", str(SYSTEMD / "install.sh"), *args], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


def test_installer_is_idempotent_in_a_staged_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    accounts = seed_root(root)
    install("--prefix", str(root))
    etc = root / "etc"
    assert (etc / "systemd/system/dms.service").read_bytes() == UNIT.read_bytes()
    assert (etc / "udev/rules.d/99-dms-gpio.rules").is_file()
    assert (etc / "dms/dms.toml").read_bytes() == (SYSTEMD / "dms.example.toml").read_bytes()
    assert (etc / "dms/dms.env").stat().st_mode & 0o077 == 0  # secrets: root only
    wants = etc / "systemd/system/multi-user.target.wants/dms.service"
    assert wants.is_symlink() and os.readlink(wants).endswith("/etc/systemd/system/dms.service")
    if accounts:
        passwd = (etc / "passwd").read_text()
        assert passwd.count("\ndms:") == 1 and "/usr/sbin/nologin" in passwd
        groups = {x.split(":")[0]: x.split(":")[3] for x in (etc / "group").read_text().split()}
        assert "dms" in groups["gpio"].split(",") and "dms" in groups["video"].split(",")

    (etc / "dms/dms.toml").write_text("# edited by the administrator\n")
    before = snapshot(root)
    second = install(env={"DESTDIR": str(root)})  # same root through DESTDIR
    assert snapshot(root) == before  # nothing changed, the edited config survived
    assert "left as it is" in second.stdout


def test_installer_dry_run_changes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    seed_root(root)
    before = snapshot(root)
    done = install("--prefix", str(root), "--dry-run")
    assert snapshot(root) == before
    assert "+ install -D -m 0644" in done.stdout and "dms.service" in done.stdout


def test_unit_filters_system_calls_and_reloads_by_restart() -> None:
    text = UNIT.read_text()
    lines = {line.strip() for line in text.splitlines()}
    assert "SystemCallFilter=@system-service" in lines
    assert "SystemCallFilter=~@privileged @resources" in lines  # issue 21, fault 6
    assert "SystemCallErrorNumber=EPERM" in lines
    one = {k: v[-1] for k, v in unit_settings().items()}
    assert one["ProcSubset"] == "pid" and one["PrivateMounts"] == "yes"
    assert int(one["TasksMax"]) <= 512 and one["MemoryMax"].endswith(("M", "G"))
    # out of restarts: a unit of its own sounds the buzzer (monitoring is off)
    assert one["OnFailure"] == "dms-failed.service"
    failed = (SYSTEMD / "dms-failed.service").read_text()
    assert "ExecStart=/opt/dms/.venv/bin/dms alarm --config /etc/dms/dms.toml" in failed
    # the BLAS and OpenMP pools are pinned (issue 21, item 7)
    env = " ".join(unit_settings()["Environment"])
    assert "OPENBLAS_NUM_THREADS=1" in env and "OMP_NUM_THREADS=1" in env
    assert "ExecReload=/bin/kill -HUP $MAINPID" in lines  # SIGHUP: clean stop, exit 75
    assert "Restart=on-failure" in lines  # ... which restarts with the config re-read


def test_dms_alarm_sounds_the_configured_buzzer_then_switches_it_off(tmp_path: Path) -> None:
    """What dms-failed.service runs: the level-3 pattern on the configured line (a command
    hook here: this machine has no GPIO chip), then off."""
    calls = tmp_path / "calls"
    hook = tmp_path / "hook.py"
    hook.write_text(f"import sys\nopen({str(calls)!r}, 'a').write(sys.argv[1] + '\\n')\n")
    cfg = tmp_path / "dms.toml"
    cfg.write_text(f'[buzzer]\nbackend = "command"\ncommand_on = ["{sys.executable}", '
                   f'"{hook}", "on"]\ncommand_off = ["{sys.executable}", "{hook}", "off"]\n')
    done = subprocess.run([sys.executable, "-m", "dms", "alarm", "--config", str(cfg),
                           "--seconds", "1", "--reason", "test"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = calls.read_text().split()
    assert lines[0] == "on" and lines[-1] == "off"
    none = subprocess.run([sys.executable, "-m", "dms", "alarm", "--seconds", "1"],
                          capture_output=True, text=True, timeout=60)
    assert none.returncode == 0 and "no buzzer fitted" in none.stdout
